// Scenario 11: one child waits on an event with no timeout, another with a 2 s
// timeout: the second gives up at ~2 s seeing isSet() === false; the parent
// sets the event at 3 s and the first proceeds seeing true.
import { Event, Process, isMainProcess } from 'posix-multiprocessing';

export async function waiter(event, timeout, ready) {
  ready.release();
  const t0 = Date.now();
  const result = await event.wait(timeout === null ? {} : { timeout });
  const s = ((Date.now() - t0) / 1000).toFixed(2);
  console.log(`waiter (timeout ${timeout ?? 'none'}): wait() -> ${result} after ${s} s, isSet() === ${event.isSet()}`);
  if (result !== (timeout === null)) throw new Error('unexpected wait() result');
}

if (isMainProcess()) {
  const { Semaphore } = await import('posix-multiprocessing');
  const event = new Event();
  const ready = new Semaphore(0);
  const forever = new Process({ target: waiter, args: [event, null, ready] });
  const twoSeconds = new Process({ target: waiter, args: [event, 2, ready] });
  forever.start();
  twoSeconds.start();
  await ready.acquire();
  await ready.acquire(); // both are about to wait: the 3 s count from here
  await new Promise((r) => setTimeout(r, 3000));
  console.log('parent: set()');
  event.set();
  await forever.join();
  await twoSeconds.join();
  process.exit(forever.exitCode === 0 && twoSeconds.exitCode === 0 ? 0 : 1);
}
