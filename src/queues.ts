// Queue, SimpleQueue and JoinableQueue: many producers and consumers in many
// processes over one shared ring (ring.ts). There is no feeder thread: put()
// copies the encoded message into shared memory before it returns, so a process
// may exit right after put() without blocking and without losing the message.
//
// Waiting (a get on an empty queue, a put on a full one, join()) sleeps on a
// sequence word that the other side bumps, via futex where the addon has it
// (wait-word.ts). The word is read before the attempt, so a change between the
// attempt and the sleep makes the sleep return at once: no lost wake-ups.
import { abortError, closedError, QueueEmptyError, QueueFullError, stateError } from './errors';
import { Decoded, DONE, GET_SEQ, GET_WAITERS, PUT_SEQ, PUT_WAITERS, Ring, type RingRef } from './ring';
import { abandon, type CodecContext, decode, encode, encodeJsonText, registerTransferable } from './serialize';
import { ENCODE_LIMIT, ENCODE_SLACK, encodeFast } from './fast-json';
import { type OptionsSpec, validateBoolean, validateInteger, validateOptions, validateSignal, validateTimeout } from './validate';
import { type WaitResult, type WaitWord, waitAsync, waitSync, wakeOne } from './wait-word';

// Sleepers wake at least this often and look again. A put wakes one consumer
// only when the queue goes from empty to non-empty, and that consumer passes
// the wake on if it leaves items behind; a consumer killed between its wake-up
// and its take cannot, so without a bound the others would sleep on beside a
// non-empty queue.
const SLICE_MS = 100;

function sliceOf(leftMs: number): number {
  return Math.ceil(Math.min(leftMs, SLICE_MS));
}

export interface QueueWaitOptions {
  /** Wait when the queue is full (put) or empty (get); default true. */
  block?: boolean;
  /** Seconds to wait at most; no limit when omitted. */
  timeout?: number;
  /** Async forms only: abort the wait (rejects with an AbortError, the reason as its cause). */
  signal?: AbortSignal;
}

interface Wait {
  block: boolean;
  deadline: number; // performance.now() ms; Infinity: no limit
  signal?: AbortSignal;
}

function decodeMessage(m: Got): unknown {
  if (m instanceof Decoded) return m.value;
  return typeof m === 'string' ? JSON.parse(m) : decode(m);
}

function tryPut(ring: Ring, m: Encoded): boolean {
  return typeof m === 'string' ? ring.tryPutJson(m) : ring.tryPut(m);
}

// Before a sync wait goes to sleep it looks this many more times: the other
// side is usually running on another core and about to commit, and a futex
// sleep and wake cost microseconds on both sides. (Tens of microseconds at
// most; async waits never spin.)
const SPINS = 2000;

const BLOCK_FOREVER: Wait = Object.freeze({ block: true, deadline: Infinity });

// A Python-style positional call (q.get(5) is Python's get(block=5), q.put(x,
// False)) is refused with the options form to write; so is an unknown key.
const spec = (call: string, async: boolean): OptionsSpec => ({
  call,
  keys: async ? ['block', 'timeout', 'signal'] : ['block', 'timeout'],
  number: 'timeout',
  boolean: 'block',
});
const GET = spec('q.get()', true);
const GET_SYNC = spec('q.getSync()', false);
const PUT = spec('q.put()', true);
const PUT_SYNC = spec('q.putSync()', false);

function waitOptions(options: unknown, spec: OptionsSpec): Wait {
  if (options === undefined) return BLOCK_FOREVER;
  const o = validateOptions(options, spec);
  const block = o.block === undefined ? true : validateBoolean(o.block, 'options.block');
  const timeout = validateTimeout(o.timeout, 'options.timeout');
  const signal = validateSignal(o.signal);
  return { block, deadline: timeout === undefined ? Infinity : performance.now() + timeout * 1000, signal };
}

/** A message ready for the ring: JSON text (the fast path) or codec bytes. */
type Encoded = string | Uint8Array;
/** What a get takes off the ring: that, or the value already decoded (ring.ts). */
type Got = Encoded | Decoded;

