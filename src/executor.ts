// ProcessPoolExecutor: concurrent.futures' interface over the same Pool, so it
// inherits its crash handling: a dead worker fails the futures it held and is
// replaced, instead of breaking the whole executor as CPython's does.
import { stateError } from './errors';
import { Pool } from './pool';
import type { StartMethod } from './process';
import { invalidType, type OptionsSpec, validateBoolean, validateInteger, validateOptions } from './validate';

export interface ExecutorOptions {
  maxWorkers?: number;
  maxTasksPerChild?: number;
  initializer?: (...args: any[]) => unknown;
  initargs?: unknown[];
  startMethod?: StartMethod;
}

const EXECUTOR: OptionsSpec = {
  call: 'new ProcessPoolExecutor()',
  keys: ['maxWorkers', 'maxTasksPerChild', 'initializer', 'initargs', 'startMethod'],
  number: 'maxWorkers',
};
// Python's shutdown(wait=True, *, cancel_futures=False): shutdown(false) is the wait flag.
const SHUTDOWN: OptionsSpec = { call: 'executor.shutdown()', keys: ['wait', 'cancelFutures'], boolean: 'wait' };

export class ProcessPoolExecutor {
  readonly #pool: Pool;
  readonly #pending = new Set<AbortController>();
  #shutdown = false;

  constructor(options?: ExecutorOptions) {
    const opts = validateOptions(options, EXECUTOR) as ExecutorOptions;
    if (opts.maxWorkers !== undefined) validateInteger(opts.maxWorkers, 'options.maxWorkers', 1, 4096);
    this.#pool = new Pool({
      processes: opts.maxWorkers,
      maxTasksPerChild: opts.maxTasksPerChild,
      initializer: opts.initializer,
      initargs: opts.initargs,
      startMethod: opts.startMethod,
    });
  }

  #checkOpen(): void {
    if (this.#shutdown) throw stateError('cannot schedule new futures after shutdown', 'ERR_MP_CLOSED');
  }

  /** Schedules fn(...args); the promise is the future. */
  submit<R>(fn: (...args: any[]) => R | Promise<R>, ...args: unknown[]): Promise<Awaited<R>> {
    try {
      this.#checkOpen();
    } catch (err) {
      return Promise.reject(err);
    }
    const controller = new AbortController();
    this.#pending.add(controller);
    return this.#pool
      .apply(fn, args, { signal: controller.signal })
      .catch((err: unknown) => {
        // A future cancelled by shutdown() rejects with the cancellation
        // itself (ERR_MP_CANCELLED), not the pool's AbortError around it.
        throw controller.signal.aborted && (err as Error)?.name === 'AbortError' ? controller.signal.reason : err;
      })
      .finally(() => this.#pending.delete(controller));
  }

  /** fn applied to items drawn from the iterables in parallel, results in order. */
  map<R>(fn: (...args: any[]) => R | Promise<R>, ...iterables: Array<Iterable<unknown>>): AsyncIterable<Awaited<R>> {
    this.#checkOpen();
    if (iterables.length === 0) {
      const e = new TypeError('executor.map(fn, ...iterables) needs at least one iterable after fn') as TypeError & { code: string };
      e.code = 'ERR_MISSING_ARGS';
      throw e;
    }
    for (const [i, it] of iterables.entries()) {
      if (it == null || typeof (it as any)[Symbol.iterator] !== 'function') throw invalidType(`iterables[${i}]`, 'an iterable', it);
    }
    function* zip(): Generator<unknown[]> {
      const its = iterables.map((it) => it[Symbol.iterator]());
      for (;;) {
        const row: unknown[] = [];
        for (const it of its) {
          const next = it.next();
          if (next.done) return;
          row.push(next.value);
        }
        yield row;
      }
    }
    return this.#pool.imapStar(fn, zip()) as AsyncIterable<Awaited<R>>;
  }

  /** Stops accepting work; with cancelFutures, futures not yet started reject. */
  async shutdown(options?: { wait?: boolean; cancelFutures?: boolean }): Promise<void> {
    const o = validateOptions(options, SHUTDOWN);
    const wait = o.wait === undefined ? true : validateBoolean(o.wait, 'options.wait');
    const cancelFutures = o.cancelFutures === undefined ? false : validateBoolean(o.cancelFutures, 'options.cancelFutures');
    this.#shutdown = true;
    if (cancelFutures) {
      const reason = stateError('the future was cancelled by shutdown({ cancelFutures: true })', 'ERR_MP_CANCELLED');
      reason.name = 'CancelledError';
      for (const controller of this.#pending) controller.abort(reason);
    }
    this.#pool.close();
    if (wait) await this.#pool.join();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }
}
