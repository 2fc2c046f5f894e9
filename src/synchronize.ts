// Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition and Barrier across
// processes (and worker threads), with Python's multiprocessing semantics.
//
// State lives in 32-bit words of shared memory (sync/words.ts). The uncontended
// paths are plain Atomics on those words, with no native call; only a waiter
// enters the kernel (futex), and a releaser wakes it only when the word (Lock,
// RLock) or a waiter count (the others) says someone may sleep. Async waits
// sleep on addon threads, never the event loop.

import { abortError, BrokenBarrierError, closedError, stateError } from './errors';
import { importTarget, pickExport, requireModule } from './import-target';
import { locate, type TargetRef } from './locate';
import { linkPosixSemaphore, openPosixSemaphore, posixRequested, unlinkPosixSemaphore, type SemaphoreOptions } from './posix-semaphore';
import { ACQUIRE, ACQUIRE_SYNC, namedOptions, SEMAPHORE, WAIT, WAIT_SYNC } from './sync/options';
import { withAcquired, withAcquiredSync } from './sync/with-lock';
import { registerTransferable } from './serialize';
import { asyncWaitSpinConfig, pendingAsyncWaits, SpinPolicy } from './spin';
import {
  PID,
  TID,
  allocateWords,
  attachWords,
  deadlineOf,
  isDead,
  msLeft,
  openNamed,
  releaseWords,
  shareWords,
  unlinkNamed,
  validateMode,
  waitAsync,
  waitSync,
  wake,
  type KindName,
  type PendingWait,
  type Words,
  type WaitResult,
} from './sync/words';
import type { BlockRef } from './heap';
import type { CodecContext } from './serialize';
import {
  invalidType,
  type OptionsSpec,
  validateBoolean,
  validateInteger,
  validateOptions,
  validateSignal,
  validateTimeout,
} from './validate';

export interface NamedOptions {
  /** Create or attach the named object /pmp-obj-<name> (see docs/synchronization.md). */
  name?: string;
  /** Permission bits when this call creates the object; default 0o600. */
  mode?: number;
}
export interface AcquireOptions {
  /** Seconds; undefined waits without limit. */
  timeout?: number;
  signal?: AbortSignal;
  /** false: do not wait (Python's acquire(blocking=False)). */
  blocking?: boolean;
}
export interface AcquireSyncOptions {
  blocking?: boolean;
  timeout?: number;
}
export interface WaitOptions {
  timeout?: number;
  signal?: AbortSignal;
}

const ALL = 0x7fffffff;
// While another process holds a lock, its waiters look up every SLICE_MS to
// see whether that process died (the owner-death guarantee is 100 ms).
const SLICE_MS = 50;
// How long a contended acquire spins in user space, at most, before it sleeps
// in the kernel (or, for acquire(), parks on an addon thread). Critical
// sections are usually far shorter than a futex round trip, and a waiter that
// is spinning takes a handoff in well under a microsecond, where waking a
// sleeper costs tens.
const SPIN_MS = Number(process.env.PMP_SPIN_US ?? 30) / 1000;
// Each handle adapts its own budget (process-local state; nothing shared): a
// spin that succeeds doubles the next budget, up to SPIN_MS; one that runs out
// halves it, down to MIN_SPIN_MS. When the other side answers within
// microseconds (an idle machine) waiters keep spinning; when spins keep
// failing — long critical sections, or an oversubscribed machine where the
// process that would release is itself waiting for a CPU, perhaps this one —
// the budget shrinks to a few polls and the waiter goes to sleep almost at
// once, as CPython's does, instead of burning the CPU the releaser needs.
const MIN_SPIN_MS = Math.min(SPIN_MS, 0.002);

/** A handle's process-local waiting state. */
interface Spin {
  /** The current spin budget, in ms. */
  ms: number;
  /** Set by a release that found STARVING: hold back until then (a performance.now() time; 0: no). */
  holdBack: number;
  /** How long async waits watch their word from the event loop before sleeping (sync/words.ts waitAsync). */
  loop: SpinPolicy;
}
const newSpin = (): Spin => ({ ms: SPIN_MS, holdBack: 0, loop: new SpinPolicy(undefined, asyncWaitSpinConfig) });

function spinDone(s: Spin, ok: boolean): boolean {
  s.ms = ok ? Math.min(SPIN_MS, s.ms * 2) : Math.max(MIN_SPIN_MS, s.ms / 2);
  return ok;
}

// A waiter that spun out and slept, but got what it waited for within SPIN_MS
// of starting, would have been served by a full spin: the other side was quick
// and only the wake-up cost time. Without this the budget could never grow
// back when both sides of a handoff have shrunk theirs: each would sleep, each
// wait would then last a wake-up, longer than the shrunken spin, and the pair
// would stay asleep on an idle machine. Under load waits last longer than
// SPIN_MS and the budget stays small.
function tookAfterSleep(s: Spin, start: number): void {
  if (performance.now() - start <= SPIN_MS) s.ms = SPIN_MS;
}

// The spins poll with a plain atomic load and try the CAS only when the word
// looks free (test-and-test-and-set: a failing CAS would take the cache line
// away from the holder for nothing), and pause between polls, so a waiter
// does not keep pulling the line the holder is about to write.
//
// A Lock's pause is long from the first poll on: LOCK_PAUSE_MS, 2.5 µs, timed
// by the clock (a loop of n rounds lasted 2.4 µs or 10 depending on how the
// JIT had compiled it). Two processes taking a lock in a tight loop
// (bench/sync: 2 x 200,000 increments) swap it whenever a waiter finds it
// free, and each change of hands moves the lock's and the data's cache lines
// across the cores. The loser of an acquire used to poll every few ns at
// first and back off to ~1.2 µs; those first quick polls found the holder
// between its release and its next acquire again and again. Medians of seven
// interleaved trials: pauses growing from ~10 ns to ~1.2 µs, 15-24 ms; 2.5 µs
// throughout, 10.6 ms; 5 µs, 9.8 ms (glibc's pthread_mutex_t: 11-14 ms). The
// cost is latency: a spinning waiter notices a release up to 2.5 µs late,
// against the 10-25 µs a sleeper takes to wake.
//
// A Semaphore's pauses grow from MIN_PAUSE to MAX_PAUSE rounds (~10-150 ns),
// and it reads the clock every 8 polls (a read costs about a short poll): it
// is the primitive of handoffs, where answering within a few hundred ns
// matters and no tight loop of acquires competes.
const MIN_PAUSE = 8;
const MAX_PAUSE = 128;
const LOCK_PAUSE_MS = 0.0025;

let pauseSink = 0;
/** Burns about n dependent multiply-adds; the result is kept so the JIT cannot drop the loop. */
function pause(n: number): void {
  let x = pauseSink;
  for (let k = 0; k < n; k++) x = (Math.imul(x, 1103515245) + 12345) | 0;
  pauseSink = x;
}

/** Spins until it takes the lock word i32[i] (true) or the budget runs out (false). */
function spinLock(i32: Int32Array, i: number, s: Spin): boolean {
  if (SPIN_MS <= 0) return false;
  const end = performance.now() + s.ms;
  for (;;) {
    if (Atomics.load(i32, i) === 0 && Atomics.compareExchange(i32, i, 0, PID) === 0) return spinDone(s, true);
    const now = performance.now();
    if (now >= end) return spinDone(s, false);
    const until = now + LOCK_PAUSE_MS;
    while (performance.now() < until);
  }
}

// Set while a handle is revived from another process: the constructor then
// adopts these words instead of allocating and initialising new ones.
let attaching: Words | null = null;

function adopt<T>(words: Words, make: () => T): T {
  attaching = words;
  try {
    return make();
  } finally {
    attaching = null;
  }
}

function checkResult(r: WaitResult, what: string): void {
  if (r === 'fault') throw closedError(what);
}

