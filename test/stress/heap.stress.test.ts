// Stress: a million unnamed objects closed, dropped or handed to another
// process leave the heap a bounded number of segments (the note "one million
// dropped Locks leave 977 /dev/shm segments"); a chain of relays across
// processes that each exit after passing the objects on loses nothing.
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

import { Lock, Process, Queue, SharedArray, Value } from 'posix-multiprocessing';
import * as fx from '../fixtures/heap-refs.mjs';
import { runNode } from '../support/run-node';

const programs = path.join(__dirname, '..', 'fixtures', 'programs');

const runProgram = (script: string, args: string[]) => runNode(path.join(programs, script), args, ['--expose-gc']);

describe('shared heap under churn', () => {
  it('200,000 rounds (a million objects) closed or dropped, 20,000 handed over twice: at most 4 segments at once', async () => {
    const run = await runProgram('heap-churn.mjs', ['200000', '20000']);
    expect(run.code, run.stderr).toBe(0);
    const { most, made } = JSON.parse(run.stdout);
    expect(made).toBe(1_040_000);
    expect(most).toBeLessThanOrEqual(4);
  });

  it('objects relayed through 20 processes, each gone before the next takes them, arrive intact', async () => {
    const q = new Queue();
    const maker = new Process({ target: fx.putAndExit, args: [q] });
    maker.start();
    expect(await maker.join(30)).toBe(0);
    let from = q;
    for (let i = 0; i < 20; i++) {
      const to = new Queue();
      const relay = new Process({ target: fx.relay, args: [from, to] });
      relay.start();
      expect(await relay.join(30)).toBe(0);
      from.close();
      from = to;
    }
    const [v, lock, arr] = (await from.get({ timeout: 10 })) as [Value, Lock, SharedArray<Float64Array>];
    expect(v.value).toBe(27);
    expect(Array.from(arr.array)).toEqual([1.5, 22.5]);
    expect(lock.acquireSync({ blocking: false })).toBe(true);
    lock.release();
    v.close();
    lock.close();
    arr.close();
    from.close();
  });
});