// A Connection on a queue travels through the fd sharer (fd-share.ts): the ring
// holds its address and key, and the process that put it must still be alive
// when it is taken; a Value or a Lock holds a reference to its shared block.
// What a message took is remembered so that a put that fails (full, timed
// out, closed) gives it back (serialize.ts abandon) instead of leaking it.
const contextOf = new WeakMap<Uint8Array, CodecContext>();

function encodeMessage(obj: unknown): Encoded {
  const text = encodeJsonText(obj);
  if (text !== undefined) return text;
  const ctx: CodecContext = { fds: [], carriesFds: false };
  let bytes: Uint8Array;
  try {
    bytes = encode(obj, ctx);
    if (ctx.fds.length > 0) {
      // Only a transferable that ignores ctx.carriesFds gets here.
      throw new TypeError('this object cannot be put on a queue: its fds can only travel in Process args or over a duplex Pipe');
    }
  } catch (err) {
    abandon(ctx);
    throw err;
  }
  if (ctx.offers || ctx.onAbandon) contextOf.set(bytes, ctx);
  return bytes;
}

// Where encodeFast writes a message before the ring takes a copy. One per
// process is enough: the text is copied in before anything else can run.
const scratch = new Uint8Array(ENCODE_LIMIT + ENCODE_SLACK);

/** Puts obj if it is small plain JSON data and there is room now, in one walk
 *  (fast-json.ts encodeFast). false: nothing was put; take the general path
 *  (which encodes again: it is taken only when the message is not plain data,
 *  or the queue is full and the put will wait anyway). */
function tryPutFast(ring: Ring, obj: unknown): boolean {
  const n = encodeFast(obj, scratch);
  return n >= 0 && ring.tryPutAscii(scratch, n);
}

/** A put of m failed: the message will never be taken. */
function putFailed(m: Encoded): void {
  if (typeof m !== 'string') abandon(contextOf.get(m));
}

function putOrWithdraw(m: Encoded, p: Promise<void>): Promise<void> {
  if (typeof m === 'string' || !contextOf.has(m)) return p;
  return p.catch((err) => {
    putFailed(m);
    throw err;
  });
}

/** Runs async operations one after another, in call order. */
class Line {
  #tail: Promise<unknown> | null = null;
  #waiting = 0;

  get busy(): boolean {
    return this.#waiting > 0;
  }

  run<T>(fn: () => Promise<T>): Promise<T> {
    this.#waiting++;
    const prev = this.#tail;
    const start = prev ? prev.then(noop, noop) : Promise.resolve();
    const p: Promise<T> = start.then(fn).finally(() => {
      this.#waiting--;
      if (this.#tail === p) this.#tail = null;
    });
    this.#tail = p;
    return p;
  }
}

const noop = () => {};

/** The machinery shared by the three queue classes. */
abstract class QueueBase<T> {
  #ring: Ring | null;
  readonly #pending = new Set<{ cancel(): void; reject(err: unknown): void }>();
  readonly #putLine = new Line();
  readonly #getLine = new Line();

  protected constructor(ring: Ring) {
    this.#ring = ring;
  }