// acquireSync()'s options as one number: the deadline (performance.now()
// time, Infinity: none), or NO_WAIT for blocking: false. A number, not an
// object, so the try-acquire path allocates nothing.
const NO_WAIT = -Infinity;

function parseAcquireSync(options: unknown): number {
  const o = validateOptions(options, ACQUIRE_SYNC);
  const blocking = o.blocking === undefined ? true : validateBoolean(o.blocking, 'options.blocking');
  const timeout = validateTimeout(o.timeout, 'options.timeout');
  return blocking ? deadlineOf(timeout) : NO_WAIT;
}

// acquire() also takes Python's `blocking: false` (a try-acquire), so that the
// idiom does not silently become an unbounded wait.
function parseAcquire(options: unknown): { timeout: number | undefined; signal: AbortSignal | undefined } {
  const o = validateOptions(options, ACQUIRE);
  const parsed = { timeout: validateTimeout(o.timeout, 'options.timeout'), signal: validateSignal(o.signal) };
  if (o.blocking !== undefined && !validateBoolean(o.blocking, 'options.blocking')) parsed.timeout = 0;
  return parsed;
}

function parseWait(options: unknown, spec: OptionsSpec = WAIT): { timeout: number | undefined; signal: AbortSignal | undefined } {
  // wait(2) reads as Python's wait(2): a timeout in seconds.
  if (typeof options === 'number') return { timeout: validateTimeout(options, 'timeout'), signal: undefined };
  const o = validateOptions(options, spec);
  return { timeout: validateTimeout(o.timeout, 'options.timeout'), signal: validateSignal(o.signal) };
}

interface Pending extends PendingWait {
  reject(err: Error): void;
}

/** Common to every primitive: its words, named creation, close() and dispose. */
abstract class SyncObject {
  protected _w: Words | null;
  readonly #name: string | undefined;
  // This handle's pending async waits (made on first use: most handles never wait).
  #pending: Set<Pending> | null = null;

  protected constructor(
    kind: KindName,
    options: NamedOptions | undefined,
    init: (w: Words) => void,
    check?: (w: Words) => void,
    spec?: OptionsSpec,
  ) {
    const o = validateOptions(options, spec ?? namedOptions(kind)) as NamedOptions;
    if (attaching) {
      this._w = attaching;
      attaching = null;
      this.#name = undefined;
      return;
    }
    if (o.name !== undefined) {
      this._w = openNamed(kind, o.name as string, validateMode(o.mode), init, check).words;
      this.#name = o.name;
    } else {
      if (o.mode !== undefined) validateMode(o.mode);
      this._w = allocateWords();
      init(this._w);
    }
  }

  /** The name given at construction, if any. */
  get name(): string | undefined {
    return this.#name;
  }

  protected get w(): Words {
    if (this._w === null) throw closedError(this.constructor.name);
    return this._w;
  }

  /** Where the words are (mapping them takes no reference: see encodeRef). */
  ref(): BlockRef {
    return this.w.ref;
  }

  /** @internal what travels to another process, with the reference the message holds. */
  encodeRef(ctx: CodecContext): BlockRef {
    return shareWords(this.w, ctx);
  }

  /**
   * Runs an async wait that this handle's close() ends: the returned promise
   * rejects with ERR_MP_CLOSED at once, whatever `run` is waiting for (see
   * PendingWait in sync/words.ts for the protocol `run` follows). A `run`
   * that throws has its cleanup run too.
   */
  protected _pendingWait<T>(run: (p: PendingWait) => Promise<T>): Promise<T> {
    const set = (this.#pending ??= new Set());
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { closed: false, stop: undefined, cleanup: undefined, reject, done: () => set.delete(p) };
      set.add(p);
      run(p).then(
        (v) => {
          set.delete(p);
          if (!p.closed) resolve(v);
        },
        (err) => {
          set.delete(p);
          if (p.closed) return;
          // A wait that failed (no thread could serve it, say) leaves as an
          // abort does: what it registered is given back.
          const cleanup = p.cleanup;
          p.cleanup = undefined;
          try {
            cleanup?.();
          } finally {
            reject(err);
          }
        },
      );
    });
  }

  /**
   * Drops this handle. The object lives on in other processes (a named one
   * until unlink). Pending async waits of this handle reject with
   * ERR_MP_CLOSED first, and give back what they had registered in the
   * shared words, while those are still mapped.
   */
  close(): void {
    const w = this._w;
    if (w === null) return;
    this._w = null;
    const pending = this.#pending;
    if (pending !== null && pending.size > 0) {
      const err = closedError(this.constructor.name);
      for (const p of [...pending]) {
        p.closed = true;
        p.stop?.();
        const cleanup = p.cleanup;
        p.cleanup = undefined;
        try {
          cleanup?.();
        } finally {
          p.reject(err);
        }
      }
      pending.clear();
    }
    this._beforeUnmap();
    releaseWords(w);
  }

  /** Closes what this handle owns inside its words (a named Condition's lock), before they are released. */
  protected _beforeUnmap(): void {}

  [Symbol.dispose](): void {
    this.close();
  }

  /** Removes a named object's name; processes that have it open keep using it. */
  static unlink(name: string): void {
    unlinkNamed(name);
  }
}

// ---- the lock word --------------------------------------------------------------
//
// Word `at` is 0 when the lock is free, else the holder's pid, with WAITERS
// set when a waiter may be asleep in the kernel (the mutex of Drepper's
// "Futexes Are Tricky", with a pid in place of its 1):
//
// - acquire: CAS 0 -> pid. Uncontended, that and release's exchange are the
//   only shared accesses.
// - release: exchange -> 0; the old value says whether to wake one waiter.
// - a waiter about to sleep first makes sure its value carries WAITERS (CAS v
//   -> v|WAITERS) and then sleeps on exactly that value. A release in between
//   changes the word, so the kernel refuses the sleep ('not-equal') and the
//   waiter looks again: the wake-up cannot be lost. (A separate sleeper count
//   read after a plain store would be a store-load race; here the releaser's
//   exchange and the waiter's CAS are on the same word.)
// - a waiter that slept takes the lock as pid|WAITERS: it cannot know whether
//   others still sleep, so its release wakes one more (at worst needlessly).
// - a waiter that slept and leaves without the lock (timeout, abort) may have
//   taken the wake-up meant for another: passOn() hands it on.
//
// The pid makes owner death detectable: a waiter that finds the holder gone
// takes the lock over with a CAS from the dead holder's value, so exactly one
// wins. Words at+1.. are unused by the lock (RLock keeps its owner thread and
// count in words 2 and 3).

/** Linux pids are below 2^22 (PID_MAX_LIMIT), macOS ones below 100,000. */
const PID_MASK = 0x3fffff;
const WAITERS = 0x40000000;

// Fairness. Barging (a running process takes a just-released lock ahead of a
// sleeping waiter) is what makes contended throughput, but a process that
// re-acquires in a tight loop could keep a sleeper out for as long as the loop
// runs. So a sleeper that has waited more than FAIR_MS marks the word STARVING
// (with WAITERS), and the handle whose release finds the mark holds back on
// its next blocking acquire, for at most YIELD_MS, until someone else has
// taken the lock (normally the starving waiter it just woke). STARVING is only
// a hint: the lock is held exactly when the word is nonzero, whoever takes it
// clears the mark, and a stale mark costs one bounded hold-back.
const STARVING = 0x20000000;
const FAIR_MS = 2;
const YIELD_MS = 0.5;

function checkPid(): void {
  if (PID > PID_MASK) throw stateError(`pid ${PID} does not fit a lock word (22 bits)`, 'ERR_MP_UNSUPPORTED');
}

const enum Got {
  No = 0,
  Yes = 1,
  OwnerDied = 2,
}

// When each pid was last seen alive: a failing try-acquire checks the holder
// at most once per SLICE_MS instead of paying a syscall every time.
const seenAlive = new Map<number, number>();

