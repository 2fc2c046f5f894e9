// Scenario 17: Value and Array. Ten children each add 1 to a shared Value('i')
// twenty times with a short sleep between read and write: without a lock the
// total falls short of 200; under getLock() it is exactly 200. A shared
// Array('d', [0, 1, 2]) written by a child is seen by the parent.
//   node examples/scenario-17-value-array.mjs
import { setTimeout as sleep } from 'node:timers/promises';
import { isMainProcess, Process, RawValue, SharedArray, Value } from 'posix-multiprocessing';

export async function addUnlocked(v) {
  for (let i = 0; i < 20; i++) {
    const seen = v.value;
    await sleep(2);
    v.value = seen + 1;
  }
}

export async function addLocked(v) {
  for (let i = 0; i < 20; i++) {
    await v.getLock().withLock(async () => {
      const seen = v.value;
      await sleep(2);
      v.value = seen + 1;
    });
  }
}

export function square(arr) {
  for (let i = 0; i < arr.length; i++) arr.array[i] = arr.array[i] ** 2 + 0.5;
}

async function runTen(target, v) {
  const procs = Array.from({ length: 10 }, () => new Process({ target, args: [v] }));
  for (const p of procs) p.start();
  for (const p of procs) await p.join();
}

if (isMainProcess()) {
  const raw = new RawValue('i', 0);
  await runTen(addUnlocked, raw);
  console.log(`without a lock: ${raw.value} (expected 200; updates were lost)`);

  const locked = new Value('i', 0);
  await runTen(addLocked, locked);
  console.log(`with getLock(): ${locked.value}`);

  const arr = new SharedArray('d', [0, 1, 2]);
  const p = new Process({ target: square, args: [arr] });
  p.start();
  await p.join();
  console.log(`array after the child wrote it: [${Array.from(arr.array).join(', ')}]`);
}
