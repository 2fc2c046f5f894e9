// Managers (SCENARIOS 20, 21): every proxy method, proxies shared by real
// children (counts that must come out exact), proxies travelling through a
// Queue, a Pipe and a Pool task, blocking calls with timeouts, shutdown, the
// server's death with its owner, a program that forgets shutdown(), and the
// authenticated TCP server.
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify, types } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  AuthenticationError,
  Manager,
  Pipe,
  Pool,
  Process,
  Queue,
  QueueEmptyError,
  QueueFullError,
  TimeoutError,
} from 'posix-multiprocessing';
import * as fx from './fixtures/manager.mjs';
import { childPids, isRunning } from './support/proc';

const run = promisify(execFile);
const seconds = (since: number) => (performance.now() - since) / 1000;

async function waitUntil(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function startAll(ps: Process[]): Promise<number[]> {
  for (const p of ps) p.start();
  return Promise.all(ps.map((p) => p.join(30) as Promise<number>));
}

let m: Manager;
beforeAll(async () => {
  m = await Manager.start();
});
afterAll(async () => {
  await m?.shutdown();
});

describe('proxies', () => {
  it('dict: every method, with values of several kinds', async () => {
    const d = await m.dict<unknown, unknown>({ a: 1 });
    const when = new Date(1_700_000_000_000);
    const nested = { list: [1, { deep: new Set(['x']) }], big: 2n ** 70n };
    await d.set('map', new Map<unknown, unknown>([[1, 'one'], ['k', when]]));
    await d.set('date', when);
    await d.set(7, nested);
    await d.set(5n, 'bigint key');
    expect(await d.get('a')).toBe(1);
    expect(await d.get('map')).toEqual(new Map<unknown, unknown>([[1, 'one'], ['k', when]]));
    expect(await d.get('date')).toEqual(when);
    expect(await d.get(7)).toEqual(nested);
    expect(await d.get(5n)).toBe('bigint key');
    // Structured clone keeps an array's extra properties, and Errors stay Errors (issue #12 item 12).
    const other = await m.dict<string, unknown>();
    await other.set('extra', Object.assign([1, 2], { extra: 'x' }));
    expect(await other.get('extra')).toEqual(Object.assign([1, 2], { extra: 'x' }));
    await other.set('err', Object.assign(new TypeError('bad'), { code: 'E_BAD' }));
    const err = (await other.get('err')) as TypeError & { code: string };
    expect(types.isNativeError(err)).toBe(true);
    expect(err).toBeInstanceOf(TypeError);
    expect(err.code).toBe('E_BAD');
    expect(await d.get('missing')).toBeUndefined();
    expect(await d.has('date')).toBe(true);
    expect(await d.has('missing')).toBe(false);
    expect(await d.size()).toBe(5);
    expect(await d.keys()).toEqual(['a', 'map', 'date', 7, 5n]);
    expect((await d.values())[2]).toEqual(when);
    expect((await d.entries())[0]).toEqual(['a', 1]);
    expect(await d.delete('a')).toBe(true);
    expect(await d.delete('a')).toBe(false);
    const obj = await d.toObject();
    expect(Object.keys(obj).sort()).toEqual(['5', '7', 'date', 'map']);
    expect(obj['7']).toEqual(nested);
    // Object keys would be new objects on the server each time: refused.
    await expect(d.get({} as unknown)).rejects.toThrow(TypeError);
    await expect(d.set(['k'] as unknown, 1)).rejects.toThrow(/key must be/);
    await expect(m.dict(42 as any)).rejects.toThrow(TypeError);
    const fromMap = await m.dict(new Map([[1, 'x']]));
    expect(await fromMap.entries()).toEqual([[1, 'x']]);
  });

  it('list: every method, negative indices, RangeError past the end', async () => {
    const l = await m.list<unknown>([1, 'two']);
    await l.append(new Map([['k', 3n]]));
    await l.extend([new Date(0), { n: [4] }]);
    await l.extend(new Set([6]));
    expect(await l.length()).toBe(6);
    expect(await l.get(0)).toBe(1);
    expect(await l.get(-1)).toBe(6);
    expect(await l.get(2)).toEqual(new Map([['k', 3n]]));
    await l.set(1, 'TWO');
    await l.set(-2, { n: [5] });
    expect(await l.pop()).toBe(6);
    expect(await l.pop(0)).toBe(1);
    expect(await l.toArray()).toEqual(['TWO', new Map([['k', 3n]]), new Date(0), { n: [5] }]);
    await expect(l.get(4)).rejects.toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
    await expect(l.set(-5, 0)).rejects.toThrow(RangeError);
    await expect(l.get(1.5)).rejects.toThrow(/index must be an integer/);
    await expect(l.extend(3 as any)).rejects.toThrow(/items must be/);
    const empty = await m.list();
    await expect(empty.pop()).rejects.toThrow(RangeError);
  });

  it('Namespace and Value: get/set, typed values, bad types', async () => {
    const ns = await m.Namespace({ x: 1 });
    await ns.set('when', new Date(5));
    await ns.set('nested', { a: [1, 2n] });
    expect(await ns.get('x')).toBe(1);
    expect(await ns.get('when')).toEqual(new Date(5));
    expect(await ns.get('nested')).toEqual({ a: [1, 2n] });
    expect(await ns.get('unset')).toBeUndefined();
    expect(await ns.toObject()).toEqual({ x: 1, when: new Date(5), nested: { a: [1, 2n] } });
    await expect(ns.get(1 as any)).rejects.toThrow(TypeError);

    const i = await m.Value('i', 3);
    expect(await i.get()).toBe(3);
    await i.set(42);
    expect(await i.get()).toBe(42);
    const d = await m.Value('d');
    expect(await d.get()).toBe(0);
    await d.set(1.5);
    expect(await d.get()).toBe(1.5);
    const q = await m.Value('int64', 2n ** 40n);
    expect(await q.get()).toBe(2n ** 40n);
    await q.set(7n);
    expect(await q.get()).toBe(7n);
    await expect(i.set('x' as any)).rejects.toThrow(TypeError);
    await expect(m.Value('zz' as any, 0)).rejects.toThrow(RangeError);
    await expect(m.Value('i', 'x' as any)).rejects.toThrow(TypeError);
  });

  it('Queue: FIFO, nowait errors, blocking get with timeout, a put that waits for room', async () => {
    const q = await m.Queue<unknown>(2);
    expect(await q.empty()).toBe(true);
    await q.put(new Map([[1, 2]]));
    await q.put(10n);
    expect(await q.full()).toBe(true);
    expect(await q.qsize()).toBe(2);
    await expect(q.putNowait('x')).rejects.toBeInstanceOf(QueueFullError);
    let t = performance.now();
    await expect(q.put('x', { timeout: 0.3 })).rejects.toBeInstanceOf(QueueFullError);
    expect(seconds(t)).toBeGreaterThan(0.25);
    await expect(q.put('x', { block: false })).rejects.toBeInstanceOf(QueueFullError);
    expect(await q.get()).toEqual(new Map([[1, 2]]));
    expect(await q.getNowait()).toBe(10n);
    await expect(q.getNowait()).rejects.toBeInstanceOf(QueueEmptyError);

    t = performance.now();
    await expect(q.get({ timeout: 0.5 })).rejects.toBeInstanceOf(QueueEmptyError);
    expect(seconds(t)).toBeGreaterThan(0.45);
    expect(seconds(t)).toBeLessThan(3);

    // A get parked on the server is served by a later put; a timeout longer
    // than setTimeout's limit (24.8 days) is a long wait, not an instant one.
    const waiting = q.get({ timeout: 30 * 86_400 });
    await sleep(50);
    await q.put('late');
    expect(await waiting).toBe('late');

    // A put parked on a full queue moves in when room appears.
    await q.put(1);
    await q.put(2);
    const parked = q.put(3, { timeout: 10 });
    expect(await q.get()).toBe(1);
    await parked;
    expect([await q.get(), await q.get()]).toEqual([2, 3]);

    // close() ends this handle only.
    const holder = await m.dict<string, typeof q>();
    await holder.set('q', q);
    const again = (await holder.get('q'))!;
    await q.close();
    await q.close();
    await expect(q.qsize()).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    await again.put('still served');
    expect(await again.get()).toBe('still served');
  });

  it('Queue: an aborted get rejects with AbortError and loses no item', async () => {
    const q = await m.Queue();
    const ac = new AbortController();
    const got = q.get({ signal: ac.signal });
    setTimeout(() => ac.abort(new Error('stop')), 50);
    await expect(got).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR' });
    await q.put('kept');
    expect(await q.getNowait()).toBe('kept');
    await expect(q.get({ signal: AbortSignal.abort() })).rejects.toMatchObject({ name: 'AbortError' });
    await expect(q.get({ timeout: -1 })).rejects.toThrow(RangeError);
    await expect(q.put(1, { block: 'no' as any })).rejects.toThrow(TypeError);
  });

  it('Lock: acquire, locked, timeout resolves false, release, withLock', async () => {
    const lock = await m.Lock();
    expect(await lock.locked()).toBe(false);
    expect(await lock.acquire()).toBe(true);
    expect(await lock.locked()).toBe(true);
    const t = performance.now();
    expect(await lock.acquire({ timeout: 0.4 })).toBe(false);
    expect(seconds(t)).toBeGreaterThan(0.35);
    expect(seconds(t)).toBeLessThan(3);
    expect(await lock.acquire({ blocking: false })).toBe(false);
    // A waiter gets the lock when it is released.
    const next = lock.acquire({ timeout: 10 });
    await sleep(30);
    await lock.release();
    expect(await next).toBe(true);
    await lock.release();
    await expect(lock.release()).rejects.toMatchObject({ code: 'ERR_MP_LOCK_NOT_HELD' });
    expect(await lock.withLock(async () => lock.locked())).toBe(true);
    expect(await lock.locked()).toBe(false);
    await expect(lock.withLock(() => Promise.reject(new Error('inside')))).rejects.toThrow('inside');
    expect(await lock.locked()).toBe(false);
    await expect(lock.acquire({ timeout: 'x' as any })).rejects.toThrow(TypeError);
  });

  it('Lock: a holder process that exits passes the lock on, and the next acquirer is told', async () => {
    const lock = await m.Lock();
    const p = new Process({ target: fx.acquireAndLeave, args: [lock] });
    expect(await startAll([p])).toEqual([0]);
    expect(await lock.acquire({ timeout: 10 })).toBe(true);
    expect(lock.ownerDied).toBe(true);
    await lock.release();
    expect(lock.ownerDied).toBe(false);
  });

  it("a killed client's parked get and acquire are dropped: they take nothing", async () => {
    const ready = await m.Queue();
    const q = await m.Queue();
    const lock = await m.Lock();
    await lock.acquire();
    const p = new Process({ target: fx.parkAndWait, args: [ready, q, lock] });
    p.start();
    expect(await ready.get({ timeout: 20 })).toBe('parked');
    p.kill();
    expect(await p.join(10)).toBe(-9);
    // The server drops the dead client's waits when it reads the connection's
    // end; give it that long (a put before then would be answered to the dead).
    await sleep(500);
    await q.put('item');
    expect(await q.getNowait()).toBe('item');
    await lock.release();
    expect(await lock.locked()).toBe(false);
    expect(await lock.acquire({ blocking: false })).toBe(true);
    expect(lock.ownerDied).toBe(false);
    await lock.release();
  }, 30_000);
});

describe('proxies shared by processes', () => {
  it('scenario 21: 4 children x 100 appends give exactly 400; a counter under a manager Lock is exact', async () => {
    const list = await m.list<string>();
    const dict = await m.dict<string, number>();
    const lock = await m.Lock();
    const appenders = [0, 1, 2, 3].map((k) => new Process({ target: fx.appendMany, args: [list, 100, `p${k}`] }));
    const counters = [0, 1, 2, 3].map(() => new Process({ target: fx.countUnderLock, args: [dict, lock, 'n', 25] }));
    expect(await startAll([...appenders, ...counters])).toEqual(Array(8).fill(0));
    const items = await list.toArray();
    expect(items).toHaveLength(400);
    // Every child's appends arrive, in its own order.
    for (let k = 0; k < 4; k++) {
      expect(items.filter((s) => s.startsWith(`p${k}:`))).toEqual(Array.from({ length: 100 }, (_, i) => `p${k}:${i}`));
    }
    expect(await dict.get('n')).toBe(100);
  }, 30_000);

  it('calls a process makes at once are handled in the order it made them', async () => {
    const list = await m.list<number>();
    expect(await startAll([new Process({ target: fx.appendBurst, args: [list, 50] })])).toEqual([0]);
    expect(await list.toArray()).toEqual(Array.from({ length: 50 }, (_, i) => i));
  });

  it('a proxy put on a Queue, sent over a Pipe, and passed to a Pool task arrives working', async () => {
    const dict = await m.dict();
    const queue = new Queue();
    const viaQueue = new Process({ target: fx.proxyFromQueue, args: [queue] });
    viaQueue.start();
    await queue.put(dict);

    const list = await m.list();
    const [here, there] = Pipe();
    const viaPipe = new Process({ target: fx.proxyFromPipe, args: [there] });
    viaPipe.start();
    there.close();
    here.send(list);
    expect(await here.recv()).toBe(1);
    here.close();

    expect(await Promise.all([viaQueue.join(30), viaPipe.join(30)])).toEqual([0, 0]);
    queue.close();
    expect(await dict.get('from')).toBe('queue');
    expect(await dict.get('pid')).toBe(viaQueue.pid);
    expect(await list.toArray()).toEqual(['pipe']);

    const pool = new Pool({ processes: 2 });
    try {
      const pids = await pool.starmap(fx.poolAppend, [[list, 'a'], [list, 'b'], [list, 'c']]);
      expect(pids.every((pid) => typeof pid === 'number')).toBe(true);
      expect((await list.toArray()).sort()).toEqual(['a', 'b', 'c', 'pipe']);
      // Scenario 20: a writer task, then a reader task, on a manager queue.
      const q = await m.Queue<string>();
      await pool.apply(fx.queueWriter, [q, 'itcast']);
      expect(await pool.apply(fx.queueReader, [q, 6])).toBe('itcast');
    } finally {
      pool.close();
      await pool.join();
    }
  }, 30_000);
});

describe('lifetime', () => {
  it('shutdown() stops and reaps the server; later calls reject with ERR_MP_CLOSED', async () => {
    const own = await Manager.start();
    const pid = own.pid!;
    expect(isRunning(pid)).toBe(true);
    const d = await own.dict();
    const q = await own.Queue();
    const pending = q.get().catch((err: unknown) => err);
    await d.set('k', 1);
    await own.shutdown();
    expect(await pending).toMatchObject({ code: 'ERR_MP_CLOSED' });
    await expect(d.get('k')).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    await expect(own.list()).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    await own.shutdown(); // twice: a no-op
    expect(isRunning(pid)).toBe(false);
    expect(childPids()).not.toContain(pid);
    expect(fs.existsSync(path.dirname((own.address as { path: string }).path))).toBe(false);
  });

  it('[Symbol.asyncDispose] shuts the manager down', async () => {
    const own = await Manager.start();
    const pid = own.pid!;
    expect(await (await own.Value('i', 1)).get()).toBe(1);
    await own[Symbol.asyncDispose]();
    expect(isRunning(pid)).toBe(false);
  });

  for (const signal of ['SIGINT', 'SIGTERM', 'SIGKILL'] as const) {
    it(`an owner ended by ${signal}: its server exits and its socket directory is removed`, async () => {
      const [here, there] = Pipe(false);
      const owner = new Process({ target: fx.startAndIdle, args: [there] });
      owner.start();
      there.close();
      const { server, socket } = (await here.recv()) as { server: number; socket: string };
      here.close();
      expect(isRunning(server)).toBe(true);
      expect(fs.existsSync(socket)).toBe(true);
      process.kill(owner.pid!, signal);
      expect(await owner.join(10)).toBe(-os.constants.signals[signal]);
      await waitUntil(() => !isRunning(server), 5000, 'the manager server to exit');
      await waitUntil(() => !fs.existsSync(path.dirname(socket)), 5000, 'the socket directory to be removed');
    }, 20_000);
  }

  it('a server that dies while its owner lives on: the owner removes the socket directory', async () => {
    const own = await Manager.start();
    const dir = path.dirname((own.address as { path: string }).path);
    expect(fs.existsSync(dir)).toBe(true);
    process.kill(own.pid!, 'SIGKILL');
    await waitUntil(() => !fs.existsSync(dir), 5000, 'the socket directory to be removed');
    await expect(own.dict()).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    await own.shutdown();
  }, 20_000);

  it('a program that never calls shutdown() exits by itself, and its server with it', async () => {
    const program = path.join(__dirname, 'fixtures', 'programs', 'manager-forget.mjs');
    const t = performance.now();
    const { stdout } = await run(process.execPath, [program], { timeout: 20_000 });
    expect(seconds(t)).toBeLessThan(15);
    const out = JSON.parse(stdout) as { server: number; socket: string; items: string[] };
    expect(out.items).toEqual(['c:0', 'c:1', 'c:2']);
    await waitUntil(() => !isRunning(out.server), 5000, 'the forgotten server to exit');
    expect(fs.existsSync(path.dirname(out.socket))).toBe(false);
  }, 30_000);
});

describe('over the network', () => {
  it('serve/connect on 127.0.0.1 port 0; a wrong authkey fails and the server keeps serving', async () => {
    const srv = await Manager.serve({ host: '127.0.0.1', port: 0, authkey: 'sesame' });
    try {
      const { host, port } = srv.address;
      expect(host).toBe('127.0.0.1');
      expect(port).toBeGreaterThan(0);
      await expect(Manager.connect({ host, port, authkey: 'wrong' })).rejects.toBeInstanceOf(AuthenticationError);
      await expect(Manager.connect({ host, port, authkey: Buffer.from('wrong') })).rejects.toMatchObject({ code: 'ERR_MP_AUTH' });
      const remote = await Manager.connect({ host, port, authkey: Buffer.from('sesame') });
      const list = await remote.list();
      // A child reaches the same server with the proxy alone.
      const p = new Process({ target: fx.appendMany, args: [list, 5, 'net'] });
      expect(await startAll([p])).toEqual([0]);
      expect(await list.length()).toBe(5);
      const other = await Manager.connect({ host, port, authkey: 'sesame' });
      const lock = await other.Lock();
      expect(await lock.acquire()).toBe(true);
      await remote.close();
      await expect(list.length()).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
      expect(await lock.locked()).toBe(true);
      await other.close();
    } finally {
      await srv.close();
    }
    await expect(Manager.connect({ ...srv.address, authkey: 'sesame' })).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });

  it('a client that closes with a get or an acquire parked: what comes right after is not handed to it', async () => {
    const srv = await Manager.serve({ host: '127.0.0.1', port: 0, authkey: 'k' });
    const b = await Manager.connect({ ...srv.address, authkey: 'k' });
    try {
      const q = await b.Queue();
      const lock = await b.Lock();
      for (let i = 0; i < 10; i++) {
        const a = await Manager.connect({ ...srv.address, authkey: 'k' });
        // a's own handles to the same queue and lock (received through the server).
        const viaA = await a.dict();
        await viaA.set('q', q);
        await viaA.set('lock', lock);
        const aq = await viaA.get('q');
        const alock = await viaA.get('lock');
        await lock.acquire();
        const parkedGet = aq.get().catch(() => 'rejected');
        const parkedAcquire = alock.acquire().catch(() => 'rejected');
        await sleep(20); // both parked on the server
        await a.close();
        // At once: the server must not answer the closed client with these.
        await q.put(i);
        await lock.release();
        expect(await parkedGet).toBe('rejected');
        expect(await parkedAcquire).toBe('rejected');
        expect(await q.getNowait()).toBe(i);
        expect(await lock.acquire({ blocking: false })).toBe(true);
        expect(lock.ownerDied).toBe(false);
        await lock.release();
      }
    } finally {
      await b.close();
      await srv.close();
    }
  }, 30_000);

  it('a proxy that arrives after its manager connection closed connects afresh', async () => {
    const srv = await Manager.serve({ host: '127.0.0.1', port: 0, authkey: 'k' });
    const q = new Queue();
    try {
      const m1 = await Manager.connect({ ...srv.address, authkey: 'k' });
      const d = await m1.dict();
      await q.put(d);
      await m1.close();
      const again = (await q.get({ timeout: 5 })) as typeof d;
      await again.set('x', 1);
      expect(await again.get('x')).toBe(1);
    } finally {
      q.close();
      await srv.close();
    }
  });

  it('at most 64 connections wait in the handshake at once; past that new ones are refused, not queued', async () => {
    const srv = await Manager.serve({ host: '127.0.0.1', port: 0, authkey: 'k' });
    const raw: net.Socket[] = [];
    try {
      let refused = 0;
      await Promise.all(
        Array.from({ length: 70 }, async () => {
          const s = net.connect(srv.address.port, '127.0.0.1');
          raw.push(s);
          s.on('error', () => undefined);
          // A held connection gets the server's challenge; a refused one is closed.
          const first = await Promise.race([once(s, 'data').then(() => 'held'), once(s, 'close').then(() => 'closed')]);
          if (first === 'closed') refused++;
        }),
      );
      expect(refused).toBe(6);
    } finally {
      for (const s of raw) s.destroy();
    }
    await sleep(100);
    const remote = await Manager.connect({ ...srv.address, authkey: 'k' });
    expect(await (await remote.Value('i', 3)).get()).toBe(3);
    await remote.close();
    await srv.close();
  });

  it("a proxy kept from an earlier server at the same address reaches no object of the new one's", async () => {
    const srv1 = await Manager.serve({ host: '127.0.0.1', port: 0, authkey: 'k' });
    const { port } = srv1.address;
    const m1 = await Manager.connect({ host: '127.0.0.1', port, authkey: 'k' });
    const q = new Queue();
    try {
      await q.put(await m1.dict());
      await m1.close();
      await srv1.close();
      const srv2 = await Manager.serve({ host: '127.0.0.1', port, authkey: 'k' });
      try {
        const m2 = await Manager.connect({ host: '127.0.0.1', port, authkey: 'k' });
        await (await m2.dict()).set('x', 'new');
        const stale = (await q.get({ timeout: 5 })) as Awaited<ReturnType<typeof m1.dict>>;
        await expect(stale.get('x')).rejects.toMatchObject({ code: 'ERR_MP_NO_OBJECT' });
        await m2.close();
      } finally {
        await srv2.close();
      }
    } finally {
      q.close();
    }
  });

  it('the server drops a client that is not a manager client', async () => {
    const srv = await Manager.serve({ port: 0, authkey: 'k' });
    const s = net.connect(srv.address.port, '127.0.0.1');
    s.on('error', () => undefined);
    await new Promise((r) => s.once('connect', r));
    s.write(Buffer.alloc(1 << 20, 0xff)); // a huge "frame" before authentication
    await new Promise((r) => s.once('close', r));
    const remote = await Manager.connect({ ...srv.address, authkey: 'k' });
    expect(await (await remote.Value('d', 2.5)).get()).toBe(2.5);
    await remote.close();
    await srv.close();
  });

  it('connect to a server that accepts and says nothing rejects with TimeoutError after options.timeout', async () => {
    const held: net.Socket[] = [];
    const silent = net.createServer((s) => held.push(s));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const { port } = silent.address() as net.AddressInfo;
    try {
      const t = performance.now();
      const err = await Manager.connect({ port, authkey: 'k', timeout: 1 }).catch((e) => e);
      expect(err).toBeInstanceOf(TimeoutError);
      expect(err).toMatchObject({ name: 'TimeoutError', code: 'ERR_MP_TIMEOUT', message: expect.stringMatching(/handshake within 1 s/) });
      expect(seconds(t)).toBeGreaterThan(0.9);
      expect(seconds(t)).toBeLessThan(5);
      // The client gave up on its connection: the server sees it close.
      await waitUntil(() => held.length === 1 && held[0].destroyed, 5000, 'the connection to close');
    } finally {
      for (const s of held) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });

  it('connect to a listener whose backlog is full (SYNs dropped) rejects with TimeoutError after options.timeout', async () => {
    const program = path.join(__dirname, 'fixtures', 'programs', 'full-backlog.mjs');
    const listener = spawn(process.execPath, [program], { stdio: ['ignore', 'pipe', 'inherit'] });
    const raw: net.Socket[] = [];
    try {
      const [line] = (await once(listener.stdout!, 'data')) as [Buffer];
      const { port } = JSON.parse(line.toString()) as { port: number };
      // Fill the accept queue: connect until one connection stays pending.
      for (;;) {
        const s = net.connect(port, '127.0.0.1');
        s.on('error', () => undefined);
        raw.push(s);
        const state = await Promise.race([once(s, 'connect').then(() => 'connected'), sleep(500).then(() => 'pending')]);
        if (state === 'pending') break;
        expect(raw.length).toBeLessThan(20);
      }
      const t = performance.now();
      const err = await Manager.connect({ port, authkey: 'k', timeout: 1 }).catch((e) => e);
      expect(err).toBeInstanceOf(TimeoutError);
      expect(err).toMatchObject({ code: 'ERR_MP_TIMEOUT', message: expect.stringMatching(/could not connect to the manager at 127\.0\.0\.1:\d+ within 1 s/) });
      expect(seconds(t)).toBeGreaterThan(0.9);
      expect(seconds(t)).toBeLessThan(5);
    } finally {
      for (const s of raw) s.destroy();
      listener.kill('SIGKILL');
      if (listener.exitCode === null && listener.signalCode === null) await once(listener, 'exit');
    }
  });

  it("the transport's take-over of a connected socket checks net.Socket's internal handle and fails loudly if it changed", async () => {
    const { streamHandle } = await import('../dist/cjs/manager-protocol.js');
    const srv = net.createServer((s) => s.destroy());
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const s = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1');
    s.on('error', () => undefined);
    try {
      await once(s, 'connect');
      // This Node: the handle has a numeric fd and readStop().
      expect(streamHandle(s).fd).toBeGreaterThan(2);
      // A Node whose handle had another shape: a clear error, not a misread.
      const unsupported = expect.objectContaining({ code: 'ERR_MP_UNSUPPORTED', message: expect.stringContaining(process.version) });
      expect(() => streamHandle({ _handle: { fd: 7 } } as any)).toThrow(unsupported);
      expect(() => streamHandle({ _handle: { fd: '7', readStop: () => 0 } } as any)).toThrow(unsupported);
      expect(() => streamHandle({ _handle: null } as any)).toThrow(expect.objectContaining({ code: 'ERR_MP_PROTOCOL' }));
    } finally {
      s.destroy();
      await new Promise((r) => srv.close(r));
    }
  });

  it('bad arguments throw TypeError/RangeError naming the argument', async () => {
    await expect(Manager.serve({ authkey: 5 as any })).rejects.toThrow(/options.authkey must be/);
    await expect(Manager.serve({ authkey: '' })).rejects.toThrow(RangeError);
    await expect(Manager.serve({ port: 70000, authkey: 'k' })).rejects.toThrow(/options.port/);
    await expect(Manager.serve({ port: 1.5, authkey: 'k' })).rejects.toThrow(TypeError);
    await expect(Manager.serve(undefined as any)).rejects.toThrow(TypeError);
    await expect(Manager.connect({ port: 0, authkey: 'k' })).rejects.toThrow(RangeError);
    await expect(Manager.connect({ authkey: 'k' } as any)).rejects.toThrow(/options.port/);
    await expect(Manager.connect({ host: 7 as any, port: 1, authkey: 'k' })).rejects.toThrow(/options.host/);
    await expect(Manager.connect({ port: 1, authkey: Buffer.alloc(0) })).rejects.toThrow(RangeError);
    await expect(Manager.connect({ port: 1, authkey: 'k', timeout: -1 })).rejects.toThrow(/options.timeout/);
    await expect(Manager.connect({ port: 1, authkey: 'k', timeout: '5' as any })).rejects.toThrow(TypeError);
    await expect(m.Queue('x' as any)).rejects.toThrow(/maxsize/);
    await expect(m.list(5 as any)).rejects.toThrow(TypeError);
    await expect(m.Namespace([] as any)).rejects.toThrow(TypeError);
  });
});
