import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Connection, Pipe, Process } from 'posix-multiprocessing';
import { binding } from '../dist/cjs/native.js';
import { SpinPolicy, spinConfig } from '../dist/cjs/spin.js';
import * as fx from './fixtures/pipes.mjs';

describe('Pipe / Connection in one process', () => {
  it('keeps message boundaries for values, bytes and empty messages, in order', async () => {
    const [a, b] = Pipe();
    a.send({ x: 1 });
    a.sendBytes(Buffer.alloc(0));
    a.send('two');
    a.sendBytes(new Uint8Array([1, 2, 3, 4, 5]), 1, 3);
    a.send(new Map([[1n, new Date(5)]]));
    expect(await b.recv()).toEqual({ x: 1 });
    expect((await b.recvBytes()).length).toBe(0);
    expect(b.recvSync()).toBe('two');
    expect([...b.recvBytesSync()]).toEqual([2, 3, 4]);
    expect(await b.recv()).toEqual(new Map([[1n, new Date(5)]]));
    a.close();
    b.close();
  });

  it('serves mixed async and sync receivers in call order', async () => {
    const [a, b] = Pipe();
    const first = b.recv();
    const second = b.recv();
    a.send(1);
    a.send(2);
    a.send(3);
    // The sync receive must wait behind the two pending async ones.
    expect(b.recvSync()).toBe(3);
    expect(await first).toBe(1);
    expect(await second).toBe(2);
    a.close();
    b.close();
  });

  it('poll and pollSync report readiness and time out after about T', async () => {
    const [a, b] = Pipe();
    expect(await b.poll()).toBe(false);
    expect(b.pollSync(0)).toBe(false);
    let t = performance.now();
    expect(await b.poll(0.2)).toBe(false);
    expect(performance.now() - t).toBeGreaterThanOrEqual(180);
    t = performance.now();
    expect(b.pollSync(0.2)).toBe(false);
    expect(performance.now() - t).toBeGreaterThanOrEqual(180);
    const later = b.poll(5);
    setTimeout(() => a.send('x'), 50);
    expect(await later).toBe(true);
    expect(b.pollSync()).toBe(true);
    expect(await b.recv()).toBe('x');
    // Longer than setTimeout can take (2^31 ms): no early false.
    const long = b.poll(3e6);
    setTimeout(() => a.send('y'), 50);
    expect(await long).toBe(true);
    expect(await b.recv()).toBe('y');
    a.close();
    b.close();
  });

  it('one-way pipes: [readable, writable]; the wrong end throws', async () => {
    const [r, w] = Pipe(false);
    expect([r.readable, r.writable, w.readable, w.writable]).toEqual([true, false, false, true]);
    expect(() => r.send(1)).toThrow(expect.objectContaining({ code: 'ERR_MP_NOT_WRITABLE' }));
    expect(() => w.recvSync()).toThrow(expect.objectContaining({ code: 'ERR_MP_NOT_READABLE' }));
    await expect(w.recv()).rejects.toMatchObject({ code: 'ERR_MP_NOT_READABLE' });
    w.send([1, 2]);
    expect(await r.recv()).toEqual([1, 2]);
    r.close();
    w.close();
  });

  it('recv after the peer closed rejects with ERR_MP_EOF; pending recv too', async () => {
    const [a, b] = Pipe();
    const pending = b.recv();
    a.send('last');
    a.close();
    expect(await pending).toBe('last');
    await expect(b.recv()).rejects.toMatchObject({ code: 'ERR_MP_EOF', name: 'EOFError' });
    expect(() => b.recvSync()).toThrow(expect.objectContaining({ code: 'ERR_MP_EOF' }));
    expect(await b.poll()).toBe(true); // like Python: readable at end of stream
    b.close();
  });

  it('close is idempotent; use after close throws ERR_MP_CLOSED; pending recv rejects', async () => {
    const [a, b] = Pipe();
    const pending = b.recv();
    b.close();
    b.close();
    expect(b.closed).toBe(true);
    await expect(pending).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    expect(() => b.send(1)).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    expect(() => b.recvSync()).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    await expect(b.recv()).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    expect(() => b.pollSync()).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    a.close();
  });

  it('sendBytes checks its bounds and argument types', () => {
    const [a, b] = Pipe();
    const buf = Buffer.alloc(8);
    expect(() => a.sendBytes(buf, -1)).toThrow(RangeError);
    expect(() => a.sendBytes(buf, 9)).toThrow(RangeError);
    expect(() => a.sendBytes(buf, 4, 5)).toThrow(RangeError);
    expect(() => a.sendBytes(buf, 0, -1)).toThrow(RangeError);
    expect(() => a.sendBytes(buf, 1.5)).toThrow(TypeError);
    expect(() => a.sendBytes('abc' as any)).toThrow(TypeError);
    expect(() => Pipe('yes' as any)).toThrow(TypeError);
    a.sendBytes(buf, 8, 0); // empty tail is fine
    expect(b.recvBytesSync().length).toBe(0);
    expect(() => a.send(() => 1)).toThrow(TypeError);
    a.close();
    b.close();
  });

  it('a large send does not block the event loop while the reader is slow', async () => {
    const [a, b] = Pipe();
    const big = Buffer.alloc(8 * 1024 * 1024, 9);
    a.sendBytes(big); // far more than the socket buffer holds
    big.fill(0); // the queued rest was copied
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    await new Promise((r) => setTimeout(r, 60));
    const got = await b.recvBytes();
    clearInterval(timer);
    expect(ticks).toBeGreaterThan(3);
    expect(got.length).toBe(big.length);
    expect(got.every((x) => x === 9)).toBe(true);
    a.close();
    b.close();
  });

  it('a Connection sent over a Connection arrives working (SCM_RIGHTS)', async () => {
    const [a, b] = Pipe();
    const [c1, c2] = Pipe();
    a.send({ conn: c1, tag: 'x' });
    const { conn, tag } = (await b.recv()) as { conn: Connection; tag: string };
    expect(tag).toBe('x');
    expect(conn).toBeInstanceOf(Connection);
    conn.send('through the passed end');
    expect(await c2.recv()).toBe('through the passed end');
    // Queued behind a large message, then closed here at once: the queued
    // message holds a duplicate, so the fd that arrives is still the right one.
    const [d1, d2] = Pipe();
    a.sendBytes(Buffer.alloc(4 * 1024 * 1024));
    a.send({ conn: d1 });
    d1.close();
    expect((await b.recvBytes()).length).toBe(4 * 1024 * 1024);
    const later = ((await b.recv()) as { conn: Connection }).conn;
    later.send('still d1');
    expect(await d2.recv()).toBe('still d1');
    later.close();
    d2.close();
    // A one-way pipe cannot carry fds: the Connection goes through the fd sharer.
    const [r, w] = Pipe(false);
    const [e1, e2] = Pipe();
    w.send({ conn: e1 });
    e1.close();
    const viaPipe = (r.recvSync() as { conn: Connection }).conn;
    viaPipe.send('over a one-way pipe');
    expect(await e2.recv()).toBe('over a one-way pipe');
    for (const c of [a, b, c1, c2, conn, r, w, e2, viaPipe]) c.close();
  });
});