  protected get ring(): Ring {
    if (this.#ring === null) throw closedError(this.constructor.name);
    return this.#ring;
  }

  /** @internal what travels to another process */
  get _ref(): RingRef {
    return this.ring.ref;
  }

  get closed(): boolean {
    return this.#ring === null;
  }

  /** Ends this handle only: the queue lives on for other handles and processes that
   *  have it. In the process that created the queue it also removes the queue's
   *  name, so it can no longer be passed to new processes. The last handle of
   *  the queue in this process unmaps its memory. */
  close(): void {
    const ring = this.#ring;
    if (ring === null) return;
    ring.unlinkName();
    this.#ring = null;
    const err = closedError(this.constructor.name);
    for (const p of this.#pending) {
      p.cancel();
      p.reject(err);
    }
    this.#pending.clear();
    // Waits just cancelled keep the memory until their threads have let go.
    ring.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  protected putBytesSync(bytes: Encoded, wait: Wait): void {
    const ring = this.ring;
    if (tryPut(ring, bytes)) return;
    if (!wait.block) throw new QueueFullError();
    for (let spin = 0; spin < SPINS; spin++) {
      if (ring.roomy() && tryPut(ring, bytes)) return;
    }
    for (;;) {
      const left = wait.deadline - performance.now();
      if (left <= 0) throw new QueueFullError();
      // Count ourselves as a sleeper, then try again, then sleep: a get that
      // commits after the try sees the count and bumps the word (ring.ts).
      const seq = Atomics.load(ring.i32, GET_SEQ);
      Atomics.add(ring.i32, PUT_WAITERS, 1);
      try {
        if (tryPut(ring, bytes)) return;
        waitSync(ring.word(GET_SEQ), seq, sliceOf(left));
      } finally {
        Atomics.sub(ring.i32, PUT_WAITERS, 1);
      }
      if (tryPut(ring, bytes)) return;
    }
  }

  /** The fast path of put(): not while earlier async puts wait in line. */
  protected putFast(obj: unknown): boolean {
    return !this.#putLine.busy && tryPutFast(this.ring, obj);
  }

  /** The fast path of putSync() and putNowait(). */
  protected putFastSync(obj: unknown): boolean {
    return tryPutFast(this.ring, obj);
  }

  // Async puts (and gets) of one handle wait in line, so that puts issued
  // without awaiting each other still enter the queue in call order.
  protected putBytes(bytes: Encoded, wait: Wait): Promise<void> {
    if (!this.#putLine.busy) {
      if (tryPut(this.ring, bytes)) return Promise.resolve();
      if (!wait.block) return Promise.reject(new QueueFullError());
    } else if (!wait.block) {
      return Promise.reject(new QueueFullError());
    }
    return this.#putLine.run(() => this.#putLoop(bytes, wait));
  }

  async #putLoop(bytes: Encoded, wait: Wait): Promise<void> {
    for (;;) {
      const ring = this.ring;
      if (tryPut(ring, bytes)) return;
      if (!wait.block) throw new QueueFullError();
      const left = wait.deadline - performance.now();
      if (left <= 0) throw new QueueFullError();
      const seq = Atomics.load(ring.i32, GET_SEQ);
      // Pinned: a close() during the sleep must not unmap the count before
      // the finally gives it back.
      ring.pin();
      Atomics.add(ring.i32, PUT_WAITERS, 1);
      try {
        if (tryPut(ring, bytes)) return;
        await this.sleep(ring, ring.word(GET_SEQ), seq, left, wait.signal);
      } finally {
        Atomics.sub(ring.i32, PUT_WAITERS, 1);
        ring.unpin();
      }
    }
  }

  protected getBytesSync(wait: Wait): Got {
    const ring = this.ring;
    const got = ring.tryGet();
    if (got !== null) return got;
    if (!wait.block) throw new QueueEmptyError();
    for (let spin = 0; spin < SPINS; spin++) {
      if (!ring.isEmpty()) {
        const again = ring.tryGet();
        if (again !== null) return again;
      }
    }
    for (;;) {
      const left = wait.deadline - performance.now();
      if (left <= 0) throw new QueueEmptyError();
      // Count ourselves as a sleeper, then look again, then sleep: a put that
      // commits after the look sees the count and bumps the word (ring.ts).
      const seq = Atomics.load(ring.i32, PUT_SEQ);
      Atomics.add(ring.i32, GET_WAITERS, 1);
      try {
        const again = ring.tryGet();
        if (again !== null) return again;
        waitSync(ring.word(PUT_SEQ), seq, sliceOf(left));
      } finally {
        Atomics.sub(ring.i32, GET_WAITERS, 1);
      }
      const again = ring.tryGet();
      if (again !== null) return again;
    }
  }

  // A message already queued is decoded at once and handed over in a resolved
  // promise: one microtask, no async function around it. (May throw: the
  // callers turn that into a rejection.)
  protected getDecoded(wait: Wait): Promise<T> {
    if (!this.#getLine.busy) {
      const got = this.ring.tryGet();
      if (got !== null) return Promise.resolve(decodeMessage(got) as T);
      if (!wait.block) return Promise.reject(new QueueEmptyError());
    } else if (!wait.block) {
      return Promise.reject(new QueueEmptyError());
    }
    return this.#getLine.run(() => this.#getLoop(wait)).then(decodeMessage) as Promise<T>;
  }

  async #getLoop(wait: Wait): Promise<Got> {
    for (;;) {
      const ring = this.ring;
      const got = ring.tryGet();
      if (got !== null) return got;
      if (!wait.block) throw new QueueEmptyError();
      const left = wait.deadline - performance.now();
      if (left <= 0) throw new QueueEmptyError();
      const seq = Atomics.load(ring.i32, PUT_SEQ);
      ring.pin();
      Atomics.add(ring.i32, GET_WAITERS, 1);
      try {
        const again = ring.tryGet();
        if (again !== null) return again;
        await this.sleep(ring, ring.word(PUT_SEQ), seq, left, wait.signal);
      } finally {
        Atomics.sub(ring.i32, GET_WAITERS, 1);
        ring.unpin();
      }
    }
  }

