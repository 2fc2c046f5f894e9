// Connections through channels that cannot carry fds (issue #5): a queue, a
// one-way pipe (the pool channel is in pool.test.ts). They travel through the
// sending process's fd sharer (src/fd-share.ts, native/fdshare.cc).
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';

import { Connection, Pipe, Process, Queue, QueueFullError, SimpleQueue } from 'posix-multiprocessing';
import * as fx from './fixtures/fd-transfer.mjs';

const fdCount = () => fs.readdirSync('/proc/self/fd').length;
const sharer = () =>
  (globalThis as Record<symbol, { ownFds(): number[]; held(): number }>)[Symbol.for('posix-multiprocessing.fd-sharer')];

describe('a Connection on a Queue', () => {
  it('a child puts both ends of a Pipe; the parent and a third process talk through them', async () => {
    const q = new Queue();
    const release = new SimpleQueue();
    const sender = new Process({ target: fx.putPipeEnds, args: [q, release] });
    sender.start();
    const near = (await q.get()) as { role: string; conn: Connection };
    expect(near.role).toBe('near');
    expect(near.conn).toBeInstanceOf(Connection);
    expect([near.conn.readable, near.conn.writable]).toEqual([true, true]);
    const third = new Process({ target: fx.echoFromQueue, args: [q] });
    third.start();
    near.conn.send('hello');
    expect(await near.conn.recv()).toEqual({ pid: third.pid, echo: 'hello' });
    near.conn.send({ big: 'x'.repeat(100_000) });
    expect(((await near.conn.recv()) as { echo: { big: string } }).echo.big.length).toBe(100_000);
    near.conn.close();
    expect(await third.join()).toBe(0);
    release.putSync('go');
    expect(await sender.join()).toBe(0);
    q.close();
    release.close();
  }, 30_000);

  it('put and get in one process; a put that fails withdraws its duplicate', () => {
    const q = new Queue(1);
    const [a, b] = Pipe();
    const held = sharer()?.held() ?? 0;
    q.putSync(a);
    expect(sharer().held()).toBe(held + 1);
    expect(() => q.putNowait({ conn: a })).toThrow(QueueFullError);
    expect(() => q.putSync([a], { timeout: 0.05 })).toThrow(QueueFullError);
    expect(sharer().held()).toBe(held + 1);
    const got = q.getSync() as Connection;
    expect(sharer().held()).toBe(held);
    got.send(42);
    expect(b.recvSync()).toBe(42);
    // The same Connection twice in one message is one object, one duplicate.
    q.putSync({ x: a, y: a });
    const pair = q.getSync() as { x: Connection; y: Connection };
    expect(pair.x).toBe(pair.y);
    for (const c of [a, b, got, pair.x]) c.close();
    q.close();
  });

  it('the sender exits before the receiver takes it: a clear error at once, no hang, no fd left', async () => {
    const q = new Queue();
    const sender = new Process({ target: fx.putAndExit, args: [q] });
    sender.start();
    expect(await sender.join()).toBe(0);
    const before = fdCount();
    const t = performance.now();
    const err = (() => {
      try {
        q.getSync({ timeout: 10 });
      } catch (e) {
        return e as Error & { code: string; cause: { code: string } };
      }
      return null;
    })();
    expect(performance.now() - t).toBeLessThan(1500); // refused at once, not the 2 s timeout
    expect(err?.code).toBe('ERR_MP_FD_UNAVAILABLE');
    expect(err?.message).toMatch(new RegExp(`pid ${sender.pid}\\) has exited`));
    expect(err?.cause.code).toBe('ECONNREFUSED');
    expect(fdCount()).toBe(before);
    expect(q.empty()).toBe(true);
    q.close();
  }, 20_000);

  it('200 transfers leave no fds open in the sender or the receiver', async () => {
    const q = new Queue();
    const done = new SimpleQueue();
    const report = new SimpleQueue();
    const before = fdCount();
    const sender = new Process({ target: fx.putMany, args: [q, 200, done, report] });
    sender.start();
    for (let i = 0; i < 200; i++) {
      const item = (i % 2 === 0 ? await q.get() : q.getSync()) as { i: number; conn: Connection };
      expect(item.i).toBe(i);
      item.conn.close();
    }
    done.putSync('done');
    expect(await report.get()).toEqual({ extraFds: 0, held: 0 });
    expect(await sender.join()).toBe(0);
    expect(fdCount()).toBe(before);
    for (const x of [q, done, report]) x.close();
  }, 30_000);
});

describe('one sender, several receivers at once', () => {
  it('three children take 60 Connections from one queue: each arrives once, working', async () => {
    const q = new Queue();
    const pipes = Array.from({ length: 60 }, () => Pipe());
    const held = sharer()?.held() ?? 0;
    const takers = Array.from({ length: 3 }, () => new Process({ target: fx.takeAndAnswer, args: [q] }));
    for (const p of takers) p.start();
    for (const [i, [, theirs]] of pipes.entries()) {
      await q.put({ i, conn: theirs });
      theirs.close(); // the message holds its own duplicate
    }
    for (let k = 0; k < takers.length; k++) await q.put(null);
    const pids = new Set<number>();
    for (const [i, [mine]] of pipes.entries()) {
      const answer = (await mine.recv()) as { i: number; pid: number };
      expect(answer.i).toBe(i);
      pids.add(answer.pid);
      await expect(mine.recv()).rejects.toMatchObject({ code: 'ERR_MP_EOF' }); // exactly one answer
      mine.close();
    }
    for (const p of takers) expect(await p.join()).toBe(0);
    expect([...pids].every((pid) => takers.some((p) => p.pid === pid))).toBe(true);
    expect(sharer().held()).toBe(held);
    q.close();
  }, 60_000);
});

describe('a Connection over a one-way Pipe', () => {
  it('a child sends both ends of a duplex Pipe; a third process gets one in its args', async () => {
    const [r, w] = Pipe(false);
    const release = new SimpleQueue();
    const sender = new Process({ target: fx.sendEndsOverPipe, args: [w, release] });
    sender.start();
    w.close();
    const { conn: near } = (await r.recv()) as { conn: Connection };
    const { conn: far } = r.recvSync() as { conn: Connection };
    const third = new Process({ target: fx.echoOn, args: [far] });
    third.start();
    far.close();
    near.send([1, 2, 3]);
    expect(await near.recv()).toEqual({ pid: third.pid, echo: [1, 2, 3] });
    near.close();
    expect(await third.join()).toBe(0);
    release.putSync('go');
    expect(await sender.join()).toBe(0);
    r.close();
    release.close();
  }, 30_000);
});
