// The resource tracker: names of OS objects this program tree created (shared
// memory segments, heap segments, named semaphores) are reported to one tracker
// process per tree, which unlinks whatever is still registered once every
// process of the tree is gone, even after SIGKILL. See docs/cleanup.md.
//
// Protocol: one JSON line per message on a pipe, {"op":"REGISTER"|"UNREGISTER",
// "kind","name"[,"pid"][,"family":true]} (pid: unlink as soon as that process
// is gone; family: name is a prefix, and every name starting with it is the
// tracker's to unlink, see trackFamily). The tracker reads until EOF, which the
// kernel delivers only when the last process holding the write end has exited:
// that is the definition of "the program tree is gone", crash or not.
//
// Every line goes out in one write() of at most PIPE_BUF bytes, which a pipe
// takes whole or not at all, so lines from the threads and processes of a
// tree never interleave. When the pipe is full, lines wait in a queue of this
// thread, in order, and go out when it is writable again (an unref'd
// FdWatcher: the event loop never blocks and the program is never kept
// alive); at exit what is still queued is written with a bounded wait.
//
// The write end is process-wide (native/tracker.cc): the main thread and every
// worker thread of a process share one tracker and one fd, which no thread's
// teardown closes.
import * as path from 'node:path';

import { atExit, ExitPhase } from './at-exit';
import { binding, type FdWatcher } from './native';
import { distDir } from './paths';

/**
 * Kinds the tracker knows how to unlink. 'heap': a shared-heap segment (an shm
 * name whose header counts the references other processes hold, heap-layout.ts):
 * once its owner is gone the tracker unlinks it when that count is 0.
 * 'socket-dir': a private directory of Unix sockets (a manager's).
 */
export type TrackedKind = 'shm' | 'semaphore' | 'heap' | 'socket-dir';

/** The environment variable that tells a child where its inherited write end is: "<fd>:<inode>". */
export const TRACKER_ENV = 'PMP_RESOURCE_TRACKER';

export const trackerMainPath = path.join(distDir, 'tracker-main.js');

// How long an exiting thread waits for a full pipe to take its queued lines.
const EXIT_FLUSH_MS = 2000;

/** This thread's side of the process's tracker pipe. */
interface TrackerState {
  /** The process's write end of the tracker's pipe, or -1 before there is a tracker. */
  readonly fd: number;
  /** Inode of the pipe, so an fd number inherited by accident is never mistaken for it. */
  readonly ino: number;
  /** Pid of the tracker when this process started it (undefined when inherited). */
  readonly pid: number | undefined;
  /** Set when the pipe broke (tracker gone): from then on tracking is a no-op. */
  broken: boolean;
  /** Lines the full pipe did not take yet, oldest at head. */
  queue: (Buffer | undefined)[];
  head: number;
  watcher: FdWatcher | undefined;
  exitHook: boolean;
  /** Set by the 'exit' event: lines are written at once from then on, waiting up to this time. */
  exitDeadline: number | undefined;
}

// The pipe is recorded once per process and never changes after: known once,
// cached.
let recorded: [number, number, number] | null = null;
function pipe(): [number, number, number] | null {
  return (recorded ??= binding.trackerPipe());
}

// Per thread (each worker has its own globalThis), shared by every copy of
// the package loaded in it (CommonJS and ESM entry points), and readable by
// the test suite's leak check without importing us.
const kState = Symbol.for('posix-multiprocessing.resource-tracker');

function state(): TrackerState {
  const g = globalThis as unknown as Record<symbol, TrackerState | undefined>;
  return (g[kState] ??= createState());
}

function createState(): TrackerState {
  adoptInherited();
  const s: Omit<TrackerState, 'fd' | 'ino' | 'pid'> = { broken: false, queue: [], head: 0, watcher: undefined, exitHook: false, exitDeadline: undefined };
  return Object.defineProperties(s, {
    fd: { get: () => pipe()?.[0] ?? -1, enumerable: true },
    ino: { get: () => pipe()?.[1] ?? 0, enumerable: true },
    pid: { get: () => pipe()?.[2] || undefined, enumerable: true },
  }) as TrackerState;
}

