// Queue, SimpleQueue and JoinableQueue: many producers and consumers in many
// processes over one shared ring (ring.ts). There is no feeder thread: put()
// copies the encoded message into shared memory before it returns, so a process
// may exit right after put() without blocking and without losing the message.
//
// Waiting (a get on an empty queue, a put on a full one, join()) sleeps on a
// sequence word that the other side bumps, via futex where the addon has it
// (wait-word.ts). The word is read before the attempt, so a change between the
// attempt and the sleep makes the sleep return at once: no lost wake-ups.
import { closedError, QueueEmptyError, QueueFullError, stateError } from './errors';
import { GET_SEQ, GET_WAITERS, PUT_SEQ, PUT_WAITERS, Ring, type RingRef, UNFINISHED } from './ring';
import { withdrawOffers } from './fd-share';
import { type CodecContext, decode, encode, encodeJsonText, registerTransferable } from './serialize';
import { validateBoolean, validateInteger, validateObject, validateSignal, validateTimeout } from './validate';
import { type WaitResult, type WaitWord, waitAsync, waitSync, wakeAll, wakeOne } from './wait-word';

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
  /** Async forms only: abort the wait (rejects with signal.reason). */
  signal?: AbortSignal;
}

interface Wait {
  block: boolean;
  deadline: number; // performance.now() ms; Infinity: no limit
  signal?: AbortSignal;
}

function decodeMessage(m: Encoded): unknown {
  return typeof m === 'string' ? JSON.parse(m) : decode(m);
}

function tryPut(ring: Ring, m: Encoded, joinable: boolean): boolean {
  return typeof m === 'string' ? ring.tryPutJson(m, joinable) : ring.tryPut(m, joinable);
}

function waitOptions(options: unknown, async: boolean): Wait {
  const o = validateObject(options, 'options');
  const block = o.block === undefined ? true : validateBoolean(o.block, 'options.block');
  const timeout = validateTimeout(o.timeout, 'options.timeout');
  const signal = async ? validateSignal(o.signal) : undefined;
  if (!async && o.signal !== undefined) throw new TypeError('options.signal is only accepted by the async forms');
  return { block, deadline: timeout === undefined ? Infinity : performance.now() + timeout * 1000, signal };
}

/** A message ready for the ring: JSON text (the fast path) or codec bytes. */
type Encoded = string | Uint8Array;

// A Connection on a queue travels through the fd sharer (fd-share.ts): the ring
// holds its address and key, and the process that put it must still be alive
// when it is taken. The offers a message made are remembered so that a put that
// fails (full, timed out, closed) closes them instead of leaving them open.
const offersOf = new WeakMap<Uint8Array, number[]>();

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
    withdrawOffers(ctx.offers);
    throw err;
  }
  if (ctx.offers) offersOf.set(bytes, ctx.offers);
  return bytes;
}

/** A put of m failed: the fds it offered will never be claimed. */
function putFailed(m: Encoded): void {
  if (typeof m !== 'string') withdrawOffers(offersOf.get(m));
}

