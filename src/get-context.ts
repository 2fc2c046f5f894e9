// getContext(method): Python's get_context(). The whole public API, with the
// four things that start processes bound to one start method; the rest is
// shared with the package itself. The bound classes are proxies of the real
// ones, so instanceof, statics and subclassing (`class W extends
// ctx.Process`) behave as with the originals.
import * as api from './index';
import { type StartMethod, startMethodOf } from './process';

export type MultiprocessingContext = typeof api;

const contexts = new Map<StartMethod, MultiprocessingContext>();

// An options object with the method filled in unless the caller chose one. A
// value that is not an options object is left for the constructor to reject.
function withMethod(options: unknown, method: StartMethod): unknown {
  if (options === undefined) return { startMethod: method };
  if (options === null || typeof options !== 'object' || Array.isArray(options)) return options;
  return 'startMethod' in options ? options : { ...options, startMethod: method };
}

function bindConstructor<T extends abstract new (...args: any[]) => unknown>(Class: T, method: StartMethod): T {
  return new Proxy(Class, {
    construct: (target, args, newTarget) => Reflect.construct(target, [withMethod(args[0], method), ...args.slice(1)], newTarget),
  });
}

/** The API with Process, Pool, ProcessPoolExecutor and Manager bound to method (default: the current default context). */
export function getContext(method?: StartMethod): MultiprocessingContext {
  if (method === undefined) return api;
  const m = startMethodOf(method, 'method')!;
  let ctx = contexts.get(m);
  if (!ctx) {
    const Manager = new Proxy(api.Manager, {
      get(target, key, receiver) {
        if (key === 'start') return (options?: unknown) => target.start(withMethod(options, m) as { startMethod?: StartMethod });
        return Reflect.get(target, key, receiver);
      },
    });
    ctx = Object.freeze({
      ...api,
      Process: bindConstructor(api.Process, m),
      Pool: bindConstructor(api.Pool, m),
      ProcessPoolExecutor: bindConstructor(api.ProcessPoolExecutor, m),
      Manager,
    }) as MultiprocessingContext;
    contexts.set(m, ctx);
  }
  return ctx;
}
