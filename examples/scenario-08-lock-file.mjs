// Scenario 8: two children write to one file under one lock, each holding it
// ~1 s: the run takes ~2 s and the file reads "hello world!".
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Lock, Process, isMainProcess } from 'posix-multiprocessing';

export async function writer(lock, file, text, started) {
  await lock.withLock(async () => {
    started?.set();
    fs.appendFileSync(file, text);
    await sleep(1000);
  });
}

if (isMainProcess()) {
  const { Event } = await import('posix-multiprocessing');
  const file = path.join(os.tmpdir(), `pmp-scenario-08-${process.pid}.txt`);
  fs.writeFileSync(file, '');
  const lock = new Lock();
  const started = new Event();
  const t0 = Date.now();
  const a = new Process({ target: writer, args: [lock, file, 'hello ', started] });
  a.start();
  await started.wait(); // the first writer holds the lock: the order is fixed
  const b = new Process({ target: writer, args: [lock, file, 'world!'] });
  b.start();
  await a.join();
  await b.join();
  const seconds = (Date.now() - t0) / 1000;
  const text = fs.readFileSync(file, 'utf8');
  fs.rmSync(file);
  console.log(`file reads ${JSON.stringify(text)} after ${seconds.toFixed(2)} s (two 1 s holds, one at a time)`);
  process.exit(text === 'hello world!' && seconds >= 1.9 && a.exitCode === 0 && b.exitCode === 0 ? 0 : 1);
}
