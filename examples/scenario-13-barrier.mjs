// Scenario 13: three children wait at a Barrier(3); none passes until all
// three have arrived.
import { setTimeout as sleep } from 'node:timers/promises';
import { Barrier, Process, isMainProcess } from 'posix-multiprocessing';

export async function party(barrier, delayMs, running, go) {
  running.release();
  await go.acquire(); // all three are running: stagger from a common start
  const t0 = Date.now();
  await sleep(delayMs);
  const arrived = Date.now() - t0;
  const index = await barrier.wait();
  const passed = Date.now() - t0;
  console.log(`pid ${process.pid}: arrived at ${arrived} ms, passed at ${passed} ms, index ${index}`);
  if (passed < 900) throw new Error('passed the barrier before the last party arrived');
}

if (isMainProcess()) {
  const { Semaphore } = await import('posix-multiprocessing');
  const barrier = new Barrier(3);
  const running = new Semaphore(0);
  const go = new Semaphore(0);
  const kids = [0, 500, 1000].map((d) => new Process({ target: party, args: [barrier, d, running, go] }));
  kids.forEach((k) => k.start());
  // Hold the start until all three run, then let them go together.
  for (let i = 0; i < 3; i++) await running.acquire();
  go.release(3);
  for (const k of kids) await k.join();
  process.exit(kids.every((k) => k.exitCode === 0) ? 0 : 1);
}
