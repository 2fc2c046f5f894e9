// The caller's side of the forkserver start method. One server per thread that
// starts processes (each worker thread has its own, and it dies with that
// thread: its parent-death signal follows the thread that spawned it). It is
// started the spawn way on the first start() that needs it, and again by the
// next start() after it died. It is not a child this package lists or joins:
// it ends when the caller closes the control socket (at exit, or by its
// death, which also sends the server SIGKILL).
//
// A start is one synchronous round trip (native/forkserver.cc has the wire):
// the request carries the child's death signal and its fds (instructions
// pipe, status pipe, stdout, stderr, the arguments' fds); the reply, the pid
// and a pidfd. The instructions themselves go straight to the child, through
// the same pipe as under spawn.
import * as os from 'node:os';
import * as path from 'node:path';
import { getSystemErrorName } from 'node:util';

import { context } from './context';
import { MultiprocessingError } from './errors';
import { binding, type ExitWatcher } from './native';
import { distDir } from './paths';
import { shareWithChild } from './resource-tracker';
import { trace, tracing } from './trace';

export const forkserverMainPath = path.join(distDir, 'child', 'forkserver-main.js');

export interface ForkserverHandle {
  pid: number;
  /** The caller's end of the control socket (the watcher's to close), or -1 once the server is gone. */
  ctrl: number;
  watcher: ExitWatcher;
}

let supported: boolean | undefined;

/** Whether this platform can run a forkserver (Linux with pidfds). */
export function forkserverSupported(): boolean {
  return (supported ??= process.platform === 'linux' && binding.forkserverSupported());
}

// Module customization hooks (--import tsx registers them with
// module.register) run on a thread of their own, which a forked child does not
// have: its first hooked import would wait for ever. Such programs start their
// children the spawn way (docs/start-methods.md).
const hookFlag = /^--(import|loader|experimental-loader)(=|$)/;

/** Why this platform cannot run a forkserver (when forkserverSupported() is false). */
export function unsupportedReason(): string {
  if (process.platform !== 'linux') return `it runs on Linux only, not on ${process.platform}`;
  if (!binding.forkserverSupported() && Number(process.versions.modules) !== binding.builtForModules) {
    return `the addon was built for another Node (ABI ${binding.builtForModules}, this is ${process.versions.modules}): rebuild it`;
  }
  return 'it needs Linux 5.3 or later (pidfds)';
}

/** Why this program's children cannot be forked, or null when they can. */
export function forkUnavailableReason(execArgv: readonly string[]): string | null {
  if (!forkserverSupported()) return `the forkserver start method is not available: ${unsupportedReason()}`;
  if (execArgv.some((a) => hookFlag.test(a)) || /(^|\s)--(import|loader|experimental-loader)\b/.test(process.env.NODE_OPTIONS ?? '')) {
    return 'the program runs with module customization hooks (--import, --loader), whose thread a forked child would not have';
  }
  return null;
}

function forkserverError(message: string, cause?: unknown): MultiprocessingError {
  return new MultiprocessingError(message, 'ERR_MP_FORKSERVER', cause === undefined ? undefined : { cause });
}

// Sends one message, waiting while the socket is full; false when the server is gone.
function send(ctrl: number, data: Buffer, fds: number[]): boolean {
  try {
    for (;;) {
      if (binding.sendmsg(ctrl, data, 0, data.length, fds) === data.length) return true;
      binding.poll(ctrl, 2, -1);
    }
  } catch (err) {
    if (['EPIPE', 'ECONNRESET', 'ENOTCONN'].includes((err as { code?: string }).code ?? '')) return false;
    throw err;
  }
}

// Reads one reply, waiting for it; null when the server hung up.
function receive(ctrl: number, buf: Buffer, fds: number[]): number | null {
  const n = binding.recvmsg(ctrl, buf, 0, buf.length, fds, -1);
  return n > 0 ? n : null;
}