describe('Pipe / Connection across processes', () => {
  it('scenario 16: the child and the parent each receive the other\'s message', async () => {
    const [parentEnd, childEnd] = Pipe();
    const p = new Process({ target: fx.greet, args: [childEnd] });
    p.start();
    childEnd.close();
    parentEnd.send('Hello from parent');
    expect(await parentEnd.recv()).toBe('Hello from child');
    expect(await parentEnd.recv()).toEqual({ childGot: 'Hello from parent' });
    expect(await p.join()).toBe(0);
    await expect(parentEnd.recv()).rejects.toMatchObject({ code: 'ERR_MP_EOF' });
    parentEnd.close();
  }, 20_000);

  it('message boundaries hold for 0 B, 1 B, 64 KiB, 1 MiB and 32 MiB through a child', async () => {
    const sizes = [0, 1, 64 * 1024, 1024 * 1024, 32 * 1024 * 1024, 3];
    const [parentEnd, childEnd] = Pipe();
    const p = new Process({ target: fx.echoBytes, args: [childEnd, sizes.length] });
    p.start();
    childEnd.close();
    for (const [k, size] of sizes.entries()) {
      const buf = Buffer.alloc(size);
      for (let i = 0; i < size; i += 4096) buf[i] = (i / 4096 + k) & 0xff;
      parentEnd.sendBytes(buf);
      const back = k % 2 === 0 ? await parentEnd.recvBytes() : parentEnd.recvBytesSync();
      expect(back.length).toBe(size);
      expect(back.equals(buf)).toBe(true);
    }
    expect(await p.join()).toBe(0);
    parentEnd.close();
  }, 30_000);

  it('a child that sends and returns at once loses nothing (queued output flushed at exit)', async () => {
    const [r, w] = Pipe(false);
    const p = new Process({ target: fx.writeThenExit, args: [w, 20, 100_000] });
    p.start();
    w.close();
    const got: number[] = [];
    for (;;) {
      try {
        got.push(((await r.recv()) as { i: number }).i);
      } catch (err) {
        expect((err as { code: string }).code).toBe('ERR_MP_EOF');
        break;
      }
    }
    expect(got).toEqual([...Array(20).keys()]);
    expect(await p.join()).toBe(0);
    r.close();
  }, 20_000);

  it('sync receive in the child, values of many types', async () => {
    const [parentEnd, childEnd] = Pipe();
    const p = new Process({ target: fx.echoValuesSync, args: [childEnd] });
    p.start();
    childEnd.close();
    const values = [1, 'two', { three: [3] }, new Set([4]), new Error('five'), undefined, 2n ** 70n, null];
    for (const v of values) parentEnd.send(v);
    for (const v of values) {
      const got = await parentEnd.recv();
      if (v instanceof Error) expect([(got as Error).name, (got as Error).message]).toEqual([v.name, v.message]);
      else expect(got).toEqual(v);
    }
    expect(await p.join()).toBe(0);
    parentEnd.close();
  }, 20_000);

  it('a Connection sent to a running child over a pipe works there', async () => {
    const [carrier, childCarrier] = Pipe();
    const [mine, theirs] = Pipe();
    const p = new Process({ target: fx.useReceivedConnection, args: [childCarrier] });
    p.start();
    childCarrier.close();
    carrier.send({ conn: theirs });
    theirs.close();
    expect(await mine.recv()).toBe(`pid ${p.pid} on a passed connection`);
    expect(await p.join()).toBe(0);
    carrier.close();
    mine.close();
  }, 20_000);
});

