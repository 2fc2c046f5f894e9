// Where synchronisation primitives keep their state: a few 32-bit words of
// shared memory, either carved from the shared heap (unnamed objects) or in a
// segment of their own (named objects). Also the wait/wake helpers over them
// and the liveness check that lets a lock outlive a dead holder.
import * as fs from 'node:fs';
import { threadId } from 'node:worker_threads';

import { afterFork } from '../after-fork';
import { stateError } from '../errors';
import { heap, type BlockRef, type Hold } from '../heap';
import { binding } from '../native';
import { reserve } from '../segment';
import type { CodecContext } from '../serialize';
import type { SpinPolicy } from '../spin';
import { invalidType, outOfRange } from '../validate';

/** A primitive's words: `i32[base + k]` is word k; `byteOffset` is word 0's offset in `buffer`. */
export interface Words {
  readonly buffer: ArrayBuffer;
  readonly i32: Int32Array;
  readonly base: number;
  readonly ref: BlockRef;
  /** Set for named objects: their own mapping, unmapped by close(). */
  readonly unmap?: () => void;
  /** Set for unnamed objects: this handle's reference to its heap block. */
  readonly hold?: Hold;
}

export const KIND = {
  Lock: 1,
  RLock: 2,
  Semaphore: 3,
  BoundedSemaphore: 4,
  Event: 5,
  Condition: 6,
  Barrier: 7,
} as const;
export type KindName = keyof typeof KIND;

// Every object gets 16 words (64 bytes, a cache line), so two hot locks never
// share a line and every layout fits.
export const OBJECT_WORDS = 16;
const OBJECT_BYTES = OBJECT_WORDS * 4;
const NAMED_PREFIX = '/pmp-obj-';

// An unnamed object's words hold a reference to their heap block, given back
// by releaseWords() (close()) or when the Words object is garbage collected.
// Words, not the handle, is what is watched: it is small, and a handle that
// V8 keeps alive for a watcher reaches its old generation with everything it
// holds (a dropped Lock cost 6 us instead of 3). The handle holds its Words
// until close(), as does any wait in progress, so they go no sooner.

/** Words for a new unnamed object. */
export function allocateWords(): Words {
  const block = heap().allocate(OBJECT_BYTES, 64);
  const w = wordsOf(block.buffer, { segment: block.segment, offset: block.offset, size: block.size }, undefined, block.hold);
  heap().releaseWith(w, block.hold);
  return w;
}

/**
 * The words a received handle refers to: an unnamed object's message carried
 * a reference to its block, which these words take over.
 */
export function attachWords(ref: BlockRef): Words {
  if (
    ref === null ||
    typeof ref !== 'object' ||
    typeof ref.segment !== 'string' ||
    !Number.isInteger(ref.offset) ||
    ref.offset % 4 !== 0 ||
    ref.size !== OBJECT_BYTES
  ) {
    throw invalidType('handle', 'a synchronisation object handle', ref);
  }
  if (ref.segment.startsWith(NAMED_PREFIX)) {
    // A named object: its name keeps it alive, nothing is counted.
    const block = heap().attach(ref);
    return wordsOf(block.buffer, ref);
  }
  const block = heap().adopt(ref);
  const w = wordsOf(block.buffer, ref, undefined, block.hold);
  heap().releaseWith(w, block.hold);
  return w;
}

/** A handle is done with its words: a named object's mapping is unmapped, an unnamed one's reference given back. */
export function releaseWords(w: Words): void {
  if (w.unmap) w.unmap();
  else if (w.hold) heap().release(w.hold);
}

/** What travels for the words: for an unnamed object, with a reference the message holds. */
export function shareWords(w: Words, ctx: CodecContext): BlockRef {
  return w.hold ? heap().share(w.hold, ctx) : w.ref;
}

function wordsOf(buffer: ArrayBuffer, ref: BlockRef, unmap?: () => void, hold?: Hold): Words {
  return { buffer, i32: new Int32Array(buffer), base: ref.offset / 4, ref, unmap, hold };
}

// ---- named objects ----------------------------------------------------------
//
// A named object is a one-page segment /pmp-obj-<name>. Its header says what it
// is: [magic, kind, layout version, ready]; the object's words start at byte 64.
// The creator wins an O_EXCL create, sizes and initialises the page, then
// publishes `ready`; attachers wait (bounded) for `ready` before trusting it.

