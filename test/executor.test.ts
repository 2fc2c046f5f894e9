import { types } from 'node:util';
import { describe, expect, it } from 'vitest';

import { ProcessPoolExecutor, WorkerCrashedError } from 'posix-multiprocessing';
import * as tasks from './fixtures/pool.mjs';

describe('ProcessPoolExecutor', () => {
  it('scenario 22: map(isPrime, 1000000..1000999) finds 75 primes, in order', async () => {
    const ex = new ProcessPoolExecutor();
    const numbers = Array.from({ length: 1000 }, (_, i) => 1_000_000 + i);
    const flags: boolean[] = [];
    for await (const flag of ex.map(tasks.isPrime, numbers)) flags.push(flag as boolean);
    expect(flags.length).toBe(1000);
    expect(flags.filter(Boolean).length).toBe(75);
    expect(flags).toEqual(numbers.map((n) => tasks.isPrime(n)));
    await ex.shutdown();
  }, 60_000);

  it('submit resolves with the result; map zips several iterables', async () => {
    const ex = new ProcessPoolExecutor({ maxWorkers: 2 });
    expect(await ex.submit(tasks.add, 2, 40)).toBe(42);
    const sums: number[] = [];
    for await (const s of ex.map(tasks.add, [1, 2, 3], [10, 20, 30, 40])) sums.push(s as number);
    expect(sums).toEqual([11, 22, 33]);
    await expect(ex.submit(tasks.fail, 'nope')).rejects.toMatchObject({ name: 'CustomError', code: 'E_CUSTOM' });
    await ex.shutdown();
  });

  it('a crashed worker fails its future only; the executor keeps serving', async () => {
    const ex = new ProcessPoolExecutor({ maxWorkers: 2 });
    await expect(ex.submit(tasks.crash)).rejects.toBeInstanceOf(WorkerCrashedError);
    expect(await ex.submit(tasks.square, 9)).toBe(81);
    await ex.shutdown();
  });

  it('shutdown: refuses new work, waits, and cancelFutures rejects what has not started', async () => {
    const ex = new ProcessPoolExecutor({ maxWorkers: 1 });
    await ex.submit(tasks.pid); // the worker is up
    const running = ex.submit(tasks.sleepThen, 0.5, 'done');
    await new Promise((r) => setTimeout(r, 100)); // it has started
    const queued = [ex.submit(tasks.add, 1, 1), ex.submit(tasks.add, 2, 2)];
    const shutdown = ex.shutdown({ cancelFutures: true });
    await expect(ex.submit(tasks.add, 1, 1)).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    expect(() => ex.map(tasks.square, [1])).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    for (const q of queued) await expect(q).rejects.toMatchObject({ code: 'ERR_MP_CANCELLED' });
    expect(await running).toBe('done');
    await shutdown;
  });

  it('maxTasksPerChild and initializer pass through; asyncDispose shuts down', async () => {
    let pids: number[];
    {
      await using ex = new ProcessPoolExecutor({ maxWorkers: 1, maxTasksPerChild: 2 });
      pids = [];
      for (let i = 0; i < 6; i++) pids.push((await ex.submit(tasks.pid)) as number);
    }
    expect(new Set(pids).size).toBe(3);
  });
});

describe('ProcessPoolExecutor: failures that used to hang (issue #12)', () => {
  it('item 4: futures whose errors cannot be encoded whole reject; the worker goes on', async () => {
    const ex = new ProcessPoolExecutor({ maxWorkers: 1 });
    const within = <T>(p: Promise<T>) =>
      Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('did not settle within 10 s')), 10_000).unref())]);
    try {
      const err = await within(ex.submit(tasks.throwWithCallback, 'boom')).catch((e) => e);
      expect(types.isNativeError(err)).toBe(true);
      expect(err).toMatchObject({ name: 'RangeError', message: 'boom', code: 'E_RETRY' });
      expect(Object.keys(err.droppedProperties)).toEqual(['retry']);
      await expect(within(ex.submit(tasks.throwSymbol))).rejects.toMatchObject({ code: 'ERR_MP_DATA_CLONE', message: expect.stringContaining('Symbol(thrown)') });
      await expect(within(ex.submit(tasks.throwFunction))).rejects.toMatchObject({ code: 'ERR_MP_DATA_CLONE', message: expect.stringContaining('handler') });
      expect(await within(ex.submit(tasks.square, 7))).toBe(49);
    } finally {
      await ex.shutdown({ cancelFutures: true });
    }
  }, 30_000);

  it('item 11: map delivers the results drawn before an input iterable threw, then throws', async () => {
    const ex = new ProcessPoolExecutor({ maxWorkers: 2 });
    function* numbers(failAt: number) {
      for (let i = 0; ; i++) {
        if (i === failAt) throw new Error(`input failed at ${failAt}`);
        yield i;
      }
    }
    try {
      for (const failAt of [5, 100]) {
        const got: number[] = [];
        const err = await (async () => {
          for await (const x of ex.map(tasks.add, numbers(failAt), numbers(1000))) got.push(x as number);
        })().catch((e) => e);
        expect(got).toEqual(Array.from({ length: failAt }, (_, i) => 2 * i));
        expect(err?.message).toBe(`input failed at ${failAt}`);
      }
    } finally {
      await ex.shutdown();
    }
  }, 30_000);
});