describe('receivers that spin before sleeping', () => {
  // Spin whatever the machine's load, in the test process and in the children.
  const saved = { ...spinConfig };
  const env = { ...process.env, PMP_PIPE_SPIN_US: '100' } as Record<string, string>;
  beforeAll(() => Object.assign(spinConfig, { limitUs: 100, loadGuard: false }));
  afterAll(() => Object.assign(spinConfig, saved));

  for (const sync of [true, false]) {
    const mode = sync ? 'recvSync' : 'await recv';
    it(`${mode}: quick, late and very late answers all arrive, in order, each once`, async () => {
      const [a, b] = Pipe();
      const p = new Process({ target: fx.echoAfter, args: [b, !sync], env });
      p.start();
      b.close();
      const recv = () => (sync ? a.recvSync() : a.recv());
      // Quick answers make the receiver spin; the late ones come after any spin
      // has given up (the receiver then sleeps), the quick ones after them
      // find the policy backing off and then spinning again.
      const delays = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 30, 0, 0, 200, ...new Array(40).fill(0), 5, 0, 0];
      for (const [i, d] of delays.entries()) {
        a.send({ i, d });
        expect(await recv()).toEqual({ i, d });
      }
      expect(a.pollSync(0)).toBe(false); // nothing extra arrived
      a.send(null);
      await p.join();
      expect(p.exitCode).toBe(0);
      a.close();
    });

    it(`${mode}: the end of stream during a spin ends the receive with ERR_MP_EOF`, async () => {
      const [a, b] = Pipe();
      const p = new Process({ target: fx.echoAfter, args: [b, !sync], env });
      p.start();
      b.close();
      for (let i = 0; i < 30; i++) {
        a.send({ i, d: 0 });
        await (sync ? a.recvSync() : a.recv());
      }
      a.send({ close: true }); // the child closes as soon as it reads this
      if (sync) expect(() => a.recvSync()).toThrow(expect.objectContaining({ code: 'ERR_MP_EOF' }));
      else await expect(a.recv()).rejects.toMatchObject({ code: 'ERR_MP_EOF' });
      await p.join();
      a.close();
    });
  }

  it('await recv() holds the event loop only briefly, for quick and for slow answers', async () => {
    const [a, b] = Pipe();
    const p = new Process({ target: fx.echoAfter, args: [b, true], env });
    p.start();
    b.close();
    try {
      // Quick answers: the receive may ask the kernel again for up to 30 µs
      // before leaving the rest to the loop; slow ones (20 ms): not at all.
      // A receive that held the loop until its answer would take 20 ms here.
      const quick: number[] = [];
      const slow: number[] = [];
      const delays = [...new Array(300).fill(0), 20, 0, 0, 20, 20, 0, 20, 0, 20, 0, 20, 20, 0];
      for (const [i, d] of delays.entries()) {
        a.send({ i, d });
        const t = performance.now();
        const answer = a.recv();
        (d > 0 ? slow : quick).push(performance.now() - t);
        expect(await answer).toEqual({ i, d });
      }
      // Percentiles, not the maximum: on a shared machine any single call
      // can be preempted or meet a GC pause for tens of milliseconds.
      const at = (xs: number[], q: number) => [...xs].sort((x, y) => x - y)[Math.floor(q * (xs.length - 1))];
      expect(at(quick, 0.9)).toBeLessThan(2);
      expect(at(slow, 0.5)).toBeLessThan(5);
      a.send(null);
      await p.join();
    } finally {
      a.close();
      p.kill(); // a no-op once the child has ended
      await p.join();
    }
  });

  it('pollSync(t) and the native spins honour their bounds', () => {
    const [a, b] = Pipe();
    // Answers that are already there teach the policy that waits are short.
    for (let i = 0; i < 50; i++) {
      a.send(i);
      expect(b.recvSync()).toBe(i);
    }
    let t = performance.now();
    expect(b.pollSync(0)).toBe(false);
    expect(b.pollSync(0.001)).toBe(false);
    expect(performance.now() - t).toBeLessThan(1000);
    t = performance.now();
    expect(b.pollSync(0.05)).toBe(false);
    expect(performance.now() - t).toBeGreaterThanOrEqual(49);
    // A spin longer than the timeout ends with the timeout...
    t = performance.now();
    expect(binding.poll(b.fileno(), 1, 0, 10_000_000)).toBe(0);
    expect(binding.poll(b.fileno(), 1, 20, 10_000_000)).toBe(0);
    const took = performance.now() - t;
    expect(took).toBeGreaterThanOrEqual(19);
    expect(took).toBeLessThan(5000);
    // ...and a spinning read ends by its spin, with "would block" (sooner
    // when another thread wants the CPU: pipe.cc SpinYield).
    t = performance.now();
    expect(binding.recvmsg(b.fileno(), Buffer.alloc(16), 0, 16, [], 20_000)).toBe(-1);
    // It spun: nothing yields (or ends the spin) before 50 µs.
    expect(performance.now() - t).toBeGreaterThanOrEqual(0.04);
    expect(performance.now() - t).toBeLessThan(5000);
    // Data that is there is returned by the first try.
    a.send('x');
    expect(b.pollSync(0)).toBe(true);
    expect(b.recvSync()).toBe('x');
    expect(() => binding.recvmsg(b.fileno(), Buffer.alloc(16), 0, 16, [], 'x')).toThrow(TypeError);
    a.close();
    b.close();
  });

  it('the spin policy spins while answers come within the limit, shrinks for a slow peer, and recovers at once', () => {
    const p = new SpinPolicy(() => false);
    expect(p.budget()).toBe(100);
    for (let i = 0; i < 10; i++) p.record(5);
    expect(p.budget()).toBe(100);
    // A slow answer halves the next spin, down to a few polls...
    p.record(150);
    expect(p.budget()).toBe(50);
    p.record(1_000_000);
    expect(p.budget()).toBe(25);
    for (let i = 0; i < 20; i++) p.record(1_000_000);
    const floor = p.budget();
    expect(floor).toBeGreaterThan(0);
    expect(floor).toBeLessThanOrEqual(10);
    // ...and one answer within the limit, even one that slept (answer +
    // wake-up), gives the full spin back: the two sides of a ping-pong must
    // not keep each other asleep.
    p.record(60);
    expect(p.budget()).toBe(100);
    // On a machine with no CPU to spare, never.
    let busy = false;
    const q = new SpinPolicy(() => busy);
    expect(q.budget()).toBeGreaterThan(0);
    busy = true;
    expect(q.budget()).toBe(0);
    // A limit of 0 turns spinning off.
    const r = new SpinPolicy(() => false, { limitUs: 0, loadGuard: false });
    r.record(1);
    expect(r.budget()).toBe(0);
  });
});