function boot(execArgv: string[]): ForkserverHandle {
  const ctx = context();
  const [mine, theirs] = binding.socketpair(true);
  let pid: number;
  try {
    const keepFds = [theirs];
    const envp = Object.entries(process.env).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]));
    shareWithChild(keepFds, envp);
    const argv = [process.execPath, '--single-threaded', ...execArgv, forkserverMainPath];
    pid = binding.spawn(process.execPath, argv, envp, keepFds, os.constants.signals.SIGKILL);
  } catch (err) {
    binding.closeFd(mine);
    throw err;
  } finally {
    binding.closeFd(theirs);
  }
  const handle: ForkserverHandle = {
    pid,
    ctrl: mine,
    watcher: new binding.ExitWatcher(
      pid,
      (code) => {
        if (tracing()) trace('forkserver (pid %d) exited with code %d', pid, code);
        forget(handle);
      },
      os.constants.signals.SIGKILL,
    ),
  };
  // Never keeps the caller alive, and is not one of its children to join.
  handle.watcher.unref();
  // The control socket goes with the server, or with this thread.
  handle.watcher.adopt(mine);
  const config = Buffer.from(JSON.stringify({ preload: ctx.forkserverPreload }));
  const buf = Buffer.alloc(1 << 16);
  let n: number | null = null;
  if (send(mine, config, [])) n = receive(mine, buf, []);
  const answer = n === null ? null : (JSON.parse(buf.toString('utf8', 0, n)) as { ok: boolean; error?: Record<string, unknown> });
  if (answer?.ok) {
    if (tracing()) trace('forkserver (pid %d) serving, preloads %j', pid, ctx.forkserverPreload);
    return handle;
  }
  // A server that failed is gone before start() throws.
  forget(handle);
  handle.watcher.signal(os.constants.signals.SIGKILL);
  handle.watcher.waitSync(5000);
  if (answer?.error) {
    // A preload that failed: its own error, as the caller would have seen it.
    const e = answer.error;
    const err = new Error(String(e.message));
    if (typeof e.name === 'string') err.name = e.name;
    if (typeof e.stack === 'string') err.stack = e.stack;
    if (e.code !== undefined) (err as { code?: unknown }).code = e.code;
    throw forkserverError(`the forkserver could not load its preloads: ${err.message}`, err);
  }
  throw forkserverError('the forkserver could not start; see its stderr above');
}

function forget(handle: ForkserverHandle): void {
  // The socket itself is closed by the watcher, once the server is reaped.
  handle.ctrl = -1;
  const ctx = context();
  if (ctx.forkserver === handle) ctx.forkserver = null;
}

export interface ForkedChild {
  pid: number;
  pidfd: number;
}

/**
 * Forks a child from this thread's server (started now if needed, restarted if
 * it died). fds: [instructions, status, stdout, stderr, ...arguments], all
 * still the caller's to close afterwards.
 */
export function forkChild(execArgv: string[], deathSignal: number, fds: number[]): ForkedChild {
  const ctx = context();
  const request = Buffer.alloc(4);
  request.writeInt32LE(deathSignal, 0);
  const reply = Buffer.alloc(4);
  for (let attempt = 0; ; attempt++) {
    const server = ctx.forkserver ?? (ctx.forkserver = boot(execArgv));
    const got: number[] = [];
    const n = send(server.ctrl, request, fds) ? receive(server.ctrl, reply, got) : null;
    if (n === 4) {
      const pid = reply.readInt32LE(0);
      if (pid < 0) {
        const err = new Error(`fork ${getSystemErrorName(pid)}`) as NodeJS.ErrnoException;
        Object.assign(err, { code: getSystemErrorName(pid), errno: pid, syscall: 'fork' });
        throw err;
      }
      return { pid, pidfd: got[0] };
    }
    for (const fd of got) binding.closeFd(fd);
    // The server died (killed, or out of memory) since the last start: once
    // more with a new one. The fds were never taken, they are still ours.
    forget(server);
    if (attempt > 0) throw forkserverError('the forkserver ended while starting a child');
  }
}