// A child started by Process finds the tracker's write end at the fd named in
// its environment. The variable is removed at once so that programs this child
// starts some other way (child_process) do not believe they have it, and the
// fd becomes close-on-exec so that they do not hold the pipe open either.
function adoptInherited(): void {
  const value = process.env[TRACKER_ENV];
  if (value === undefined) return;
  delete process.env[TRACKER_ENV];
  const m = /^(\d+):(\d+)$/.exec(value);
  // null when the fd is not that pipe here: a tracker is started when needed.
  if (m) binding.trackerSetPipe(Number(m[1]), 0, Number(m[2]));
}

// Adopt at load (the package's index imports this module), so the variable is
// gone before user code can start anything.
state();

/**
 * Starts the tracker if this process has none, and returns the write end.
 * The tracker is started with child_process (detached: a new session, so a ^C
 * or a kill of the program's process group does not take it down with the
 * program; not a Process, so it is not anyone's counted child). It gets the
 * pipe's read end as fd 3.
 */
export function ensureRunning(): number {
  const s = state();
  if (s.fd >= 0 || s.broken) return s.fd;
  const [readEnd, writeEnd] = binding.pipe();
  let pid = 0;
  try {
    const env = { ...process.env };
    delete env.NODE_OPTIONS; // the tracker is our own plain JS: no loaders needed
    delete env[TRACKER_ENV];
    // Loaded here, not at the top: only the process that starts the tracker
    // needs it, and every child would pay ~10 ms to load it.
    const childProcess = require('node:child_process') as typeof import('node:child_process');
    const child = childProcess.spawn(process.execPath, [trackerMainPath], {
      stdio: ['ignore', 'ignore', 'inherit', readEnd],
      detached: true,
      env,
    });
    // A tracker that failed to start shows as EPIPE on the first write.
    child.on('error', () => {});
    child.unref();
    pid = child.pid ?? 0;
  } catch (err) {
    binding.closeFd(writeEnd);
    throw err;
  } finally {
    binding.closeFd(readEnd);
  }
  // Another thread of this process may have recorded its tracker meanwhile:
  // then ours reads EOF at once and exits with nothing registered.
  if (binding.trackerSetPipe(writeEnd, pid)?.[0] !== writeEnd) binding.closeFd(writeEnd);
  return s.fd;
}

function encodeLine(msg: { op: string; kind: string; name: string; pid?: number; family?: true }): Buffer {
  const line = Buffer.from(JSON.stringify(msg) + '\n');
  // Names are bounded (shm names by NAME_MAX / PSHMNAMLEN), so this holds; a
  // longer line could be mixed with another process's, so it is refused.
  if (line.length > binding.pipeBuf) {
    throw new RangeError(
      `resource tracker: the ${msg.op} message for ${msg.kind} '${msg.name}' is ${line.length} bytes, ` +
        `more than PIPE_BUF (${binding.pipeBuf}), the most a pipe takes whole`,
    );
  }
  return line;
}

// One write() of the whole line: the pipe takes all of it or, when full,
// none (false). EPIPE (the tracker is gone, killed by hand) ends tracking in
// this thread: crash cleanup can no longer happen; normal cleanup by the
// owners still does. The fd stays open: other threads share it.
function put(s: TrackerState, line: Buffer): boolean {
  try {
    return binding.write(s.fd, line, 0, line.length) >= 0;
  } catch {
    s.broken = true;
    return true;
  }
}

function send(op: 'REGISTER' | 'UNREGISTER', name: string, kind: TrackedKind, pid?: number): void {
  const s = state();
  if (s.broken) return;
  // Forgetting a name never needs a tracker started for it.
  const fd = op === 'REGISTER' ? ensureRunning() : s.fd;
  if (fd < 0) return;
  const line = encodeLine(pid === undefined ? { op, kind, name } : { op, kind, name, pid });
  if (!s.exitHook) {
    s.exitHook = true;
    atExit(ExitPhase.Tracker, () => {
      s.exitDeadline = Date.now() + EXIT_FLUSH_MS;
      flushSync(s);
    });
  }
  // Written at once when the pipe has room (the normal case, so a crash right
  // after still leaves the message with the tracker); behind queued lines
  // otherwise, so the tracker sees each thread's lines in order.
  if (s.head === s.queue.length && put(s, line)) return;
  s.queue.push(line);
  if (s.exitDeadline !== undefined) {
    flushSync(s);
    return;
  }
  if (!s.watcher) {
    s.watcher = new binding.FdWatcher(fd, () => drain(s));
    s.watcher.unref(); // never keeps the program alive
  }
  s.watcher.start(2);
}

