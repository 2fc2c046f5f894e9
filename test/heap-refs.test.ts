// Shared-heap blocks (Value, SharedArray, unnamed Lock...) live while any
// process or any message in flight holds a handle, and are given back when
// the last one goes: reuse, segments that outlive their creator, abandoned
// messages, the tracker's part when the creator is gone.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

import { Lock, Pipe, Process, Queue, QueueFullError, RawArray, SharedArray, Value } from 'posix-multiprocessing';
import serializeModule from '../dist/cjs/serialize.js';
import sharedctypes from '../dist/cjs/sharedctypes.js';
import * as fx from './fixtures/heap-refs.mjs';
import { runNode } from './support/run-node';

const { blockOf } = sharedctypes as unknown as { blockOf: (o: object) => { segment: string; offset: number; size: number } };
const { decode, encode } = serializeModule as { decode: (b: Uint8Array) => unknown; encode: (v: unknown) => Uint8Array };
const programs = path.join(__dirname, 'fixtures', 'programs');
const exists = (segment: string) => fs.existsSync(`/dev/shm/${segment}`);
/** The heap segments process `pid` created that still have a name. */
const heapSegmentsOf = (pid: number) => fs.readdirSync('/dev/shm').filter((e) => e.startsWith(`pmp-${pid}-`));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const runProgram = (script: string, args: string[] = []) => runNode(path.join(programs, script), args, ['--expose-gc']);

async function waitFor(check: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (check()) return true;
    await sleep(50);
  }
  return check();
}

describe('a handed-over object is not freed while another process holds it', () => {
  it('reproducer #3: the sender drops and collects what it sent over a Queue or a Pipe; a fresh object shares none of its memory', async () => {
    const run = await runProgram('heap-gc.mjs');
    expect(run.code, run.stderr).toBe(0);
    const seen = JSON.parse(run.stdout);
    for (const via of ['queue', 'pipe']) {
      expect(seen[`${via}:value`], `${via}: the receiver's writes must not land in a fresh Value`).toBe(0);
      expect(seen[`${via}:array`]).toEqual([0, 0, 0, 0]);
      // The receiver holds the transferred Lock: a fresh one is another lock.
      expect(seen[`${via}:lock`]).toBe(true);
    }
    // close() twice, then GC: the block came back once, so three new objects have three blocks.
    expect(seen.closedTwice).toEqual({ values: 3, locks: 3 });
  }, 60_000);

  it('what a process put on a queue before exiting is still usable by a later consumer, who can pass it on', async () => {
    const q = new Queue();
    const next = new Queue();
    const maker = new Process({ target: fx.putAndExit, args: [q] });
    maker.start();
    expect(await maker.join(20)).toBe(0);
    await sleep(600); // the tracker has noticed the maker is gone
    // Taken only now, by a process started after the maker ended, and passed on.
    const relay = new Process({ target: fx.relay, args: [q, next] });
    relay.start();
    expect(await relay.join(20)).toBe(0);
    await sleep(600);
    const [v, lock, arr] = (await next.get({ timeout: 10 })) as [Value, Lock, SharedArray<Float64Array>];
    const [segment] = heapSegmentsOf(maker.pid!);
    expect(blockOf(v).segment).toBe(`/${segment}`);
    expect(v.value).toBe(8);
    expect(Array.from(arr.array)).toEqual([1.5, 3.5]);
    expect(lock.acquireSync({ blocking: false })).toBe(true);
    lock.release();
    expect(exists(segment)).toBe(true);
    // The last handles go: so does the segment (the tracker unlinks it: its creator is gone).
    v.close();
    lock.close();
    arr.close();
    q.close();
    next.close();
    expect(await waitFor(() => !exists(segment), 5000)).toBe(true);
  }, 60_000);

  it('a segment whose creator was killed stays while another process holds a handle, and goes when it is closed', async () => {
    const q = new Queue();
    const maker = new Process({ target: fx.putAndHang, args: [q] });
    maker.start();
    const v = (await q.get({ timeout: 20 })) as Value;
    const [segment] = heapSegmentsOf(maker.pid!);
    expect(segment).toBeDefined();
    maker.kill();
    expect(await maker.join(10)).toBe(-9);
    await sleep(600);
    expect(exists(segment)).toBe(true);
    // Still sendable: a new process attaches by name.
    const reader = new Process({ target: fx.addOne, args: [v] });
    reader.start();
    expect(await reader.join(20)).toBe(0);
    expect(v.value).toBe(42);
    v.close();
    q.close();
    expect(await waitFor(() => !exists(segment), 5000)).toBe(true);
  }, 60_000);
});