  // One wait on the word, cancellable by close() and by the signal. The ring
  // stays mapped until the wait's thread is done with the word, which may be
  // after a close() has cancelled it.
  protected async sleep(ring: Ring, word: WaitWord, seq: number, leftMs: number, signal?: AbortSignal): Promise<WaitResult> {
    if (signal?.aborted) throw abortError(signal);
    const { promise, cancel } = waitAsync(word, seq, sliceOf(leftMs));
    ring.pin();
    const unpin = () => ring.unpin();
    promise.then(unpin, unpin);
    let rejectPending: (err: unknown) => void = () => {};
    const interrupted = new Promise<never>((_, reject) => {
      rejectPending = reject;
    });
    const entry = { cancel, reject: rejectPending };
    this.#pending.add(entry);
    const onAbort = () => {
      cancel();
      rejectPending(abortError(signal!));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      return await Promise.race([promise, interrupted]);
    } catch (err) {
      // Wakes are handed to one waiter at a time: one that went to this
      // abandoned wait is passed on.
      wakeOne(word);
      throw err;
    } finally {
      this.#pending.delete(entry);
      signal?.removeEventListener('abort', onAbort);
    }
  }

}

export class Queue<T = unknown> extends QueueBase<T> {
  constructor(maxsize = 0) {
    if ((maxsize as unknown) instanceof Ring) {
      super(maxsize as unknown as Ring);
      return;
    }
    validateInteger(maxsize, 'maxsize', Number.MIN_SAFE_INTEGER, 0x7fffffff);
    // As in Python, maxsize <= 0 means no limit on the number of items.
    super(Ring.create(Math.max(0, maxsize)));
  }

  /** Puts obj on the queue, waiting while it is full (block/timeout). */
  put(obj: T, options?: QueueWaitOptions): Promise<void> {
    let m: Encoded | undefined;
    try {
      const wait = waitOptions(options, PUT);
      if (this.putFast(obj)) return Promise.resolve();
      m = encodeMessage(obj);
      return putOrWithdraw(m, this.putBytes(m, wait));
    } catch (err) {
      if (m !== undefined) putFailed(m);
      return Promise.reject(err);
    }
  }

  putSync(obj: T, options?: Omit<QueueWaitOptions, 'signal'>): void {
    const wait = waitOptions(options, PUT_SYNC);
    if (this.putFastSync(obj)) return;
    const m = encodeMessage(obj);
    try {
      this.putBytesSync(m, wait);
    } catch (err) {
      putFailed(m);
      throw err;
    }
  }

  /** Puts obj or throws QueueFullError at once. */
  putNowait(obj: T): void {
    if (this.putFastSync(obj)) return;
    const m = encodeMessage(obj);
    try {
      this.putBytesSync(m, { block: false, deadline: 0 });
    } catch (err) {
      putFailed(m);
      throw err;
    }
  }

