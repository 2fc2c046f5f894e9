// Traces of the package's life (child starts and exits, forkservers, pool
// worker replacements, tracker cleanups, manager connections), on stderr:
// NODE_DEBUG=multiprocessing turns them on through util.debuglog, and
// logToStderr() from code (Python's log_to_stderr()). Callers test tracing()
// first, so that an untraced program formats nothing.
import * as fs from 'node:fs';
import { debuglog, format } from 'node:util';

const nodeDebug = debuglog('multiprocessing');
let forced = false;

export function tracing(): boolean {
  return forced || nodeDebug.enabled;
}

export function trace(message: string, ...args: unknown[]): void {
  if (!forced) return nodeDebug(message, ...args);
  // debuglog's own line format, written at once (a child may _exit next).
  try {
    fs.writeSync(2, `MULTIPROCESSING ${process.pid}: ${format(message, ...args)}\n`);
  } catch {
    // no stderr
  }
}

/** Turns the package's traces on for this process (as NODE_DEBUG=multiprocessing does). */
export function logToStderr(): void {
  forced = true;
}
