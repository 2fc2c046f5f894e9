// Process-wide state: who this process is (main, or a child started by this
// package), its name and identity counter, and its living children. It lives on
// globalThis under a registered symbol so that every copy of the package loaded
// in one process (CommonJS and ESM entry points, or two installs) agrees on it.
import { atExit, ExitPhase } from './at-exit';
import type { ForkserverHandle } from './forkserver';

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
  join(): Promise<number | null>;
  joinSync(): number | null;
}

export interface Context {
  isMain: boolean;
  /** Python's _identity: the chain of counters from the main process down. */
  identity: number[];
  counter: number;
  current: ProcessInfo;
  parent: { pid: number; name: string } | null;
  children: Set<ChildRecord>;
  /** Set by setStartMethod(); null: the platform's default. */
  startMethod: 'forkserver' | 'spawn' | null;
  /** This thread's forkserver, while it runs (forkserver.ts). */
  forkserver: ForkserverHandle | null;
  /** Modules the next forkserver imports before it serves (setForkserverPreload). */
  forkserverPreload: string[];
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
    forkserver: null,
    forkserverPreload: [],
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

// Python's _exit_function: when a process ends, its daemon children are
// terminated and its non-daemon children joined. A child runs it with its
// event loop still turning once its target has settled (child/bootstrap.ts);
// the 'exit' event, which cannot wait, runs it synchronously
// (process.exit(), an uncaught exception, the end of the main program). The
// parent-death signal covers the rest: a crash, SIGKILL, a worker thread
// terminated (native/process.cc sends it as the worker's environment goes).

function terminateDaemons(ctx: Context): void {
  for (const child of ctx.children) {
    if (child.daemon && child.isAlive()) child.terminateForExit();
  }
}

function nextToJoin(ctx: Context): ChildRecord | undefined {
  for (const child of ctx.children) {
    if (!child.daemon && child.isAlive()) return child;
  }
  return undefined;
}

/** Terminates daemon children, then waits for the others, letting the event loop run. */
export async function exitChildren(): Promise<void> {
  const ctx = context();
  for (let child = nextToJoin(ctx); child; child = nextToJoin(ctx)) {
    terminateDaemons(ctx);
    await child.join();
  }
  terminateDaemons(ctx);
}

function exitChildrenSync(): void {
  const ctx = context();
  if (ctx.children.size === 0) return;
  terminateDaemons(ctx);
  // No child can start while this runs: one pass over them is all.
  for (const child of [...ctx.children]) {
    if (!child.daemon && child.isAlive()) child.joinSync();
  }
}

/** Runs exitChildrenSync at this process's (or worker thread's) 'exit'. */
export function installExitHook(): void {
  const ctx = context();
  if (ctx.exitHookInstalled) return;
  ctx.exitHookInstalled = true;
  // After outbound data is flushed, before what the children may still be
  // using is released (heap segments, queue rings): see at-exit.ts.
  atExit(ExitPhase.Children, exitChildrenSync);
}
