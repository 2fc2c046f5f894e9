// close() under a pending wait: every pending async wait of the closed handle
// rejects promptly with ERR_MP_CLOSED and gives back what it had registered,
// while waits of other handles of the same object (here: a second handle in
// this process, made by the codec exactly as another process makes one, or
// opened by name) are not disturbed and get what they wait for.
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';

import { Barrier, BrokenBarrierError, Condition, Event, Lock, Manager, Process, RLock, Semaphore } from 'posix-multiprocessing';
import heapModule from '../dist/cjs/heap.js';
import serializeModule from '../dist/cjs/serialize.js';
import * as fx from './fixtures/close.mjs';

const { heap } = heapModule as { heap: () => { unlinkOwned(): void } };
const { decode, encode } = serializeModule as { decode: (b: Uint8Array) => unknown; encode: (v: unknown) => Uint8Array };
// The heap's segments normally go at process exit; the leak check runs before that.
afterAll(() => heap().unlinkOwned());

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const uniq = (what: string) => `close-${what}-${process.pid}-${randomBytes(4).toString('hex')}`;

/** A second handle of the same object, as another process would receive it. */
const twin = <T>(o: T): T => decode(encode(o)) as T;

/** How a promise ended, and how long after `since` (ms). */
async function outcome(p: Promise<unknown>, since: () => number) {
  try {
    return { ok: true as const, value: await p, ms: performance.now() - since() };
  } catch (err) {
    return { ok: false as const, err: err as { code?: string; name?: string }, ms: performance.now() - since() };
  }
}

/** Closes `handle` while `pending` waits; the wait must reject with ERR_MP_CLOSED within 200 ms. */
async function expectClosedPromptly(handle: { close(): void }, pending: Promise<unknown>) {
  let closedAt = Infinity;
  const ended = outcome(pending, () => closedAt);
  await sleep(30); // well into the wait: spun out, asleep on a thread
  closedAt = performance.now();
  handle.close();
  const r = await ended;
  expect(r.ok, 'the wait should reject').toBe(false);
  expect(r.ok ? undefined : r.err.code).toBe('ERR_MP_CLOSED');
  expect(r.ms).toBeLessThan(200);
}

describe('close() ends the pending waits of its handle', () => {
  for (const kind of ['unnamed', 'named'] as const) {
    describe(kind, () => {
      const open = <T>(make: (o?: { name: string }) => T, what: string): [T, T] => {
        if (kind === 'unnamed') {
          const a = make();
          return [a, twin(a)];
        }
        const name = uniq(what);
        return [make({ name }), make({ name })];
      };

      it('Lock and RLock: the closed handle takes nothing; a waiter of another handle gets the lock', async () => {
        for (const Make of [Lock, RLock]) {
          const [a, b] = open((o) => new Make(o), Make.name);
          // Held by another process: an RLock is re-entrant within this thread.
          const held = new Event();
          const holder = new Process({ target: fx.holdFor, args: [b, 300, held] });
          holder.start();
          expect(await held.wait({ timeout: 10 })).toBe(true);
          await expectClosedPromptly(a, a.acquire());
          expect(await b.acquire({ timeout: 5 })).toBe(true);
          b.release();
          expect(await holder.join()).toBe(0);
          b.close();
          held.close();
          if (kind === 'named') Make.unlink(b.name!);
        }
      });

      it('Semaphore: a permit released after close() goes to a waiter of another handle, not to the closed one', async () => {
        const [a, b] = open((o) => new Semaphore(0, o), 'sem');
        const other = b.acquire({ timeout: 5 });
        await expectClosedPromptly(a, a.acquire());
        b.release();
        expect(await other).toBe(true);
        expect(b.getValue()).toBe(0);
        b.release();
        await sleep(50);
        // Nobody else took it: the closed handle's wait is gone.
        expect(b.getValue()).toBe(1);
        b.close();
        if (kind === 'named') Semaphore.unlink(b.name!);
      });

      it('Event: the closed handle rejects; the other handle still wakes on set()', async () => {
        const [a, b] = open((o) => new Event(o), 'event');
        const other = b.wait({ timeout: 5 });
        await expectClosedPromptly(a, a.wait());
        b.set();
        expect(await other).toBe(true);
        b.close();
        if (kind === 'named') Event.unlink(b.name!);
      });

      it('Condition: notify(1) after close() wakes the waiter of the other handle', async () => {
        const lock = kind === 'unnamed' ? new Lock() : undefined;
        const [a, b] = kind === 'unnamed' ? open(() => new Condition(lock), 'cond') : open((o) => new Condition(o), 'cond');
        await a.acquire();
        const closing = a.wait();
        await b.acquire(); // a's wait released the lock
        const other = b.wait({ timeout: 5 });
        await expectClosedPromptly(a, closing);
        await b.acquire();
        b.notify(1);
        b.release();
        expect(await other).toBe(true);
        b.release();
        b.close();
        lock?.close();
        if (kind === 'named') Condition.unlink(b.name!);
      });

      it('Barrier: the closed handle rejects with ERR_MP_CLOSED and breaks the cycle for the others', async () => {
        const [a, b] = open((o) => new Barrier(3, o), 'barrier');
        const other = outcome(b.wait({ timeout: 5 }), () => 0);
        await expectClosedPromptly(a, a.wait());
        const r = await other;
        expect(r.ok).toBe(false);
        expect(r.ok ? undefined : r.err).toBeInstanceOf(BrokenBarrierError);
        b.reset();
        b.close();
        if (kind === 'named') Barrier.unlink(b.name!);
      });
    });
  }

  it('a wait of a closed handle never resolves later, even when what it waited for comes', async () => {
    const sem = new Semaphore(0);
    const peer = twin(sem);
    const waits = [sem.acquire(), sem.acquire(), sem.acquire()].map((p) => outcome(p, () => 0));
    await sleep(30);
    sem.close();
    peer.release(3);
    for (const r of await Promise.all(waits)) expect(r.ok ? 'resolved' : r.err.code).toBe('ERR_MP_CLOSED');
    await sleep(30);
    expect(peer.getValue()).toBe(3);
    peer.close();
  });

  it('manager proxies: a parked get() and acquire() reject on close(); the item put later reaches another proxy', async () => {
    const m = await Manager.start();
    try {
      const q = await m.Queue();
      const lock = await m.Lock();
      await lock.acquire();
      const other = twin(q);
      await expectClosedPromptly({ close: () => void q.close() }, q.get());
      await expectClosedPromptly({ close: () => void lock.close() }, lock.acquire());
      await other.put('after');
      expect(await other.get({ timeout: 5 })).toBe('after');
      expect(await other.qsize()).toBe(0);
      await other.close();
    } finally {
      await m.shutdown();
    }
  });
});
