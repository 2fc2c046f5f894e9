// Pool: worker processes that run functions by reference. Each worker has a
// private channel and the pool knows exactly which jobs each worker holds, so a
// worker that dies fails exactly the job it was running (WorkerCrashedError),
// hands the ones queued behind it back, and is replaced — CPython's Pool, whose workers share one task queue, cannot tell
// and hangs (python/cpython#96062).
//
// Scheduling: a job (one task, or a chunk of a map) goes to an idle worker.
// When recent jobs are fast, workers are also given a short queue of jobs, so
// that a stream of tiny tasks is batched into few writes and never waits for a
// round trip; slow jobs are never queued behind each other.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { TimeoutError, WorkerCrashedError, abortError, stateError } from './errors';
import { locate } from './locate';
import { type LongTimeout, setLongTimeout } from './long-timeout';
import { binding } from './native';
import { Channel, InheritedFd } from './pool-channel';
import type { FromWorker, FunctionRef, ToWorker, WorkerInit } from './pool-worker';
import { Process, type StartMethod, cpuCount, startMethodOf } from './process';
import { invalidType, type OptionsSpec, validateInteger, validateOptions, validateSignal, validateTimeout } from './validate';
import { distDir } from './paths';
import { trace, tracing } from './trace';

type Fn = (...args: any[]) => unknown;

const WORKER_MODULE = path.join(distDir, 'pool-worker.js');
const FAST_JOB_MS = 1; // tasks faster than this (run time in the worker) may queue up at a worker
const QUEUE_DEPTH = 64;

interface Job {
  id: number;
  fnId: number;
  /** Argument lists, or single arguments when `single` (map's common case). */
  items: unknown[];
  single: boolean;
  resolve(results: unknown[]): void;
  reject(err: unknown): void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

// A FIFO with O(1) shift: pools can hold hundreds of thousands of queued jobs,
// and Array.prototype.shift copies large arrays.
class JobQueue {
  #items: Array<Job | undefined> = [];
  #head = 0;

  get length(): number {
    return this.#items.length - this.#head;
  }

  push(job: Job): void {
    this.#items.push(job);
  }

  peek(): Job | undefined {
    return this.#items[this.#head];
  }

  shift(): Job | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const job = this.#items[this.#head];
    this.#items[this.#head++] = undefined;
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return job;
  }

  /** Puts jobs back at the front, in their order (they were shifted off earlier). */
  unshift(jobs: Job[]): void {
    if (jobs.length <= this.#head) {
      this.#head -= jobs.length;
      for (let k = 0; k < jobs.length; k++) this.#items[this.#head + k] = jobs[k];
    } else {
      this.#items = [...jobs, ...this.#items.slice(this.#head)];
      this.#head = 0;
    }
  }

  remove(job: Job): boolean {
    const i = this.#items.indexOf(job, this.#head);
    if (i < 0) return false;
    this.#items.splice(i, 1);
    return true;
  }

  drain(): Job[] {
    const out = this.#items.slice(this.#head) as Job[];
    this.#items = [];
    this.#head = 0;
    return out;
  }
}

interface Worker {
  process: Process;
  channel: Channel;
  inflight: Map<number, Job>;
  assigned: number; // jobs sent over its lifetime (for maxTasksPerChild)
  knownFns: Set<number>;
  ready: boolean; // booted and initialized
  exitCode: number | null;
  channelClosed: boolean;
  exited: boolean;
}

export interface PoolOptions {
  processes?: number;
  initializer?: Fn;
  initargs?: unknown[];
  maxTasksPerChild?: number;
  startMethod?: StartMethod;
}

export interface TaskOptions {
  /** Cancels the task if it has not started yet. */
  signal?: AbortSignal;
}

export interface ApplyAsyncOptions<R> extends TaskOptions {
  callback?: (result: R) => void;
  errorCallback?: (err: unknown) => void;
}

export interface ChunkOptions {
  chunksize?: number;
}

