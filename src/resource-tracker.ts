// The resource tracker: names of OS objects this program tree created (shared
// memory segments, heap segments, named semaphores) are reported to one tracker
// process per tree, which unlinks whatever is still registered once every
// process of the tree is gone, even after SIGKILL. See docs/cleanup.md.
//
// Protocol: one JSON line per message on a pipe, {"op":"REGISTER"|"UNREGISTER",
// "kind","name"[,"pid"][,"family":true]} (pid: unlink as soon as that process
// is gone; family: name is a prefix, and every name starting with it is the
// tracker's to unlink, see trackFamily). Each line is far below PIPE_BUF, so writes from many
// processes never interleave. The tracker reads until EOF, which the kernel
// delivers only when the last process holding the write end has exited: that
// is the definition of "the program tree is gone", crash or not.
import * as childProcess from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

import { binding } from './native';
import { distDir } from './paths';

/**
 * Kinds the tracker knows how to unlink. 'heap': a shared-heap segment (an shm
 * name whose header counts the references other processes hold, heap-layout.ts):
 * once its owner is gone the tracker unlinks it when that count is 0.
 */
export type TrackedKind = 'shm' | 'semaphore' | 'heap';

/** The environment variable that tells a child where its inherited write end is: "<fd>:<inode>". */
export const TRACKER_ENV = 'PMP_RESOURCE_TRACKER';

export const trackerMainPath = path.join(distDir, 'tracker-main.js');

interface TrackerState {
  /** Our write end of the tracker's pipe, or -1 before the tracker is known. */
  fd: number;
  /** Inode of the pipe, so an fd number inherited by accident is never mistaken for it. */
  ino: number;
  /** Pid of the tracker when this process started it (undefined when inherited). */
  pid: number | undefined;
  /** Set when the pipe broke (tracker gone): from then on tracking is a no-op. */
  broken: boolean;
  /** The write end as a libuv stream (see send()). */
  stream?: net.Socket;
}

// Shared by every copy of the package loaded in this process (CJS and ESM entry
// points), and readable by the test suite's leak check without importing us.
const kState = Symbol.for('posix-multiprocessing.resource-tracker');

function state(): TrackerState {
  const g = globalThis as unknown as Record<symbol, TrackerState | undefined>;
  return (g[kState] ??= adoptInherited());
}

// A child started by Process finds the tracker's write end at the fd named in
// its environment. The variable is removed at once so that programs this child
// starts some other way (child_process) do not believe they have it.
function adoptInherited(): TrackerState {
  const out: TrackerState = { fd: -1, ino: 0, pid: undefined, broken: false };
  const value = process.env[TRACKER_ENV];
  if (value === undefined) return out;
  delete process.env[TRACKER_ENV];
  const m = /^(\d+):(\d+)$/.exec(value);
  if (!m) return out;
  const fd = Number(m[1]);
  try {
    const st = fs.fstatSync(fd);
    if (st.isFIFO() && st.ino === Number(m[2])) {
      out.fd = fd;
      out.ino = st.ino;
    }
  } catch {
    // not open here: start our own tracker when one is needed
  }
  return out;
}

// Adopt at load (the package's index imports this module), so the variable is
// gone before user code can start anything.
state();

/**
 * Starts the tracker if this process has none, and returns the write end.
 * The tracker is started with child_process (detached: a new session, so a ^C
 * or a kill of the program's process group does not take it down with the
 * program; not a Process, so it is not anyone's counted child) and reaped by
 * libuv if it ever exits first. It gets the pipe's read end as fd 3.
 */
export function ensureRunning(): number {
  const s = state();
  if (s.fd >= 0 || s.broken) return s.fd;
  const [readEnd, writeEnd] = binding.pipe();
  try {
    const env = { ...process.env };
    delete env.NODE_OPTIONS; // the tracker is our own plain JS: no loaders needed
    delete env[TRACKER_ENV];
    const child = childProcess.spawn(process.execPath, [trackerMainPath], {
      stdio: ['ignore', 'ignore', 'inherit', readEnd],
      detached: true,
      env,
    });
    child.on('error', () => {
      s.broken = true;
    });
    child.unref();
    s.pid = child.pid;
  } catch (err) {
    binding.closeFd(writeEnd);
    throw err;
  } finally {
    binding.closeFd(readEnd);
  }
  s.fd = writeEnd;
  s.ino = fs.fstatSync(writeEnd).ino;
  return writeEnd;
}

function send(op: 'REGISTER' | 'UNREGISTER', name: string, kind: TrackedKind, pid?: number): void {
  const s = state();
  if (s.broken) return;
  // Forgetting a name never needs a tracker started for it.
  const fd = op === 'REGISTER' ? ensureRunning() : s.fd;
  if (fd < 0) return;
  // The write goes through a libuv stream: it is written at once when the
  // pipe has room (the normal case, so a crash right after still leaves the
  // message with the tracker), and queued in this process, never blocking the
  // event loop, when the pipe is full (the tracker still booting, or napping
  // under a burst). A blocking write stalled creators for up to the tracker's
  // whole startup.
  if (!s.stream) {
    s.stream = new net.Socket({ fd, readable: false, writable: true });
    s.stream.unref(); // never keeps the program alive
    s.stream.on('error', () => {
      // EPIPE: the tracker is gone (killed by hand). Nothing more can be done
      // for crash cleanup; normal cleanup by the owners still happens. The
      // stream closed the fd, so its number must not be handed to children.
      s.broken = true;
      s.fd = -1;
    });
  }
  s.stream.write(JSON.stringify(pid === undefined ? { op, kind, name } : { op, kind, name, pid }) + '\n');
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
 * its registration. On false (pipe full, or output of ours still queued, so
 * that our line could not go out whole and at once) the caller registers
 * names one by one, as before, and may try again later.
 */
export function trackFamily(prefix: string, kind: TrackedKind): boolean {
  const s = state();
  if (s.broken) return false;
  const fd = ensureRunning();
  if (fd < 0) return false;
  // Queued output means a line of ours may be half in the pipe: a direct
  // write now would land inside it. (Order does not matter otherwise: a
  // family shares no key with any single name.)
  if (s.stream && s.stream.writableLength > 0) return false;
  const line = Buffer.from(JSON.stringify({ op: 'REGISTER', kind, name: prefix, family: true }) + '\n');
  try {
    // Non-blocking, so a full pipe is an answer (-1), not a stall; a libuv
    // stream on this fd sets the same flag. A line below PIPE_BUF is written
    // whole or not at all.
    if (!s.stream) binding.setNonblocking(fd);
    return binding.write(fd, line, 0, line.length) === line.length;
  } catch {
    return false; // EPIPE: the tracker is gone; the stream will notice on its next write
  }
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
  const s = state();
  return s.fd >= 0 ? [s.fd] : [];
}

/** The tracker's pid if this process started it. */
export function trackerPid(): number | undefined {
  return state().pid;
}