  /** Resolves with the oldest item, waiting while the queue is empty (block/timeout);
   *  rejects with QueueEmptyError when there is none. */
  get(options?: QueueWaitOptions): Promise<T> {
    try {
      return this.getDecoded(waitOptions(options, GET));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  getSync(options?: Omit<QueueWaitOptions, 'signal'>): T {
    const wait = waitOptions(options, GET_SYNC);
    return decodeMessage(this.getBytesSync(wait)) as T;
  }

  /** The oldest item, or QueueEmptyError at once. */
  getNowait(): T {
    return decodeMessage(this.getBytesSync({ block: false, deadline: 0 })) as T;
  }

  /** The number of items (exact at the moment it is read; other processes may change it). */
  qsize(): number {
    return this.ring.items();
  }

  empty(): boolean {
    return this.ring.isEmpty();
  }

  full(): boolean {
    const max = this.ring.maxsize;
    return max > 0 && this.ring.items() >= max;
  }

  /** The maxsize given at creation (0: no limit on items). */
  get maxsize(): number {
    return this.ring.maxsize;
  }
}

export class JoinableQueue<T = unknown> extends Queue<T> {
  constructor(maxsize = 0) {
    super(maxsize);
  }

  /** Marks one item taken with get() as processed. */
  taskDone(): void {
    if (!this.ring.taskDone()) {
      throw stateError('taskDone() called more times than there were items', 'ERR_MP_TASK_DONE');
    }
  }

  /** Resolves when every item put has been marked with taskDone(). */
  async join(options: { signal?: AbortSignal } = {}): Promise<void> {
    const signal = validateSignal(validateOptions(options, { call: 'q.join()', keys: ['signal'] }).signal);
    for (;;) {
      const ring = this.ring;
      // DONE read before the count: a taskDone() after it changes the word
      // and ends the sleep at once.
      const done = Atomics.load(ring.i32, DONE);
      if (ring.unfinished() === 0) return;
      await this.sleep(ring, ring.word(DONE), done, Infinity, signal);
    }
  }

  joinSync(): void {
    for (;;) {
      const ring = this.ring;
      const done = Atomics.load(ring.i32, DONE);
      if (ring.unfinished() === 0) return;
      waitSync(ring.word(DONE), done, SLICE_MS);
    }
  }
}

/** An unbounded queue with the short interface: put/putSync/get/getSync/empty/close. */
export class SimpleQueue<T = unknown> extends QueueBase<T> {
  constructor() {
    const ring = arguments[0] instanceof Ring ? (arguments[0] as Ring) : Ring.create(0);
    super(ring);
  }

  put(obj: T): Promise<void> {
    let m: Encoded | undefined;
    try {
      if (this.putFast(obj)) return Promise.resolve();
      m = encodeMessage(obj);
      return putOrWithdraw(m, this.putBytes(m, { block: true, deadline: Infinity }));
    } catch (err) {
      if (m !== undefined) putFailed(m);
      return Promise.reject(err);
    }
  }

  putSync(obj: T): void {
    if (this.putFastSync(obj)) return;
    const m = encodeMessage(obj);
    try {
      this.putBytesSync(m, { block: true, deadline: Infinity });
    } catch (err) {
      putFailed(m);
      throw err;
    }
  }

  get(): Promise<T> {
    try {
      return this.getDecoded(BLOCK_FOREVER);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  getSync(): T {
    return decodeMessage(this.getBytesSync({ block: true, deadline: Infinity })) as T;
  }

  empty(): boolean {
    return this.ring.isEmpty();
  }
}

// Subclasses first: the codec takes the first registration an object is an instance of.
const make = <Q>(Make: new (ring: any) => Q) => ({
  encode: (q: QueueBase<unknown>) => ({ ref: q._ref }),
  decode: (data: { ref: RingRef }) => new Make(Ring.attach(data.ref)),
});
registerTransferable('JoinableQueue', JoinableQueue, make(JoinableQueue as new (ring: any) => JoinableQueue));
registerTransferable('SimpleQueue', SimpleQueue, make(SimpleQueue as unknown as new (ring: any) => SimpleQueue));
registerTransferable('Queue', Queue, make(Queue as new (ring: any) => Queue));