describe('blocks are given back', () => {
  it('closed, dropped and handed-over unnamed objects leave a bounded number of heap segments', async () => {
    const run = await runProgram('heap-churn.mjs', ['20000', '3000']);
    expect(run.code, run.stderr).toBe(0);
    const { most, made } = JSON.parse(run.stdout);
    expect(made).toBe(106_000);
    // Each segment holds about 500 locks: without reuse this would be over 100.
    expect(most).toBeLessThanOrEqual(4);
  }, 60_000);

  it('arrays of many different sizes, created and closed in turn, reuse the same memory', () => {
    const before = heapSegmentsOf(process.pid).length;
    let seed = 12345;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let i = 0; i < 2000; i++) {
      const a = new RawArray('B', 1 + Math.floor(random() * 16000));
      a.array[a.length - 1] = 1;
      a.close();
    }
    // Without reuse: about 16 MB, some 250 segments.
    expect(heapSegmentsOf(process.pid).length - before).toBeLessThanOrEqual(2);
  });

  it('a put that fails (QueueFullError, timeout) gives back the reference the message took', async () => {
    const q = new Queue(1);
    q.putSync('filler');
    try {
      const lock = new Lock();
      const v = new Value('i', 5, { lock });
      const arr = new SharedArray('d', 3, { lock: false });
      const where = { v: blockOf(v), arr: blockOf(arr), lock: lock.ref() };
      expect(() => q.putNowait([v, arr])).toThrow(QueueFullError);
      expect(() => q.putSync(v, { timeout: 0.01 })).toThrow(QueueFullError);
      await expect(q.put(arr, { timeout: 0.01 })).rejects.toThrow(QueueFullError);
      v.close();
      arr.close();
      lock.close();
      // Nothing else refers to them: the next objects of their sizes get the same blocks.
      expect(new Lock().ref()).toEqual(where.lock);
      expect(blockOf(new Value('i', 0, { lock: false }))).toEqual(where.v);
      expect(blockOf(new SharedArray('d', 3, { lock: false }))).toEqual(where.arr);
    } finally {
      q.close();
    }
  });

  it('a send to a Pipe whose reader is gone gives the reference back', () => {
    const [r, w] = Pipe(false);
    r.close();
    try {
      const v = new Value('i', 5, { lock: false });
      const where = blockOf(v);
      expect(() => w.send(v)).toThrow(expect.objectContaining({ code: 'EPIPE' }));
      v.close();
      expect(blockOf(new Value('i', 0, { lock: false }))).toEqual(where);
    } finally {
      w.close();
    }
  });

  it("terminated worker threads' heap segments go at once, or, when something still refers to them, as soon as nothing does", async () => {
    const { stdout, code } = await runProgram('worker-heap.mjs');
    expect(code).toBe(0);
    const r = JSON.parse(stdout);
    expect(r.after).toBe(r.before); // 20 terminated workers, none left behind
    expect(r.whileHeld).toBe(r.before + 1); // the segment of a Value the main thread holds stays...
    expect(r.value).toBe(7);
    expect(r.afterClose).toBe(r.before); // ...until the main thread closes it
  }, 60_000);

  it('an Error part dropped as unsendable gives back what the transferables inside it took', () => {
    const v = new Value('i', 1, { lock: false });
    const where = blockOf(v);
    const err = Object.assign(new Error('boom'), { info: { v, f() {} } }); // f makes the part unsendable
    const back = decode(encode(err)) as Error & { droppedProperties?: Record<string, string> };
    expect(Object.keys(back.droppedProperties ?? {})).toEqual(['info']);
    v.close();
    // Nothing refers to the block any more: the next Value gets it.
    expect(blockOf(new Value('i', 0, { lock: false }))).toEqual(where);
  });

  it('an object still held elsewhere is not reused when this process closes its handle', async () => {
    const q = new Queue();
    const v = new Value('i', 1, { lock: false });
    const where = blockOf(v);
    q.putSync(v);
    v.close();
    // The message holds it: new Values go elsewhere.
    const others = Array.from({ length: 10 }, () => blockOf(new Value('i', 0, { lock: false })));
    expect(others).not.toContainEqual(where);
    const back = (await q.get()) as Value;
    expect(blockOf(back)).toEqual(where);
    expect(back.value).toBe(1);
    back.close();
    expect(blockOf(new Value('i', 0, { lock: false }))).toEqual(where);
    q.close();
  });
});
