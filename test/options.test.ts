// API.md Conventions: options objects are checked. An unknown key (a typo such
// as { timeot: 5 }) throws a TypeError naming it, instead of waiting for ever;
// a Python-style positional call (q.get(5), lock.acquire(false)) throws a
// TypeError showing the options form to write. And the messages of the issue's
// list say what went wrong and where.
import * as net from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';

import {
  Barrier,
  Condition,
  Event,
  Lock,
  Pool,
  Process,
  ProcessPoolExecutor,
  Queue,
  QueueEmptyError,
  RLock,
  Semaphore,
  SharedMemory,
  TimeoutError,
  Value,
  WorkerCrashedError,
  setStartMethod,
} from 'posix-multiprocessing';
import heapModule from '../dist/cjs/heap.js';
import serializeModule from '../dist/cjs/serialize.js';
import * as targets from './fixtures/targets.mjs';

const { heap } = heapModule as { heap: () => { unlinkOwned(): void } };
const { decode, encode } = serializeModule as { decode: (b: Uint8Array) => unknown; encode: (v: unknown) => Uint8Array };
afterAll(() => heap().unlinkOwned());

/** What a call threw (sync) or rejected with (async). */
async function failure(f: () => unknown): Promise<{ name: string; code?: string; message: string }> {
  try {
    await f();
  } catch (err) {
    return err as { name: string; code?: string; message: string };
  }
  throw new Error('expected the call to fail');
}

describe('options objects are checked', () => {
  it('an unknown key throws a TypeError naming it (and the option meant), never a silent default', async () => {
    const q = new Queue();
    const lock = new Lock();
    const ev = new Event();
    const sem = new Semaphore(0);
    const cond = new Condition();
    const barrier = new Barrier(2);
    const calls: Array<[string, () => unknown]> = [
      ['q.get()', () => q.get({ timeot: 5 } as never)],
      ['q.getSync()', () => q.getSync({ timeot: 5 } as never)],
      ['q.put()', () => q.put(1, { timeot: 5 } as never)],
      ['acquire()', () => lock.acquire({ timeot: 5 } as never)],
      ['acquireSync()', () => lock.acquireSync({ timeot: 5 } as never)],
      ['acquire()', () => sem.acquire({ timeot: 5 } as never)],
      ['wait()', () => ev.wait({ timeot: 5 } as never)],
      ['waitSync()', () => ev.waitSync({ timeot: 5 } as never)],
      ['wait()', () => barrier.wait({ timeot: 5 } as never)],
      ['new Pool()', () => new Pool({ proceses: 2 } as never)],
      ['new Process()', () => new Process({ target: targets.exitWith, daemonic: true } as never)],
      ['new SharedMemory()', () => new SharedMemory({ name: 'x', sise: 10 } as never)],
      ['new Lock()', () => new Lock({ nmae: 'x' } as never)],
      ['new Value()', () => new Value('i', 0, { lok: false } as never)],
    ];
    for (const [call, f] of calls) {
      const e = await failure(f);
      expect(e.name, call).toBe('TypeError');
      expect(e.code, call).toBe('ERR_MP_UNKNOWN_OPTION');
      expect(e.message, call).toContain(call);
      expect(e.message, call).toMatch(/is not an option of .*did you mean '(timeout|processes|daemon|size|name|lock)'/);
    }
    await cond.acquire();
    const e = await failure(() => cond.wait({ timeot: 1 } as never));
    expect(e.code).toBe('ERR_MP_UNKNOWN_OPTION');
    cond.release();
    for (const o of [q, lock, ev, sem, cond, barrier]) o.close();
  });

  it('a Python-style positional call shows the options form to write', async () => {
    const q = new Queue();
    const lock = new Lock();
    const rlock = new RLock();
    const cases: Array<[() => unknown, string]> = [
      [() => q.get(5 as never), 'q.get({ timeout: 5 })'],
      [() => q.get(false as never), 'q.get({ block: false })'],
      [() => q.getSync(0.5 as never), 'q.getSync({ timeout: 0.5 })'],
      [() => q.put(1, false as never), 'q.put({ block: false })'],
      [() => lock.acquire(false as never), 'acquire({ blocking: false })'],
      [() => lock.acquire(5 as never), 'acquire({ timeout: 5 })'],
      [() => rlock.acquireSync(false as never), 'acquireSync({ blocking: false })'],
      [() => new Value('i', 0, false as never), "new Value({ lock: false })"],
    ];
    for (const [f, form] of cases) {
      const e = await failure(f);
      expect(e.name).toBe('TypeError');
      expect(e.message).toContain(`write ${form}`);
    }
    // Python's Event.wait(timeout) and Condition.wait(timeout) are unambiguous: kept.
    const ev = new Event();
    expect(await ev.wait(0.01)).toBe(false);
    expect(ev.waitSync(0)).toBe(false);
    for (const o of [q, lock, rlock, ev]) o.close();
  });

  it('the issue\'s misleading messages say what went wrong', async () => {
    // A socket in args: which argument, and what it is.
    const socket = new net.Socket();
    const p = new Process({ target: targets.exitWith, args: [0, socket] });
    const e1 = await failure(() => p.start());
    expect(e1.code).toBe('ERR_MP_DATA_CLONE');
    expect(e1.message).toMatch(/^args\[1\] \(an instance of Socket\) cannot be sent to another process/);
    // A size no ArrayBuffer can have: the bound, not "size must be >= 1".
    const e2 = await failure(() => SharedMemory.create(2 ** 53));
    expect(e2.name).toBe('RangeError');
    expect(e2.message).toMatch(/size must be an integer between 1 and \d+/);
    // executor.map(fn) without iterables.
    const ex = new ProcessPoolExecutor({ maxWorkers: 1 });
    const e3 = await failure(() => ex.map(targets.exitWith));
    expect(e3.message).toBe('executor.map(fn, ...iterables) needs at least one iterable after fn');
    expect(e3.code).toBe('ERR_MISSING_ARGS');
    await ex.shutdown();
    // An env value the kernel cannot take: a TypeError with a code, naming the variable.
    const e4 = await failure(() => new Process({ target: targets.exitWith, env: { PATH: 'a\0b' } }));
    expect(e4).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' });
    expect(e4.message).toContain('options.env.PATH');
    const e5 = await failure(() => new Process({ target: targets.exitWith, env: { 'A=B': 'x' } }));
    expect(e5.code).toBe('ERR_INVALID_ARG_VALUE');
    // Process(target) and SharedMemory(name), Python's habits.
    expect((await failure(() => new Process(targets.exitWith as never))).message).toContain('new Process({ target: exitWith');
    expect((await failure(() => new SharedMemory('seg' as never))).message).toContain('SharedMemory.open("seg")');
    expect((await failure(() => setStartMethod('spawn', true as never))).message).toContain('setStartMethod({ force: true })');
  });

  it("the package's own errors travel as their classes", () => {
    for (const err of [new QueueEmptyError(), new TimeoutError('slow'), new WorkerCrashedError('gone', null, 'SIGKILL')]) {
      const back = decode(encode(err)) as Error;
      expect(back).toBeInstanceOf(err.constructor);
      expect(back).toMatchObject({ name: err.name, message: err.message, code: (err as { code: string }).code });
    }
    const crashed = decode(encode(new WorkerCrashedError('gone', null, 'SIGKILL'))) as WorkerCrashedError;
    expect(crashed.signal).toBe('SIGKILL');
  });
});