function holderDead(pid: number): boolean {
  const now = performance.now();
  if (now - (seenAlive.get(pid) ?? -Infinity) < SLICE_MS) return false;
  if (isDead(pid)) {
    seenAlive.delete(pid);
    return true;
  }
  if (seenAlive.size > 64) seenAlive.clear();
  seenAlive.set(pid, now);
  return false;
}

function lockTry(i32: Int32Array, i: number): Got {
  const v = Atomics.load(i32, i);
  if (v === 0) return Atomics.compareExchange(i32, i, 0, PID) === 0 ? Got.Yes : Got.No;
  const holder = v & PID_MASK;
  // Keep WAITERS: the sleepers behind the dead holder are still there.
  if (holder !== PID && holderDead(holder) && Atomics.compareExchange(i32, i, v, PID | (v & WAITERS)) === v) {
    return Got.OwnerDied;
  }
  return Got.No;
}

// One look at the word on the way to sleep. Returns the lock if it can be
// taken, otherwise the value to sleep on (with WAITERS set), or -1 to look
// again at once.
const AGAIN = -1;
const TOOK = -2;
const TOOK_DEAD = -3;
const TIMED_OUT = -4;

function lockStep(i32: Int32Array, i: number, deadline: number, since: number): number {
  const v = Atomics.load(i32, i);
  if (v === 0) return Atomics.compareExchange(i32, i, 0, PID | WAITERS) === 0 ? TOOK : AGAIN;
  const holder = v & PID_MASK;
  if (holder !== PID && holderDead(holder)) {
    return Atomics.compareExchange(i32, i, v, PID | WAITERS) === v ? TOOK_DEAD : AGAIN;
  }
  const now = performance.now();
  if (now >= deadline) return TIMED_OUT;
  const want = now - since > FAIR_MS ? v | WAITERS | STARVING : v | WAITERS;
  if (want !== v && Atomics.compareExchange(i32, i, v, want) !== v) return AGAIN;
  return want;
}

/** After a release that found STARVING: wait (bounded) until someone else takes the lock. */
function holdBack(i32: Int32Array, i: number, s: Spin, deadline: number): void {
  const until = Math.min(s.holdBack, deadline);
  s.holdBack = 0;
  for (let n = 1; Atomics.load(i32, i) === 0; n++) {
    pause(MAX_PAUSE);
    if ((n & 7) === 0 && performance.now() >= until) return;
  }
}

/** The same without blocking the event loop: looks again once per loop turn. */
async function holdBackAsync(i32: Int32Array, i: number, s: Spin, deadline: number, p: PendingWait): Promise<void> {
  const until = Math.min(s.holdBack, deadline);
  s.holdBack = 0;
  while (Atomics.load(i32, i) === 0 && performance.now() < until) {
    await new Promise(setImmediate);
    if (p.closed) return;
  }
}

// How long one sleep may last: a holder in another process is looked at
// every SLICE_MS, for owner death.
function sliceMs(v: number, deadline: number): number {
  const ms = msLeft(deadline);
  return (v & PID_MASK) !== PID && (ms < 0 || ms > SLICE_MS) ? SLICE_MS : ms;
}

/** A waiter that slept leaves without the lock: make sure another sleeper, if any, is woken. */
function passOn(w: Words, at: number): void {
  const i = w.base + at;
  for (;;) {
    const v = Atomics.load(w.i32, i);
    // Free: wake one now. Held: WAITERS makes its release wake one.
    if (v === 0) return wake(w, at, 1);
    if (v & WAITERS || Atomics.compareExchange(w.i32, i, v, v | WAITERS) === v) return;
  }
}

// The turns of an acquire after its spin, shared by the sync and async forms,
// which differ only in how they sleep: a result (DONE_BASE - Got), or the word
// value to sleep on (always > 0).
const DONE_BASE = -10;

interface Turn {
  readonly start: number; // when the acquire began (for tookAfterSleep)
  readonly since: number; // when it stopped spinning (for the STARVING mark)
  slept: boolean;
}

function lockTurn(w: Words, at: number, deadline: number, spin: Spin, t: Turn): number {
  const i32 = w.i32;
  const i = w.base + at;
  for (;;) {
    const v = lockStep(i32, i, deadline, t.since);
    if (v === AGAIN) continue;
    if (v === TOOK || v === TOOK_DEAD) {
      if (t.slept) tookAfterSleep(spin, t.start);
      return DONE_BASE - (v === TOOK ? Got.Yes : Got.OwnerDied);
    }
    if (v === TIMED_OUT) {
      if (t.slept) passOn(w, at);
      return DONE_BASE - Got.No;
    }
    t.slept = true;
    return v;
  }
}

function lockAcquireSync(w: Words, at: number, deadline: number, spin: Spin): Got {
  const i32 = w.i32;
  const i = w.base + at;
  if (deadline === NO_WAIT) return lockTry(i32, i);
  if (spin.holdBack !== 0) holdBack(i32, i, spin, deadline);
  const start = performance.now();
  if (deadline > start && spinLock(i32, i, spin)) return Got.Yes;
  const t: Turn = { start, since: performance.now(), slept: false };
  for (;;) {
    const v = lockTurn(w, at, deadline, spin, t);
    if (v <= DONE_BASE) return (DONE_BASE - v) as Got;
    checkResult(waitSync(w, at, v, sliceMs(v, deadline)), 'lock');
  }
}

async function lockAcquireAsync(w: Words, at: number, deadline: number, spin: Spin, signal: AbortSignal | undefined, p: PendingWait): Promise<Got> {
  const i32 = w.i32;
  const i = w.base + at;
  // The spin below holds the event loop: only for this thread's only pending
  // async wait. Registered from here on, the hold-back included: it is pending.
  const pending = {};
  pendingAsyncWaits.add(pending);
  try {
    if (spin.holdBack !== 0) {
      await holdBackAsync(i32, i, spin, deadline, p);
      if (p.closed) return Got.No;
    }
    const start = performance.now();
    if (deadline > start && pendingAsyncWaits.alone(pending) && spinLock(i32, i, spin)) {
      p.done();
      return Got.Yes;
    }
    const t: Turn = { start, since: performance.now(), slept: false };
    // Closed while asleep: this waiter may have taken the wake-up meant for
    // another, so close() hands it on, as an abort does.
    p.cleanup = () => {
      if (t.slept) passOn(w, at);
    };
    for (;;) {
      const v = lockTurn(w, at, deadline, spin, t);
      if (v <= DONE_BASE) {
        p.cleanup = undefined;
        if (v !== DONE_BASE - Got.No) p.done();
        return (DONE_BASE - v) as Got;
      }
      const r = await waitAsync(w, at, v, sliceMs(v, deadline), signal, spin.loop, p);
      if (p.closed) return Got.No;
      if (r === 'aborted') {
        p.cleanup = undefined;
        passOn(w, at);
        throw abortError(signal!);
      }
      checkResult(r, 'lock');
    }
  } finally {
    pendingAsyncWaits.delete(pending);
  }
}

/** Releases; returns the old word (0: it was not held). */
function lockRelease(w: Words, at: number, spin: Spin): number {
  const old = Atomics.exchange(w.i32, w.base + at, 0);
  if (old & WAITERS) {
    wake(w, at, 1);
    if (old & STARVING) spin.holdBack = performance.now() + YIELD_MS;
  }
  return old;
}

// Used by Condition to release a lock completely around a wait and take it back.
const kOwned = Symbol('owned');
const kSave = Symbol('releaseSave');
const kRestoreSync = Symbol('restoreSync');
const kRestore = Symbol('restore');

abstract class LockBase extends SyncObject {
  protected _ownerDied = false;
  protected readonly _spin = newSpin();

  /** True after this handle took the lock over from a holder that died, until its next release. */
  get ownerDied(): boolean {
    return this._ownerDied;
  }

  abstract acquireSync(options?: AcquireSyncOptions): boolean;
  abstract acquire(options?: AcquireOptions): Promise<boolean>;
  abstract release(): void;