// Options specs (validate.ts): unknown keys, and Python's positional forms
// (pool.map(fn, xs, 10), result.get(5)), are refused with what to write.
const POOL: OptionsSpec = { call: 'new Pool()', keys: ['processes', 'initializer', 'initargs', 'maxTasksPerChild', 'startMethod'], number: 'processes' };
const APPLY: OptionsSpec = { call: 'pool.apply()', keys: ['signal'] };
const APPLY_ASYNC: OptionsSpec = { call: 'pool.applyAsync()', keys: ['callback', 'errorCallback', 'signal'] };
const RESULT_GET: OptionsSpec = { call: 'result.get()', keys: ['timeout'], number: 'timeout' };
const RESULT_WAIT: OptionsSpec = { call: 'result.wait()', keys: ['timeout'], number: 'timeout' };
const chunks = (call: string): OptionsSpec => ({ call, keys: ['chunksize'], number: 'chunksize' });

// A clone error names the part of the task that cannot travel as the caller
// wrote it ("args[0]", "an item"), not by the positions in the channel's tuples.
const ARGS_PATH = (path: string): string => path.replace(/^\[3\]\[\d+\]/, 'args');
const ITEM_PATH = (path: string): string => path.replace(/^\[3\]\[\d+\]/, 'an item');

function closedPoolError(): Error {
  return stateError('the pool is not running (closed or terminated)', 'ERR_MP_CLOSED');
}

function iterableArg<T>(value: Iterable<T>): Iterable<T> {
  if (value == null || typeof (value as any)[Symbol.iterator] !== 'function') {
    throw invalidType('iterable', 'an iterable', value);
  }
  return value;
}

function signalName(exitCode: number | null): NodeJS.Signals | null {
  if (exitCode === null || exitCode >= 0) return null;
  const entry = Object.entries(os.constants.signals).find(([, n]) => n === -exitCode);
  return entry ? (entry[0] as NodeJS.Signals) : null;
}

/** The outcome of applyAsync(), like Python's AsyncResult. */
export class AsyncResult<R> {
  readonly #promise: Promise<R>;
  #state: 'pending' | 'fulfilled' | 'rejected' = 'pending';