function putOrWithdraw(m: Encoded, p: Promise<void>): Promise<void> {
  if (typeof m === 'string' || !offersOf.has(m)) return p;
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
  readonly #joinable: boolean;
  readonly #pending = new Set<{ cancel(): void; reject(err: unknown): void }>();
  readonly #putLine = new Line();
  readonly #getLine = new Line();

  protected constructor(ring: Ring, joinable: boolean) {
    this.#ring = ring;
    this.#joinable = joinable;
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
   *  name, so it can no longer be passed to new processes. */
  close(): void {
    if (this.#ring === null) return;
    this.#ring.unlinkName();
    this.#ring = null;
    const err = closedError(this.constructor.name);
    for (const p of this.#pending) {
      p.cancel();
      p.reject(err);
    }
    this.#pending.clear();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  protected putBytesSync(bytes: Encoded, wait: Wait): void {
    const ring = this.ring;
    for (;;) {
      const seq = Atomics.load(ring.i32, GET_SEQ);
      if (tryPut(ring, bytes, this.#joinable)) return;
      if (!wait.block) throw new QueueFullError();
      const left = wait.deadline - performance.now();
      if (left <= 0) throw new QueueFullError();
      this.#sleepSync(ring.word(GET_SEQ), PUT_WAITERS, seq, left);
    }
  }

  // Async puts (and gets) of one handle wait in line, so that puts issued
  // without awaiting each other still enter the queue in call order.
  protected putBytes(bytes: Encoded, wait: Wait): Promise<void> {
    if (!this.#putLine.busy) {
      if (tryPut(this.ring, bytes, this.#joinable)) return Promise.resolve();
      if (!wait.block) return Promise.reject(new QueueFullError());
    } else if (!wait.block) {
      return Promise.reject(new QueueFullError());
    }
    return this.#putLine.run(() => this.#putLoop(bytes, wait));
  }

  async #putLoop(bytes: Encoded, wait: Wait): Promise<void> {
    for (;;) {
      const ring = this.ring;
      const seq = Atomics.load(ring.i32, GET_SEQ);
      if (tryPut(ring, bytes, this.#joinable)) return;
      if (!wait.block) throw new QueueFullError();
      const left = wait.deadline - performance.now();
      if (left <= 0) throw new QueueFullError();
      await this.#sleep(ring.word(GET_SEQ), PUT_WAITERS, seq, left, wait.signal);
    }
  }

  protected getBytesSync(wait: Wait): Encoded {
    const ring = this.ring;
    for (;;) {
      const seq = Atomics.load(ring.i32, PUT_SEQ);
      const bytes = ring.tryGet();
      if (bytes !== null) return bytes;
      if (!wait.block) throw new QueueEmptyError();
      const left = wait.deadline - performance.now();
      if (left <= 0) throw new QueueEmptyError();
      this.#sleepSync(ring.word(PUT_SEQ), GET_WAITERS, seq, left);
    }
  }

  protected getBytes(wait: Wait): Promise<Encoded> {
    if (!this.#getLine.busy) {
      const got = this.ring.tryGet();
      if (got !== null) return Promise.resolve(got);
      if (!wait.block) return Promise.reject(new QueueEmptyError());
    } else if (!wait.block) {
      return Promise.reject(new QueueEmptyError());
    }
    return this.#getLine.run(() => this.#getLoop(wait));
  }

  async #getLoop(wait: Wait): Promise<Encoded> {
    for (;;) {
      const ring = this.ring;
      const seq = Atomics.load(ring.i32, PUT_SEQ);
      const bytes = ring.tryGet();
      if (bytes !== null) return bytes;
      if (!wait.block) throw new QueueEmptyError();
      const left = wait.deadline - performance.now();
      if (left <= 0) throw new QueueEmptyError();
      await this.#sleep(ring.word(PUT_SEQ), GET_WAITERS, seq, left, wait.signal);
    }
  }

  #sleepSync(word: WaitWord, waiters: number, seq: number, leftMs: number): void {
    Atomics.add(word.i32, waiters, 1);
    try {
      waitSync(word, seq, sliceOf(leftMs));
    } finally {
      Atomics.sub(word.i32, waiters, 1);
    }
  }

  // One wait on the word, cancellable by close() and by the signal.
  protected async sleep(word: WaitWord, seq: number, leftMs: number, signal?: AbortSignal): Promise<WaitResult> {
    signal?.throwIfAborted();
    const { promise, cancel } = waitAsync(word, seq, sliceOf(leftMs));
    let rejectPending: (err: unknown) => void = () => {};
    const interrupted = new Promise<never>((_, reject) => {
      rejectPending = reject;
    });
    const entry = { cancel, reject: rejectPending };
    this.#pending.add(entry);
    const onAbort = () => {
      cancel();
      rejectPending(signal!.reason);
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

  async #sleep(word: WaitWord, waiters: number, seq: number, leftMs: number, signal?: AbortSignal): Promise<void> {
    Atomics.add(word.i32, waiters, 1);
    try {
      await this.sleep(word, seq, leftMs, signal);
    } finally {
      Atomics.sub(word.i32, waiters, 1);
    }
  }
}

export class Queue<T = unknown> extends QueueBase<T> {
  constructor(maxsize = 0) {
    if ((maxsize as unknown) instanceof Ring) {
      super(maxsize as unknown as Ring, new.target === JoinableQueue);
      return;
    }
    validateInteger(maxsize, 'maxsize', Number.MIN_SAFE_INTEGER, 0x7fffffff);
    // As in Python, maxsize <= 0 means no limit on the number of items.
    super(Ring.create(Math.max(0, maxsize)), new.target === JoinableQueue);
  }

  /** Puts obj on the queue, waiting while it is full (block/timeout). */
  put(obj: T, options?: QueueWaitOptions): Promise<void> {
    let m: Encoded | undefined;
    try {
      const wait = waitOptions(options, true);
      m = encodeMessage(obj);
      return putOrWithdraw(m, this.putBytes(m, wait));
    } catch (err) {
      if (m !== undefined) putFailed(m);
      return Promise.reject(err);
    }
  }

  putSync(obj: T, options?: Omit<QueueWaitOptions, 'signal'>): void {
    const wait = waitOptions(options, false);
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
  async get(options?: QueueWaitOptions): Promise<T> {
    const wait = waitOptions(options, true);
    return decodeMessage(await this.getBytes(wait)) as T;
  }

  getSync(options?: Omit<QueueWaitOptions, 'signal'>): T {
    const wait = waitOptions(options, false);
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
    return this.ring.items() === 0;
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
    const i32 = this.ring.i32;
    for (;;) {
      const n = Atomics.load(i32, UNFINISHED);
      if (n <= 0) throw stateError('taskDone() called more times than there were items', 'ERR_MP_TASK_DONE');
      if (Atomics.compareExchange(i32, UNFINISHED, n, n - 1) === n) {
        if (n === 1) wakeAll(this.ring.word(UNFINISHED));
        return;
      }
    }
  }

  /** Resolves when every item put has been marked with taskDone(). */
  async join(options: { signal?: AbortSignal } = {}): Promise<void> {
    const signal = validateSignal(validateObject(options, 'options').signal);
    for (;;) {
      const ring = this.ring;
      const n = Atomics.load(ring.i32, UNFINISHED);
      if (n === 0) return;
      await this.sleep(ring.word(UNFINISHED), n, Infinity, signal);
    }
  }

  joinSync(): void {
    for (;;) {
      const ring = this.ring;
      const n = Atomics.load(ring.i32, UNFINISHED);
      if (n === 0) return;
      waitSync(ring.word(UNFINISHED), n, -1);
    }
  }
}

/** An unbounded queue with the short interface: put/putSync/get/getSync/empty/close. */
export class SimpleQueue<T = unknown> extends QueueBase<T> {
  constructor() {
    const ring = arguments[0] instanceof Ring ? (arguments[0] as Ring) : Ring.create(0);
    super(ring, false);
  }

  put(obj: T): Promise<void> {
    let m: Encoded | undefined;
    try {
      m = encodeMessage(obj);
      return putOrWithdraw(m, this.putBytes(m, { block: true, deadline: Infinity }));
    } catch (err) {
      if (m !== undefined) putFailed(m);
      return Promise.reject(err);
    }
  }

  putSync(obj: T): void {
    const m = encodeMessage(obj);
    try {
      this.putBytesSync(m, { block: true, deadline: Infinity });
    } catch (err) {
      putFailed(m);
      throw err;
    }
  }

  async get(): Promise<T> {
    return decodeMessage(await this.getBytes({ block: true, deadline: Infinity })) as T;
  }

  getSync(): T {
    return decodeMessage(this.getBytesSync({ block: true, deadline: Infinity })) as T;
  }

  empty(): boolean {
    return this.ring.items() === 0;
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
