// Scenario 1: one process. A child prints "hello, world" and sleeps 1 s; while
// it runs the parent sees it alive with a pid; after join() the exit code is 0.
import { setTimeout as sleep } from 'node:timers/promises';
import { Process, isMainProcess } from 'posix-multiprocessing';

export async function hello(name) {
  console.log(`hello, ${name}`);
  await sleep(1000);
}

if (isMainProcess()) {
  const p = new Process({ target: hello, args: ['world'] });
  p.start();
  console.log(`started ${p.name}, pid ${p.pid}, alive: ${p.isAlive()}`);
  const alive = p.isAlive();
  const code = await p.join();
  console.log(`joined: exit code ${code}, alive: ${p.isAlive()}`);
  const ok = alive && typeof p.pid === 'number' && code === 0 && !p.isAlive();
  console.log(ok ? 'OK' : 'FAILED');
  process.exitCode = ok ? 0 : 1;
}