/** Writes queued lines until the pipe is full again; true when none is left. */
function drain(s: TrackerState): boolean {
  while (s.head < s.queue.length && !s.broken) {
    if (!put(s, s.queue[s.head]!)) return false;
    s.queue[s.head++] = undefined;
  }
  s.queue = [];
  s.head = 0;
  if (s.broken) {
    s.watcher?.close();
    s.watcher = undefined;
  } else {
    s.watcher?.stop();
  }
  return true;
}

// At exit: the lines must reach the tracker before the process is gone, and
// nothing of this thread can run later; waits for room, up to the deadline.
function flushSync(s: TrackerState): void {
  while (!drain(s)) {
    const left = s.exitDeadline! - Date.now();
    if (left <= 0) return;
    binding.poll(s.fd, 2, left);
  }
}

/**
 * Registers a family of names: at the end of the tree the tracker unlinks
 * every existing shm name that starts with `prefix` (Linux only: it lists
 * /dev/shm). One message then covers all the random names a process creates,
 * instead of a REGISTER and an UNREGISTER each (two pipe writes and the
 * tracker's work for them, more than half the cost of a create/unlink cycle).
 *
 * True only when the message is known to be in the pipe, where it survives a
 * SIGKILL of the whole tree: the caller may then create names of the family
 * without telling the tracker, since each of them comes into existence after
 * its registration. On false (pipe full) the caller registers names one by
 * one, as before, and may try again later.
 */
export function trackFamily(prefix: string, kind: TrackedKind): boolean {
  const s = state();
  if (s.broken) return false;
  if (ensureRunning() < 0) return false;
  // It may overtake queued lines: a family shares no key with a single name.
  const line = encodeLine({ op: 'REGISTER', kind, name: prefix, family: true });
  return put(s, line) && !s.broken;
}

export interface TrackOptions {
  /**
   * 'tree' (default): the name may be used by any process of the tree until
   * it ends. 'process': the name lives as long as this process (the shared
   * heap's segments), so the tracker unlinks it as soon as this process is
   * gone, even while the rest of the tree runs on.
   */
  lifetime?: 'tree' | 'process';
}

/** Registers a name this package created; the tracker unlinks it if it is left behind without untrack(). */
export function track(name: string, kind: TrackedKind, options: TrackOptions = {}): void {
  send('REGISTER', name, kind, options.lifetime === 'process' ? process.pid : undefined);
}

/** The name was unlinked (or handed over on purpose): the tracker forgets it. */
export function untrack(name: string, kind: TrackedKind = 'shm'): void {
  send('UNREGISTER', name, kind);
}

/**
 * What Process.start needs to give a child the same tracker: the fds to keep
 * (the write end is appended) and the environment entry naming its fd number
 * in the child, where keepFds land at 3, 4, ...
 */
export function shareWithChild(keepFds: number[], envp: string[]): void {
  const fd = state().broken ? -1 : ensureRunning();
  const filtered = envp.filter((e) => !e.startsWith(`${TRACKER_ENV}=`));
  envp.length = 0;
  envp.push(...filtered);
  if (fd < 0) return;
  envp.push(`${TRACKER_ENV}=${3 + keepFds.length}:${state().ino}`);
  keepFds.push(fd);
}

/** The fds the tracker machinery keeps open for the life of this process (for leak checks). */
export function trackerFds(): number[] {
  const fd = state().fd;
  return fd >= 0 ? [fd] : [];
}

/** The tracker's pid if this process (any of its threads) started it. */
export function trackerPid(): number | undefined {
  return state().pid;
}
