// Stress: 4 processes x 100,000 lock-protected, non-atomic increments of one
// shared counter must total exactly 400,000, for each primitive (POSIX named
// semaphores too) and for mixed sync/async acquirers; and a holder SIGKILLed
// while three others wait.
import { afterAll, describe, expect, it } from 'vitest';

import { Lock, Process, RLock, Semaphore } from 'posix-multiprocessing';
import heapModule from '../../dist/cjs/heap.js';
import * as fx from '../fixtures/sync.mjs';

const { heap } = heapModule as { heap: () => any };
afterAll(() => heap().unlinkOwned());

function sharedInts(n: number) {
  const block = heap().allocate(n * 4, 8);
  return { ref: { segment: block.segment, offset: block.offset, size: block.size }, c: new Int32Array(block.buffer, block.offset, n) };
}

function start(target: (...a: any[]) => unknown, ...args: unknown[]) {
  const p = new Process({ target, args });
  p.start();
  return p;
}

describe('4 processes x 100,000 locked increments', () => {
  for (const [label, make, mode] of [
    ['Lock', () => new Lock(), 'sync'],
    ['RLock', () => new RLock(), 'sync'],
    ['Semaphore(1)', () => new Semaphore(1), 'sync'],
    ['Lock, mixed sync/async', () => new Lock(), 'mixed'],
    ['RLock, async', () => new RLock(), 'async'],
  ] as const) {
    it(`${label}: exactly 400,000`, async () => {
      const prim = make();
      const { ref, c } = sharedInts(1);
      const kids = Array.from({ length: 4 }, () => start(fx.lockedIncrements, prim, ref, 100_000, mode));
      for (const k of kids) expect(await k.join()).toBe(0);
      expect(c[0]).toBe(400_000);
    });
  }
});

// The same for Semaphore({ name, posix: true }): a sem_t from sem_open, where
// async acquirers park on waiter threads and sync ones in sem_wait.
describe('POSIX named Semaphore(1): 4 processes x 100,000 locked increments', () => {
  for (const mode of ['sync', 'mixed'] as const) {
    it(`${mode}: exactly 400,000`, async () => {
      const name = `pmp-stress-${process.pid}-${mode}`;
      const prim = new Semaphore(1, { name, posix: true });
      try {
        const { ref, c } = sharedInts(1);
        const kids = Array.from({ length: 4 }, () => start(fx.lockedIncrements, prim, ref, 100_000, mode));
        for (const k of kids) expect(await k.join()).toBe(0);
        expect(c[0]).toBe(400_000);
        expect(prim.getValue()).toBe(1);
      } finally {
        prim.close();
        Semaphore.unlink(name, { posix: true });
      }
    });
  }
});

describe('owner death under load', () => {
  it('a SIGKILLed holder while three children wait: all three get the lock, one with ownerDied', async () => {
    const lock = new Lock();
    const { ref, c } = sharedInts(1);
    const holder = start(fx.holdForever, lock, ref);
    while (Atomics.load(c, 0) !== 1) await new Promise((r) => setTimeout(r, 5));
    const files = [0, 1, 2].map((i) => `/tmp/pmp-stress-died-${process.pid}-${i}.json`);
    const waiters = files.map((f) => start(fx.acquireAndReport, lock, f));
    await new Promise((r) => setTimeout(r, 500));
    process.kill(holder.pid!, 'SIGKILL');
    expect(await holder.join()).toBe(-9);
    for (const w of waiters) expect(await w.join()).toBe(0);
    const { readFileSync, rmSync } = await import('node:fs');
    const reports = files.map((f) => JSON.parse(readFileSync(f, 'utf8')));
    files.forEach((f) => rmSync(f));
    expect(reports.every((r) => r.got)).toBe(true);
    expect(reports.filter((r) => r.ownerDied)).toHaveLength(1);
  });
});