const MAGIC = 0x504d5053; // 'PMPS'
// 2: a Lock/RLock word holds pid | WAITERS (synchronize.ts); version 1 kept a
// separate sleeper count, so the two must not share an object.
const LAYOUT_VERSION = 2;
const H_MAGIC = 0;
const H_KIND = 1;
const H_VERSION = 2;
const H_READY = 3;
const NAMED_SIZE = 4096;
const DATA_OFFSET = 64;
const NAME_RE = /^[A-Za-z0-9_.-]{1,200}$/;

export function segmentName(name: unknown, argName = 'options.name'): string {
  if (typeof name !== 'string') throw invalidType(argName, 'a string', name);
  if (!NAME_RE.test(name)) throw outOfRange(argName, '1-200 characters from A-Z a-z 0-9 _ . -', name);
  return `/pmp-obj-${name}`;
}

export function validateMode(mode: unknown): number {
  if (mode === undefined) return 0o600;
  if (typeof mode !== 'number' || !Number.isInteger(mode) || mode < 0 || mode > 0o777) {
    throw outOfRange('options.mode', 'an integer permission mode between 0 and 0o777', mode);
  }
  return mode;
}

const sleepMs = (ms: number): void => {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
};

/**
 * Creates or attaches the named object. `init` runs only in the creator, before
 * the object is published; `check` validates an existing object's words.
 */
export function openNamed(
  kind: KindName,
  name: string,
  mode: number,
  init: (w: Words) => void,
  check?: (w: Words) => void,
): { words: Words; created: boolean } {
  const segment = segmentName(name);
  for (let attempt = 0; ; attempt++) {
    let fd: number;
    let created = true;
    try {
      fd = binding.shmOpen(segment, true, true, mode);
    } catch (err) {
      if ((err as { code?: string }).code !== 'EEXIST') throw err;
      created = false;
      try {
        fd = binding.shmOpen(segment, false, false, mode);
      } catch (err2) {
        // Unlinked between our two opens: try to create it again.
        if ((err2 as { code?: string }).code === 'ENOENT' && attempt < 5) continue;
        throw err2;
      }
    }
    let mapping;
    try {
      if (created) {
        // Sized only once its page exists (Linux), so an attacher that
        // waits for the size never touches a page a full /dev/shm lacks.
        reserve(fd, segment, NAMED_SIZE);
      } else {
        // The creator may not have sized it yet.
        const deadline = Date.now() + 2000;
        while (binding.fstatSize(fd) < NAMED_SIZE) {
          if (Date.now() > deadline) throw notReady(name);
          sleepMs(2);
        }
      }
      mapping = new binding.Mapping(fd, NAMED_SIZE);
    } catch (err) {
      if (created) binding.shmUnlink(segment);
      throw err;
    } finally {
      binding.closeFd(fd);
    }
    const ref = { segment, offset: DATA_OFFSET, size: OBJECT_BYTES };
    const words = wordsOf(mapping.buffer, ref, () => mapping.unmap());
    const header = new Int32Array(mapping.buffer, 0, 16);
    if (created) {
      init(words);
      header[H_MAGIC] = MAGIC;
      header[H_KIND] = KIND[kind];
      header[H_VERSION] = LAYOUT_VERSION;
      Atomics.store(header, H_READY, 1);
      binding.futexWake(mapping.buffer, H_READY * 4, 0x7fffffff);
      return { words, created };
    }
    const deadline = Date.now() + 2000;
    while (Atomics.load(header, H_READY) !== 1) {
      if (Date.now() > deadline) {
        mapping.unmap();
        throw notReady(name);
      }
      binding.futexWait(mapping.buffer, H_READY * 4, 0, 10);
    }
    const foundKind = (Object.keys(KIND) as KindName[]).find((k) => KIND[k] === header[H_KIND]);
    if (header[H_MAGIC] !== MAGIC || header[H_VERSION] !== LAYOUT_VERSION || foundKind !== kind) {
      mapping.unmap();
      const what =
        header[H_MAGIC] !== MAGIC
          ? 'is not a posix-multiprocessing object'
          : header[H_VERSION] !== LAYOUT_VERSION
            ? `has layout version ${header[H_VERSION]}, this package uses ${LAYOUT_VERSION}`
            : `is a ${foundKind ?? `kind ${header[H_KIND]}`}, not a ${kind}`;
      throw stateError(`the named object ${JSON.stringify(name)} ${what}`, 'ERR_MP_NAMED_OBJECT_MISMATCH');
    }
    try {
      check?.(words);
    } catch (err) {
      mapping.unmap();
      throw err;
    }
    return { words, created };
  }
}

