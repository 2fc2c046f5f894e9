// The loop a pool worker runs: import functions by reference as they are
// announced, run task chunks in order, send results back. It ends when the pool
// closes the channel (or dies: EOF), or after maxTasks chunks, which is how
// maxTasksPerChild recycles a worker.
import { importTarget } from './import-target';
import { Channel, type InheritedFd } from './pool-channel';

export interface FunctionRef {
  url: string;
  exportName: string;
}

export interface WorkerInit {
  initializer: FunctionRef | null;
  initargs: unknown[];
  maxTasks: number; // 0: no limit
}

/** Messages: parent -> worker */
export type ToWorker =
  | ['f', number, string, string] // define function id -> (url, export)
  | ['t', number, number, unknown[][]] // task: job id, function id, argument lists
  | ['m', number, number, unknown[]]; // map chunk: job id, function id, single arguments
/** Messages: worker -> parent */
export type FromWorker =
  | ['ready'] // imported and initialized: send work
  | ['r', number, unknown[], number] // results of a job, in order; milliseconds it ran
  | ['e', number, unknown, number] // a job failed with this error; milliseconds it ran
  | ['i', unknown]; // the initializer failed: the pool is broken

const loadFunction = (ref: FunctionRef) => importTarget(ref, 'pool task');

const isThenable = (v: unknown): v is PromiseLike<unknown> =>
  v !== null && (typeof v === 'object' || typeof v === 'function') && typeof (v as any).then === 'function';

export function workerMain(channelFd: InheritedFd, init: WorkerInit): Promise<void> {
  return new Promise<void>((resolve) => {
    const functions = new Map<number, Promise<(...args: unknown[]) => unknown> | ((...args: unknown[]) => unknown)>();
    const queue: ToWorker[] = [];
    let running = false;
    let completed = 0;
    let ready: Promise<void> | null = null;

    const channel = new Channel(
      channelFd.fd,
      (msg) => {
        queue.push(msg as ToWorker);
        if (!running) void pump();
      },
      () => resolve(),
    );

    if (init.initializer) {
      const ref = init.initializer;
      ready = loadFunction(ref)
        .then((fn) => fn(...init.initargs))
        .then(
          () => channel.send(['ready']),
          (err) => {
            channel.send(['i', err]);
            channel.end();
            throw err;
          },
        );
      ready.catch(() => undefined);
    } else {
      channel.send(['ready']);
    }

    async function pump(): Promise<void> {
      running = true;
      try {
        if (ready) {
          await ready;
          ready = null;
        }
        while (queue.length > 0) {
          const msg = queue.shift()!;
          if (msg[0] === 'f') {
            const [, id, url, exportName] = msg;
            const loading = loadFunction({ url, exportName });
            functions.set(id, loading);
            loading.then((fn) => functions.set(id, fn), () => undefined);
            continue;
          }
          const [, job, fnId, items] = msg;
          const started = performance.now();
          try {
            let fn = functions.get(fnId)!;
            if (isThenable(fn)) fn = await fn;
            const call = fn as (...args: unknown[]) => unknown;
            const results = new Array(items.length);
            const single = msg[0] === 'm';
            for (let i = 0; i < items.length; i++) {
              let r = single ? call(items[i]) : call(...(items[i] as unknown[]));
              if (isThenable(r)) r = await r;
              results[i] = r;
            }
            channel.send(['r', job, results, performance.now() - started]);
          } catch (err) {
            channel.send(['e', job, err, performance.now() - started]);
          }
          if (init.maxTasks > 0 && ++completed >= init.maxTasks) {
            channel.end();
            return;
          }
        }
      } catch {
        // the initializer failed: reported above; the channel is closing
      } finally {
        running = false;
      }
    }
  });
}
