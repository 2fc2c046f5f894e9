// Scenario 10: Semaphore(2); eight children each hold it 1 s: about 4 s in
// all, never more than two inside at once.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Process, Semaphore, isMainProcess } from 'posix-multiprocessing';

export async function worker(sem, log) {
  await sem.withLock(async () => {
    fs.appendFileSync(log, `+${Date.now()}\n`);
    await sleep(1000);
    fs.appendFileSync(log, `-${Date.now()}\n`);
  });
}

if (isMainProcess()) {
  const log = path.join(os.tmpdir(), `pmp-scenario-10-${process.pid}.log`);
  fs.writeFileSync(log, '');
  const sem = new Semaphore(2);
  const t0 = Date.now();
  const kids = Array.from({ length: 8 }, () => new Process({ target: worker, args: [sem, log] }));
  kids.forEach((k) => k.start());
  for (const k of kids) await k.join();
  const seconds = (Date.now() - t0) / 1000;
  // Replay the log: exits before entries at the same millisecond.
  const events = fs.readFileSync(log, 'utf8').split('\n').filter(Boolean)
    .map((l) => ({ t: Number(l.slice(1)), d: l[0] === '+' ? 1 : -1 }))
    .sort((a, b) => a.t - b.t || a.d - b.d);
  fs.rmSync(log);
  let inside = 0;
  let max = 0;
  for (const e of events) max = Math.max(max, (inside += e.d));
  console.log(`8 holders of 1 s through Semaphore(2): ${seconds.toFixed(2)} s, at most ${max} inside at once`);
  process.exit(max <= 2 && seconds >= 3.9 ? 0 : 1);
}
