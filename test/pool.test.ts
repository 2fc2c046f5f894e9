import { afterAll, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { types } from 'node:util';

import { AsyncResult, Connection, Pipe, Pool, Queue, TimeoutError, WorkerCrashedError } from 'posix-multiprocessing';
import * as tasks from './fixtures/pool.mjs';
import { chaos } from './support/chaos';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pmp-pool-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function withPool<T>(options: ConstructorParameters<typeof Pool>[0], body: (pool: Pool) => Promise<T>): Promise<T> {
  const pool = new Pool(options);
  try {
    return await body(pool);
  } finally {
    pool.terminate();
    await pool.join();
  }
}

/** p, or a rejection if it has not settled within `seconds` (a hang fails the test instead of timing it out). */
async function within<T>(p: Promise<T>, seconds = 10): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`did not settle within ${seconds} s`)), seconds * 1000);
  });
  try {
    return await Promise.race([p, expired]);
  } finally {
    clearTimeout(timer);
  }
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

describe('Pool', () => {
  it('scenario 19: Pool(4) runs ten 1 s tasks in about 3 s on four workers', async () => {
    const pool = new Pool({ processes: 4 });
    // Warm up so that start-up is not counted in the timing.
    await Promise.all(Array.from({ length: 4 }, () => pool.apply(tasks.pid, [])));
    const started = performance.now();
    const results = Array.from({ length: 10 }, (_, i) => pool.applyAsync(tasks.sleepPid, [1]));
    expect(results[0]).toBeInstanceOf(AsyncResult);
    const pids = await Promise.all(results.map((r) => r.get()));
    const elapsed = (performance.now() - started) / 1000;
    expect(elapsed).toBeGreaterThan(2.8);
    expect(elapsed).toBeLessThan(5);
    expect(new Set(pids).size).toBeLessThanOrEqual(4);
    expect(await pool.map(tasks.square, [1, 2, 3, 4, 5])).toEqual([1, 4, 9, 16, 25]);
    expect(new Set([...pids, ...pool.pids]).size).toBe(4);
    pool.close();
    await pool.join();
  }, 30_000);

  it('scenario 20: a writer task puts the letters of "itcast" on a queue; a later reader task gets all six', async () => {
    await withPool({ processes: 2 }, async (pool) => {
      const queue = new Queue();
      expect(await pool.apply(tasks.writeLetters, [queue, 'itcast'])).toBe(6);
      expect(await pool.apply(tasks.readLetters, [queue, 6])).toBe('itcast');
      expect(queue.empty()).toBe(true);
      queue.close();
    });
  });

  it('map equals Array.prototype.map for 0, 1, 7 and 10,000 items and several chunk sizes', async () => {
    await withPool({ processes: 2 }, async (pool) => {
      for (const n of [0, 1, 7, 10_000]) {
        const input = Array.from({ length: n }, (_, i) => i - 3);
        const expected = input.map((x) => x * x);
        for (const chunksize of [undefined, 1, 3, 1000]) {
          if (n === 10_000 && chunksize === 1) continue; // 10k one-item chunks are covered by the throughput bench
          expect(await pool.map(tasks.square, input, { chunksize })).toEqual(expected);
        }
      }
      expect(await pool.starmap(tasks.add, [[1, 2], [3, 4], [5, 6]])).toEqual([3, 7, 11]);
    });
  }, 60_000);

  it('imap keeps order, imapUnordered returns the same set, both accept async iterables', async () => {
    await withPool({ processes: 3 }, async (pool) => {
      const input = Array.from({ length: 50 }, (_, i) => i);
      expect(await collect(pool.imap(tasks.square, input))).toEqual(input.map((x) => x * x));
      expect(await collect(pool.imap(tasks.square, input, { chunksize: 7 }))).toEqual(input.map((x) => x * x));
      const unordered = await collect(pool.imapUnordered(tasks.square, input));
      expect([...unordered].sort((a, b) => a - b)).toEqual(input.map((x) => x * x));
      async function* gen() {
        for (let i = 0; i < 20; i++) yield i;
      }
      expect(await collect(pool.imap(tasks.square, gen()))).toEqual(Array.from({ length: 20 }, (_, i) => i * i));
    });
  }, 30_000);

  it('imap pulls lazily from an infinite source (backpressure)', async () => {
    await withPool({ processes: 2 }, async (pool) => {
      let pulled = 0;
      function* naturals() {
        for (let i = 0; ; i++) {
          pulled = i + 1;
          yield i;
        }
      }
      const out: number[] = [];
      for await (const x of pool.imap(tasks.square, naturals())) {
        out.push(x as number);
        if (out.length === 100) break;
      }
      expect(out).toEqual(Array.from({ length: 100 }, (_, i) => i * i));
      expect(pulled).toBeLessThan(100 + 20);
    });
  }, 30_000);

  it('a task error keeps its name, message, code, cause and the worker stack', async () => {
    await withPool({ processes: 1 }, async (pool) => {
      const err = await pool.apply(tasks.failWithCause, ['boom']).catch((e) => e);
      expect(err).toBeInstanceOf(Error);
      expect(err.name).toBe('CustomError');
      expect(err.message).toBe('boom');
      expect(err.code).toBe('E_CUSTOM');
      expect(err.stack).toContain('failWithCause');
      expect(err.cause).toBeInstanceOf(RangeError);
      expect(err.cause.message).toBe('root');
      // The pool is unharmed.
      expect(await pool.apply(tasks.add, [2, 2])).toBe(4);
      const failing = pool.applyAsync(tasks.fail, ['x']);
      await failing.wait();
      expect(failing.ready()).toBe(true);
      expect(failing.successful()).toBe(false);
    });
  });

  it('AsyncResult: get({timeout}) rejects with TimeoutError; callbacks run', async () => {
    await withPool({ processes: 1 }, async (pool) => {
      const slow = pool.applyAsync(tasks.sleepThen, [1, 'late']);
      expect(slow.ready()).toBe(false);
      expect(() => slow.successful()).toThrow(expect.objectContaining({ code: 'ERR_MP_NOT_READY' }));
      const started = performance.now();
      await expect(slow.get({ timeout: 0.2 })).rejects.toBeInstanceOf(TimeoutError);
      expect(performance.now() - started).toBeLessThan(900);
      expect(await slow.wait({ timeout: 0.05 })).toBe(false);
      // Longer than setTimeout can take (2^31 ms): must not expire at once.
      expect(await slow.wait({ timeout: 3e6 })).toBe(true);
      expect(await slow.get({ timeout: 1e9 })).toBe('late');
      expect(slow.successful()).toBe(true);
      const seen = await new Promise((resolve) => pool.applyAsync(tasks.add, [1, 2], { callback: resolve }));
      expect(seen).toBe(3);
      const seenErr = await new Promise((resolve) => pool.applyAsync(tasks.fail, ['e'], { errorCallback: resolve }));
      expect((seenErr as Error).message).toBe('e');
      await expect(slow.get({ timeout: -1 })).rejects.toBeInstanceOf(RangeError);
    });
  });

  it('maxTasksPerChild recycles workers; the initializer runs once per worker', async () => {
    const file = path.join(tmp, 'init.txt');
    await withPool({ processes: 2, maxTasksPerChild: 10, initializer: tasks.init, initargs: [file] }, async (pool) => {
      const pids = await pool.map(tasks.pid, Array.from({ length: 60 }, (_, i) => i), { chunksize: 1 });
      const distinct = new Set(pids);
      expect(distinct.size).toBeGreaterThanOrEqual(6);
      const counts = new Map<number, number>();
      for (const p of pids) counts.set(p, (counts.get(p) ?? 0) + 1);
      for (const c of counts.values()) expect(c).toBeLessThanOrEqual(10);
      // Every worker ran the initializer exactly once, before its tasks.
      const inits = fs.readFileSync(file, 'utf8').trim().split('\n').map(Number);
      expect(new Set(inits).size).toBe(inits.length);
      for (const p of distinct) expect(inits).toContain(p);
      expect(await pool.apply(tasks.initCount, [])).toBe(1);
    });
  }, 60_000);

  it('a worker killed mid-task fails exactly its task with WorkerCrashedError and is replaced', async () => {
    await withPool({ processes: 2 }, async (pool) => {
      const before = pool.pids;
      const other = pool.apply(tasks.sleepThen, [0.5, 'fine']);
      const err = await pool.apply(tasks.crash, []).catch((e) => e);
      expect(err).toBeInstanceOf(WorkerCrashedError);
      expect(err.code).toBe('ERR_MP_WORKER_CRASHED');
      expect(err.signal).toBe('SIGKILL');
      expect(await other).toBe('fine');
      const exitErr = await pool.apply(tasks.exitNow, [3]).catch((e) => e);
      expect(exitErr).toBeInstanceOf(WorkerCrashedError);
      expect(exitErr.exitCode).toBe(3);
      expect(await pool.map(tasks.square, [1, 2, 3])).toEqual([1, 4, 9]);
      expect(pool.pids.length).toBe(2);
      expect(pool.pids).not.toEqual(before);
    });
  });

  it('tasks queued behind a crashing task at its worker never ran: they run on the replacement', async () => {
    await withPool({ processes: 1 }, async (pool) => {
      // Once square is known to be fast, the pool queues it at the busy worker,
      // behind the task that kills it.
      expect(await pool.map(tasks.square, [1, 2, 3])).toEqual([1, 4, 9]);
      const crashed = pool.apply(tasks.crash, []).catch((e) => e);
      const queued = [4, 5, 6].map((x) => pool.apply(tasks.square, [x]));
      expect(await crashed).toBeInstanceOf(WorkerCrashedError);
      expect(await Promise.all(queued)).toEqual([16, 25, 36]);
      // A map whose first chunk crashes fails; the next map is not hit by it.
      const err = await pool.map(tasks.crash, [1, 2, 3, 4], { chunksize: 1 }).catch((e) => e);
      expect(err).toBeInstanceOf(WorkerCrashedError);
      expect(await pool.map(tasks.square, [2, 3])).toEqual([4, 9]);
    });
  });

  it('a lone worker recycled by maxTasksPerChild keeps the program alive until the work is done', () => {
    const script = path.join(__dirname, 'fixtures', 'programs', 'pool-recycle.mjs');
    const out = execFileSync(process.execPath, [script], { encoding: 'utf8', timeout: 60_000 });
    const pids = JSON.parse(out.trim());
    expect(pids).toHaveLength(3);
    expect(new Set(pids).size).toBe(3);
  }, 70_000);

  it('a Connection travels to a task and back from one, working (through the fd sharer)', async () => {
    await withPool({ processes: 1 }, async (pool) => {
      const [mine, theirs] = Pipe();
      const done = pool.apply(tasks.echoOnConnection, [theirs]);
      theirs.close(); // the task has its own duplicate
      mine.send('ping');
      const answer = (await mine.recv()) as { pid: number; echo: string };
      expect(answer.echo).toBe('ping');
      expect(pool.pids).toContain(answer.pid);
      mine.send(null);
      expect(await done).toBe(answer.pid);
      mine.close();

      const returned = (await pool.apply(tasks.makeConnection, [])) as Connection;
      expect(returned).toBeInstanceOf(Connection);
      expect(await returned.recv()).toBe('from the worker');
      await expect(returned.recv()).rejects.toMatchObject({ code: 'ERR_MP_EOF' });
      returned.close();
      expect(await pool.apply(tasks.add, [1, 1])).toBe(2);
    });
    // A worker that exits after each task: its result is decoded (the fd
    // fetched) before the pool lets the worker go.
    await withPool({ processes: 1, maxTasksPerChild: 1 }, async (pool) => {
      for (let i = 0; i < 3; i++) {
        const conn = (await pool.apply(tasks.makeConnection, [])) as Connection;
        expect(await conn.recv()).toBe('from the worker');
        conn.close();
      }
    });
  }, 30_000);

  it('an initializer that throws breaks the pool instead of respawning forever', async () => {
    const pool = new Pool({ processes: 2, initializer: tasks.badInit });
    const err = await pool.apply(tasks.add, [1, 2]).catch((e) => e);
    expect(err.code).toBe('ERR_MP_POOL_BROKEN');
    expect(err.cause.message).toBe('initializer failed');
    pool.terminate();
    await pool.join();
  });

  it('close() finishes queued work; terminate() rejects it; both refuse new work', async () => {
    const pool = new Pool({ processes: 1 });
    const queued = [pool.apply(tasks.sleepThen, [0.2, 1]), pool.apply(tasks.sleepThen, [0.2, 2])];
    pool.close();
    await expect(pool.apply(tasks.add, [1, 1])).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    expect(() => pool.applyAsync(tasks.add, [1, 1])).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    await pool.join();
    expect(await Promise.all(queued)).toEqual([1, 2]);

    const pool2 = new Pool({ processes: 1 });
    await expect(pool2.join()).rejects.toMatchObject({ code: 'ERR_MP_POOL_RUNNING' });
    const running = pool2.apply(tasks.sleepThen, [5, 'never']);
    const pending = pool2.apply(tasks.add, [1, 1]);
    await new Promise((r) => setTimeout(r, 300));
    pool2.terminate();
    await expect(running).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    await expect(pending).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    await expect(pool2.map(tasks.square, [1])).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    await pool2.join();
  });

  it('an AbortSignal cancels a task that has not started', async () => {
    await withPool({ processes: 1 }, async (pool) => {
      const busy = pool.apply(tasks.sleepThen, [0.3, 'busy']);
      const controller = new AbortController();
      const cancelled = pool.apply(tasks.add, [1, 2], { signal: controller.signal });
      controller.abort();
      await expect(cancelled).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR' });
      expect(await busy).toBe('busy');
      expect(await pool.apply(tasks.add, [1, 2], { signal: new AbortController().signal })).toBe(3);
    });
  });

  it('validates its arguments', async () => {
    expect(() => new Pool({ processes: 0 })).toThrow(RangeError);
    expect(() => new Pool({ processes: 'two' as never })).toThrow(TypeError);
    expect(() => new Pool({ maxTasksPerChild: -1, processes: 1 })).toThrow(RangeError);
    await withPool({ processes: 1 }, async (pool) => {
      await expect(pool.apply('nope' as never, [])).rejects.toBeInstanceOf(TypeError);
      await expect(pool.apply(() => 1, [])).rejects.toMatchObject({ code: 'ERR_MP_TARGET_NOT_IMPORTABLE' });
      await expect(pool.map(tasks.square, [1], { chunksize: 0 })).rejects.toBeInstanceOf(RangeError);
      await expect(pool.map(tasks.square, 5 as never)).rejects.toBeInstanceOf(TypeError);
      await expect(pool.starmap(tasks.add, null as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
      await expect(pool.apply(tasks.identity, [new WeakMap()])).rejects.toMatchObject({ code: 'ERR_MP_DATA_CLONE' });
      await expect(pool.apply(tasks.identity, [() => 1])).rejects.toMatchObject({ code: 'ERR_MP_DATA_CLONE' });
      expect(await pool.apply(tasks.identity, [new Map([[1, new Set([2])]])])).toEqual(new Map([[1, new Set([2])]]));
    });
  });

  it('await using terminates and joins', async () => {
    let pids: number[] = [];
    {
      await using pool = new Pool({ processes: 2 });
      pids = await Promise.all([pool.apply(tasks.pid, []), pool.apply(tasks.pid, [])]);
    }
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow();
  });

  it('chaos (light): 2,000 tasks while a worker is SIGKILLed every 200 ms all settle; the pool still works', async () => {
    await chaos(2_000, 200);
  }, 120_000);
});

describe('Pool: failures that used to hang or hit the wrong task (issue #12)', () => {
  it('item 4: a task whose error cannot be encoded whole still rejects, and its worker goes on', async () => {
    await withPool({ processes: 1 }, async (pool) => {
      const pids = pool.pids;
      const err = await within(pool.apply(tasks.throwWithCallback, ['boom'])).catch((e) => e);
      expect(types.isNativeError(err)).toBe(true);
      expect(err).toBeInstanceOf(RangeError);
      expect([err.message, err.code]).toEqual(['boom', 'E_RETRY']);
      expect(err.stack).toContain('throwWithCallback');
      expect(Object.keys(err.droppedProperties)).toEqual(['retry']);
      expect(err.droppedProperties.retry).toMatch(/function/);
      expect(await within(pool.apply(tasks.identity, [1]))).toBe(1);
      const thrown: Array<[(...a: any[]) => unknown, RegExp]> = [
        [tasks.throwSymbol, /throwSymbol .*Symbol\(thrown\)/],
        [tasks.throwFunction, /throwFunction .*function \(handler\)/],
        [tasks.rejectWithObjectHoldingFunction, /rejectWithObjectHoldingFunction .*reason: 'nope'.*callback/],
      ];
      for (const [fn, message] of thrown) {
        const e = await within(pool.apply(fn, [])).catch((x) => x);
        expect(types.isNativeError(e)).toBe(true);
        expect(e.code).toBe('ERR_MP_DATA_CLONE');
        expect(e.message).toMatch(message);
        expect(await within(pool.apply(tasks.identity, [2]))).toBe(2);
      }
      // One worker served all of it: none was lost or replaced.
      expect(pool.pids).toEqual(pids);
    });
  }, 30_000);

  it('item 10: a stray rejection is reported by its worker and fails no task, later or running', () => {
    const script = path.join(__dirname, 'fixtures', 'programs', 'pool-stray.mjs');
    const r = spawnSync(process.execPath, [script], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout.trim());
    expect(out.sloppy).toEqual({ value: 'done' });
    expect(out.next).toEqual({ value: 1 });
    expect(out.sloppyAsync).toEqual({ value: 'done' });
    expect(out.last).toEqual({ value: 2 });
    expect(out.pidsAfter).toEqual(out.pids);
    const [pid] = out.pids;
    expect(r.stderr).toContain(`pool worker ${pid}: unhandled rejection after task sloppy (pool.mjs) finished: Error: stray`);
    expect(r.stderr).toContain(`pool worker ${pid}: unhandled rejection while task sloppyAsync (pool.mjs) was running: Error: stray while running`);
  }, 40_000);

  it('item 11: imap and imapUnordered deliver every result drawn before the source threw, then throw', async () => {
    await withPool({ processes: 2 }, async (pool) => {
      function* source(failAt: number) {
        for (let i = 0; ; i++) {
          if (i === failAt) throw new Error(`source failed at ${failAt}`);
          yield i;
        }
      }
      async function* asyncSource(failAt: number) {
        yield* source(failAt);
      }
      for (const failAt of [5, 100]) {
        for (const chunksize of [1, 3]) {
          for (const ordered of [true, false]) {
            for (const make of [source, asyncSource]) {
              const got: number[] = [];
              const it = ordered ? pool.imap(tasks.square, make(failAt), { chunksize }) : pool.imapUnordered(tasks.square, make(failAt), { chunksize });
              const err = await (async () => {
                for await (const x of it) got.push(x as number);
              })().catch((e) => e);
              const expected = Array.from({ length: failAt }, (_, i) => i * i);
              const what = `${ordered ? 'imap' : 'imapUnordered'} failAt=${failAt} chunksize=${chunksize} ${make.name}`;
              expect(err?.message, what).toBe(`source failed at ${failAt}`);
              expect(ordered ? got : [...got].sort((a, b) => a - b), what).toEqual(expected);
            }
          }
        }
      }
      // A task that fails still fails at its place; a bad argument list for
      // imapStar comes after the results drawn before it.
      const err = await collect(pool.imap(tasks.failWithCause, ['x'])).catch((e) => e);
      expect(err.name).toBe('CustomError');
      const star: unknown[] = [];
      const starErr = await (async () => {
        for await (const x of pool.imapStar(tasks.add, [[1, 2], [3, 4], 'bad' as never])) star.push(x);
      })().catch((e) => e);
      expect(star).toEqual([3, 7]);
      expect(starErr).toBeInstanceOf(TypeError);
    });
  }, 60_000);

  it('item 12: Errors and arrays with extra properties cross to a task and back as themselves', async () => {
    await withPool({ processes: 1 }, async (pool) => {
      const sent = Object.assign(new TypeError('x', { cause: new RangeError('c') }), { code: 'E_X' });
      const seen = (await pool.apply(tasks.describeError, [sent])) as any;
      expect(seen).toMatchObject({ isNativeError: true, isError: true, ctor: 'TypeError', name: 'TypeError', message: 'x', code: 'E_X', stack: sent.stack });
      expect(seen.cause).toEqual({ isNativeError: true, name: 'RangeError', message: 'c' });
      expect([seen.cloneIsNativeError, seen.cloneMessage]).toEqual([true, 'x']);
      const agg = (await pool.apply(tasks.describeError, [new AggregateError([new Error('e1')], 'agg')])) as any;
      expect(agg).toMatchObject({ isNativeError: true, ctor: 'AggregateError', errors: [{ isNativeError: true, name: 'Error', message: 'e1' }] });

      const [custom, aggBack, syn] = (await pool.apply(tasks.makeErrors, [])) as any[];
      for (const e of [custom, aggBack, syn]) expect(types.isNativeError(e)).toBe(true);
      expect([custom.name, custom.message, custom.code, custom.cause.name]).toEqual(['CustomError', 'custom', 'E_CUSTOM', 'TypeError']);
      expect(custom.stack).toContain('makeErrors');
      expect(aggBack).toBeInstanceOf(AggregateError);
      expect(aggBack.errors.map((e: Error) => [types.isNativeError(e), e.message])).toEqual([[true, 'r1'], [true, 'e2']]);
      expect(syn).toBeInstanceOf(SyntaxError);
      expect([syn.code, syn.detail]).toEqual(['E_SYN', { n: 1 }]);

      const arg = Object.assign([1, 2], { extra: 'x' });
      expect(await pool.apply(tasks.describeArray, [arg])).toEqual({ isArray: true, length: 2, keys: ['0', '1', 'extra'], extra: 'x' });
      expect(await pool.map(tasks.describeArray, [arg])).toEqual([{ isArray: true, length: 2, keys: ['0', '1', 'extra'], extra: 'x' }]);
      const back = (await pool.apply(tasks.arrayWithExtra, [3])) as any;
      expect([[...back], Object.keys(back), back.extra]).toEqual([[0, 1, 2], ['0', '1', '2', 'extra'], 'x']);
    });
  }, 30_000);
});
