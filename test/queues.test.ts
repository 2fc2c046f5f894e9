import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';

import { JoinableQueue, Pipe, Process, Queue, QueueEmptyError, QueueFullError, SimpleQueue } from 'posix-multiprocessing';
import * as fx from './fixtures/pipes.mjs';
// Internals: a ring of a chosen (small) capacity, so that tests wrap it often.
import { Ring } from '../dist/cjs/ring.js';

const smallQueue = (capacity: number, maxsize = 0) => new Queue(Ring.create(maxsize, capacity) as unknown as number);
const headerWord = (q: Queue, index: number) => {
  const fd = fs.openSync(`/dev/shm${(q as any)._ref.segment}`, 'r');
  const b = Buffer.alloc(4);
  fs.readSync(fd, b, 0, 4, index * 4);
  fs.closeSync(fd);
  return b.readInt32LE(0);
};
const setHeaderWord = (q: Queue, index: number, value: number) => {
  const fd = fs.openSync(`/dev/shm${(q as any)._ref.segment}`, 'r+');
  const b = Buffer.alloc(4);
  b.writeInt32LE(value, 0);
  fs.writeSync(fd, b, 0, 4, index * 4);
  fs.closeSync(fd);
};


/** [milliseconds taken, the value or the error]. */
async function elapsed(fn: () => Promise<unknown>): Promise<[number, unknown]> {
  const t = performance.now();
  let out: unknown;
  try {
    out = await fn();
  } catch (err) {
    out = err;
  }
  return [performance.now() - t, out];
}

