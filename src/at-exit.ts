// The package's work at the 'exit' of a process (or worker thread), in one
// ordered list, as CPython's util._exit_function runs its finalizers by
// priority. Order matters: data still on its way out is written before the
// children that will read it are joined, and the children are joined before
// what they may still use (heap segments, queue rings) is released; the
// tracker's queued lines go last, after everything that tells it something.
// Node runs 'exit' listeners in the order they were added, which was the
// order of first use: that put a join before a flush (a child waiting for the
// rest of a message was joined for ever) and the heap's release before the
// user's own close().

export const enum ExitPhase {
  /** Outbound data still queued in this process (connections). */
  Flush = 0,
  /** Daemon children terminated, non-daemon children joined. */
  Children = 1,
  /** Shared memory, rings, directories: what nothing here will use again. */
  Release = 2,
  /** The resource tracker's queued lines. */
  Tracker = 3,
}

interface Hooks {
  phases: Array<Array<() => void>>;
  running: boolean;
}

// Shared by every copy of the package loaded in this thread, as context.ts's state.
const kHooks = Symbol.for('posix-multiprocessing.at-exit');

function hooks(): Hooks {
  const g = globalThis as unknown as Record<symbol, Hooks | undefined>;
  let h = g[kHooks];
  if (h === undefined) {
    h = g[kHooks] = { phases: [[], [], [], []], running: false };
    const state = h;
    process.on('exit', () => run(state));
  }
  return h;
}

function run(h: Hooks): void {
  h.running = true;
  // A hook may add hooks of a later phase (a release that tells the
  // tracker): they run in their turn.
  for (const list of h.phases) {
    for (let i = 0; i < list.length; i++) {
      try {
        list[i]();
      } catch (err) {
        // One hook's failure must not keep the others from running.
        process.emitWarning(`posix-multiprocessing: an exit hook failed: ${(err as Error)?.stack ?? String(err)}`);
      }
    }
  }
}

/** Runs fn once at this thread's 'exit', in its phase (in the order added within one). */
export function atExit(phase: ExitPhase, fn: () => void): void {
  hooks().phases[phase].push(fn);
}
