// What a child forked from a forkserver must repair before it runs anything of
// the program's: a fork copies the server's whole process state, and some of
// it must not be shared (measured: ../shared/research/fork-experiment.md, §5).
//
// - process.pid still holds the server's pid: Node stores it once at boot.
// - Math.random() would return the same sequence in every child of one
//   server (V8's generator state is copied and has no public reseed): it is
//   replaced by a generator seeded from the OS, which reseeds after fork.
// - process.uptime() and performance.now() would count from the server's boot.
// - argv, execArgv, env and cwd describe the server: the caller's, as they
//   were at start(), arrive with the instructions (adoptCaller).
// - The exit: Node's own exit joins V8's platform threads, which fork did not
//   copy, and crashes or hangs. Every way out (process.exit(), the event loop
//   emptying, an uncaught exception) emits 'exit', so the child leaves right
//   after the last 'exit' listener, with _exit(), as the study found safe.
//
// - crypto.randomUUID() draws from a cache of 128 UUIDs' worth of random
//   bytes that Node fills on first use: the server never uses it, but a
//   preload may have, so a child that had preloads uses the copy up first.
//   (randomInt()'s cache is not repaired: docs/start-methods.md says so.)
import * as fs from 'node:fs';
import { inspect } from 'node:util';

import { runAfterFork } from '../after-fork';
import { TRACKER_ENV } from '../resource-tracker';
import { binding } from '../native';

/** What the caller's process looked like at start(), for a forked child. */
export interface CallerState {
  env: Record<string, string>;
  cwd: string;
  execArgv: string[];
}

let forked = false;

/** Makes this freshly forked copy of the server a process of its own (preloaded: the server ran preloads). */
export function becomeForked(pid: number, preloaded: boolean): void {
  forked = true;
  // Node's pid may be a native accessor too (see adoptCaller).
  delete (process as { pid?: number }).pid;
  Object.defineProperty(process, 'pid', { value: pid, writable: false, enumerable: true, configurable: true });
  runAfterFork();
  if (preloaded) {
    const { randomUUID } = require('node:crypto') as typeof import('node:crypto');
    for (let i = 0; i < 128; i++) randomUUID();
  }
  Object.defineProperty(Math, 'random', { value: osSeededRandom(), writable: true, enumerable: false, configurable: true });

  const uptime = process.uptime.bind(process);
  const uptimeAtFork = uptime();
  process.uptime = function uptimeSinceFork() {
    return uptime() - uptimeAtFork;
  };
  const now = performance.now.bind(performance);
  const nowAtFork = now();
  const timeOrigin = performance.timeOrigin + nowAtFork;
  Object.defineProperty(performance, 'now', { value: () => now() - nowAtFork, writable: true, configurable: true });
  Object.defineProperty(performance, 'timeOrigin', { value: timeOrigin, enumerable: true, configurable: true });

  // Node's own end of the loop would wait for the platform's worker tasks,
  // which no thread here runs: the guard ends it the way Node would.
  binding.forkedGuardLoop((exit) => {
    // process.exit() with no code leaves process.exitCode as the program left
    // it, as Node's own end of the loop does.
    if (exit) process.exit();
    else process.emit('beforeExit', typeof process.exitCode === 'number' ? process.exitCode : 0);
  });

  const emit = process.emit;
  process.emit = function emitThenLeave(this: NodeJS.Process, event: string | symbol, ...args: unknown[]): boolean {
    if (event !== 'exit') return (emit as Function).call(this, event, ...args);
    try {
      (emit as Function).call(this, event, ...args);
    } catch (err) {
      // The listeners after it do not run, as in Node; the exit goes on.
      fs.writeSync(2, `${inspect(err)}\n`);
    }
    binding.forkserverExit(typeof process.exitCode === 'number' ? process.exitCode : Number(args[0] ?? 0));
  } as typeof process.emit;
}

/**
 * Takes on the caller's state as it was at start(). process.ppid names the
 * caller, as for a spawned child: the server is the OS parent, but only as
 * this package's agent (its death is the caller's, see forkserver.cc).
 */
export function adoptCaller(caller: CallerState, parentPid: number): void {
  // A native accessor: redefining it in place does not take; replacing it does.
  delete (process as { ppid?: number }).ppid;
  Object.defineProperty(process, 'ppid', { value: parentPid, writable: true, enumerable: true, configurable: true });
  // The tracker's pipe was inherited from the server, with its variable.
  const tracker = process.env[TRACKER_ENV];
  for (const key of Object.keys(process.env)) {
    if (!(key in caller.env)) delete process.env[key];
  }
  for (const [key, value] of Object.entries(caller.env)) {
    if (process.env[key] !== value) process.env[key] = value;
  }
  if (tracker !== undefined) process.env[TRACKER_ENV] = tracker;
  else delete process.env[TRACKER_ENV];
  if (process.cwd() !== caller.cwd) process.chdir(caller.cwd);
  process.execArgv = caller.execArgv;
}

/**
 * A child that dies of an uncaught exception or an unhandled rejection says
 * so on stderr with its name and pid, so that among several children a user
 * can tell which one died (a throw from the target is reported by the
 * bootstrap; a fatal signal by the parent, which alone sees it). Node prints
 * the error itself after 'exit', which a forked child never reaches: there it
 * is printed here.
 */
export function reportDeath(name: () => string | undefined): void {
  let fatal: { error: unknown; origin: string } | undefined;
  process.on('uncaughtExceptionMonitor', (error, origin) => {
    // Fatal only when nothing handles it (Node's own rule).
    if (process.listenerCount('uncaughtException') === 0 && !process.hasUncaughtExceptionCaptureCallback()) {
      fatal = { error, origin };
    }
  });
  process.on('exit', (code) => {
    if (!fatal) return;
    const what = fatal.origin === 'unhandledRejection' ? 'an unhandled rejection' : 'an uncaught exception';
    let text = `Process ${name() ?? '?'} (pid ${process.pid}) died of ${what} (exit code ${code})\n`;
    if (forked) text += `${inspect(fatal.error)}\n`;
    fs.writeSync(2, text);
  });
}

// xoshiro128** (Blackman and Vigna), 53 bits per double from two outputs,
// seeded from the OS. Fast enough to stand in for V8's xorshift128+.
function osSeededRandom(): () => number {
  const s = new Uint32Array(4);
  // (Loaded here: a spawned child, which loads this file too, never needs it.)
  const { randomFillSync } = require('node:crypto') as typeof import('node:crypto');
  do randomFillSync(s);
  while ((s[0] | s[1] | s[2] | s[3]) === 0);
  let a = s[0], b = s[1], c = s[2], d = s[3];
  const next = (): number => {
    const x = Math.imul(b, 5);
    const result = Math.imul((x << 7) | (x >>> 25), 9) >>> 0;
    const t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = (d << 11) | (d >>> 21);
    return result;
  };
  return function random(): number {
    return ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992;
  };
}
