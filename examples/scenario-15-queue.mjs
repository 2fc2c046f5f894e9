// Scenario 15: a producer process puts 5 items, a consumer process gets them in
// order and stops on a null sentinel. A Queue(3) refuses a 4th putNowait with
// QueueFullError; get({ timeout: 3 }) on an empty queue rejects with
// QueueEmptyError after about 3 s.
import { setTimeout as sleep } from 'node:timers/promises';
import { Process, Queue, QueueEmptyError, QueueFullError, isMainProcess } from 'posix-multiprocessing';

export async function producer(q) {
  for (let i = 1; i <= 5; i++) {
    await q.put(`item ${i}`);
    console.log(`produced item ${i}`);
    await sleep(100);
  }
  await q.put(null);
}

export async function consumer(q) {
  for (;;) {
    const item = await q.get();
    if (item === null) break;
    console.log(`consumed ${item}`);
  }
  console.log('consumer: got the sentinel, done');
}

if (isMainProcess()) {
  const q = new Queue();
  const procs = [new Process({ target: producer, args: [q] }), new Process({ target: consumer, args: [q] })];
  for (const p of procs) p.start();
  for (const p of procs) await p.join();

  const small = new Queue(3);
  for (let i = 0; i < 3; i++) small.putNowait(i);
  try {
    small.putNowait(3);
  } catch (err) {
    console.log(`Queue(3) refused a 4th item: ${err instanceof QueueFullError ? 'QueueFullError' : err}`);
  }
  const t = Date.now();
  try {
    await q.get({ timeout: 3 });
  } catch (err) {
    const s = ((Date.now() - t) / 1000).toFixed(1);
    console.log(`get({ timeout: 3 }) on an empty queue: ${err instanceof QueueEmptyError ? 'QueueEmptyError' : err} after ${s} s`);
  }
  q.close();
  small.close();
}