  locked(): boolean {
    return Atomics.load(this.w.i32, this.w.base) !== 0;
  }

  /** Acquires, runs fn (sync or async) and always releases. */
  withLock<T>(fn: () => T | Promise<T>): Promise<T> {
    return withAcquired(this, fn);
  }

  withLockSync<T>(fn: () => T): T {
    return withAcquiredSync(this, fn);
  }

  abstract [kOwned](): boolean;
  abstract [kSave](): number;
  abstract [kRestoreSync](saved: number): void;
  abstract [kRestore](saved: number): Promise<void>;
}

/** A non-recursive lock. It has no owner: any process or thread may release it. */
export class Lock extends LockBase {
  constructor(options?: NamedOptions) {
    checkPid();
    super('Lock', options, () => {});
  }

  acquireSync(options?: AcquireSyncOptions): boolean {
    const w = this._w;
    if (w === null) throw closedError('Lock');
    // The fast path reads this handle's holdBack (process-local) and makes
    // one CAS on the word.
    if (options === undefined) {
      if (this._spin.holdBack === 0 && Atomics.compareExchange(w.i32, w.base, 0, PID) === 0) return true;
      return this.#took(lockAcquireSync(w, 0, Infinity, this._spin));
    }
    // Options are checked before the fast path so bad ones fail every time.
    const deadline = parseAcquireSync(options);
    if ((this._spin.holdBack === 0 || deadline === NO_WAIT) && Atomics.compareExchange(w.i32, w.base, 0, PID) === 0) {
      return true;
    }
    return this.#took(lockAcquireSync(w, 0, deadline, this._spin));
  }

  async acquire(options?: AcquireOptions): Promise<boolean> {
    const w = this.w;
    const { timeout, signal } = parseAcquire(options);
    if (signal?.aborted) throw abortError(signal);
    if (this._spin.holdBack === 0 && Atomics.compareExchange(w.i32, w.base, 0, PID) === 0) return true;
    const deadline = deadlineOf(timeout);
    return this.#took(await this._pendingWait((p) => lockAcquireAsync(w, 0, deadline, this._spin, signal, p)));
  }

  #took(got: Got): boolean {
    if (got === Got.OwnerDied) this._ownerDied = true;
    return got !== Got.No;
  }

  release(): void {
    const w = this._w;
    if (w === null) throw closedError('Lock');
    // One exchange releases, tells whether the lock was held (storing 0 over
    // 0 changes nothing) and whether a waiter may sleep.
    const old = Atomics.exchange(w.i32, w.base, 0);
    if (old === 0) throw stateError('release() called on an unlocked Lock', 'ERR_MP_LOCK_NOT_HELD');
    if (this._ownerDied) this._ownerDied = false;
    if (old & WAITERS) {
      wake(w, 0, 1);
      if (old & STARVING) this._spin.holdBack = performance.now() + YIELD_MS;
    }
  }

  [kOwned](): boolean {
    return (Atomics.load(this.w.i32, this.w.base) & PID_MASK) === PID;
  }
  [kSave](): number {
    this.release();
    return 1;
  }
  [kRestoreSync](): void {
    this.acquireSync();
  }
  async [kRestore](): Promise<void> {
    await this.acquire();
  }
}

// RLock words: [holder pid, sleepers, holder thread (TID), recursion count]. The
// thread word is written after the CAS and cleared before the release, so a
// thread can only ever see its own TID there while it really holds the lock.
const R_OWNER = 2;
const R_COUNT = 3;

/** A re-entrant lock owned by one (process, thread); only the owner may release it. */
export class RLock extends LockBase {
  constructor(options?: NamedOptions) {
    checkPid();
    super('RLock', options, () => {});
  }

  // The owner and count words are only written by the holder, before the
  // seq-cst release exchange, so plain accesses suffice (and keep the pair fast).
  #mine(w: Words): boolean {
    return w.i32[w.base + R_OWNER] === TID && (Atomics.load(w.i32, w.base) & PID_MASK) === PID;
  }

  #own(w: Words, got: Got): boolean {
    if (got === Got.No) return false;
    w.i32[w.base + R_OWNER] = TID;
    w.i32[w.base + R_COUNT] = 1;
    if (got === Got.OwnerDied) this._ownerDied = true;
    return true;
  }

  acquireSync(options?: AcquireSyncOptions): boolean {
    const w = this._w;
    if (w === null) throw closedError('RLock');
    const deadline = options === undefined ? Infinity : parseAcquireSync(options);
    if (this.#mine(w)) {
      w.i32[w.base + R_COUNT]++;
      return true;
    }
    if ((this._spin.holdBack === 0 || deadline === NO_WAIT) && Atomics.compareExchange(w.i32, w.base, 0, PID) === 0) {
      return this.#own(w, Got.Yes);
    }
    return this.#own(w, lockAcquireSync(w, 0, deadline, this._spin));
  }

  async acquire(options?: AcquireOptions): Promise<boolean> {
    const w = this.w;
    const { timeout, signal } = parseAcquire(options);
    if (signal?.aborted) throw abortError(signal);
    if (this.#mine(w)) {
      w.i32[w.base + R_COUNT]++;
      return true;
    }
    if (this._spin.holdBack === 0 && Atomics.compareExchange(w.i32, w.base, 0, PID) === 0) return this.#own(w, Got.Yes);
    const deadline = deadlineOf(timeout);
    return this._pendingWait(async (p) => this.#own(w, await lockAcquireAsync(w, 0, deadline, this._spin, signal, p)));
  }

  release(): void {
    const w = this._w;
    if (w === null) throw closedError('RLock');
    if (!this.#mine(w)) {
      throw stateError('release() of an RLock this thread does not own', 'ERR_MP_LOCK_NOT_OWNED');
    }
    if (--w.i32[w.base + R_COUNT] > 0) return;
    this._ownerDied = false;
    w.i32[w.base + R_OWNER] = 0;
    lockRelease(w, 0, this._spin);
  }

  /** How many times the owning thread holds it (0 when free; for tests and debugging). */
  get count(): number {
    const w = this.w;
    return Atomics.load(w.i32, w.base) === 0 ? 0 : Atomics.load(w.i32, w.base + R_COUNT);
  }

  [kOwned](): boolean {
    return this.#mine(this.w);
  }
  [kSave](): number {
    const w = this.w;
    const count = Atomics.load(w.i32, w.base + R_COUNT);
    Atomics.store(w.i32, w.base + R_COUNT, 1);
    this.release();
    return count;
  }
  [kRestoreSync](saved: number): void {
    this.acquireSync();
    Atomics.store(this.w.i32, this.w.base + R_COUNT, saved);
  }
  async [kRestore](saved: number): Promise<void> {
    await this.acquire();
    Atomics.store(this.w.i32, this.w.base + R_COUNT, saved);
  }
}

// ---- Semaphore ---------------------------------------------------------------------
// Words: [value, sleepers, bound (-1: unbounded)].

const S_MAX = 2;
const SEM_LIMIT = 0x7fffffff;

function validateSemValue(value: unknown): number {
  return validateInteger(value, 'value', 0, SEM_LIMIT);
}

export class Semaphore extends SyncObject {
  constructor(value: number = 1, options?: SemaphoreOptions) {
    // { posix: true } returns a POSIX named semaphore that is still a Semaphore (posix-semaphore.ts).
    if (posixRequested(options)) return openPosixSemaphore(new.target, value, options!);
    const v = validateSemValue(value);
    const bounded = new.target === BoundedSemaphore || new.target.prototype instanceof BoundedSemaphore;
    super(
      bounded ? 'BoundedSemaphore' : 'Semaphore',
      options,
      (w) => {
        w.i32[w.base] = v;
        w.i32[w.base + S_MAX] = bounded ? v : -1;
      },
      undefined,
      SEMAPHORE,
    );
  }

