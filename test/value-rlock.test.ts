// Value/SharedArray with their default lock, an RLock from synchronize.ts
// (branch `sync`). These pass once that module is merged; before, constructing
// works but getLock() and transfer throw ERR_MP_UNSUPPORTED.
import { describe, expect, it } from 'vitest';

import * as pmp from 'posix-multiprocessing';
import { Process, SharedArray, Value } from 'posix-multiprocessing';
import * as shmTargets from './fixtures/shm.mjs';

describe('Value/SharedArray default lock (RLock)', () => {
  it('getLock() returns one RLock per object, re-entrant', () => {
    const RLock = (pmp as any).RLock;
    expect(typeof RLock).toBe('function');
    const v = new Value('i', 0);
    const lock = v.getLock();
    expect(lock).toBeInstanceOf(RLock);
    expect(v.getLock()).toBe(lock);
    expect(lock.acquireSync()).toBe(true);
    expect(lock.acquireSync()).toBe(true);
    lock.release();
    lock.release();
    expect(new SharedArray('d', 2).getLock()).toBeInstanceOf(RLock);
  });

  it('scenario 17: ten children adding 1 twenty times under getLock() reach exactly 200', async () => {
    const v = new Value('i', 0);
    const procs = Array.from({ length: 10 }, () => new Process({ target: shmTargets.addLocked, args: [v, 20, 1] }));
    for (const p of procs) p.start();
    const codes = await Promise.all(procs.map((p) => p.join(30)));
    expect(codes).toEqual(Array(10).fill(0));
    expect(v.value).toBe(200);
  }, 40_000);

  it('tight acquireSync increments from three children are exact', async () => {
    const v = new Value('q', 0n);
    const procs = Array.from({ length: 3 }, () => new Process({ target: shmTargets.incrementSync, args: [v, 2000] }));
    for (const p of procs) p.start();
    expect(await Promise.all(procs.map((p) => p.join(30)))).toEqual([0, 0, 0]);
    expect(v.value).toBe(6000n);
  }, 40_000);
});
