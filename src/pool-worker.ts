// The loop a pool worker runs: import functions by reference as they are
// announced, run task chunks in order, send results back. It ends when the pool
// closes the channel (or dies: EOF), or after maxTasks chunks, which is how
// maxTasksPerChild recycles a worker.
import { inspect } from 'node:util';

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
    const names = new Map<number, string>();
    const queue: ToWorker[] = [];
    let running = false;
    let completed = 0;
    let ready: Promise<void> | null = null;
    // The task running now, or the one that ran last: a stray rejection is
    // reported under its name.
    let task: { name: string; running: boolean } | null = null;

    const channel = new Channel(
      channelFd.fd,
      (msg) => {
        queue.push(msg as ToWorker);
        if (!running) void pump();
      },
      () => resolve(),
    );

    // Node's default for a rejection nobody handles is to end the process:
    // here that would fail the worker's next, unrelated task with
    // WorkerCrashedError. It is reported instead, and nothing fails: which
    // task left the promise cannot be known (a timer of an earlier task may
    // reject while a later one runs). A listener of the program's own
    // (installed by the initializer, say) takes over the reporting.
    process.on('unhandledRejection', (reason) => {
      if (process.listenerCount('unhandledRejection') > 1) return;
      const when = !task ? 'before any task' : task.running ? `while task ${task.name} was running` : `after task ${task.name} finished`;
      process.stderr.write(`pool worker ${process.pid}: unhandled rejection ${when}: ${inspect(reason)}\n`);
    });

    // Replies never throw, so every job settles and the worker goes on: a
    // result that cannot be sent fails its job with the reason; a failure
    // that cannot be sent as itself (a thrown Symbol or function) becomes an
    // Error describing it (unsendable(): strings only, so it always can be).
    const reply = (msg: FromWorker): void => {
      try {
        // The envelope: the tuple, and a job's list of results.
        channel.send(msg, msg[0] === 'r' ? 2 : 1);
      } catch (err) {
        if (msg[0] === 'r') reply(['e', msg[1], err, msg[3]]);
        else if (msg[0] === 'e') channel.send(['e', msg[1], unsendable(msg[2], err, `pool task ${task?.name}`), msg[3]]);
        else if (msg[0] === 'i') channel.send(['i', unsendable(msg[1], err, 'the pool initializer')]);
      }
    };

    if (init.initializer) {
      const ref = init.initializer;
      ready = loadFunction(ref)
        .then((fn) => fn(...init.initargs))
        .then(
          () => reply(['ready']),
          (err) => {
            reply(['i', err]);
            channel.end();
            throw err;
          },
        );
      ready.catch(() => undefined);
    } else {
      reply(['ready']);
    }

    async function pump(): Promise<void> {
      running = true;
      try {
        if (ready) {
          try {
            await ready;
          } catch {
            return; // the initializer failed: reported; the channel is closing
          }
          ready = null;
        }
        while (queue.length > 0) {
          const msg = queue.shift()!;
          if (msg[0] === 'f') {
            const [, id, url, exportName] = msg;
            const loading = loadFunction({ url, exportName });
            functions.set(id, loading);
            names.set(id, `${exportName} (${url.slice(url.lastIndexOf('/') + 1)})`);
            loading.then((fn) => functions.set(id, fn), () => undefined);
            continue;
          }
          const [, job, fnId, items] = msg;
          const started = performance.now();
          task = { name: names.get(fnId)!, running: true };
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
            task.running = false;
            reply(['r', job, results, performance.now() - started]);
          } catch (err) {
            task.running = false;
            reply(['e', job, err, performance.now() - started]);
          }
          if (init.maxTasks > 0 && ++completed >= init.maxTasks) {
            channel.end();
            return;
          }
        }
      } finally {
        running = false;
      }
    }
  });
}

// What a failure that cannot travel as itself becomes: an Error saying what
// was thrown (a Symbol, a function, an object holding one) and why it could
// not be sent. (An Error whose parts cannot all travel is sent without them by
// the codec, and never gets here.)
function unsendable(thrown: unknown, why: unknown, who: string): Error {
  let what: string;
  try {
    if (typeof thrown === 'function') what = `a function (${thrown.name || 'anonymous'})`;
    else if (typeof thrown === 'symbol') what = `a symbol (${String(thrown)})`;
    else {
      const shown = inspect(thrown, { depth: 1, breakLength: Infinity });
      const reason = why instanceof Error ? why.message : String(why);
      what = `${shown.length > 300 ? `${shown.slice(0, 300)}...` : shown} (${reason})`;
    }
  } catch {
    what = `a ${typeof thrown}`;
  }
  const err = new Error(`${who} threw ${what}, which cannot be sent to another process`) as Error & { code: string };
  err.code = 'ERR_MP_DATA_CLONE';
  return err;
}
