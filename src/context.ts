// Process-wide state: who this process is (main, or a child started by this
// package), its name and identity counter, and its living children. It lives on
// globalThis under a registered symbol so that every copy of the package loaded
// in one process (CommonJS and ESM entry points, or two installs) agrees on it.

export interface ProcessInfo {
  name: string;
  pid: number;
  daemon: boolean;
}

export interface ChildRecord {
  readonly pid: number | undefined;
  readonly daemon: boolean;
  isAlive(): boolean;
  /** Called when this process is about to exit: daemon children are terminated. */
  terminateForExit(): void;
}

export interface Context {
  isMain: boolean;
  /** Python's _identity: the chain of counters from the main process down. */
  identity: number[];
  counter: number;
  current: ProcessInfo;
  parent: { pid: number; name: string } | null;
  children: Set<ChildRecord>;
  startMethod: 'spawn' | null;
  /** True in a child while it imports its target's module (Python's bootstrapping phase). */
  bootstrapping: boolean;
  exitHookInstalled: boolean;
}

const kContext = Symbol.for('posix-multiprocessing.context');

function create(): Context {
  return {
    isMain: true,
    identity: [],
    counter: 0,
    current: { name: 'MainProcess', pid: process.pid, daemon: false },
    parent: null,
    children: new Set(),
    startMethod: null,
    bootstrapping: false,
    exitHookInstalled: false,
  };
}

export function context(): Context {
  const g = globalThis as unknown as Record<symbol, Context | undefined>;
  return (g[kContext] ??= create());
}

/** Python's naming rule: one counter per process, the identity chain joined by ':'. */
export function nextIdentity(): number[] {
  const ctx = context();
  ctx.counter += 1;
  return [...ctx.identity, ctx.counter];
}

/** Terminates daemon children when this process exits, as Python does at exit. */
export function installExitHook(): void {
  const ctx = context();
  if (ctx.exitHookInstalled) return;
  ctx.exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of ctx.children) {
      if (child.daemon && child.isAlive()) child.terminateForExit();
    }
  });
}
