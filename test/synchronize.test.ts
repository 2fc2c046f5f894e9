import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  Barrier,
  BoundedSemaphore,
  BrokenBarrierError,
  Condition,
  Event,
  Lock,
  Process,
  RLock,
  Semaphore,
} from 'posix-multiprocessing';
import heapModule from '../dist/cjs/heap.js';
import { asyncWaitSpinConfig } from '../dist/cjs/spin.js';
import * as fx from './fixtures/sync.mjs';
import * as targets from './fixtures/targets.mjs';
import { terminateWorkersProgram } from './support/workers';

const { heap } = heapModule as { heap: () => any };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pmp-sync-'));
// The heap's segments normally go at process exit; the leak check runs before that.
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
  heap().unlinkOwned();
});
const out = (name: string) => path.join(tmp, name);
const readJson = (file: string) => JSON.parse(fs.readFileSync(file, 'utf8'));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A zeroed shared Int32Array and the ref children attach it with. */
function sharedInts(n: number) {
  const block = heap().allocate(n * 4, 8);
  const ref = { segment: block.segment, offset: block.offset, size: block.size };
  return { ref, c: new Int32Array(block.buffer, block.offset, n) };
}

function start(target: (...a: any[]) => unknown, ...args: unknown[]) {
  const p = new Process({ target, args });
  p.start();
  return p;
}

async function waitUntil(check: () => boolean, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await sleep(5);
  }
}