  constructor(promise: Promise<R>, callbacks: ApplyAsyncOptions<R>) {
    this.#promise = promise.then(
      (value) => {
        this.#state = 'fulfilled';
        callbacks.callback?.(value);
        return value;
      },
      (err) => {
        this.#state = 'rejected';
        callbacks.errorCallback?.(err);
        throw err;
      },
    );
    // A result nobody asks for must not become an unhandled rejection.
    this.#promise.catch(() => undefined);
  }

  /** The result; rejects with the task's error, or TimeoutError after `timeout` seconds. */
  get(options?: { timeout?: number }): Promise<R> {
    let timeout: number | undefined;
    try {
      timeout = validateTimeout(validateOptions(options, RESULT_GET).timeout, 'options.timeout');
    } catch (err) {
      return Promise.reject(err);
    }
    if (timeout === undefined) return this.#promise;
    let timer: LongTimeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = setLongTimeout(() => reject(new TimeoutError(`the result was not ready within ${timeout} s`)), timeout * 1000);
    });
    return Promise.race([this.#promise, expired]).finally(() => timer!.clear());
  }

  /** Waits until the result is ready or `timeout` seconds pass; resolves ready(). */
  async wait(options?: { timeout?: number }): Promise<boolean> {
    // Checked here: a bad option must throw, not read as "not ready".
    const timeout = validateTimeout(validateOptions(options, RESULT_WAIT).timeout, 'options.timeout');
    try {
      await this.get({ timeout });
    } catch {
      // a failed task is ready too; a timeout leaves it pending
    }
    return this.ready();
  }

  ready(): boolean {
    return this.#state !== 'pending';
  }

  successful(): boolean {
    if (this.#state === 'pending') throw stateError('the result is not ready', 'ERR_MP_NOT_READY');
    return this.#state === 'fulfilled';
  }
}

export class Pool {
  readonly #size: number;
  readonly #startMethod: StartMethod | undefined;
  readonly #init: WorkerInit;
  readonly #workers = new Set<Worker>();
  readonly #queue = new JobQueue();
  readonly #fnIds = new Map<Fn, number>();
  readonly #fnRefs: FunctionRef[] = [];
  #state: 'running' | 'closed' | 'terminated' = 'running';
  #broken: Error | null = null;
  #nextJob = 1;
  // Per function: a moving average of its per-task run time in the workers
  // (undefined until its first result: an unknown function is treated as slow).
  readonly #fnMs: number[] = [];
  #idle: Array<() => void> = [];

  constructor(options?: PoolOptions) {
    const opts = validateOptions(options, POOL) as PoolOptions;
    const size = opts.processes ?? cpuCount();
    validateInteger(size, 'options.processes', 1, 4096);
    if (opts.initializer !== undefined && typeof opts.initializer !== 'function') {
      throw invalidType('options.initializer', 'a function', opts.initializer);
    }
    if (opts.initargs !== undefined && !Array.isArray(opts.initargs)) {
      throw invalidType('options.initargs', 'an array', opts.initargs);
    }
    const maxTasks = opts.maxTasksPerChild ?? 0;
    if (opts.maxTasksPerChild !== undefined) validateInteger(maxTasks, 'options.maxTasksPerChild', 1);
    this.#startMethod = startMethodOf(opts.startMethod, 'options.startMethod');
    this.#size = size;
    this.#init = {
      initializer: opts.initializer ? locate(opts.initializer, 'initializer') : null,
      initargs: opts.initargs ?? [],
      maxTasks,
    };
    for (let i = 0; i < size; i++) this.#spawn();
  }

  /** The number of worker processes. */
  get processes(): number {
    return this.#size;
  }

  /** Pids of the current workers. */
  get pids(): number[] {
    return [...this.#workers].map((w) => w.process.pid!);
  }

  #spawn(): void {
    const [parentEnd, childEnd] = binding.socketpair();
    let proc: Process;
    try {
      proc = new Process({
        target: { module: WORKER_MODULE, export: 'workerMain' },
        args: [new InheritedFd(childEnd), this.#init],
        daemon: true,
        startMethod: this.#startMethod,
      });
      // Python's names: ForkServerPoolWorker-N, SpawnPoolWorker-N.
      proc.name = proc.name.replace(/^Process/, proc.startMethod === 'forkserver' ? 'ForkServerPoolWorker' : 'SpawnPoolWorker');
      proc.start();
    } catch (err) {
      binding.closeFd(parentEnd);
      throw err;
    } finally {
      binding.closeFd(childEnd);
    }
    const worker: Worker = {
      process: proc,
      channel: undefined as unknown as Channel,
      inflight: new Map(),
      assigned: 0,
      knownFns: new Set(),
      ready: false,
      exitCode: null,
      channelClosed: false,
      exited: false,
    };
    worker.channel = new Channel(
      parentEnd,
      (msg) => this.#onMessage(worker, msg as FromWorker),
      () => {
        worker.channelClosed = true;
        // Between its channel closing and its exit being reaped, nothing else
        // may hold the event loop open (a lone worker being recycled, with the
        // next task waiting for its replacement): a pending join() does.
        if (!worker.exited) void worker.process.join().catch(() => undefined);
        this.#maybeRetire(worker);
      },
    );
    if (!this.#busy()) worker.channel.unref();
    void proc.sentinel.then((code) => {
      worker.exitCode = code;
      worker.exited = true;
      this.#maybeRetire(worker);
    });
    this.#workers.add(worker);
  }

  #onMessage(worker: Worker, msg: FromWorker): void {
    if (msg[0] === 'ready') {
      worker.ready = true;
      this.#dispatch();
      return;
    }
    if (msg[0] === 'i') {
      this.#breakPool(msg[1]);
      return;
    }
    const job = worker.inflight.get(msg[1]);
    if (!job) return;
    worker.inflight.delete(msg[1]);
    const ms = msg[3] / Math.max(1, job.items.length);
    const avg = this.#fnMs[job.fnId];
    this.#fnMs[job.fnId] = avg === undefined ? ms : avg * 0.8 + ms * 0.2;
    this.#settle(job, msg[0] === 'r', msg[2]);
    this.#dispatch();
  }

  // A worker is gone once it has exited and its channel has delivered
  // everything it sent; only then is what it still held known to be lost.
  #maybeRetire(worker: Worker): void {
    if (!worker.exited || !worker.channelClosed || !this.#workers.has(worker)) return;
    this.#workers.delete(worker);
    const pid = worker.process.pid;
    worker.process.close();
    if (worker.inflight.size > 0) {
      // A worker runs its jobs one at a time, in the order it was sent them,
      // and every result it sent has arrived: the first job it still holds is
      // the one it died running. The jobs queued behind it never started;
      // they go back to the front of the queue, for the other workers.
      const [running, ...unstarted] = worker.inflight.values();
      worker.inflight.clear();
      const code = worker.exitCode;
      const signal = signalName(code);
      this.#settle(
        running,
        false,
        new WorkerCrashedError(
          `worker process ${pid} ended (${signal ?? `exit code ${code}`}) while running this task`,
          signal ? null : code,
          signal,
        ),
      );
      // (terminate() and a broken pool settle every held job themselves.)
      this.#queue.unshift(unstarted);
    }
    if (this.#state !== 'terminated' && !this.#broken && (this.#state === 'running' || this.#queue.length > 0)) {
      if (tracing()) trace('pool: replacing worker %s (pid %d, exit code %d)', worker.process.name, pid, worker.exitCode);
      this.#spawn();
    }
    this.#dispatch();
  }

  #breakPool(err: unknown): void {
    if (this.#broken) return;
    const broken = stateError('a worker initializer failed; the pool is broken', 'ERR_MP_POOL_BROKEN') as Error & {
      cause?: unknown;
    };
    broken.cause = err;
    this.#broken = broken;
    for (const job of this.#queue.drain()) this.#settle(job, false, broken);
    for (const w of this.#workers) {
      for (const job of w.inflight.values()) this.#settle(job, false, broken);
      w.inflight.clear();
      w.channel.end();
    }
    this.#checkIdle();
  }

  #fnId(fn: Fn): number {
    let id = this.#fnIds.get(fn);
    if (id === undefined) {
      id = this.#fnRefs.length;
      this.#fnRefs.push(locate(fn, 'task function'));
      this.#fnIds.set(fn, id);
    }
    return id;
  }

  #checkOpen(): void {
    if (this.#state !== 'running') throw closedPoolError();
    if (this.#broken) throw this.#broken;
  }

  #submit(fn: Fn, items: unknown[], signal?: AbortSignal, single = false): Promise<unknown[]> {
    if (typeof fn !== 'function') throw invalidType('fn', 'a function', fn);
    const fnId = this.#fnId(fn);
    return new Promise<unknown[]>((resolve, reject) => {
      const job: Job = { id: this.#nextJob++, fnId, items, single, resolve, reject };
      if (signal) {
        if (signal.aborted) return reject(abortError(signal));
        job.signal = signal;
        job.onAbort = () => {
          if (this.#queue.remove(job)) this.#settle(job, false, abortError(signal));
        };
        signal.addEventListener('abort', job.onAbort, { once: true });
      }
      this.#queue.push(job);
      // Work is pending: the channels keep the event loop alive until it is done.
      if (this.#queue.length === 1) for (const w of this.#workers) w.channel.ref();
      this.#dispatch();
    });
  }

  #settle(job: Job, ok: boolean, value: unknown): void {
    if (job.onAbort) job.signal!.removeEventListener('abort', job.onAbort);
    if (ok) job.resolve(value as unknown[]);
    else job.reject(value);
    this.#checkIdle();
  }

  #dispatch(): void {
    if (this.#queue.length === 0 || this.#state === 'terminated' || this.#broken) return;
    const max = this.#init.maxTasks;
    for (;;) {
      const next = this.#queue.peek();
      if (next === undefined) break;
      // The least-loaded worker that may take the job: idle workers first,
      // then queues fill evenly. A booting worker is given one job, so that a
      // worker killed while it boots still settles something: under a storm
      // of kills the pool keeps making progress instead of waiting for
      // workers that never live. Fast functions may queue up at a worker;
      // slow or unknown ones never wait behind each other.
      const fast = (this.#fnMs[next.fnId] ?? Infinity) < FAST_JOB_MS;
      let w: Worker | undefined;
      for (const candidate of this.#workers) {
        const depth = candidate.ready && fast ? QUEUE_DEPTH : 1;
        if (candidate.exited || candidate.channelClosed || candidate.inflight.size >= depth) continue;
        if (max > 0 && candidate.assigned >= max) continue;
        if (w === undefined || candidate.inflight.size < w.inflight.size) w = candidate;
      }
      if (w === undefined) break;
      const job = this.#queue.shift()!;
      if (!w.knownFns.has(job.fnId)) {
        const ref = this.#fnRefs[job.fnId];
        w.channel.send(['f', job.fnId, ref.url, ref.exportName] satisfies ToWorker);
        w.knownFns.add(job.fnId);
      }
      w.inflight.set(job.id, job);
      w.assigned++;
      try {
        // Envelopes: the tuple and the item list; a task's argument lists too
        // (the worker spreads them, so extra properties on them mean nothing).
        if (job.single) w.channel.send(['m', job.id, job.fnId, job.items] satisfies ToWorker, 2, ITEM_PATH);
        else w.channel.send(['t', job.id, job.fnId, job.items as unknown[][]] satisfies ToWorker, 3, ARGS_PATH);
      } catch (err) {
        // The arguments cannot be cloned: fail this job alone.
        w.inflight.delete(job.id);
        w.assigned--;
        this.#settle(job, false, err);
      }
    }
    if (max > 0) {
      // Workers that have been given all they may run finish and exit; tell
      // them to close once their last result is back.
      for (const w of this.#workers) if (w.assigned >= max && w.inflight.size === 0) w.channel.end();
    }
  }

  #busy(): boolean {
    if (this.#queue.length > 0) return true;
    for (const w of this.#workers) if (w.inflight.size > 0) return true;
    return false;
  }

  #checkIdle(): void {
    if (this.#busy()) return;
    // An idle pool does not keep the program alive (its workers are daemons).
    for (const w of this.#workers) w.channel.unref();
    if (this.#state === 'closed') for (const w of this.#workers) w.channel.end();
    for (const resolve of this.#idle.splice(0)) resolve();
  }

  // ---- public API ------------------------------------------------------------

  /** Runs fn(...args) in a worker; resolves with its result. */
  apply<R>(fn: (...args: any[]) => R | Promise<R>, args: unknown[] = [], options?: TaskOptions): Promise<Awaited<R>> {
    try {
      this.#checkOpen();
      if (!Array.isArray(args)) throw invalidType('args', 'an array', args);
      const signal = validateSignal(validateOptions(options, APPLY).signal);
      return this.#submit(fn, [args], signal).then((r) => r[0] as Awaited<R>);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Like apply(), returning an AsyncResult; callbacks run in this process. */
  applyAsync<R>(
    fn: (...args: any[]) => R | Promise<R>,
    args: unknown[] = [],
    options?: ApplyAsyncOptions<Awaited<R>>,
  ): AsyncResult<Awaited<R>> {
    this.#checkOpen();
    if (!Array.isArray(args)) throw invalidType('args', 'an array', args);
    const opts = validateOptions(options, APPLY_ASYNC) as ApplyAsyncOptions<Awaited<R>>;
    if (opts.callback !== undefined && typeof opts.callback !== 'function') {
      throw invalidType('options.callback', 'a function', opts.callback);
    }
    if (opts.errorCallback !== undefined && typeof opts.errorCallback !== 'function') {
      throw invalidType('options.errorCallback', 'a function', opts.errorCallback);
    }
    const signal = validateSignal(opts.signal);
    const promise = this.#submit(fn, [args], signal).then((r) => r[0] as Awaited<R>);
    return new AsyncResult(promise, opts);
  }

  #chunkSize(length: number, chunksize: number | undefined): number {
    if (chunksize === undefined) return Math.max(1, Math.ceil(length / (this.#size * 4))); // CPython's rule
    return validateInteger(chunksize, 'options.chunksize', 1);
  }

  async #mapItems(fn: Fn, items: unknown[], chunksize: number | undefined, single: boolean): Promise<unknown[]> {
    const size = this.#chunkSize(items.length, chunksize);
    const jobs: Promise<unknown[]>[] = [];
    for (let i = 0; i < items.length; i += size) jobs.push(this.#submit(fn, items.slice(i, i + size), undefined, single));
    const parts = await Promise.all(jobs);
    return ([] as unknown[]).concat(...parts);
  }

  /** fn applied to every item, in input order (Python's Pool.map). */
  map<T, R>(fn: (item: T) => R | Promise<R>, iterable: Iterable<T>, options?: ChunkOptions): Promise<Awaited<R>[]> {
    try {
      this.#checkOpen();
      const { chunksize } = validateOptions(options, chunks('pool.map()')) as ChunkOptions;
      const items = Array.isArray(iterable) ? iterable : Array.from(iterableArg(iterable));
      return this.#mapItems(fn, items, chunksize, true) as Promise<Awaited<R>[]>;
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** fn(...args) for every argument list, in input order (Python's Pool.starmap). */
  starmap<R>(fn: (...args: any[]) => R | Promise<R>, iterable: Iterable<unknown[]>, options?: ChunkOptions): Promise<Awaited<R>[]> {
    try {
      this.#checkOpen();
      const { chunksize } = validateOptions(options, chunks('pool.starmap()')) as ChunkOptions;
      const items = Array.from(iterableArg(iterable), (args, i) => {
        if (!Array.isArray(args)) throw invalidType(`iterable[${i}]`, 'an array of arguments', args);
        return args;
      });
      return this.#mapItems(fn, items, chunksize, false) as Promise<Awaited<R>[]>;
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Results in input order, computed lazily with bounded memory. */
  imap<T, R>(fn: (item: T) => R | Promise<R>, iterable: Iterable<T> | AsyncIterable<T>, options?: ChunkOptions): AsyncIterable<Awaited<R>> {
    return this.#imap(fn, iterable, options, true, false) as AsyncIterable<Awaited<R>>;
  }

  /** Results in completion order. */
  imapUnordered<T, R>(fn: (item: T) => R | Promise<R>, iterable: Iterable<T> | AsyncIterable<T>, options?: ChunkOptions): AsyncIterable<Awaited<R>> {
    return this.#imap(fn, iterable, options, false, false) as AsyncIterable<Awaited<R>>;
  }

  /** imap over argument lists (used by the executor's map). */
  imapStar(fn: Fn, iterable: Iterable<unknown[]> | AsyncIterable<unknown[]>, options?: ChunkOptions): AsyncIterable<unknown> {
    return this.#imap(fn, iterable, options, true, true);
  }

  #imap(fn: Fn, iterable: Iterable<unknown> | AsyncIterable<unknown>, options: ChunkOptions | undefined, ordered: boolean, star: boolean): AsyncIterable<unknown> {
    this.#checkOpen();
    if (typeof fn !== 'function') throw invalidType('fn', 'a function', fn);
    const { chunksize = 1 } = validateOptions(options, chunks('pool.imap()')) as ChunkOptions;
    validateInteger(chunksize, 'options.chunksize', 1);
    const source = iterable as any;
    if (source == null || (typeof source[Symbol.iterator] !== 'function' && typeof source[Symbol.asyncIterator] !== 'function')) {
      throw invalidType('iterable', 'an iterable or async iterable', iterable);
    }
    const window = this.#size * 2 + 2; // chunks in flight: backpressure on the source
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const pool = this;
    return {
      async *[Symbol.asyncIterator]() {
        const it: AsyncIterator<unknown> | Iterator<unknown> =
          typeof source[Symbol.asyncIterator] === 'function' ? source[Symbol.asyncIterator]() : source[Symbol.iterator]();
        // Drawing stops at the source's end, or when drawing fails (the source
        // throws, a bad item, the pool closed): what was drawn before still
        // runs and is delivered, then the failure is thrown, as CPython does.
        let exhausted = false;
        let failure: { error: unknown } | undefined;
        type Slot = { promise: Promise<unknown[]>; settled: boolean; results?: unknown[]; error?: unknown; ok?: boolean };
        const slots: Slot[] = [];
        const submit = (chunk: unknown[]) => {
          pool.#checkOpen();
          const slot: Slot = { promise: pool.#submit(fn, chunk, undefined, !star), settled: false };
          slot.promise.then(
            (r) => Object.assign(slot, { settled: true, ok: true, results: r }),
            (e) => Object.assign(slot, { settled: true, ok: false, error: e }),
          );
          slots.push(slot);
        };
        const fill = async () => {
          while (!exhausted && slots.length < window) {
            const chunk: unknown[] = [];
            try {
              while (chunk.length < chunksize) {
                const next = await it.next();
                if (next.done) {
                  exhausted = true;
                  break;
                }
                if (star && !Array.isArray(next.value)) throw invalidType('iterable item', 'an array of arguments', next.value);
                chunk.push(next.value);
              }
            } catch (error) {
              exhausted = true;
              failure = { error };
            }
            if (chunk.length === 0) break;
            try {
              submit(chunk);
            } catch (error) {
              exhausted = true;
              failure ??= { error };
            }
          }
        };
        await fill();
        while (slots.length > 0) {
          let slot: Slot;
          if (ordered) {
            slot = slots[0];
            await slot.promise.catch(() => undefined);
          } else {
            await Promise.race(slots.map((s) => s.promise.catch(() => undefined)));
            slot = slots.find((s) => s.settled)!;
          }
          slots.splice(slots.indexOf(slot), 1);
          if (!slot.ok) throw slot.error;
          for (const r of slot.results!) yield r;
          await fill();
        }
        if (failure) throw failure.error;
      },
    };
  }

  /** No new work; workers exit once the queued work is done. */
  close(): void {
    if (this.#state !== 'running') return;
    this.#state = 'closed';
    this.#checkIdle();
  }

  /** Stops at once: pending work rejects, workers are killed. */
  terminate(): void {
    if (this.#state === 'terminated') return;
    this.#state = 'terminated';
    const err = stateError('the pool was terminated before this task finished', 'ERR_MP_CLOSED');
    for (const job of this.#queue.drain()) this.#settle(job, false, err);
    for (const w of this.#workers) {
      for (const job of w.inflight.values()) this.#settle(job, false, err);
      w.inflight.clear();
      w.channel.destroy();
      if (!w.exited) w.process.terminate();
    }
    for (const resolve of this.#idle.splice(0)) resolve();
  }

  /** Waits for every worker to exit; call close() or terminate() first. */
  async join(): Promise<void> {
    if (this.#state === 'running') {
      throw stateError('join() needs close() or terminate() first', 'ERR_MP_POOL_RUNNING');
    }
    while (this.#busy() && this.#state === 'closed' && !this.#broken) {
      await new Promise<void>((resolve) => this.#idle.push(resolve));
    }
    while (this.#workers.size > 0) {
      // join() (not the sentinel) keeps the event loop alive for daemon workers.
      await Promise.all([...this.#workers].map((w) => (w.exited ? undefined : w.process.join())));
      // Retirement runs on the next turns (the channel close); let it.
      await new Promise((r) => setImmediate(r));
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.terminate();
    await this.join();
  }
}