describe("send()'s fast path for small plain data", () => {
  for (const duplex of [true, false]) {
    it(`${duplex ? 'duplex' : 'one-way'}: messages sent while nobody reads arrive whole, in order, once`, async () => {
      const [r, w] = duplex ? Pipe() : Pipe(false);
      // Far more than a socket or pipe buffer holds: the kernel takes some
      // frames in part, and what it leaves must be copied out of the scratch
      // frame the next send() writes over.
      const n = 60_000;
      for (let i = 0; i < n; i++) w.send(i % 7 === 0 ? { i, pad: 'p'.repeat(i % 50) } : { i, s: 'x', a: [i, -i] });
      for (let i = 0; i < n; i++) {
        const m = (await r.recv()) as { i: number };
        expect(m.i).toBe(i);
        if (i % 7 === 0) expect(m).toEqual({ i, pad: 'p'.repeat(i % 50) });
        else expect(m).toEqual({ i, s: 'x', a: [i, -i] });
      }
      expect(r.pollSync(0)).toBe(false);
      r.close();
      w.close();
    }, 60_000);
  }

  it('values outside it arrive as JSON.parse or the codec gives them', async () => {
    const [a, b] = Pipe();
    const values: unknown[] = [
      { ['__proto__']: 1 },
      Object.defineProperty({}, '__proto__', { value: { x: 1 }, enumerable: true, writable: true, configurable: true }),
      { é: 'ü', s: 'a"b\\c\n' },
      [-0, 1e21, 0.1, 2 ** 53],
      { d: new Date(5), big: 10n, m: new Map([[1, 2]]) },
      'x'.repeat(10_000),
    ];
    for (const v of values) a.send(v);
    for (const v of values) {
      const got = await b.recv();
      expect(got).toEqual(v);
      if (typeof v === 'object' && v !== null && !Array.isArray(v)) {
        expect(Object.getPrototypeOf(got)).toBe(Object.getPrototypeOf(v));
        expect(Object.keys(got as object)).toEqual(Object.keys(v));
      }
    }
    expect(Object.is(((await (a.send([-0]), b.recv())) as number[])[0], -0)).toBe(true);
    a.close();
    b.close();
  });
});

describe('received values own their memory', () => {
  it('a typed array from recv() is not overwritten by the next message', async () => {
    const [a, b] = Pipe();
    try {
      a.send(new Uint8Array([1, 2, 3]));
      const first = (await b.recv()) as Uint8Array;
      a.send({ nested: Buffer.from('second') });
      a.send(new Uint8Array([7, 7, 7]));
      const second = (await b.recv()) as { nested: Uint8Array };
      await b.recv();
      expect(Array.from(first)).toEqual([1, 2, 3]);
      expect(Buffer.from(second.nested).toString()).toBe('second');
    } finally {
      a.close();
      b.close();
    }
  });
});