describe('Queue in one process', () => {
  it('Full and Empty immediately, and after about T', async () => {
    const q = new Queue(3);
    for (const v of [1, 2, 3]) q.putNowait(v);
    expect(q.full()).toBe(true);
    expect(q.qsize()).toBe(3);
    expect(() => q.putNowait(4)).toThrow(QueueFullError);
    await expect(q.put(4, { block: false })).rejects.toBeInstanceOf(QueueFullError);
    let [ms, err] = await elapsed(() => q.put(4, { timeout: 0.4 }));
    expect(err).toBeInstanceOf(QueueFullError);
    expect((err as QueueFullError).code).toBe('ERR_MP_QUEUE_FULL');
    expect(ms).toBeGreaterThanOrEqual(380);
    expect(ms).toBeLessThan(2000);
    let t = performance.now();
    expect(() => q.putSync(4, { timeout: 0.3 })).toThrow(QueueFullError);
    expect(performance.now() - t).toBeGreaterThanOrEqual(280);
    expect([q.getNowait(), q.getSync(), await q.get()]).toEqual([1, 2, 3]);
    expect(q.empty()).toBe(true);
    expect(() => q.getNowait()).toThrow(QueueEmptyError);
    [ms, err] = await elapsed(() => q.get({ timeout: 0.4 }));
    expect(err).toBeInstanceOf(QueueEmptyError);
    expect((err as QueueEmptyError).code).toBe('ERR_MP_QUEUE_EMPTY');
    expect(ms).toBeGreaterThanOrEqual(380);
    t = performance.now();
    expect(() => q.getSync({ timeout: 0.3 })).toThrow(QueueEmptyError);
    expect(performance.now() - t).toBeGreaterThanOrEqual(280);
    q.close();
  });

  it('a waiting get is woken by a put; a waiting put by a get', async () => {
    const q = new Queue(1);
    const pending = q.get({ timeout: 10 });
    setTimeout(() => q.putNowait('hello'), 50);
    expect(await pending).toBe('hello');
    q.putNowait('a');
    const put = q.put('b', { timeout: 10 });
    setTimeout(() => q.getNowait(), 50);
    await put;
    expect(q.getNowait()).toBe('b');
    q.close();
  });

  it('puts and gets issued without awaiting keep call order', async () => {
    const q = new Queue(1);
    q.putNowait(0);
    const puts = [1, 2, 3].map((v) => q.put(v));
    await expect(q.put(9, { block: false })).rejects.toBeInstanceOf(QueueFullError);
    const got = [];
    for (let i = 0; i < 4; i++) got.push(await q.get({ timeout: 10 }));
    await Promise.all(puts);
    expect(got).toEqual([0, 1, 2, 3]);
    const gets = [q.get(), q.get(), q.get()];
    for (const v of ['a', 'b', 'c']) await q.put(v);
    expect(await Promise.all(gets)).toEqual(['a', 'b', 'c']);
    q.close();
  });

  it('keeps structured-clone values and messages larger than the ring', async () => {
    const q = new Queue();
    const big = Buffer.alloc(6 * 1024 * 1024, 7); // spills to a segment of its own
    const values = [new Map([[1, { d: new Date(3) }]]), 5n, 'text', big, [undefined, null], new Uint16Array([1, 2])];
    for (const v of values) await q.put(v);
    for (const v of values) {
      const got = await q.get();
      if (v === big) expect(Buffer.isBuffer(got) && got.equals(big)).toBe(true);
      else expect(got).toEqual(v);
    }
    q.close();
  });

  it('records wrap around the ring intact (JSON text, multi-byte characters, bytes)', () => {
    const q = new Queue();
    for (let i = 0; i < 15_000; i++) {
      const size = 200 + ((i * 7919) % 1500); // odd sizes land on every offset
      const v = i % 3 === 0 ? { i, s: 'é€😀'.repeat(size / 8) } : i % 3 === 1 ? 'x'.repeat(size) : Buffer.alloc(size, i & 0xff);
      q.putSync(v);
      if (i >= 10) {
        const j = i - 10;
        const got = q.getSync();
        const want = 200 + ((j * 7919) % 1500);
        if (j % 3 === 0) expect(got).toEqual({ i: j, s: 'é€😀'.repeat(want / 8) });
        else if (j % 3 === 1) expect(got).toBe('x'.repeat(want));
        else expect(Buffer.isBuffer(got) && (got as Buffer).equals(Buffer.alloc(want, j & 0xff))).toBe(true);
      }
    }
    expect(q.qsize()).toBe(10);
    q.close();
  });

  it('validates arguments; close() ends the handle; pending waits reject; AbortSignal aborts', async () => {
    expect(() => new Queue('3' as any)).toThrow(TypeError);
    expect(() => new Queue(1.5)).toThrow(TypeError);
    const q = new Queue();
    expect(() => q.putSync(1, { timeout: -1 })).toThrow(RangeError);
    expect(() => q.getSync({ block: 'no' as any })).toThrow(TypeError);
    await expect(q.get({ timeout: 'x' as any })).rejects.toThrow(TypeError);
    // A Connection is not refused (it travels through the fd sharer: test/fd-transfer.test.ts);
    // a closed one is.
    const [a, b] = Pipe();
    a.close();
    expect(() => q.putSync({ conn: a })).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    b.close();
    const ac = new AbortController();
    const aborted = q.get({ signal: ac.signal });
    setTimeout(() => ac.abort(new Error('stop')), 20);
    await expect(aborted).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR', cause: { message: 'stop' } });
    const pending = q.get();
    q.close();
    q.close();
    await expect(pending).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    expect(() => q.qsize()).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    await expect(q.put(1)).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
  });

  it('recovers when a lock holder died inside the ring lock', async () => {
    const q = new Queue();
    q.putSync('before');
    const dead = new Process({ target: fx.produceSync, args: [q, 0, 0] });
    dead.start();
    expect(await dead.join()).toBe(0);
    // Forge what a SIGKILL inside a critical section leaves: the dead pid in the
    // consumers' lock word (byte 128) and in the producers' (byte 64).
    const fd = fs.openSync(`/dev/shm${(q as any)._ref.segment}`, 'r+');
    const lockWord = Buffer.alloc(4);
    lockWord.writeInt32LE(dead.pid!, 0);
    fs.writeSync(fd, lockWord, 0, 4, 128);
    fs.writeSync(fd, lockWord, 0, 4, 64);
    fs.closeSync(fd);
    const t = performance.now();
    expect(q.getSync({ timeout: 5 })).toBe('before');
    q.putSync('after');
    expect(q.getSync()).toBe('after');
    expect(performance.now() - t).toBeLessThan(2000);
    q.close();
  });

  it('SimpleQueue and JoinableQueue basics', async () => {
    const s = new SimpleQueue();
    expect(s.empty()).toBe(true);
    await s.put({ a: 1 });
    s.putSync(2);
    expect(s.empty()).toBe(false);
    expect(await s.get()).toEqual({ a: 1 });
    expect(s.getSync()).toBe(2);
    s.close();
    const j = new JoinableQueue();
    j.putSync(1);
    let joined = false;
    const joining = j.join().then(() => (joined = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(joined).toBe(false);
    j.getSync();
    j.taskDone();
    await joining;
    j.joinSync();
    expect(() => j.taskDone()).toThrow(expect.objectContaining({ code: 'ERR_MP_TASK_DONE' }));
    j.close();
  });
});

describe('Queue fast paths', () => {
  const values: unknown[] = [
    'plain ascii',
    'x'.repeat(65), // past the short-text loop: latin1 write
    'é€😀 non-ASCII',
    'ÿ', // one UTF-16 unit, two UTF-8 bytes
    '\ud800', // lone surrogates: JSON escapes them
    'a\udc00b\ud83d',
    '\u0000\n"\\\t',
    'é'.repeat(100),
    { i: 1, s: 'hello' },
    { nested: [1, { b: 'é', c: [true, false, null] }], '': 0, '10': 'ten', '2': 'two' },
    JSON.parse('{"__proto__": 5, "a": 1}'),
    [1.5, -2, 1e300, 5e-324, 2 ** 53, -(2 ** 31)],
    -0,
    NaN,
    Infinity,
    -Infinity,
    { z: -0 },
    [NaN],
    12345678901234567890n,
    { big: 1n },
    [, 1], // a hole: the v8 path keeps it
    undefined,
    { u: undefined },
    new Date(5),
    0,
    '',
    true,
    null,
  ];

  it('every value comes back as structured clone gives it (JSON text, fallbacks, special numbers)', async () => {
    const q = new Queue();
    for (const v of values) q.putSync(v);
    expect(q.qsize()).toBe(values.length);
    for (const v of values) {
      const got = q.getSync();
      expect(got).toStrictEqual(v);
      if (typeof v === 'number' && Object.is(v, -0)) expect(Object.is(got, -0)).toBe(true);
    }
    // the same across processes and through the async get
    const echo = new Queue();
    const p = new Process({ target: fx.echoQueue, args: [q, echo, values.length] });
    p.start();
    for (const v of values) await q.put(v);
    for (const v of values) expect(await echo.get({ timeout: 20 })).toStrictEqual(v);
    expect(await p.join(20)).toBe(0);
    q.close();
    echo.close();
  }, 30_000);

  it('records that end exactly at the end of the ring, or wrap in their header or data, come back intact', () => {
    // A 512-byte ring: records of 16..128 bytes put with 0-2 others in it land
    // on every 8-byte offset, ending at the ring's end and straddling it.
    const q = smallQueue(512);
    const kinds = [(n: number) => 'a'.repeat(n), (n: number) => 'é'.repeat(n >> 1), (n: number) => Buffer.alloc(n, n & 0xff), (n: number) => ({ n, s: 'b'.repeat(n >> 2) })];
    const want: unknown[] = [];
    const i32 = (q as any).ring.i32 as Int32Array; // header word 18: TAIL, a byte counter
    let endsAtEnd = 0;
    let straddles = 0;
    for (let round = 0; round < 3000; round++) {
      const n = (round * 13) % 110;
      const v = kinds[round % kinds.length](n);
      const before = i32[18];
      q.putSync(v);
      const after = i32[18];
      if ((after & 511) === 0) endsAtEnd++;
      else if ((before & ~511) !== (after & ~511)) straddles++;
      want.push(v);
      while (want.length > round % 3) expect(q.getSync()).toStrictEqual(want.shift());
    }
    while (want.length) expect(q.getSync()).toStrictEqual(want.shift());
    expect(endsAtEnd).toBeGreaterThan(20);
    expect(straddles).toBeGreaterThan(20);
    expect(q.empty()).toBe(true);
    expect(q.qsize()).toBe(0);
    q.close();
  });

  it('maxsize, qsize, full and empty with split producer and consumer counts', () => {
    const q = smallQueue(1024, 3);
    expect(q.empty()).toBe(true);
    for (let i = 0; i < 3; i++) q.putNowait(i);
    expect(q.full()).toBe(true);
    expect(q.qsize()).toBe(3);
    expect(() => q.putNowait(3)).toThrow(QueueFullError);
    expect(q.getNowait()).toBe(0);
    expect(q.full()).toBe(false);
    q.putNowait(3);
    expect(() => q.putSync(4, { timeout: 0.05 })).toThrow(QueueFullError);
    for (let i = 1; i < 4; i++) expect(q.getNowait()).toBe(i);
    expect(q.empty()).toBe(true);
    expect(() => q.getSync({ timeout: 0.05 })).toThrow(QueueEmptyError);
    // room in the ring, not maxsize, is the limit: 1 KiB holds few 200-byte records
    const r = smallQueue(1024);
    let n = 0;
    while (n < 100) {
      try {
        r.putNowait('y'.repeat(200));
        n++;
      } catch (err) {
        expect(err).toBeInstanceOf(QueueFullError);
        break;
      }
    }
    expect(n).toBe(4);
    expect(r.qsize()).toBe(4);
    r.close();
    q.close();
  });

  it('repairs the counts a SIGKILL between the commit and the count leaves', async () => {
    const q = new Queue(5);
    const dead = new Process({ target: fx.produceSync, args: [q, 0, 0] });
    dead.start();
    expect(await dead.join()).toBe(0);
    for (let i = 0; i < 3; i++) q.putSync(i);
    // A producer died after its record's TAIL store, before PUTS (word 19).
    setHeaderWord(q, 16, dead.pid!);
    setHeaderWord(q, 19, headerWord(q, 19) - 1);
    q.putSync(3); // takes the lock over, repairs, then puts
    expect(q.qsize()).toBe(4);
    // A consumer died after its GETS store (word 35), before HEAD.
    setHeaderWord(q, 32, dead.pid!);
    setHeaderWord(q, 35, headerWord(q, 35) + 1);
    expect(q.getSync()).toBe(0); // nothing lost
    expect(q.qsize()).toBe(3);
    q.putSync(4);
    q.putSync(5);
    expect(q.full()).toBe(true);
    expect(() => q.putNowait(6)).toThrow(QueueFullError);
    expect([1, 2, 3, 4, 5].map(() => q.getSync())).toEqual([1, 2, 3, 4, 5]);
    q.close();
  }, 20_000);
});

describe('Queue across processes', () => {
  it('scenario 15: producer and consumer processes; Queue(3) refuses a 4th; get times out at ~3 s', async () => {
    const q = new Queue();
    const results = new Queue();
    const items = ['a', { b: 2 }, 3, [4], 'five'];
    const consumer = new Process({ target: fx.consume, args: [q, results] });
    const producer = new Process({ target: fx.produce, args: [q, items] });
    consumer.start();
    producer.start();
    const { got } = (await results.get({ timeout: 15 })) as { got: unknown[] };
    expect(got).toEqual(items);
    expect(await producer.join()).toBe(0);
    expect(await consumer.join()).toBe(0);

    const small = new Queue(3);
    for (let i = 0; i < 3; i++) small.putNowait(i);
    expect(() => small.putNowait(3)).toThrow(QueueFullError);
    const t = performance.now();
    await expect(q.get({ timeout: 3 })).rejects.toBeInstanceOf(QueueEmptyError);
    const ms = performance.now() - t;
    expect(ms).toBeGreaterThanOrEqual(2900);
    expect(ms).toBeLessThan(4500);
    for (const x of [q, results, small]) x.close();
  }, 30_000);

  it('JoinableQueue.join waits for 4 consumer processes to finish every task', async () => {
    const q = new JoinableQueue();
    const done = new Queue();
    const workers = Array.from({ length: 4 }, () => new Process({ target: fx.joinableWorker, args: [q, done] }));
    for (const w of workers) w.start();
    for (let id = 0; id < 24; id++) await q.put({ id, ms: 20 });
    for (let i = 0; i < 4; i++) await q.put(null);
    await q.join();
    // Every task was marked done after its id went on `done`: all 24 are there now.
    const ids: number[] = [];
    while (!done.empty()) ids.push(done.getNowait() as number);
    expect(ids.sort((x, y) => x - y)).toEqual([...Array(24).keys()]);
    for (const w of workers) expect(await w.join()).toBe(0);
    q.close();
    done.close();
  }, 30_000);

  it('2 producers x 2 consumers: every message exactly once, FIFO per producer', async () => {
    const n = 5000;
    const q = new Queue(100);
    const results = new Queue();
    const consumers = [0, 1].map(() => new Process({ target: fx.consumeSync, args: [q, results] }));
    const producers = [0, 1].map((id) => new Process({ target: fx.produceSync, args: [q, id, n] }));
    for (const p of [...consumers, ...producers]) p.start();
    for (const p of producers) expect(await p.join()).toBe(0);
    await q.put(null);
    await q.put(null);
    const seen = [new Set<number>(), new Set<number>()];
    for (let c = 0; c < 2; c++) {
      const { got } = (await results.get({ timeout: 20 })) as { got: number[] };
      const last = [-1, -1];
      for (let k = 0; k < got.length; k += 2) {
        const [p, i] = [got[k], got[k + 1]];
        expect(i).toBeGreaterThan(last[p]); // per-producer order within each consumer
        last[p] = i;
        expect(seen[p].has(i)).toBe(false);
        seen[p].add(i);
      }
    }
    expect(seen[0].size + seen[1].size).toBe(2 * n);
    for (const p of consumers) expect(await p.join()).toBe(0);
    q.close();
    results.close();
  }, 30_000);

  it('a producer that exits right after put() neither blocks nor loses its items', async () => {
    const q = new Queue();
    const p = new Process({ target: fx.putAndExit, args: [q, 300, 1000] });
    const big = new Process({ target: fx.putAndExit, args: [q, 2, 3 * 1024 * 1024] });
    p.start();
    big.start();
    expect(await p.join(10)).toBe(0);
    expect(await big.join(10)).toBe(0);
    expect(q.qsize()).toBe(302);
    const got = [];
    while (!q.empty()) got.push(q.getNowait() as { i: number; pad: string });
    expect(got.filter((m) => m.pad.length === 1000).map((m) => m.i)).toEqual([...Array(300).keys()]);
    expect(got.filter((m) => m.pad.length === 3 * 1024 * 1024).length).toBe(2);
    q.close();
  }, 30_000);

  it('a consumer killed with SIGKILL does not wedge the queue', async () => {
    const n = 3000;
    const q = new Queue(50);
    const reports = new Queue();
    const victim = new Process({ target: fx.consumeAndReport, args: [q, reports] });
    const survivor = new Process({ target: fx.consumeAndReport, args: [q, reports] });
    const producer = new Process({ target: fx.produceSync, args: [q, 0, n] });
    for (const p of [victim, survivor, producer]) p.start();
    const got: number[] = [];
    while (got.length < n / 4) got.push(((await reports.get({ timeout: 20 })) as { i: number }).i);
    victim.kill();
    expect(await victim.join()).toBe(-9);
    expect(await producer.join(20)).toBe(0);
    await q.put(null, { timeout: 10 });
    for (;;) {
      const m = (await reports.get({ timeout: 20 })) as { i: number } | null;
      if (m === null) break;
      got.push(m.i);
    }
    expect(await survivor.join()).toBe(0);
    while (!reports.empty()) got.push((reports.getNowait() as { i: number }).i);
    expect(new Set(got).size).toBe(got.length); // nothing twice
    expect(got.length).toBeGreaterThanOrEqual(n - 1); // at most the one the victim held is gone
    q.close();
    reports.close();
  }, 40_000);

  it('a burst of puts reaches every sleeping consumer (one wake per edge, then the baton)', async () => {
    const q = new Queue();
    const results = new Queue();
    const consumers = [true, false, true, false].map((sync) => new Process({ target: fx.getOne, args: [q, results, sync] }));
    for (const c of consumers) c.start();
    // Wait until all four sleep on the queue (the ring header's consumer-waiter count).
    const file = `/dev/shm${(q as any)._ref.segment}`;
    const header = Buffer.alloc(64);
    const deadline = Date.now() + 15_000;
    for (;;) {
      const fd = fs.openSync(file, 'r');
      fs.readSync(fd, header, 0, 64, 0);
      fs.closeSync(fd);
      if (header.readInt32LE(6 * 4) === 4 || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(header.readInt32LE(6 * 4)).toBe(4);
    for (let i = 0; i < 4; i++) q.putSync(i);
    for (const c of consumers) expect(await c.join(15)).toBe(0);
    const got = [];
    for (let i = 0; i < 4; i++) got.push(results.getNowait());
    expect(got.sort()).toEqual([0, 1, 2, 3]);
    q.close();
    results.close();
  }, 30_000);

  it('4 producers x 2 consumers on a 4 KiB ring that wraps all the time: exactly once, FIFO per producer', async () => {
    const n = 3000;
    const q = smallQueue(4096);
    const results = new Queue();
    const consumers = [0, 1].map(() => new Process({ target: fx.consumeSync, args: [q, results] }));
    const producers = [0, 1, 2, 3].map((id) => new Process({ target: fx.produceVarying, args: [q, id, n] }));
    for (const p of [...consumers, ...producers]) p.start();
    for (const p of producers) expect(await p.join(60)).toBe(0);
    await q.put(null);
    await q.put(null);
    const seen = [0, 1, 2, 3].map(() => new Uint8Array(n));
    for (let c = 0; c < 2; c++) {
      const { got } = (await results.get({ timeout: 60 })) as { got: number[] };
      const last = [-1, -1, -1, -1];
      for (let k = 0; k < got.length; k += 2) {
        const [p, i] = [got[k], got[k + 1]];
        expect(i).toBeGreaterThan(last[p]);
        last[p] = i;
        seen[p][i]++;
      }
    }
    for (const s of seen) expect(s.every((x) => x === 1)).toBe(true);
    for (const p of consumers) expect(await p.join(20)).toBe(0);
    expect(q.empty()).toBe(true);
    q.close();
    results.close();
  }, 90_000);

  it('queues travel inside messages and arrive as the same queue', async () => {
    const q = new Queue();
    const reply = new Queue();
    const p = new Process({ target: fx.replyOnQueue, args: [q] });
    p.start();
    await q.put({ reply, value: 21 });
    expect(await reply.get({ timeout: 10 })).toBe(42);
    expect(await p.join()).toBe(0);
    q.close();
    reply.close();
  }, 20_000);
});