function notReady(name: string): Error {
  return stateError(
    `the named object ${JSON.stringify(name)} exists but was never initialised (did its creator die?); unlink it and retry`,
    'ERR_MP_NAMED_OBJECT_NOT_READY',
  );
}

export function unlinkNamed(name: string): void {
  binding.shmUnlink(segmentName(name, 'name'));
}

// ---- waiting ------------------------------------------------------------------

export type WaitResult = 'ok' | 'timed-out' | 'not-equal' | 'cancelled' | 'fault' | 'aborted' | 'closed';

/**
 * One pending async wait of a handle, which the handle's close() ends
 * (SyncObject in synchronize.ts). close() runs before the handle's memory is
 * unmapped, and synchronously: it sets `closed`, calls `stop` (the step in
 * progress, a watch from the loop or a sleep on an addon thread, then
 * resolves 'closed' at once), runs `cleanup` (which takes back what the wait
 * put in the shared words: a sleeper count, a condition slot, an arrival),
 * and rejects the wait with ERR_MP_CLOSED. The wait's own code checks
 * `closed` after every await and from then on touches nothing shared. A wait
 * that has taken what it waited for (a lock, a unit) calls `done()` at that
 * moment, before anything else can run, so that close() leaves it alone and
 * the caller receives what was taken.
 */
export interface PendingWait {
  closed: boolean;
  stop: (() => void) | undefined;
  cleanup: (() => void) | undefined;
  done(): void;
}

/** Milliseconds until the deadline for the kernel (negative: no limit). */
export function msLeft(deadline: number): number {
  if (deadline === Infinity) return -1;
  return Math.max(0, Math.ceil(deadline - performance.now()));
}

export function deadlineOf(timeout: number | undefined): number {
  return timeout === undefined ? Infinity : performance.now() + timeout * 1000;
}

export function waitSync(w: Words, word: number, expected: number, ms: number): WaitResult {
  return binding.futexWait(w.buffer, (w.base + word) * 4, expected, ms) as WaitResult;
}

/**
 * The same wait on an addon thread; resolves 'aborted' as soon as `signal` aborts.
 *
 * With a spin policy, the wait first watches the word from the event loop, one
 * check per turn of the loop (setImmediate), for as long as the policy allows
 * (src/spin.ts: the full 100 µs by default while recent waits ended within
 * it, halving after slow ones down to a few µs; never on a loaded machine).
 * The loop is not blocked: timers, I/O and other callbacks run between two
 * checks. Why: a wait handed to an addon thread costs two wake-ups when it
 * ends (the thread's, then the event loop's), 20-50 µs on a VM, while a loop
 * that does not sleep notices the change a few µs after it happens. When the
 * answers are slow the watch shrinks to a few µs before the wait goes to the
 * thread.
 */
export function waitAsync(
  w: Words,
  word: number,
  expected: number,
  ms: number,
  signal?: AbortSignal,
  policy?: SpinPolicy,
  pending?: PendingWait,
): Promise<WaitResult> {
  const budgetUs = policy === undefined || ms === 0 ? 0 : policy.budget();
  if (budgetUs === 0) {
    if (policy === undefined) return sleepAsync(w, word, expected, ms, signal, pending);
    const start = performance.now();
    return sleepAsync(w, word, expected, ms, signal, pending).then((r) => recorded(policy, start, r));
  }
  const start = performance.now();
  const i = w.base + word;
  const spinEnd = start + (ms < 0 ? budgetUs / 1000 : Math.min(budgetUs / 1000, ms));
  // A turn of the loop costs a syscall or more: within a turn, watch the word
  // for up to TURN_WATCH_MS, so most of the spin is spent looking at it (the
  // loop is held no longer than one turn costs anyway).
  const changed = (): boolean => {
    const turnEnd = Math.min(spinEnd, performance.now() + TURN_WATCH_MS);
    do {
      for (let k = 0; k < 8; k++) if (Atomics.load(w.i32, i) !== expected) return true;
    } while (performance.now() < turnEnd);
    return false;
  };
  return watchFromLoop(changed, spinEnd, signal, pending).then((r) => {
    if (r === 'ok') return recorded(policy!, start, 'not-equal');
    if (r === 'aborted' || r === 'closed') return r;
    const left = ms < 0 ? ms : Math.max(0, Math.ceil(ms - (performance.now() - start)));
    return sleepAsync(w, word, expected, left, signal, pending).then((s) => recorded(policy!, start, s));
  });
}

