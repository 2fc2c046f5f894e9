// Shared memory under real limits (issue #12, item 1): in a 64 MB /dev/shm, as in
// a container, running out is an ENOSPC error and never SIGBUS; and a closed
// queue gives its ring back at once, not at a garbage collection.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';

import { JoinableQueue, Queue, SimpleQueue } from 'posix-multiprocessing';
// Internals: the waiter counts in a ring's header.
import { GET_WAITERS, PUT_WAITERS } from '../dist/cjs/ring.js';
import { inSmallShm, lastJson, noSmallShm, type RunResult } from './support/small-shm';

const program = path.join(__dirname, 'fixtures', 'programs', 'shm-space.mjs');

const why = noSmallShm();
if (why) console.warn(`skipped: the 64 MB /dev/shm tests (${why})`);

describe.skipIf(why !== null)('in a 64 MB /dev/shm of its own', () => {
  let result: RunResult;
  let out: any;
  beforeAll(async () => {
    // 64 queues of 4 MiB rings, one at a time: four times what the tmpfs holds.
    result = await inSmallShm(program, ['64']);
    out = lastJson(result.stdout);
  }, 120_000);

  const ran = () => {
    expect({ code: result.code, signal: result.signal, stderr: result.stderr.slice(-2000) }).toEqual({ code: 0, signal: null, stderr: '' });
    expect(out).toBeDefined();
  };
  const enospc = (r: any, syscall = 'posix_fallocate') => {
    expect(r).toMatchObject({ code: 'ENOSPC', errno: -28, syscall });
    expect(r.message).toMatch(/'\/pmp[-_][^']+' \(allocating \d+ bytes of shared memory: \/dev\/shm is full\)/);
  };

  it('the program ends normally (before the fix it died of SIGBUS)', () => {
    ran();
    expect(out.size).toBe(64 * 1024 * 1024);
  });

  it("64 queues opened, used for 3 x 1 MB and closed in turn: /dev/shm holds one ring's worth at most", () => {
    ran();
    expect(out.loop.done).toBe(64);
    // One 4 MiB ring at a time (the messages travel inside it); none after.
    expect(out.loop.maxUsed).toBeLessThanOrEqual(5 * 1024 * 1024);
    expect(out.loop.usedAfter).toBe(0);
    expect(out.loop.maxMaps).toBe(1);
    expect(out.loop.mapsAfter).toBe(0);
  });

  it('a 100 MB put rejects (and putSync throws) with ENOSPC; the queue goes on working and nothing is left', () => {
    ran();
    enospc(out.bigPut);
    enospc(out.bigPutSync);
    expect(out.afterBigPut).toEqual({ small: 1, spilled: true });
    expect(out.afterBigPutEntries).toEqual([]);
  });

  it('SharedMemory.create(100e6) throws ENOSPC and leaves no segment', () => {
    ran();
    enospc(out.bigSharedMemory);
    expect(out.afterBigSharedMemoryEntries).toEqual([]);
  });

  it('with /dev/shm full, a Value, an array, a Lock, a named Lock, each queue class, a SharedMemory and a POSIX semaphore throw ENOSPC', () => {
    ran();
    expect(out.full.free).toBe(0);
    for (const what of ['value', 'array', 'lock', 'namedLock', 'queue', 'simpleQueue', 'joinableQueue', 'sharedMemory']) {
      enospc(out.full[what]);
    }
    // glibc writes a new POSIX semaphore's page (no mapping of a hole).
    expect(out.full.posixSemaphore).toMatchObject({ code: 'ENOSPC', errno: -28, syscall: 'sem_open' });
    // Nothing but the queue made before and the segment that fills /dev/shm.
    expect(out.full.entries).toHaveLength(2);
  });

  it('with /dev/shm full, a queue made before still takes what fits in its allocated pages; a put that needs more fails with ENOSPC', () => {
    ran();
    expect(out.full.smallPut).toEqual({ ok: true });
    enospc(out.full.ringPut, 'madvise');
    enospc(out.full.ringPutSync, 'madvise');
    enospc(out.full.spillPut);
  });

  it('once there is room again the same queue takes the same messages; nothing is left in /dev/shm', () => {
    ran();
    expect(out.recovered).toEqual({ ok: true });
    expect(out.left).toEqual([]);
    expect(out.usedAtEnd).toBe(0);
  });
});