describe('Lock', () => {
  it('acquires, reports locked(), refuses a double release, times out (sync and async)', async () => {
    const lock = new Lock();
    expect(lock.locked()).toBe(false);
    expect(lock.acquireSync()).toBe(true);
    expect(lock.locked()).toBe(true);
    expect(lock.acquireSync({ blocking: false })).toBe(false);
    let t0 = performance.now();
    expect(lock.acquireSync({ timeout: 0.3 })).toBe(false);
    let dt = performance.now() - t0;
    expect(dt).toBeGreaterThanOrEqual(290);
    expect(dt).toBeLessThan(1500);
    t0 = performance.now();
    expect(await lock.acquire({ timeout: 0.3 })).toBe(false);
    dt = performance.now() - t0;
    expect(dt).toBeGreaterThanOrEqual(290);
    expect(dt).toBeLessThan(1500);
    lock.release();
    expect(() => lock.release()).toThrow(expect.objectContaining({ code: 'ERR_MP_LOCK_NOT_HELD' }));
    expect(await lock.withLock(async () => 7)).toBe(7);
    expect(lock.withLockSync(() => 8)).toBe(8);
    expect(lock.locked()).toBe(false);
    await expect(lock.withLock(() => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(lock.locked()).toBe(false);
    lock.close();
    expect(() => lock.acquireSync()).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    await expect(lock.acquire()).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
  });

  it('validates its arguments', async () => {
    const lock = new Lock();
    expect(() => lock.acquireSync({ timeout: -1 })).toThrow(RangeError);
    expect(() => lock.acquireSync({ timeout: 'x' as any })).toThrow(TypeError);
    expect(() => lock.acquireSync({ blocking: 1 as any })).toThrow(/options.blocking/);
    await expect(lock.acquire({ signal: {} as any })).rejects.toThrow(TypeError);
    expect(() => new Lock({ name: 'bad/name' })).toThrow(RangeError);
    expect(() => new Lock(5 as any)).toThrow(TypeError);
    expect(() => new Semaphore(-1)).toThrow(RangeError);
    expect(() => new Barrier(0)).toThrow(RangeError);
    expect(() => new Condition(5 as any)).toThrow(TypeError);
    expect(() => new Condition(new Semaphore(1) as any)).toThrow(TypeError);
  });

  it('rejects a waiting acquire() with an AbortError when its signal aborts', async () => {
    const lock = new Lock();
    lock.acquireSync();
    const ac = new AbortController();
    const p = lock.acquire({ signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    await expect(p).rejects.toMatchObject({ name: 'AbortError' });
    await expect(lock.acquire({ signal: ac.signal })).rejects.toMatchObject({ name: 'AbortError' });
    lock.release();
    // The aborted waiter left no trace: a fresh acquire works at once.
    expect(await lock.acquire({ timeout: 1 })).toBe(true);
    lock.release();
  });

  it('Scenario 8: two children write one file under one lock, ~1 s each', async () => {
    const lock = new Lock();
    const file = out('s8.txt');
    fs.writeFileSync(file, '');
    const { ref, c } = sharedInts(1);
    const t0 = Date.now();
    const a = start(fx.writeUnderLock, lock, file, 'hello ', 1000, ref);
    await waitUntil(() => Atomics.load(c, 0) === 1);
    const b = start(fx.writeUnderLock, lock, file, 'world!', 1000);
    expect(await a.join()).toBe(0);
    expect(await b.join()).toBe(0);
    const elapsed = Date.now() - t0;
    expect(fs.readFileSync(file, 'utf8')).toBe('hello world!');
    // The lock serialises the two 1 s holds; the upper bound only has to
    // absorb two process start-ups on a loaded machine.
    expect(elapsed).toBeGreaterThanOrEqual(1900);
    expect(elapsed).toBeLessThan(15_000);
  }, 30_000);

  it('Scenario 9: six children buy 4 tickets under a lock; never below 0', async () => {
    const lock = new Lock();
    const file = out('s9.json');
    fs.writeFileSync(file, JSON.stringify({ tickets: 4, buyers: [], refused: 0 }));
    const kids = Array.from({ length: 6 }, () => start(fx.buyTicket, lock, file));
    for (const k of kids) expect(await k.join()).toBe(0);
    const state = readJson(file);
    expect(state.tickets).toBe(0);
    expect(state.buyers).toHaveLength(4);
    expect(new Set(state.buyers).size).toBe(4);
    expect(state.refused).toBe(2);
  }, 20_000);

  it('4 processes x 10,000 locked increments reach exactly 40,000 (Lock, RLock, Semaphore(1), mixed)', async () => {
    for (const [prim, mode] of [
      [new Lock(), 'sync'],
      [new RLock(), 'sync'],
      [new Semaphore(1), 'sync'],
      [new Lock(), 'mixed'],
    ] as const) {
      const { ref, c } = sharedInts(1);
      const kids = Array.from({ length: 4 }, () => start(fx.lockedIncrements, prim, ref, 10_000, mode));
      for (const k of kids) expect(await k.join()).toBe(0);
      expect(c[0]).toBe(40_000);
    }
  }, 40_000);

  it('a holder killed with SIGKILL: the next acquirer gets the lock with ownerDied', async () => {
    for (const lock of [new Lock(), new RLock()]) {
      const { ref, c } = sharedInts(1);
      const holder = start(fx.holdForever, lock, ref);
      await waitUntil(() => Atomics.load(c, 0) === 1);
      const file = out(`died-${lock.constructor.name}.json`);
      const waiter = start(fx.acquireAndReport, lock, file);
      // Let the waiter start waiting, and the parent too.
      await sleep(300);
      const mine = lock.acquire({ timeout: 10 });
      const killedAt = Date.now();
      process.kill(holder.pid!, 'SIGKILL');
      expect(await holder.join()).toBe(-9);
      // One of the two (waiter child, parent) takes it over first.
      const gotMine = await mine;
      expect(gotMine).toBe(true);
      const parentFirst = lock.ownerDied;
      const parentAt = Date.now();
      lock.release();
      expect(lock.ownerDied).toBe(false);
      expect(await waiter.join()).toBe(0);
      const report = readJson(file);
      expect(report.got).toBe(true);
      expect(report.ownerDied).toBe(!parentFirst);
      const firstAt = parentFirst ? parentAt : report.at;
      // The guarantee is 100 ms; the shared machine gets generous slack.
      expect(firstAt - killedAt).toBeLessThan(1000);
    }
  }, 30_000);
});

describe('RLock', () => {
  it('counts recursion and refuses release by a non-owner (another process)', async () => {
    const r = new RLock();
    expect(() => r.release()).toThrow(expect.objectContaining({ code: 'ERR_MP_LOCK_NOT_OWNED' }));
    r.acquireSync();
    expect(r.acquireSync({ blocking: false })).toBe(true);
    expect(r.count).toBe(2);
    const file = out('rlock-foreign.json');
    expect(await start(fx.releaseForeign, r, file).join()).toBe(0);
    expect(readJson(file)).toMatchObject({ threw: true, code: 'ERR_MP_LOCK_NOT_OWNED' });
    r.release();
    r.release();
    expect(r.locked()).toBe(false);
    // A Lock has no owner: another process may release it.
    const l = new Lock();
    l.acquireSync();
    expect(await start(fx.releaseLock, l).join()).toBe(0);
    expect(l.locked()).toBe(false);
  }, 20_000);

  it('Scenario 14: a child holds it twice; nobody else gets it until both releases', async () => {
    const r = new RLock();
    const { ref, c } = sharedInts(1);
    const child = start(fx.rlockTwice, r, ref, 400);
    await waitUntil(() => Atomics.load(c, 0) === 2);
    expect(r.acquireSync({ blocking: false })).toBe(false);
    await waitUntil(() => Atomics.load(c, 0) === 1);
    expect(r.acquireSync({ blocking: false })).toBe(false);
    expect(await r.acquire({ timeout: 5 })).toBe(true);
    expect(Atomics.load(c, 0)).toBe(0);
    r.release();
    expect(await child.join()).toBe(0);
  }, 20_000);
});

describe('Semaphore', () => {
  it('counts 2 -> 1 -> 0 across processes; BoundedSemaphore refuses over-release', async () => {
    const s = new Semaphore(2);
    expect(s.getValue()).toBe(2);
    expect(s.acquireSync()).toBe(true);
    expect(s.getValue()).toBe(1);
    const file = out('sem.json');
    expect(await start(fx.semaphoreTake, s, file).join()).toBe(0);
    expect(readJson(file)).toEqual({ before: 1, got: true, after: 0 });
    expect(s.getValue()).toBe(0);
    expect(s.acquireSync({ blocking: false })).toBe(false);
    const t0 = performance.now();
    expect(await s.acquire({ timeout: 0.2 })).toBe(false);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(190);
    s.release(2);
    expect(s.getValue()).toBe(2);

    const b = new BoundedSemaphore(2);
    b.acquireSync();
    b.release();
    expect(() => b.release()).toThrow(RangeError);
    expect(b.getValue()).toBe(2);
    const file2 = out('bsem.json');
    expect(await start(fx.semaphoreTake, b, file2).join()).toBe(0);
    expect(readJson(file2)).toEqual({ before: 2, got: true, after: 1 });
    b.release();
    expect(() => b.release()).toThrow(RangeError);
  }, 20_000);

  it('Scenario 10: Semaphore(2), eight children holding it 1 s: ~4 s, never more than two inside', async () => {
    const s = new Semaphore(2);
    const { ref, c } = sharedInts(2);
    const t0 = Date.now();
    const kids = Array.from({ length: 8 }, () => start(fx.holdSemaphore, s, ref, 1000));
    for (const k of kids) expect(await k.join()).toBe(0);
    const elapsed = Date.now() - t0;
    expect(c[1]).toBe(2);
    expect(c[0]).toBe(0);
    expect(elapsed).toBeGreaterThanOrEqual(3900);
    expect(elapsed).toBeLessThan(9000);
  }, 30_000);
});

describe('Event', () => {
  it('set/clear/isSet; wait({timeout: 0}) polls; waitSync times out', async () => {
    const e = new Event();
    expect(e.isSet()).toBe(false);
    expect(await e.wait({ timeout: 0 })).toBe(false);
    expect(e.waitSync({ timeout: 0 })).toBe(false);
    const t0 = performance.now();
    expect(e.waitSync({ timeout: 0.2 })).toBe(false);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(190);
    e.set();
    expect(e.isSet()).toBe(true);
    expect(await e.wait()).toBe(true);
    expect(e.waitSync()).toBe(true);
    e.clear();
    expect(e.isSet()).toBe(false);
  });

  it('an Event set from a child wakes wait() in the parent', async () => {
    const e = new Event();
    const child = start(fx.setEventLater, e, 300);
    const t0 = Date.now();
    expect(await e.wait({ timeout: 10 })).toBe(true);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(await child.join()).toBe(0);
  }, 20_000);

  it('Scenario 11: one waits forever, one for 2 s; set at 3 s', async () => {
    const e = new Event();
    const f1 = out('s11-a.json');
    const f2 = out('s11-b.json');
    const a = start(fx.waitEvent, e, null, f1);
    const b = start(fx.waitEvent, e, 2, f2);
    expect(await b.join()).toBe(0);
    const rb = readJson(f2);
    expect(rb.result).toBe(false);
    expect(rb.isSet).toBe(false);
    expect(rb.elapsed).toBeGreaterThanOrEqual(1950);
    expect(rb.elapsed).toBeLessThan(3000);
    await sleep(800);
    expect(a.isAlive()).toBe(true);
    e.set();
    expect(await a.join()).toBe(0);
    const ra = readJson(f1);
    expect(ra.result).toBe(true);
    expect(ra.isSet).toBe(true);
  }, 20_000);
});

describe('Condition', () => {
  it('notify(n) and notifyAll wake exact counts of waiting children, even after a timeout', async () => {
    const cond = new Condition();
    const ready = new Semaphore(0);
    const { ref, c } = sharedInts(2); // [notified, timed out]
    const kids = [
      start(fx.conditionWaiter, cond, ready, ref, null, false),
      start(fx.conditionWaiter, cond, ready, ref, null, true),
      start(fx.conditionWaiter, cond, ready, ref, null, false),
      start(fx.conditionWaiter, cond, ready, ref, null, true),
      start(fx.conditionWaiter, cond, ready, ref, 0.3, false), // times out
    ];
    for (let i = 0; i < kids.length; i++) expect(await ready.acquire({ timeout: 10 })).toBe(true);
    // Holding the lock proves every child is inside wait().
    await cond.acquire();
    cond.release();
    await waitUntil(() => Atomics.load(c, 1) === 1);
    await cond.withLock(() => cond.notify(2));
    await waitUntil(() => Atomics.load(c, 0) === 2);
    await sleep(300);
    expect(Atomics.load(c, 0)).toBe(2);
    await cond.withLock(() => cond.notify());
    await waitUntil(() => Atomics.load(c, 0) === 3);
    await sleep(200);
    expect(Atomics.load(c, 0)).toBe(3);
    await cond.withLock(() => cond.notifyAll());
    for (const k of kids) expect(await k.join()).toBe(0);
    expect([...c]).toEqual([4, 1]);
  }, 30_000);

  it('wait releases an RLock fully and restores its count; waitFor returns the last predicate value', async () => {
    const r = new RLock();
    const cond = new Condition(r);
    expect(() => cond.notify()).toThrow(expect.objectContaining({ code: 'ERR_MP_LOCK_NOT_OWNED' }));
    await expect(cond.wait()).rejects.toMatchObject({ code: 'ERR_MP_LOCK_NOT_OWNED' });
    r.acquireSync();
    r.acquireSync();
    expect(await cond.wait({ timeout: 0.1 })).toBe(false);
    expect(r.count).toBe(2);
    let n = 0;
    const t0 = performance.now();
    expect(await cond.waitFor(() => (++n > 100 ? 'yes' : 0), { timeout: 0.2 })).toBe(0);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(190);
    expect(await cond.waitFor(() => 'now')).toBe('now');
    expect(cond.waitForSync(() => false, { timeout: 0.05 })).toBe(false);
    r.release();
    r.release();
  });

  it('Scenario 12: a server waits while the list is empty; two adders notify', async () => {
    const cond = new Condition();
    const list = out('s12.list');
    const served = out('s12.json');
    fs.writeFileSync(list, '');
    const server = start(fx.serve, cond, list, served, 2);
    await sleep(300);
    const a = start(fx.addName, cond, list, 'alice');
    const b = start(fx.addName, cond, list, 'bob');
    expect(await a.join()).toBe(0);
    expect(await b.join()).toBe(0);
    expect(await server.join()).toBe(0);
    expect(readJson(served).sort()).toEqual(['alice', 'bob']);
  }, 20_000);
});

describe('Barrier', () => {
  it('Scenario 13: three children; none passes until all have arrived', async () => {
    const barrier = new Barrier(3);
    const files = [0, 1, 2].map((i) => out(`s13-${i}.json`));
    const kids = [0, 300, 600].map((d, i) => start(fx.barrierTimes, barrier, d, files[i]));
    for (const k of kids) expect(await k.join()).toBe(0);
    const r = files.map(readJson);
    const lastArrival = Math.max(...r.map((x) => x.arrived));
    for (const x of r) expect(x.passed).toBeGreaterThanOrEqual(lastArrival);
    expect(r.map((x) => x.index).sort()).toEqual([0, 1, 2]);
  }, 20_000);

  it('3 processes x 100 cycles: distinct indices per cycle; the action runs once per cycle', async () => {
    const log = out('barrier-action.log');
    fs.writeFileSync(log, '');
    process.env.PMP_BARRIER_LOG = log;
    const barrier = new Barrier(3, { action: fx.barrierAction });
    const files = [0, 1, 2].map((i) => out(`cycles-${i}.json`));
    const kids = files.map((f, i) => start(fx.barrierRounds, barrier, 100, f, i === 1));
    for (const k of kids) expect(await k.join()).toBe(0);
    const seen = files.map(readJson);
    for (let cycle = 0; cycle < 100; cycle++) {
      expect(seen.map((s) => s[cycle]).sort()).toEqual([0, 1, 2]);
    }
    const marks = fs.readFileSync(log, 'utf8').split('\n').filter(Boolean);
    expect(marks).toHaveLength(100);
    expect(barrier.nWaiting).toBe(0);
    expect(barrier.broken).toBe(false);
  }, 30_000);

  it('abort() breaks it for a waiting child; reset() re-arms it; a timeout breaks it', async () => {
    const barrier = new Barrier(2);
    expect(barrier.parties).toBe(2);
    const f1 = out('abort.json');
    const child = start(fx.barrierExpectBroken, barrier, f1);
    await waitUntil(() => barrier.nWaiting === 1);
    barrier.abort();
    expect(await child.join()).toBe(0);
    expect(readJson(f1)).toMatchObject({ broken: true, code: 'ERR_MP_BROKEN_BARRIER' });
    expect(barrier.broken).toBe(true);
    await expect(barrier.wait()).rejects.toBeInstanceOf(BrokenBarrierError);
    barrier.reset();
    expect(barrier.broken).toBe(false);
    const f2 = out('reset.json');
    const again = start(fx.barrierRounds, barrier, 1, f2, false);
    const mine = await barrier.wait({ timeout: 10 });
    expect(await again.join()).toBe(0);
    expect([mine, ...readJson(f2)].sort()).toEqual([0, 1]);

    // reset() while a child waits: the child gets BrokenBarrierError, the barrier stays usable.
    const f3 = out('reset-wait.json');
    const waiting = start(fx.barrierExpectBroken, barrier, f3);
    await waitUntil(() => barrier.nWaiting === 1);
    barrier.reset();
    expect(await waiting.join()).toBe(0);
    expect(readJson(f3)).toMatchObject({ broken: true });
    expect(barrier.broken).toBe(false);

    const t0 = performance.now();
    expect(() => barrier.waitSync({ timeout: 0.2 })).toThrow(BrokenBarrierError);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(190);
    expect(barrier.broken).toBe(true);
    barrier.reset();
  }, 20_000);
});

describe('named objects', () => {
  it('unrelated handles meet by name; mode 0600; kind mismatch fails clearly; unlink removes the name', async () => {
    const name = `t-${process.pid}-lock`;
    const lock = new Lock({ name });
    try {
      expect(fs.statSync(`/dev/shm/pmp-obj-${name}`).mode & 0o777).toBe(0o600);
      const { ref, c } = sharedInts(1);
      const kids = [0, 1].map(() => start(fx.namedLockIncrement, name, ref, 5000));
      for (const k of kids) expect(await k.join()).toBe(0);
      expect(c[0]).toBe(10_000);
      expect(() => new Semaphore(1, { name })).toThrow(expect.objectContaining({ code: 'ERR_MP_NAMED_OBJECT_MISMATCH' }));
      const again = new Lock({ name });
      again.acquireSync();
      expect(lock.locked()).toBe(true);
      again.release();
      again.close();
    } finally {
      lock.close();
      Lock.unlink(name);
    }
    expect(fs.existsSync(`/dev/shm/pmp-obj-${name}`)).toBe(false);

    const sname = `t-${process.pid}-sem`;
    const s1 = new BoundedSemaphore(3, { name: sname, mode: 0o640 });
    const s2 = new BoundedSemaphore(1, { name: sname }); // attaches: the creator's value stands
    expect(fs.statSync(`/dev/shm/pmp-obj-${sname}`).mode & 0o777).toBe(0o640);
    expect(s2.getValue()).toBe(3);
    s2.acquireSync();
    expect(s1.getValue()).toBe(2);
    s1.close();
    s2.close();
    BoundedSemaphore.unlink(sname);
  }, 20_000);
});

describe('AbortSignal', () => {
  it('aborts waiting Semaphore, Event, Condition and Barrier waits; a Condition gets its lock back first', async () => {
    const abortSoon = () => {
      const ac = new AbortController();
      setTimeout(() => ac.abort(new Error('stop')), 50);
      return ac.signal;
    };
    const s = new Semaphore(0);
    await expect(s.acquire({ signal: abortSoon() })).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR' });
    s.release();
    expect(await s.acquire({ timeout: 1 })).toBe(true);

    const e = new Event();
    await expect(e.wait({ signal: abortSoon() })).rejects.toMatchObject({ name: 'AbortError' });

    const cond = new Condition(new Lock());
    await cond.acquire();
    await expect(cond.wait({ signal: abortSoon() })).rejects.toMatchObject({ name: 'AbortError' });
    expect(cond.locked()).toBe(true);
    cond.release();

    const b = new Barrier(2);
    await expect(b.wait({ signal: abortSoon() })).rejects.toMatchObject({ name: 'AbortError' });
    expect(b.broken).toBe(true);
  });
});

describe('async waits that first watch their word from the event loop', () => {
  // A watch long enough that everything below happens during it, on any load.
  const saved = { ...asyncWaitSpinConfig };
  beforeAll(() => Object.assign(asyncWaitSpinConfig, { limitUs: 300_000, loadGuard: false }));
  afterAll(() => Object.assign(asyncWaitSpinConfig, saved));

  it('a change made by another process ends the wait, and the loop keeps running meanwhile', async () => {
    const e = new Event();
    const p = new Process({ target: fx.setEventLater, args: [e, 150] });
    p.start();
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    expect(await e.wait({ timeout: 20 })).toBe(true);
    clearInterval(timer);
    expect(ticks).toBeGreaterThanOrEqual(3);
    expect(await p.join()).toBe(0);
  }, 30_000);

  it('a timeout shorter than the watch ends it on time', async () => {
    const e = new Event();
    const s = new Semaphore(0);
    const lock = new Lock();
    lock.acquireSync();
    for (const wait of [() => e.wait(0.05), () => s.acquire({ timeout: 0.05 }), () => lock.acquire({ timeout: 0.05 })]) {
      const t0 = performance.now();
      expect(await wait()).toBe(false);
      const took = performance.now() - t0;
      expect(took).toBeGreaterThanOrEqual(45);
      expect(took).toBeLessThan(2000);
    }
    lock.release();
  });

  it('an abort during the watch rejects at once and leaves no waiter behind', async () => {
    const abortNext = () => {
      const ac = new AbortController();
      setImmediate(() => ac.abort(new Error('stop')));
      return ac.signal;
    };
    const took = async (p: Promise<unknown>) => {
      const t0 = performance.now();
      await expect(p).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR' });
      return performance.now() - t0;
    };
    const s = new Semaphore(0);
    expect(await took(s.acquire({ signal: abortNext() }))).toBeLessThan(250);
    s.release();
    expect(s.acquireSync({ timeout: 0 })).toBe(true);
    const e = new Event();
    expect(await took(e.wait({ signal: abortNext() }))).toBeLessThan(250);
    const lock = new Lock();
    lock.acquireSync();
    expect(await took(lock.acquire({ signal: abortNext() }))).toBeLessThan(250);
    lock.release();
    expect(lock.acquireSync({ timeout: 0 })).toBe(true);
    lock.release();
    const cond = new Condition(new Lock());
    await cond.acquire();
    expect(await took(cond.wait({ signal: abortNext() }))).toBeLessThan(250);
    expect(cond.locked()).toBe(true);
    cond.release();
  });
});

describe('event loop', () => {
  it('stays responsive while 10 acquire() calls wait', async () => {
    const lock = new Lock();
    lock.acquireSync();
    const waits = Array.from({ length: 10 }, () => lock.acquire({ timeout: 0.6 }));
    let ticks = 0;
    const timer = setInterval(() => ticks++, 50);
    const results = await Promise.all(waits);
    clearInterval(timer);
    expect(results.every((r) => r === false)).toBe(true);
    expect(ticks).toBeGreaterThanOrEqual(7);
    lock.release();
  });

  it('an async acquire spins with the loop held only while it is the only async wait pending', () => {
    // A 50 ms spin cap makes the hold measurable (fixtures/programs/loop-hold.mjs).
    const script = path.join(__dirname, 'fixtures', 'programs', 'loop-hold.mjs');
    const env = { ...process.env, PMP_SPIN_US: '50000' };
    const ms = JSON.parse(execFileSync(process.execPath, [script], { encoding: 'utf8', env, timeout: 30_000 }));
    // Alone, it spins (the cap, less the machine's noise)...
    expect(ms.alone).toBeGreaterThanOrEqual(40);
    // ...with another acquire or a recv() pending, it goes to sleep at once.
    expect(ms.withAcquire).toBeLessThan(25);
    expect(ms.semaphore).toBeLessThan(25);
    expect(ms.withRecv).toBeLessThan(25);
  });

  it('100 concurrent async waiters do not starve fs calls', async () => {
    const e = new Event();
    const waits = Array.from({ length: 100 }, () => e.wait({ timeout: 20 }));
    await sleep(100);
    const t0 = performance.now();
    for (let i = 0; i < 20; i++) await fs.promises.readFile(__filename);
    expect(performance.now() - t0).toBeLessThan(2000);
    e.set();
    expect((await Promise.all(waits)).every(Boolean)).toBe(true);
  });
});

describe('the lock word: pid | WAITERS', () => {
  const WAITERS = 0x40000000;
  /** The lock's own words, as every process maps them. */
  const wordsOf = (lock: Lock | RLock) => {
    const ref = lock.ref();
    const block = heap().attach(ref);
    return new Int32Array(block.buffer, block.offset, 4);
  };
  const pidOfExited = async () => {
    const p = start(targets.noop);
    await p.join();
    return p.pid!;
  };

  it('uncontended: the word is the pid alone; a parked acquire() sets WAITERS and the release wakes it', async () => {
    const lock = new Lock();
    const word = wordsOf(lock);
    lock.acquireSync();
    expect(word[0]).toBe(process.pid);
    // The holder is this process, so the waiter sleeps without the 50 ms
    // owner-death poll: a lost wake-up would hang here.
    const p = lock.acquire();
    await waitUntil(() => word[0] === (process.pid | WAITERS));
    await sleep(50);
    const t0 = performance.now();
    lock.release();
    expect(await p).toBe(true);
    expect(performance.now() - t0).toBeLessThan(2000);
    // A waiter that slept takes the lock with WAITERS (others may sleep too).
    expect(word[0]).toBe(process.pid | WAITERS);
    lock.release();
    expect(word[0]).toBe(0);
    expect(lock.acquireSync({ blocking: false })).toBe(true);
    expect(word[0]).toBe(process.pid);
    lock.release();
  });

  it('a worker thread asleep in acquireSync() is woken by the release', async () => {
    const { Worker } = await import('node:worker_threads');
    const name = `t-${process.pid}-wakebit`;
    const lock = new Lock({ name });
    const entry = path.resolve('dist/cjs/index.js');
    const code = `
      const { workerData, parentPort } = require('node:worker_threads');
      const { Lock } = require(${JSON.stringify(entry)});
      const lock = new Lock({ name: workerData.name });
      parentPort.postMessage('waiting');
      const got = lock.acquireSync();
      lock.release();
      parentPort.postMessage(got);
      lock.close();
    `;
    try {
      lock.acquireSync();
      const w = new Worker(code, { eval: true, workerData: { name } });
      const msgs: unknown[] = [];
      w.on('message', (m) => msgs.push(m));
      const exited = new Promise((r) => w.on('exit', r));
      await waitUntil(() => msgs.length > 0);
      // Give the worker time to spin out and sleep in the kernel.
      await sleep(200);
      lock.release();
      await exited;
      expect(msgs).toEqual(['waiting', true]);
    } finally {
      lock.close();
      Lock.unlink(name);
    }
  }, 20_000);

  it('owner death: takes the lock over from a dead pid, with or without WAITERS, sync, async and try', async () => {
    const dead = await pidOfExited();
    for (const make of [() => new Lock(), () => new RLock()]) {
      for (const how of ['sync', 'async', 'try'] as const) {
        for (const bit of [0, WAITERS]) {
          const lock = make();
          const word = wordsOf(lock);
          word[0] = dead | bit;
          const got =
            how === 'sync'
              ? lock.acquireSync({ timeout: 5 })
              : how === 'async'
                ? await lock.acquire({ timeout: 5 })
                : lock.acquireSync({ blocking: false });
          expect(got).toBe(true);
          expect(lock.ownerDied).toBe(true);
          // A waiter takes over as pid|WAITERS; a try keeps the bit it found.
          expect(word[0]).toBe(process.pid | (how === 'try' ? bit : WAITERS));
          expect(lock.locked()).toBe(true);
          lock.release();
          expect(lock.ownerDied).toBe(false);
          expect(word[0]).toBe(0);
        }
      }
    }
  });

  it('a woken waiter that then times out hands its wake-up on', async () => {
    const lock = new Lock();
    const word = wordsOf(lock);
    lock.acquireSync();
    // x parks first (the kernel wakes in FIFO order), then y, without limit.
    const x = lock.acquire({ timeout: 0.3 });
    await sleep(100);
    const y = lock.acquire();
    await sleep(100);
    // The release wakes x; before x runs, this thread takes the lock again
    // (as the pid alone: WAITERS is gone) and holds it past x's deadline.
    lock.release();
    expect(lock.acquireSync({ blocking: false })).toBe(true);
    expect(word[0]).toBe(process.pid);
    const end = performance.now() + 400;
    while (performance.now() < end);
    expect(await x).toBe(false);
    // x left without the lock: it must have put WAITERS back, or this release
    // would not wake y, which (the holder being this process) never polls.
    expect(word[0]).toBe(process.pid | WAITERS);
    lock.release();
    const got = await Promise.race([y, sleep(3000).then(() => 'stuck')]);
    expect(got).toBe(true);
    lock.release();
  });

  it('fairness: a sleeper gets the lock while another thread re-acquires it in a tight loop', async () => {
    const { Worker } = await import('node:worker_threads');
    const name = `t-${process.pid}-fair`;
    const lock = new Lock({ name });
    const sab = new SharedArrayBuffer(16);
    const c = new Int32Array(sab); // [loop iterations, loop finished]
    const entry = path.resolve('dist/cjs/index.js');
    const code = `
      const { workerData, parentPort } = require('node:worker_threads');
      const { Lock } = require(${JSON.stringify(entry)});
      const lock = new Lock({ name: workerData.name });
      const c = new Int32Array(workerData.sab);
      if (workerData.role === 'looper') {
        const end = performance.now() + 3000;
        for (let i = 0; ; i++) {
          lock.acquireSync(); c[0]++; lock.release();
          if ((i & 1023) === 0 && performance.now() > end) break;
        }
        Atomics.store(c, 1, 1);
      } else {
        while (Atomics.load(c, 0) < 100000);
        const t0 = performance.now();
        lock.acquireSync();
        const waited = performance.now() - t0;
        const loopDone = Atomics.load(c, 1) === 1;
        lock.release();
        parentPort.postMessage({ waited, loopDone });
      }
      lock.close();
    `;
    const run = (role: string) =>
      new Promise<any>((resolve, reject) => {
        const w = new Worker(code, { eval: true, workerData: { name, sab, role } });
        let msg: unknown;
        w.on('message', (m) => (msg = m));
        w.on('error', reject);
        w.on('exit', () => resolve(msg));
      });
    try {
      const [, result] = await Promise.all([run('looper'), run('sleeper')]);
      // Without the STARVING mark an idle machine could keep the sleeper out
      // for the whole 3 s loop. (On a loaded one the looper's preemptions let
      // it in anyway: there this checks liveness, not the mark itself.)
      expect(result.loopDone).toBe(false);
      expect(result.waited).toBeLessThan(1500);
    } finally {
      lock.close();
      Lock.unlink(name);
    }
  }, 30_000);

  it('worker threads: timed-out waiters, sleepers and a barger; every unbounded waiter gets through', async () => {
    // All in one process, so no waiter falls back on the owner-death poll: a
    // wake-up taken by a waiter that then timed out, and not handed on, would
    // leave an unbounded waiter asleep for good.
    const { Worker } = await import('node:worker_threads');
    const name = `t-${process.pid}-passon`;
    const lock = new Lock({ name });
    const sab = new SharedArrayBuffer(8);
    const counter = new Int32Array(sab);
    const entry = path.resolve('dist/cjs/index.js');
    const code = `
      const { workerData } = require('node:worker_threads');
      const { Lock } = require(${JSON.stringify(entry)});
      const lock = new Lock({ name: workerData.name });
      const c = new Int32Array(workerData.sab);
      const spin = (us) => { const end = performance.now() + us / 1000; while (performance.now() < end); };
      for (let i = 0; i < workerData.n; i++) {
        if (workerData.role === 'timeout') {
          if (lock.acquireSync({ timeout: 0.0005 + Math.random() * 0.002 })) { spin(50); lock.release(); }
        } else {
          lock.acquireSync();
          c[0]++;
          spin(workerData.role === 'barger' ? 5 : 100);
          lock.release();
        }
      }
      lock.close();
    `;
    const roles = [
      ['timeout', 300],
      ['timeout', 300],
      ['sleeper', 300],
      ['sleeper', 300],
      ['barger', 3000],
    ] as const;
    try {
      await Promise.all(
        roles.map(
          ([role, n]) =>
            new Promise<void>((resolve, reject) => {
              const w = new Worker(code, { eval: true, workerData: { name, sab, role, n } });
              w.on('error', reject);
              w.on('exit', () => resolve());
            }),
        ),
      );
      expect(counter[0]).toBe(3600);
      expect(lock.locked()).toBe(false);
    } finally {
      lock.close();
      Lock.unlink(name);
    }
  }, 60_000);
});

describe('worker threads', () => {
  it('a named Lock and RLock work between worker threads (RLock ownership is per thread)', async () => {
    const { Worker } = await import('node:worker_threads');
    const name = `t-${process.pid}-wlock`;
    const rname = `t-${process.pid}-wrlock`;
    const lock = new Lock({ name });
    const rlock = new RLock({ name: rname });
    const sab = new SharedArrayBuffer(4);
    const counter = new Int32Array(sab);
    const entry = path.resolve('dist/cjs/index.js');
    const code = `
      const { workerData, parentPort } = require('node:worker_threads');
      const { Lock, RLock } = require(${JSON.stringify(entry)});
      const lock = new Lock({ name: workerData.name });
      const rlock = new RLock({ name: workerData.rname });
      const c = new Int32Array(workerData.sab);
      for (let i = 0; i < 10000; i++) { lock.acquireSync(); const v = c[0]; c[0] = v + 1; lock.release(); }
      let code = null;
      try { rlock.release(); } catch (e) { code = e.code; }
      parentPort.postMessage({ code, tried: rlock.acquireSync({ blocking: false }) });
      lock.close(); rlock.close();
    `;
    try {
      rlock.acquireSync();
      const results = await Promise.all(
        [0, 1].map(
          () =>
            new Promise<any>((resolve, reject) => {
              const w = new Worker(code, { eval: true, workerData: { name, rname, sab } });
              let msg: unknown;
              w.on('message', (m) => (msg = m));
              w.on('error', reject);
              w.on('exit', () => resolve(msg));
            }),
        ),
      );
      expect(counter[0]).toBe(20_000);
      for (const r of results) expect(r).toEqual({ code: 'ERR_MP_LOCK_NOT_OWNED', tried: false });
      rlock.release();
    } finally {
      lock.close();
      rlock.close();
      Lock.unlink(name);
      RLock.unlink(rname);
    }
  }, 20_000);
});

describe('unrelated processes', () => {
  it('a process started outside the package attaches by name and sees the same Semaphore and Event', async () => {
    const { execFile } = await import('node:child_process');
    const sname = `t-${process.pid}-usem`;
    const ename = `t-${process.pid}-uevt`;
    const sem = new Semaphore(5, { name: sname });
    const evt = new Event({ name: ename });
    const entry = path.resolve('dist/cjs/index.js');
    const code = `
      const { Semaphore, Event } = require(${JSON.stringify(entry)});
      const s = new Semaphore(1, { name: ${JSON.stringify(sname)} });
      const e = new Event({ name: ${JSON.stringify(ename)} });
      s.acquireSync(); s.acquireSync();
      e.set();
      console.log(s.getValue());
    `;
    try {
      const waiting = evt.wait({ timeout: 20 });
      const stdout = await new Promise<string>((resolve, reject) =>
        execFile(process.execPath, ['-e', code], (err, so) => (err ? reject(err) : resolve(so))),
      );
      expect(await waiting).toBe(true);
      expect(stdout.trim()).toBe('3');
      expect(sem.getValue()).toBe(3);
    } finally {
      sem.close();
      evt.close();
      Semaphore.unlink(sname);
      Event.unlink(ename);
    }
  }, 20_000);
});

describe('teardown', () => {
  it('terminating worker threads with async waits pending does not crash the process', async () => {
    const { execFile } = await import('node:child_process');
    const entry = path.resolve('dist/cjs/index.js');
    const worker = `
      const { Event, Semaphore } = require(${JSON.stringify(entry)});
      // Named: a terminated worker's own heap segments are not unlinked (the
      // heap's exit hook does not run on terminate()), which is not under test here.
      const e = new Event({ name: ${JSON.stringify(`t-${process.pid}-tde`)} }); e.wait(); e.wait({ timeout: 0.1 });
      const s = new Semaphore(0, { name: ${JSON.stringify(`t-${process.pid}-tds`)} }); s.acquire(); s.acquire({ timeout: 0.1 });
      // Waits ending every millisecond on the addon's threads: one is always on
      // its way back to the worker as it is terminated. Its callback then fails
      // (the environment can not run JS any more), which used to abort the
      // whole process from the thread-safe function's dispatcher.
      const tick = () => e.wait({ timeout: 0.001 }).then(tick, tick);
      for (let k = 0; k < 20; k++) tick();
      setTimeout(() => require('node:worker_threads').parentPort.postMessage('waiting'), 20);
    `;
    const main = terminateWorkersProgram(worker);
    const result = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
      const child = execFile(process.execPath, ['-e', main], (err, stdout) =>
        resolve({ code: err ? ((err as any).code ?? -1) : 0, stdout }),
      );
      void child;
    });
    Event.unlink(`t-${process.pid}-tde`);
    Semaphore.unlink(`t-${process.pid}-tds`);
    expect(result).toEqual({ code: 0, stdout: 'done\n' });
  }, 30_000);
});

describe('API edges', () => {
  it("acquire({ blocking: false }) is a try-acquire, as Python's acquire(blocking=False)", async () => {
    const lock = new Lock();
    const sem = new Semaphore(0);
    try {
      expect(lock.acquireSync()).toBe(true);
      expect(await lock.acquire({ blocking: false })).toBe(false);
      expect(await sem.acquire({ blocking: false })).toBe(false);
      lock.release();
      expect(await lock.acquire({ blocking: false })).toBe(true);
      lock.release();
      await expect(lock.acquire({ blocking: 'no' as never })).rejects.toBeInstanceOf(TypeError);
    } finally {
      lock.close();
      sem.close();
    }
  });

  it('a closed Condition refuses its lock methods too; new Condition({ name }) names it', async () => {
    const c = new Condition();
    c.close();
    expect(() => c.acquireSync()).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    expect(() => c.release()).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    await expect(c.acquire()).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    await expect(c.waitFor(() => true)).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    const name = `pmp_test_cond_${process.pid}`;
    const named = new Condition({ name });
    try {
      expect(named.acquireSync()).toBe(true);
      named.release();
    } finally {
      named.close();
      Condition.unlink(name);
    }
  });
});