/**
 * Calls look() once per turn of the event loop (setImmediate: timers, I/O and
 * other callbacks run between two calls) until it returns true ('ok'), `until`
 * (a performance.now() time) has passed ('spun'), or the signal aborts
 * ('aborted'), or `pending`'s handle is closed ('closed'). A look that throws
 * ends the watch as 'spun': what comes next (a wait on a thread) reports the
 * problem.
 */
export function watchFromLoop(
  look: () => boolean,
  until: number,
  signal?: AbortSignal,
  pending?: PendingWait,
): Promise<'ok' | 'spun' | 'aborted' | 'closed'> {
  return new Promise((resolve) => {
    let timer: NodeJS.Immediate | undefined;
    const end = (r: 'aborted' | 'closed'): void => {
      clearImmediate(timer);
      signal?.removeEventListener('abort', onAbort);
      if (pending) pending.stop = undefined;
      resolve(r);
    };
    const onAbort = (): void => end('aborted');
    if (pending) pending.stop = () => end('closed');
    const turn = (): void => {
      timer = undefined;
      let r: 'ok' | 'spun' | undefined;
      try {
        if (look()) r = 'ok';
        else if (performance.now() >= until) r = 'spun';
      } catch {
        r = 'spun';
      }
      if (r === undefined) {
        timer = setImmediate(turn);
        return;
      }
      signal?.removeEventListener('abort', onAbort);
      if (pending) pending.stop = undefined;
      resolve(r);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    timer = setImmediate(turn);
  });
}

/** How long one turn of the event loop watches a word (see waitAsync). */
const TURN_WATCH_MS = 0.002;

function recorded(policy: SpinPolicy, start: number, r: WaitResult): WaitResult {
  if (r !== 'aborted' && r !== 'closed') policy.record((performance.now() - start) * 1000);
  return r;
}

// Rejects (with a system error) only if no thread could serve the wait.
function sleepAsync(
  w: Words,
  word: number,
  expected: number,
  ms: number,
  signal?: AbortSignal,
  pending?: PendingWait,
): Promise<WaitResult> {
  // Closed between the watch and this sleep: nothing to start.
  if (pending?.closed) return Promise.resolve('closed');
  return new Promise((resolve, reject) => {
    let done = false;
    const end = (r: 'aborted' | 'closed'): void => {
      if (done) return;
      done = true;
      handle.cancel();
      signal?.removeEventListener('abort', onAbort);
      if (pending) pending.stop = undefined;
      resolve(r);
    };
    const onAbort = (): void => end('aborted');
    const handle = binding.futexWaitAsync(w.buffer, (w.base + word) * 4, expected, ms, (r, error) => {
      if (done) return;
      done = true;
      signal?.removeEventListener('abort', onAbort);
      if (pending) pending.stop = undefined;
      if (r === 'error') reject(error);
      else resolve(r);
    });
    signal?.addEventListener('abort', onAbort, { once: true });
    if (pending) pending.stop = () => end('closed');
  });
}

export function wake(w: Words, word: number, count: number): void {
  binding.futexWake(w.buffer, (w.base + word) * 4, count);
}

// ---- who holds a lock ----------------------------------------------------------

// A binding of its own, not process.pid, so the hot paths read a constant;
// re-set in a child forked from a forkserver.
export let PID = process.pid;
afterFork(() => (PID = process.pid));
/** This thread, as a nonzero word (worker_threads numbers the main thread 0). */
export const TID = threadId + 1;

/**
 * Whether the process that holds a lock is gone. kill(pid, 0) is the cheap
 * test; a holder killed but not yet reaped by its parent still answers it, so on
 * Linux a zombie counts as dead too. A reused pid looks alive: see
 * docs/synchronization.md.
 */
export function isDead(pid: number): boolean {
  if (pid <= 0 || pid === PID) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as { code?: string }).code === 'ESRCH';
  }
  if (process.platform !== 'linux') return false;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    const state = stat[stat.lastIndexOf(')') + 2];
    return state === 'Z' || state === 'X';
  } catch {
    return true;
  }
}