  readonly #budget = newSpin();

  // As spinLock (test-and-test-and-set) with short, growing pauses: see above.
  #spin(w: Words): boolean {
    if (SPIN_MS <= 0) return false;
    const s = this.#budget;
    const end = performance.now() + s.ms;
    let delay = MIN_PAUSE;
    for (let n = 1; ; n++) {
      if (Atomics.load(w.i32, w.base) > 0 && this.#try(w)) return spinDone(s, true);
      pause(delay);
      if (delay < MAX_PAUSE) delay *= 2;
      if ((n & 7) === 0 && performance.now() >= end) return spinDone(s, false);
    }
  }

  // A sleeper leaves; passOn: it leaves without a unit while one is there
  // (aborted, closed), so the wake-up it may have taken goes to another sleeper.
  #leave(w: Words, passOn: boolean): void {
    Atomics.sub(w.i32, w.base + 1, 1);
    if (passOn && Atomics.load(w.i32, w.base) > 0 && Atomics.load(w.i32, w.base + 1) > 0) wake(w, 0, 1);
  }

  #try(w: Words): boolean {
    let v = Atomics.load(w.i32, w.base);
    while (v > 0) {
      const seen = Atomics.compareExchange(w.i32, w.base, v, v - 1);
      if (seen === v) return true;
      v = seen;
    }
    return false;
  }

  acquireSync(options?: AcquireSyncOptions): boolean {
    const w = this.w;
    const deadline = options === undefined ? Infinity : parseAcquireSync(options);
    if (this.#try(w)) return true;
    if (deadline === NO_WAIT) return false;
    const start = performance.now();
    if (deadline > start && this.#spin(w)) return true;
    Atomics.add(w.i32, w.base + 1, 1);
    try {
      for (let slept = false; ; slept = true) {
        if (this.#try(w)) {
          if (slept) tookAfterSleep(this.#budget, start);
          return true;
        }
        if (performance.now() >= deadline) return false;
        checkResult(waitSync(w, 0, 0, msLeft(deadline)), 'Semaphore');
      }
    } finally {
      Atomics.sub(w.i32, w.base + 1, 1);
    }
  }

  async acquire(options?: AcquireOptions): Promise<boolean> {
    const w = this.w;
    const { timeout, signal } = parseAcquire(options);
    if (signal?.aborted) throw abortError(signal);
    if (this.#try(w)) return true;
    const deadline = deadlineOf(timeout);
    return this._pendingWait((p) => this.#acquireAsync(w, deadline, signal, p));
  }

  async #acquireAsync(w: Words, deadline: number, signal: AbortSignal | undefined, p: PendingWait): Promise<boolean> {
    const start = performance.now();
    // The spin holds the event loop: only for this thread's only pending async wait.
    const pending = {};
    pendingAsyncWaits.add(pending);
    try {
      if (deadline > start && pendingAsyncWaits.alone(pending) && this.#spin(w)) {
        p.done();
        return true;
      }
      Atomics.add(w.i32, w.base + 1, 1);
      // Closed while asleep: no longer a sleeper, and a wake-up this waiter may
      // have taken goes to another, as after an abort.
      p.cleanup = () => this.#leave(w, true);
      for (let slept = false; ; slept = true) {
        if (this.#try(w)) {
          p.done();
          if (slept) tookAfterSleep(this.#budget, start);
          return true;
        }
        if (performance.now() >= deadline) return false;
        const r = await waitAsync(w, 0, 0, msLeft(deadline), signal, this.#budget.loop, p);
        if (p.closed) return false;
        if (r === 'aborted') {
          p.cleanup = undefined;
          this.#leave(w, true);
          throw abortError(signal!);
        }
        checkResult(r, 'Semaphore');
      }
    } finally {
      if (p.cleanup !== undefined) {
        p.cleanup = undefined;
        this.#leave(w, false);
      }
      pendingAsyncWaits.delete(pending);
    }
  }

  /** Adds n to the value and wakes up to n waiters. */
  release(n: number = 1): void {
    const w = this.w;
    validateInteger(n, 'n', 1, SEM_LIMIT);
    const max = Atomics.load(w.i32, w.base + S_MAX);
    const limit = max < 0 ? SEM_LIMIT : max;
    let v = Atomics.load(w.i32, w.base);
    for (;;) {
      if (v + n > limit) {
        throw max < 0
          ? stateError('Semaphore value would overflow', 'ERR_MP_SEMAPHORE_OVERFLOW')
          : Object.assign(new RangeError(`BoundedSemaphore released too many times (its initial value is ${max})`), {
              code: 'ERR_MP_SEMAPHORE_OVERRELEASED',
            });
      }
      const seen = Atomics.compareExchange(w.i32, w.base, v, v + n);
      if (seen === v) break;
      v = seen;
    }
    if (Atomics.load(w.i32, w.base + 1) > 0) wake(w, 0, n);
  }

  getValue(): number {
    return Atomics.load(this.w.i32, this.w.base);
  }

  /** Removes a named semaphore's name; `{ posix: true }` for a POSIX one (sem_unlink). */
  static override unlink(name: string, options?: { posix?: boolean }): void {
    if (posixRequested(validateOptions(options, { call: 'Semaphore.unlink()', keys: ['posix'] }))) unlinkPosixSemaphore(name);
    else super.unlink(name);
  }

  locked(): boolean {
    return this.getValue() === 0;
  }

  withLock<T>(fn: () => T | Promise<T>): Promise<T> {
    return withAcquired(this, fn);
  }

  withLockSync<T>(fn: () => T): T {
    return withAcquiredSync(this, fn);
  }
}

/** A Semaphore whose value may never exceed its initial value (release() throws RangeError). */
export class BoundedSemaphore extends Semaphore {}

// ---- Event ---------------------------------------------------------------------------
// Words: [flag, sleepers].

export class Event extends SyncObject {
  /** How long async waits watch the word from the event loop (sync/words.ts). */
  readonly #loop = new SpinPolicy(undefined, asyncWaitSpinConfig);

  constructor(options?: NamedOptions) {
    super('Event', options, () => {});
  }

  isSet(): boolean {
    return Atomics.load(this.w.i32, this.w.base) === 1;
  }

  set(): void {
    const w = this.w;
    Atomics.store(w.i32, w.base, 1);
    if (Atomics.load(w.i32, w.base + 1) > 0) wake(w, 0, ALL);
  }

  clear(): void {
    Atomics.store(this.w.i32, this.w.base, 0);
  }

  /** Blocks until set or timeout; returns the flag. timeout 0 is a poll. */
  waitSync(options?: { timeout?: number } | number): boolean {
    const w = this.w;
    const { timeout } = parseWait(options, WAIT_SYNC);
    if (Atomics.load(w.i32, w.base) === 1) return true;
    const deadline = deadlineOf(timeout);
    Atomics.add(w.i32, w.base + 1, 1);
    try {
      for (;;) {
        if (Atomics.load(w.i32, w.base) === 1) return true;
        if (performance.now() >= deadline) return false;
        checkResult(waitSync(w, 0, 0, msLeft(deadline)), 'Event');
      }
    } finally {
      Atomics.sub(w.i32, w.base + 1, 1);
    }
  }

  async wait(options?: WaitOptions | number): Promise<boolean> {
    const w = this.w;
    const { timeout, signal } = parseWait(options);
    if (signal?.aborted) throw abortError(signal);
    if (Atomics.load(w.i32, w.base) === 1) return true;
    const deadline = deadlineOf(timeout);
    if (deadline !== Infinity && performance.now() >= deadline) return false;
    return this._pendingWait((p) => this.#waitAsync(w, deadline, signal, p));
  }

  async #waitAsync(w: Words, deadline: number, signal: AbortSignal | undefined, p: PendingWait): Promise<boolean> {
    Atomics.add(w.i32, w.base + 1, 1);
    const leave = (): void => void Atomics.sub(w.i32, w.base + 1, 1);
    p.cleanup = leave;
    try {
      for (;;) {
        if (Atomics.load(w.i32, w.base) === 1) return true;
        if (performance.now() >= deadline) return false;
        const r = await waitAsync(w, 0, 0, msLeft(deadline), signal, this.#loop, p);
        if (p.closed) return false;
        if (r === 'aborted') throw abortError(signal!);
        checkResult(r, 'Event');
      }
    } finally {
      if (p.cleanup !== undefined) {
        p.cleanup = undefined;
        leave();
      }
    }
  }
}

// ---- Condition --------------------------------------------------------------------------
// Words 8 and 9 of its block: C_STATE packs (sleepers | tokens << 16); C_SEQ
// changes on every notify and is what waiters sleep on. notify(n) turns up to n
// sleepers into tokens in one CAS; a waiter leaves by taking a token (notified)
// or, on timeout, a sleeper slot. Every waiter leaves through exactly one unit,
// so notify(n) wakes exactly min(n, waiting) even when others time out at the
// same moment. (A wait that starts after a notify may take the token of one
// that started before it; the count stays exact. See docs/synchronization.md.)
// Words 0-3 hold the RLock of a named Condition.

const C_STATE = 8;
const C_SEQ = 9;
const SLEEPER = 1;
const TOKEN = 1 << 16;
const MAX_SLEEPERS = 0xffff;

export class Condition extends SyncObject {
  readonly #lock: Lock | RLock;
  /** How long async waits watch the word from the event loop (sync/words.ts). */
  readonly #loop = new SpinPolicy(undefined, asyncWaitSpinConfig);

  constructor(lock?: Lock | RLock | NamedOptions, options?: NamedOptions) {
    // new Condition({ name }) names the condition, as every other class is named.
    if (options === undefined && lock !== null && typeof lock === 'object' && Object.getPrototypeOf(lock) === Object.prototype) {
      options = lock as NamedOptions;
      lock = undefined;
    }
    if (lock !== undefined && lock !== null && !(lock instanceof Lock) && !(lock instanceof RLock)) {
      throw invalidType('lock', 'a Lock or an RLock', lock);
    }
    const named = validateOptions(options, namedOptions('Condition')).name !== undefined;
    if (named && lock) throw invalidType('lock', 'undefined for a named Condition (it has its own RLock)', lock);
    super('Condition', options, () => {});
    if (lock) this.#lock = lock;
    else if (named) this.#lock = adopt({ ...this.w, unmap: undefined }, () => new RLock());
    else this.#lock = new RLock();
    this.#lockInMapping = named;
  }

  // A named Condition's RLock lives in the Condition's own mapping.
  readonly #lockInMapping: boolean;

  // Its waits end (and give back what they registered) before the mapping goes.
  protected override _beforeUnmap(): void {
    if (this.#lockInMapping) this.#lock.close();
  }

  /** The lock this condition uses. */
  get lock(): Lock | RLock {
    return this.#open();
  }

  // The lock's methods, through this condition: a closed condition refuses them.
  #open(): Lock | RLock {
    void this.w;
    return this.#lock;
  }

  acquire(options?: AcquireOptions): Promise<boolean> {
    try {
      return this.#open().acquire(options);
    } catch (err) {
      return Promise.reject(err);
    }
  }
  acquireSync(options?: AcquireSyncOptions): boolean {
    return this.#open().acquireSync(options);
  }
  release(): void {
    this.#open().release();
  }
  locked(): boolean {
    return this.#open().locked();
  }
  withLock<T>(fn: () => T | Promise<T>): Promise<T> {
    try {
      return this.#open().withLock(fn);
    } catch (err) {
      return Promise.reject(err);
    }
  }
  withLockSync<T>(fn: () => T): T {
    return this.#open().withLockSync(fn);
  }

  #checkOwned(what: string): Words {
    const w = this.w;
    if (!this.#lock[kOwned]()) {
      throw stateError(`Condition.${what}() called without holding its lock`, 'ERR_MP_LOCK_NOT_OWNED');
    }
    return w;
  }

  // Registers as a sleeper; returns the sequence number to sleep on.
  #register(w: Words): number {
    const i = w.base + C_STATE;
    for (;;) {
      const s = Atomics.load(w.i32, i);
      if ((s & MAX_SLEEPERS) === MAX_SLEEPERS) throw stateError('too many waiters on one Condition', 'ERR_MP_TOO_MANY_WAITERS');
      if (Atomics.compareExchange(w.i32, i, s, s + SLEEPER) === s) return Atomics.load(w.i32, w.base + C_SEQ);
    }
  }

  // Takes a token if there is one: this waiter was notified.
  #takeToken(w: Words): boolean {
    const i = w.base + C_STATE;
    for (;;) {
      const s = Atomics.load(w.i32, i);
      if (s >>> 16 === 0) return false;
      if (Atomics.compareExchange(w.i32, i, s, s - TOKEN) === s) return true;
    }
  }

  // Leaves without a notification if a sleeper slot remains, else must take a
  // token (a notify counted this waiter): returns whether it was notified.
  #leave(w: Words): boolean {
    const i = w.base + C_STATE;
    for (;;) {
      const s = Atomics.load(w.i32, i);
      if ((s & MAX_SLEEPERS) > 0) {
        if (Atomics.compareExchange(w.i32, i, s, s - SLEEPER) === s) return false;
      } else if (Atomics.compareExchange(w.i32, i, s, s - TOKEN) === s) {
        return true;
      }
    }
  }

  /** Releases the lock, waits for a notify (or timeout), reacquires; false on timeout. */
  waitSync(options?: { timeout?: number } | number): boolean {
    const w = this.#checkOwned('waitSync');
    const { timeout } = parseWait(options, WAIT_SYNC);
    const deadline = deadlineOf(timeout);
    let seq = this.#register(w);
    const saved = this.#lock[kSave]();
    try {
      for (;;) {
        if (this.#takeToken(w)) return true;
        if (performance.now() >= deadline) return this.#leave(w);
        checkResult(waitSync(w, C_SEQ, seq, msLeft(deadline)), 'Condition');
        seq = Atomics.load(w.i32, w.base + C_SEQ);
      }
    } finally {
      this.#lock[kRestoreSync](saved);
    }
  }

  async wait(options?: WaitOptions | number): Promise<boolean> {
    const w = this.#checkOwned('wait');
    const { timeout, signal } = parseWait(options);
    if (signal?.aborted) throw abortError(signal);
    const deadline = deadlineOf(timeout);
    return this._pendingWait((p) => this.#waitAsync(w, deadline, signal, p));
  }

  async #waitAsync(w: Words, deadline: number, signal: AbortSignal | undefined, p: PendingWait): Promise<boolean> {
    let seq = this.#register(w);
    const saved = this.#lock[kSave]();
    // Closed while waiting: leave through a slot, or pass on the notification
    // that counted this waiter. The lock is then not taken back: the wait
    // rejects, and the handle that would release it is closed.
    p.cleanup = () => {
      if (this.#leave(w)) this.#giveBack(w);
    };
    let aborted = false;
    let notified = false;
    try {
      for (;;) {
        if (this.#takeToken(w)) {
          p.cleanup = undefined;
          notified = true;
          break;
        }
        if (performance.now() >= deadline) {
          p.cleanup = undefined;
          notified = this.#leave(w);
          break;
        }
        const r = await waitAsync(w, C_SEQ, seq, msLeft(deadline), signal, this.#loop, p);
        if (p.closed) return false;
        if (r === 'aborted') {
          // A notification that raced with the abort is passed on, not lost.
          p.cleanup = undefined;
          if (this.#leave(w)) this.#giveBack(w);
          aborted = true;
          break;
        }
        checkResult(r, 'Condition');
        seq = Atomics.load(w.i32, w.base + C_SEQ);
      }
    } finally {
      if (!p.closed) {
        // Still registered: the wait failed (thrown); leave as an abort does.
        const cleanup = p.cleanup;
        p.cleanup = undefined;
        cleanup?.();
        await this.#lock[kRestore](saved);
        // Closed while taking the lock back: nobody will release it.
        if (p.closed) this.#lock[kSave]();
        else p.done();
      }
    }
    if (aborted) throw abortError(signal!);
    return notified;
  }

  #giveBack(w: Words): void {
    Atomics.add(w.i32, w.base + C_STATE, TOKEN);
    Atomics.add(w.i32, w.base + C_SEQ, 1);
    wake(w, C_SEQ, ALL);
  }

  /** Waits until predicate() is truthy (re-checked after each wake); resolves its last value. */
  async waitFor<T>(predicate: () => T | Promise<T>, options?: WaitOptions | number): Promise<T> {
    this.#open();
    if (typeof predicate !== 'function') throw invalidType('predicate', 'a function', predicate);
    const { timeout, signal } = parseWait(options);
    const deadline = deadlineOf(timeout);
    let result = await predicate();
    while (!result) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      await this.wait({ timeout: deadline === Infinity ? undefined : left / 1000, signal });
      result = await predicate();
    }
    return result;
  }

  waitForSync<T>(predicate: () => T, options?: { timeout?: number } | number): T {
    this.#open();
    if (typeof predicate !== 'function') throw invalidType('predicate', 'a function', predicate);
    const { timeout } = parseWait(options, WAIT_SYNC);
    const deadline = deadlineOf(timeout);
    let result = predicate();
    while (!result) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      this.waitSync({ timeout: deadline === Infinity ? undefined : left / 1000 });
      result = predicate();
    }
    return result;
  }

  /** Wakes up to n waiters (the caller must hold the lock). */
  notify(n: number = 1): void {
    const w = this.#checkOwned('notify');
    validateInteger(n, 'n', 0);
    const i = w.base + C_STATE;
    for (;;) {
      const s = Atomics.load(w.i32, i);
      const k = Math.min(n, s & MAX_SLEEPERS);
      if (k === 0) return;
      if (Atomics.compareExchange(w.i32, i, s, s - k * SLEEPER + k * TOKEN) === s) break;
    }
    Atomics.add(w.i32, w.base + C_SEQ, 1);
    // All sleepers wake and race for the tokens; the ones that miss sleep again.
    // Waking only k could wake waiters that then time out, stranding a token.
    wake(w, C_SEQ, ALL);
  }

  notifyAll(): void {
    this.notify(MAX_SLEEPERS);
  }
}

// ---- Barrier -------------------------------------------------------------------------------
// Words: [internal lock, its sleepers, arrived, generation, seq, broken,
// outcome bits, parties]. A cycle (generation g) ends either by completing,
// which sets outcome bit g % 32, or by reset(), which clears it; waiters of g
// read that bit once the generation has moved on. seq changes on every state
// change and is what waiters sleep on.

const B_LOCK = 0;
const B_ARRIVED = 2;
const B_GEN = 3;
const B_SEQ = 4;
const B_BROKEN = 5;
const B_OUTCOME = 6;
const B_PARTIES = 7;

type Arrival = { kind: 'busy'; seq: number } | { kind: 'last' | 'wait'; index: number; gen: number };

export interface BarrierOptions extends NamedOptions {
  /** Runs once per cycle, in the last process to arrive; travels by reference like a Process target. */
  action?: () => unknown;
  /** Default timeout of wait(), in seconds. */
  timeout?: number;
}

const BARRIER: OptionsSpec = { call: 'new Barrier()', keys: ['name', 'mode', 'action', 'timeout'] };

export class Barrier extends SyncObject {
  #action: (() => unknown) | undefined;
  #actionRef: TargetRef | undefined;
  readonly #timeout: number | undefined;

  constructor(parties: number, options?: BarrierOptions) {
    const p = validateInteger(parties, 'parties', 1, 0xffff);
    const o = validateOptions(options, BARRIER) as BarrierOptions;
    if (o.action !== undefined && typeof o.action !== 'function') throw invalidType('options.action', 'a function', o.action);
    const timeout = validateTimeout(o.timeout, 'options.timeout');
    super(
      'Barrier',
      { name: o.name, mode: o.mode },
      (w) => {
        w.i32[w.base + B_PARTIES] = p;
      },
      (w) => {
        const existing = w.i32[w.base + B_PARTIES];
        if (existing !== p) {
          throw stateError(`the named Barrier ${JSON.stringify(o.name)} has ${existing} parties, not ${p}`, 'ERR_MP_NAMED_OBJECT_MISMATCH');
        }
      },
    );
    this.#action = o.action;
    this.#timeout = timeout;
  }

  get parties(): number {
    return Atomics.load(this.w.i32, this.w.base + B_PARTIES);
  }

  /** How many are waiting in the current cycle. */
  get nWaiting(): number {
    const w = this.w;
    if (Atomics.load(w.i32, w.base + B_BROKEN)) return 0;
    return Math.min(Atomics.load(w.i32, w.base + B_ARRIVED), this.parties);
  }

  get broken(): boolean {
    return Atomics.load(this.w.i32, this.w.base + B_BROKEN) === 1;
  }

  readonly #spin = newSpin();

  #lock(w: Words): void {
    lockAcquireSync(w, B_LOCK, Infinity, this.#spin);
  }

  #arrive(w: Words): Arrival {
    const i32 = w.i32;
    const b = w.base;
    this.#lock(w);
    try {
      if (Atomics.load(i32, b + B_BROKEN)) throw new BrokenBarrierError();
      const parties = i32[b + B_PARTIES];
      const arrived = Atomics.load(i32, b + B_ARRIVED);
      // The last arrival's action is still running: wait for the next cycle.
      if (arrived >= parties) return { kind: 'busy', seq: Atomics.load(i32, b + B_SEQ) };
      Atomics.store(i32, b + B_ARRIVED, arrived + 1);
      const gen = Atomics.load(i32, b + B_GEN);
      return { kind: arrived + 1 === parties ? 'last' : 'wait', index: arrived, gen };
    } finally {
      lockRelease(w, B_LOCK, this.#spin);
    }
  }

  // Ends cycle gen; false when it was reset or aborted meanwhile.
  #complete(w: Words, gen: number): boolean {
    const b = w.base;
    this.#lock(w);
    let ok = false;
    if (Atomics.load(w.i32, b + B_GEN) === gen && !Atomics.load(w.i32, b + B_BROKEN)) {
      Atomics.or(w.i32, b + B_OUTCOME, 1 << (gen & 31));
      Atomics.store(w.i32, b + B_ARRIVED, 0);
      Atomics.store(w.i32, b + B_GEN, (gen + 1) | 0);
      ok = true;
    }
    this.#bump(w);
    return ok;
  }

  // Breaks cycle gen (a timeout or a failed action), unless it already ended.
  #breakCycle(w: Words, gen: number): void {
    this.#lock(w);
    if (Atomics.load(w.i32, w.base + B_GEN) === gen) Atomics.store(w.i32, w.base + B_BROKEN, 1);
    this.#bump(w);
  }

  // Publishes a state change and releases the internal lock.
  #bump(w: Words): void {
    Atomics.add(w.i32, w.base + B_SEQ, 1);
    lockRelease(w, B_LOCK, this.#spin);
    wake(w, B_SEQ, ALL);
  }

  // Where a waiter of cycle gen stands: a result, or the seq to sleep on.
  #check(w: Words, gen: number, index: number): number | { seq: number } {
    const i32 = w.i32;
    const b = w.base;
    const seq = Atomics.load(i32, b + B_SEQ);
    if (Atomics.load(i32, b + B_GEN) !== gen) {
      if (Atomics.load(i32, b + B_OUTCOME) & (1 << (gen & 31))) return index;
      throw new BrokenBarrierError('the barrier was reset while waiting');
    }
    if (Atomics.load(i32, b + B_BROKEN)) throw new BrokenBarrierError();
    return { seq };
  }

  #timeoutOf(options: unknown, spec: OptionsSpec): { deadline: number; signal?: AbortSignal } {
    const { timeout, signal } = parseWait(options, spec);
    return { deadline: deadlineOf(timeout ?? this.#timeout), signal };
  }

  #runActionSync(): void {
    const fn = this.#action ?? this.#loadActionSync();
    if (fn) fn();
  }

  #loadActionSync(): (() => unknown) | undefined {
    const ref = this.#actionRef;
    if (!ref) return undefined;
    return (this.#action = pickExport(requireModule(ref.url), ref, 'barrier action') as () => unknown);
  }

  async #runAction(): Promise<void> {
    let fn = this.#action;
    if (!fn && this.#actionRef) {
      fn = this.#action = (await importTarget(this.#actionRef, 'barrier action')) as () => unknown;
    }
    if (fn) await fn();
  }

  /** Waits for all parties; returns this arrival's index (0..parties-1). */
  waitSync(options?: { timeout?: number } | number): number {
    const w = this.w;
    const { deadline } = this.#timeoutOf(options, WAIT_SYNC);
    for (;;) {
      const a = this.#arrive(w);
      if (a.kind === 'busy') {
        if (performance.now() >= deadline) throw new BrokenBarrierError('timed out waiting at the barrier');
        waitSync(w, B_SEQ, a.seq, msLeft(deadline));
        continue;
      }
      if (a.kind === 'last') {
        try {
          this.#runActionSync();
        } catch (err) {
          this.#breakCycle(w, a.gen);
          throw err;
        }
        if (!this.#complete(w, a.gen)) throw new BrokenBarrierError();
        return a.index;
      }
      for (;;) {
        const c = this.#check(w, a.gen, a.index);
        if (typeof c === 'number') return c;
        if (performance.now() >= deadline) {
          this.#breakCycle(w, a.gen);
          const again = this.#check(w, a.gen, a.index);
          if (typeof again === 'number') return again;
          throw new BrokenBarrierError('timed out waiting at the barrier');
        }
        checkResult(waitSync(w, B_SEQ, c.seq, msLeft(deadline)), 'Barrier');
      }
    }
  }

  async wait(options?: WaitOptions | number): Promise<number> {
    const w = this.w;
    const { deadline, signal } = this.#timeoutOf(options, WAIT);
    if (signal?.aborted) throw abortError(signal);
    return this._pendingWait((p) => this.#waitAsync(w, deadline, signal, p));
  }

  async #waitAsync(w: Words, deadline: number, signal: AbortSignal | undefined, p: PendingWait): Promise<number> {
    for (;;) {
      const a = this.#arrive(w);
      if (a.kind === 'busy') {
        if (performance.now() >= deadline) throw new BrokenBarrierError('timed out waiting at the barrier');
        const r = await waitAsync(w, B_SEQ, a.seq, msLeft(deadline), signal, this.#spin.loop, p);
        if (p.closed) return -1;
        if (r === 'aborted') throw abortError(signal!);
        continue;
      }
      // From here this handle is counted in the cycle. Leaving it half-filled
      // would deadlock the others, so a close() breaks it, as an abort or a
      // timeout does.
      p.cleanup = () => this.#breakCycle(w, a.gen);
      if (a.kind === 'last') {
        try {
          await this.#runAction();
        } catch (err) {
          if (p.closed) return -1;
          p.cleanup = undefined;
          this.#breakCycle(w, a.gen);
          throw err;
        }
        if (p.closed) return -1;
        p.cleanup = undefined;
        if (!this.#complete(w, a.gen)) throw new BrokenBarrierError();
        p.done();
        return a.index;
      }
      for (;;) {
        const c = this.#check(w, a.gen, a.index);
        if (typeof c === 'number') {
          p.done();
          return c;
        }
        if (performance.now() >= deadline) {
          p.cleanup = undefined;
          this.#breakCycle(w, a.gen);
          const again = this.#check(w, a.gen, a.index);
          if (typeof again === 'number') return again;
          throw new BrokenBarrierError('timed out waiting at the barrier');
        }
        const r = await waitAsync(w, B_SEQ, c.seq, msLeft(deadline), signal, this.#spin.loop, p);
        if (p.closed) return -1;
        if (r === 'aborted') {
          // Python has no cancellation; leaving a barrier half-filled would
          // deadlock the others, so an abort breaks it, as a timeout does.
          p.cleanup = undefined;
          this.#breakCycle(w, a.gen);
          throw abortError(signal!);
        }
        checkResult(r, 'Barrier');
      }
    }
  }

  /** Puts the barrier back in its initial state; current waiters get BrokenBarrierError. */
  reset(): void {
    const w = this.w;
    const b = w.base;
    this.#lock(w);
    if (Atomics.load(w.i32, b + B_ARRIVED) > 0) {
      const gen = Atomics.load(w.i32, b + B_GEN);
      Atomics.and(w.i32, b + B_OUTCOME, ~(1 << (gen & 31)));
      Atomics.store(w.i32, b + B_GEN, (gen + 1) | 0);
    }
    Atomics.store(w.i32, b + B_ARRIVED, 0);
    Atomics.store(w.i32, b + B_BROKEN, 0);
    this.#bump(w);
  }

  /** Breaks the barrier: current and future waits reject with BrokenBarrierError until reset(). */
  abort(): void {
    const w = this.w;
    this.#lock(w);
    Atomics.store(w.i32, w.base + B_BROKEN, 1);
    this.#bump(w);
  }

  /** @internal what travels with the barrier: its action by reference. */
  actionRef(): TargetRef | undefined {
    if (this.#actionRef) return this.#actionRef;
    if (this.#action) this.#actionRef = locate(this.#action, 'barrier action');
    return this.#actionRef;
  }

  /** @internal */
  setActionRef(ref: TargetRef | undefined): void {
    this.#actionRef = ref;
  }
}

// ---- travelling to other processes --------------------------------------------------------

function revive<T>(data: BlockRef, make: () => T): T {
  const words = attachWords(data);
  try {
    return adopt(words, make);
  } catch (err) {
    releaseWords(words); // the reference the message carried is not kept
    throw err;
  }
}

registerTransferable('pmp.Lock', Lock, { encode: (o, ctx) => o.encodeRef(ctx), decode: (d) => revive(d, () => new Lock()) });
registerTransferable('pmp.RLock', RLock, { encode: (o, ctx) => o.encodeRef(ctx), decode: (d) => revive(d, () => new RLock()) });
// The POSIX-backed ones before the word-based ones (they are instances of both).
linkPosixSemaphore(Semaphore, BoundedSemaphore);
// BoundedSemaphore first: the codec takes the first registration that matches.
registerTransferable('pmp.BoundedSemaphore', BoundedSemaphore, {
  encode: (o, ctx) => o.encodeRef(ctx),
  decode: (d) => revive(d, () => new BoundedSemaphore()),
});
registerTransferable('pmp.Semaphore', Semaphore, {
  encode: (o, ctx) => o.encodeRef(ctx),
  decode: (d) => revive(d, () => new Semaphore()),
});
registerTransferable('pmp.Event', Event, { encode: (o, ctx) => o.encodeRef(ctx), decode: (d) => revive(d, () => new Event()) });
registerTransferable('pmp.Condition', Condition, {
  encode: (o, ctx) => ({ ref: o.encodeRef(ctx), lock: o.lock }),
  decode: (d) => revive(d.ref, () => new Condition(d.lock)),
});
registerTransferable('pmp.Barrier', Barrier, {
  encode: (o, ctx) => ({ ref: o.encodeRef(ctx), parties: o.parties, action: o.actionRef() ?? null }),
  decode: (d) => {
    const b = revive(d.ref, () => new Barrier(d.parties));
    b.setActionRef(d.action ?? undefined);
    return b;
  },
});
