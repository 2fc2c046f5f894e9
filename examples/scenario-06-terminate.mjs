// Scenario 6: terminate. A child sleeping 2 s is terminated after 1 s: after
// join() it is not alive and its exit code is -15 (SIGTERM). name is read/write.
import { setTimeout as sleep } from 'node:timers/promises';
import { Process, isMainProcess } from 'posix-multiprocessing';

export async function nap(seconds) {
  await sleep(seconds * 1000);
}

if (isMainProcess()) {
  const p = new Process({ target: nap, args: [2] });
  console.log(`default name: ${p.name}`);
  p.name = 'sleeper';
  p.start();
  await sleep(1000);
  const aliveBefore = p.isAlive();
  p.terminate();
  const code = await p.join();
  console.log(`${p.name}: alive before terminate ${aliveBefore}, exit code ${code}, alive now ${p.isAlive()}`);
  const ok = aliveBefore && code === -15 && !p.isAlive() && p.name === 'sleeper';
  console.log(ok ? 'OK' : 'FAILED');
  process.exitCode = ok ? 0 : 1;
}