/** How many mappings of this process are of the segment `name`. */
function mapped(name: string): number {
  return fs
    .readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((line) => line.includes(`/dev/shm${name}`)).length;
}

const segmentOf = (q: Queue<unknown> | SimpleQueue<unknown>) => (q as any)._ref.segment as string;

describe.skipIf(process.platform !== 'linux')('close() gives the ring back at once (no GC)', () => {
  it('each Queue, SimpleQueue and JoinableQueue used for 3 x 1 MB is unmapped by its close()', async () => {
    const msg = Buffer.alloc(1e6, 1);
    for (let i = 0; i < 8; i++) {
      const q = i % 3 === 0 ? new Queue() : i % 3 === 1 ? new SimpleQueue() : new JoinableQueue();
      const name = segmentOf(q);
      for (let j = 0; j < 3; j++) await q.put(msg);
      for (let j = 0; j < 3; j++) expect(((await q.get()) as Buffer).length).toBe(1e6);
      expect(mapped(name)).toBe(1);
      q.close();
      // In the same turn: no finalizer can have run.
      expect(mapped(name)).toBe(0);
    }
  });

  it('another handle of the same ring in this process keeps it mapped and working; the last close() unmaps it', async () => {
    const q = new Queue<unknown>();
    const name = segmentOf(q);
    await q.put(q);
    const other = (await q.get()) as Queue<string>;
    expect(other).not.toBe(q);
    expect(mapped(name)).toBe(1); // one mapping for both handles
    q.close();
    expect(mapped(name)).toBe(1);
    await other.put('still here');
    expect(await other.get()).toBe('still here');
    other.close();
    expect(mapped(name)).toBe(0);
    expect(() => other.putSync('x')).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
  });

  it('pending gets and puts of a closed handle reject with ERR_MP_CLOSED and give back their waiter counts; the ring goes once their waits end', async () => {
    const secondHandle = async <T>(q: Queue<T>) => {
      await q.put(q as unknown as T);
      return (await q.get()) as unknown as Queue<T>;
    };
    const sleepers = (q: Queue<number>, index: number) => Atomics.load((q as any).ring.i32, index);
    const empty = new Queue<number>(1);
    const empty2 = await secondHandle(empty);
    const gets = [empty2.get(), empty2.get()]; // the second waits in line behind the first
    const full = new Queue<number>(1);
    const full2 = await secondHandle(full);
    await full.put(0);
    const put = full2.put(1);
    const alone = new Queue<number>();
    const aloneName = segmentOf(alone);
    const get = alone.get();
    await new Promise((r) => setTimeout(r, 200)); // asleep on their words by now
    expect(sleepers(empty, GET_WAITERS)).toBe(1);
    expect(sleepers(full, PUT_WAITERS)).toBe(1);
    empty2.close();
    full2.close();
    alone.close();
    for (const p of [...gets, put, get]) await expect(p).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    // The creators' handles still map their rings and see no sleeper left behind.
    expect(sleepers(empty, GET_WAITERS)).toBe(0);
    expect(sleepers(full, PUT_WAITERS)).toBe(0);
    expect(mapped(segmentOf(empty))).toBe(1);
    expect(mapped(segmentOf(full))).toBe(1);
    expect(await full.get()).toBe(0);
    empty.close();
    full.close();
    // The wait's thread had the word until it noticed the cancel: a moment.
    const deadline = Date.now() + 2000;
    while (mapped(aloneName) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(mapped(aloneName)).toBe(0);
  });
});
