// Process: a child running a target found by reference, reaped the moment it
// exits: a fresh Node (spawn: fork + exec done natively), or a fork of this
// thread's forkserver (forkserver.ts). The parent's side of the protocol: the
// child reads one message from a pipe (see child/bootstrap.ts), then runs;
// everything else (exit watching, parent-death signals) is the OS's.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { context, installExitHook, nextIdentity, type ChildRecord, type ProcessInfo } from './context';
import { closedError, stateError } from './errors';
import { locate, resolveModuleTarget, type TargetRef } from './locate';
import { type LongTimeout, setLongTimeout } from './long-timeout';
import { binding, type ExitWatcher, type FdWatcher } from './native';
import { shareWithChild } from './resource-tracker';
import type { CallerState } from './child/forked';
import { forkChild, forkserverSupported, forkUnavailableReason, unsupportedReason } from './forkserver';
import { abandon, type CodecContext, encode } from './serialize';
import {
  invalidType,
  invalidValue,
  type OptionsSpec,
  outOfRange,
  validateBoolean,
  validateObject,
  validateOptions,
  validateString,
  validateTimeout,
} from './validate';
import { distDir } from './paths';
import { trace, tracing } from './trace';

export type StartMethod = 'forkserver' | 'spawn';

export interface ModuleTarget {
  module: string | URL;
  export: string;
}

export interface ProcessOptions {
  target?: ((...args: any[]) => unknown) | ModuleTarget;
  args?: unknown[];
  name?: string;
  daemon?: boolean;
  startMethod?: StartMethod;
  env?: Record<string, string>;
}

/** What the child reads on fd 3: a JSON header, then the encoded body. */
export interface ChildHeader {
  name: string;
  identity: number[];
  daemon: boolean;
  parentPid: number;
  parentName: string;
  /** The parent's process.argv: the child sees the same (Python's spawn passes sys.argv). */
  argv: string[];
  deathSignal: number;
  /** How many fds travel with the arguments: they sit at 4, 5, ... in the child. */
  fds: number;
  /** A function target, or the exported Process subclass whose run() to call. */
  target: (TargetRef & { kind: 'function' | 'class' }) | null;
  /** A forked child: the caller's state at start() (a spawned one gets it from exec). */
  fork?: CallerState;
  /** The caller's setStartMethod() choice, which its children keep (as Python's do). */
  startMethod?: StartMethod;
}

const kRevive = Symbol.for('posix-multiprocessing.revive');
const SIGKILL = os.constants.signals.SIGKILL;
const SIGTERM = os.constants.signals.SIGTERM;

export const bootstrapPath = path.join(distDir, 'child', 'bootstrap.js');

// Flags that must not be copied into a child: each names a one-off action of
// this process (an inspector port, code to evaluate, a test runner).
const dropFlags = /^--(inspect|inspect-brk|inspect-port|debug|debug-brk|eval|print|test|watch|check|interactive)(=|$)|^-[epci]$/;

function childExecArgv(): string[] {
  const out: string[] = [];
  const argv = process.execArgv;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (dropFlags.test(arg)) {
      // Short and long forms that take their value as the next argument.
      if (/^(-[ep]|--eval|--print|--inspect-port)$/.test(arg)) i++;
      continue;
    }
    out.push(arg);
  }
  return out;
}

function environmentObject(env: Record<string, string> | undefined): Record<string, string> {
  if (env) return { ...env };
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined) out[key] = value;
  }
  return out;
}

function environment(env: Record<string, string> | undefined): string[] {
  const source = env ?? process.env;
  const out: string[] = [];
  for (const [key, value] of Object.entries(source)) {
    if (value !== undefined) out.push(`${key}=${value}`);
  }
  return out;
}

/** The platform's default: 'forkserver' where it can run (Linux), else 'spawn'. */
export function defaultStartMethod(): StartMethod {
  return forkserverSupported() ? 'forkserver' : 'spawn';
}

export function getAllStartMethods(): StartMethod[] {
  return forkserverSupported() ? ['forkserver', 'spawn'] : ['spawn'];
}

/** Validates a start method; undefined stays undefined (the context's method, at start()). */
export function startMethodOf(value: unknown, argName: string): StartMethod | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw invalidType(argName, "'forkserver' or 'spawn'", value);
  if (value === 'spawn') return value;
  if (value === 'fork') {
    throw stateError(
      "start method 'fork' is not available: forking a running Node without exec hangs or " +
        "crashes the child (V8's and libuv's threads do not survive fork); use 'spawn'",
      'ERR_MP_UNSUPPORTED',
    );
  }
  if (value === 'forkserver') {
    if (forkserverSupported()) return value;
    throw stateError(`start method 'forkserver' is not available: ${unsupportedReason()}; use 'spawn'`, 'ERR_MP_UNSUPPORTED');
  }
  throw outOfRange(argName, "'forkserver' or 'spawn'", value);
}

const PROCESS: OptionsSpec = { call: 'new Process()', keys: ['target', 'args', 'name', 'daemon', 'startMethod', 'env'] };

// An environment the kernel can take: names without '=' or NUL, values without NUL.
function validateEnv(env: unknown): void {
  const o = validateObject(env, 'options.env');
  for (const [k, v] of Object.entries(o)) {
    if (typeof v !== 'string') throw invalidType(`options.env.${k}`, 'a string', v);
    if (k === '' || k.includes('=') || k.includes('\0')) {
      throw invalidValue('options.env', "names must be non-empty, without '=' or NUL characters", k);
    }
    if (v.includes('\0')) throw invalidValue(`options.env.${k}`, 'must not contain NUL characters', v);
  }
}

export class Process implements ChildRecord {
  #target: ProcessOptions['target'];
  #args: unknown[];
  #name: string;
  #identity: number[];
  #daemon: boolean;
  #env: Record<string, string> | undefined;
  #startMethod: StartMethod | undefined;
  #usedMethod: StartMethod | undefined; // set by start()
  #signalled = false; // this object sent the child a signal (no death line then)
  #state: 'initial' | 'started' | 'closed' = 'initial';
  #self = false; // this object is the current process (inside the child)
  #pid: number | undefined;
  #exitCode: number | null = null;
  #watcher: ExitWatcher | undefined;
  #payload: PayloadSender | undefined;
  #joiners = 0;
  #sentinel: Promise<number> | undefined;
  #resolveSentinel: ((code: number) => void) | undefined;

  constructor(options?: ProcessOptions) {
    if (typeof options === 'function') {
      // Python's Process(target) habit: say what to write.
      throw invalidType('options', `an options object: write new Process({ target: ${(options as Function).name || 'fn'}, args: [...] })`, options);
    }
    const opts = validateOptions(options, PROCESS) as ProcessOptions & { [kRevive]?: ChildHeader };
    const revive = opts[kRevive];
    if (revive) {
      // Inside the child: this object stands for the running process itself.
      this.#self = true;
      this.#state = 'started';
      this.#name = revive.name;
      this.#identity = revive.identity;
      this.#daemon = revive.daemon;
      this.#pid = process.pid;
      this.#args = [];
      return;
    }
    const { target, args = [], name, daemon, startMethod, env } = opts;
    if (target !== undefined && typeof target !== 'function') {
      if (target === null || typeof target !== 'object' || !('module' in target)) {
        throw invalidType('options.target', 'a function or { module, export }', target);
      }
    }
    if (!Array.isArray(args)) throw invalidType('options.args', 'an array', args);
    if (name !== undefined) validateString(name, 'options.name');
    if (daemon !== undefined) validateBoolean(daemon, 'options.daemon');
    this.#startMethod = startMethodOf(startMethod, 'options.startMethod');
    if (env !== undefined) validateEnv(env);
    this.#target = target;
    this.#args = [...args];
    this.#identity = nextIdentity();
    this.#name = name ?? `${new.target.name}-${this.#identity.join(':')}`;
    this.#daemon = daemon ?? context().current.daemon;
    this.#env = env;
  }

  /** The code the child runs. Override it in a subclass, as in Python. */
  run(): unknown {
    const target = this.#target;
    if (typeof target === 'function') return target(...this.#args);
    return undefined;
  }

  get name(): string {
    return this.#name;
  }

  set name(value: string) {
    this.#name = validateString(value, 'name');
  }

  get daemon(): boolean {
    return this.#daemon;
  }

  set daemon(value: boolean) {
    if (this.#state !== 'initial') throw stateError('daemon can only be set before start()', 'ERR_MP_ALREADY_STARTED');
    this.#daemon = validateBoolean(value, 'daemon');
  }

  get pid(): number | undefined {
    this.#checkClosed();
    return this.#pid;
  }

  get exitCode(): number | null {
    this.#checkClosed();
    this.#poll();
    return this.#exitCode;
  }

  /**
   * How this process is (or will be) started: its startMethod option, else
   * the context's. Under module customization hooks (--import, --loader) a
   * forkserver cannot serve, and 'spawn' is used (docs/start-methods.md).
   */
  get startMethod(): StartMethod {
    return this.#usedMethod ?? this.#methodFor(childExecArgv());
  }

  #methodFor(execArgv: string[]): StartMethod {
    const method = this.#startMethod ?? context().startMethod ?? defaultStartMethod();
    if (method !== 'forkserver' || forkUnavailableReason(execArgv) !== null) return 'spawn';
    // Node reads NODE_OPTIONS as it boots: options that differ from this
    // process's (and its server's) need a Node of their own.
    if (this.#env && this.#env.NODE_OPTIONS !== process.env.NODE_OPTIONS) return 'spawn';
    return 'forkserver';
  }

  get sentinel(): Promise<number> {
    this.#checkClosed();
    if (!this.#sentinel) throw stateError('process not started', 'ERR_MP_NOT_STARTED');
    return this.#sentinel;
  }

  start(): void {
    this.#checkClosed();
    if (this.#self) throw stateError('cannot start the current process', 'ERR_MP_ALREADY_STARTED');
    if (this.#state !== 'initial') throw stateError('cannot start a process twice', 'ERR_MP_ALREADY_STARTED');
    const ctx = context();
    if (ctx.bootstrapping) {
      // Python's safeguard against the classic spawn fork bomb: a module that
      // starts processes at top level, imported again by each child.
      throw stateError(
        'an attempt was made to start a new process while this child was still importing ' +
          "its target's module. Start processes only in the main process: guard that code " +
          'with `if (isMainProcess()) { ... }`, the equivalent of Python\'s ' +
          "`if __name__ == '__main__':`",
        'ERR_MP_BOOTSTRAPPING',
      );
    }
    if (ctx.current.daemon) {
      throw stateError('daemonic processes are not allowed to have children', 'ERR_MP_DAEMONIC');
    }
    const header: ChildHeader = {
      name: this.#name,
      identity: this.#identity,
      daemon: this.#daemon,
      parentPid: process.pid,
      parentName: ctx.current.name,
      argv: process.argv,
      deathSignal: this.#daemon ? SIGKILL : SIGTERM,
      fds: 0,
      target: this.#resolveTarget(),
    };
    const execArgv = childExecArgv();
    const forked = this.#methodFor(execArgv) === 'forkserver';
    this.#usedMethod = forked ? 'forkserver' : 'spawn';
    if (forked) header.fork = { env: environmentObject(this.#env), cwd: process.cwd(), execArgv };
    if (ctx.startMethod) header.startMethod = ctx.startMethod;
    const fds: number[] = [];
    // No `props: undefined` key: plain JSON takes the codec's fast path, and the
    // child then skips loading the serializer and the package index.
    const message = header.target?.kind === 'class' ? { args: this.#args, props: { ...this } } : { args: this.#args };
    const codec: CodecContext = { fds };
    const body = encode(message, codec);
    header.fds = fds.length;
    const head = Buffer.from(JSON.stringify(header));
    const payload = Buffer.allocUnsafe(4 + head.length + body.length);
    payload.writeUInt32LE(head.length, 0);
    head.copy(payload, 4);
    body.copy(payload, 4 + head.length);

    let readEnd: number, writeEnd: number;
    try {
      [readEnd, writeEnd] = binding.pipe();
    } catch (err) {
      abandon(codec);
      throw err;
    }
    let pid: number;
    let status: [number, number] | undefined;
    let pidfd = -1;
    try {
      if (forked) {
        // The server writes the child's exit code on the status pipe.
        status = binding.pipe();
        ({ pid, pidfd } = forkChild(execArgv, header.deathSignal, [readEnd, status[1], 1, 2, ...fds]));
      } else {
        // The child joins this program tree's resource tracker (its pipe fd is appended to keepFds).
        const keepFds = [readEnd, ...fds];
        const envp = environment(this.#env);
        shareWithChild(keepFds, envp);
        const argv = [process.execPath, ...execArgv, bootstrapPath];
        pid = binding.spawn(process.execPath, argv, envp, keepFds, header.deathSignal);
      }
    } catch (err) {
      binding.closeFd(writeEnd);
      if (status) binding.closeFd(status[0]);
      abandon(codec); // the arguments will never be received
      throw err;
    } finally {
      binding.closeFd(readEnd);
      if (status) binding.closeFd(status[1]);
    }
    const sender = new PayloadSender(writeEnd, payload, codec, () => (this.#payload = undefined));
    if (!sender.done) this.#payload = sender;

    this.#pid = pid;
    this.#state = 'started';
    this.#sentinel = new Promise((resolve) => (this.#resolveSentinel = resolve));
    ctx.children.add(this);
    installExitHook();
    const onExit = (code: number) => this.#onExit(code);
    this.#watcher = status
      ? new binding.ExitWatcher(pid, onExit, header.deathSignal, status[0], pidfd)
      : new binding.ExitWatcher(pid, onExit, header.deathSignal);
    if (tracing()) trace('started %s (pid %d, %s%s)', this.#name, pid, this.#usedMethod, this.#daemon ? ', daemon' : '');
    // A daemon never keeps the parent alive; a non-daemon child does, like
    // Python joining non-daemon children at exit.
    if (this.#daemon) this.#watcher.unref();
  }

  #resolveTarget(): ChildHeader['target'] {
    const overridden = (this as any).run !== Process.prototype.run;
    if (overridden) {
      return { kind: 'class', ...locate(this.constructor, 'Process subclass') };
    }
    const target = this.#target;
    if (target === undefined) return null;
    if (typeof target === 'function') return { kind: 'function', ...locate(target, 'target function') };
    return { kind: 'function', ...resolveModuleTarget(target.module, target.export, 'options.target') };
  }

  #onExit(code: number): void {
    this.#exitCode = code;
    if (tracing()) trace('%s (pid %d) exited with code %d', this.#name, this.#pid, code);
    if (code < 0 && !this.#signalled) {
      // Only the parent sees a death by signal (a crash, the OOM killer, a
      // kill from outside): it says which child died.
      const name = Object.entries(os.constants.signals).find(([, n]) => n === -code)?.[0] ?? `signal ${-code}`;
      try {
        fs.writeSync(2, `Process ${this.#name} (pid ${this.#pid}) was killed by ${name}\n`);
      } catch {
        // no stderr
      }
    }
    context().children.delete(this);
    this.#resolveSentinel?.(code);
  }

  // Reaps the child now if it has exited, so that state read in synchronous
  // code does not wait for the event loop to notice.
  #poll(): void {
    if (this.#exitCode === null && this.#watcher) this.#watcher.waitSync(0);
  }

  #checkClosed(): void {
    if (this.#state === 'closed') throw closedError(`process ${this.#name}`);
  }

  #checkJoinable(): void {
    this.#checkClosed();
    if (this.#self) throw stateError('can only join a child process', 'ERR_MP_NOT_CHILD');
    if (this.#state !== 'started') throw stateError('can only join a started process', 'ERR_MP_NOT_STARTED');
  }

  /** Waits for the child to end: its exit code, or null if `timeout` seconds pass first. */
  async join(timeout?: number | null): Promise<number | null> {
    this.#checkJoinable();
    const seconds = validateTimeout(timeout);
    this.#poll();
    if (this.#exitCode !== null) return this.#exitCode;
    if (seconds === 0) return null;
    // A pending join keeps the event loop alive, even for a daemon child.
    if (this.#joiners++ === 0) this.#watcher!.ref();
    let timer: LongTimeout | undefined;
    try {
      const timedOut = seconds === undefined ? null : new Promise<null>((r) => (timer = setLongTimeout(() => r(null), seconds * 1000)));
      return timedOut ? await Promise.race([this.#sentinel!, timedOut]) : await this.#sentinel!;
    } finally {
      timer?.clear();
      if (--this.#joiners === 0 && this.#daemon && this.#exitCode === null) this.#watcher!.unref();
    }
  }

  /** Blocks the thread until the child ends: its exit code, or null on timeout. */
  joinSync(timeout?: number | null): number | null {
    this.#checkJoinable();
    const seconds = validateTimeout(timeout);
    if (this.#exitCode !== null) return this.#exitCode;
    const deadline = seconds === undefined ? Infinity : performance.now() + seconds * 1000;
    // A child still reading its instructions would wait for us as we wait for it.
    if (this.#payload && !this.#payload.flushSync(deadline)) return null;
    return this.#watcher!.waitSync(deadline === Infinity ? -1 : Math.max(0, deadline - performance.now()));
  }

  isAlive(): boolean {
    this.#checkClosed();
    if (this.#self) return true;
    if (this.#state !== 'started') return false;
    this.#poll();
    return this.#exitCode === null;
  }

  /** Sends SIGTERM. A child that already ended is left alone. */
  terminate(): void {
    this.#signal('SIGTERM');
  }

  /** Sends SIGKILL. */
  kill(): void {
    this.#signal('SIGKILL');
  }

  #signal(signal: NodeJS.Signals): void {
    this.#checkClosed();
    if (this.#self) throw stateError('cannot signal the current process through its Process object', 'ERR_MP_NOT_CHILD');
    if (this.#state !== 'started') throw stateError('process not started', 'ERR_MP_NOT_STARTED');
    if (this.#exitCode !== null) return;
    this.#signalled = true;
    // The watcher signals a child we reap by pid (ours until reaped) and a
    // forkserver's child by pidfd: neither can reach a process that reused the pid.
    this.#watcher!.signal(os.constants.signals[signal]);
  }

  /** Releases the handles; throws while the child still runs. */
  close(): void {
    if (this.#state === 'closed') return;
    if (this.#state === 'started' && !this.#self) {
      this.#poll();
      if (this.#exitCode === null) {
        throw stateError(
          'cannot close a process while it is still running; join() or terminate() it first',
          'ERR_MP_PROCESS_RUNNING',
        );
      }
    }
    this.#watcher = undefined;
    this.#state = 'closed';
  }

  [Symbol.dispose](): void {
    this.close();
  }

  terminateForExit(): void {
    if (this.#state === 'started' && this.#exitCode === null && this.#watcher) {
      this.#signalled = true;
      try {
        this.#watcher.signal(SIGTERM);
      } catch {
        // already gone
      }
    }
  }

  toString(): string {
    const status =
      this.#state === 'closed' ? 'closed' : this.#state === 'initial' ? 'initial' : this.#exitCode === null ? 'started' : `stopped exitcode=${this.#exitCode}`;
    return `<${this.constructor.name} name='${this.#name}' ${status}${this.#daemon ? ' daemon' : ''}>`;
  }
}

// The child blocks reading fd 3 until its payload is complete, then starts.
// What the pipe takes at once (all of it, but for large arguments) is written
// now; the rest as the child reads, on the event loop (an unref'd FdWatcher),
// or at once by a parent about to block (joinSync, the 'exit' event), which
// would otherwise wait for a child that waits for it.
class PayloadSender {
  #fd: number;
  #payload: Buffer;
  #codec: CodecContext;
  #offset = 0;
  #watcher: FdWatcher | undefined;
  #onDone: () => void;
  done = false;

  constructor(fd: number, payload: Buffer, codec: CodecContext, onDone: () => void) {
    this.#fd = fd;
    this.#payload = payload;
    this.#codec = codec;
    this.#onDone = onDone;
    try {
      binding.setNonblocking(fd);
    } catch {
      // still blocking: then the write below may wait for the child to read
    }
    if (this.#writeSome()) return;
    this.#watcher = new binding.FdWatcher(fd, () => this.#writeSome());
    this.#watcher.unref();
    this.#watcher.start(2);
  }

  // Writes what the pipe takes; true once all is written or the child is gone
  // (EPIPE: it died before reading, and its exit is reported as usual; what
  // its arguments took, references to shared blocks, is given back).
  #writeSome(): boolean {
    while (this.#offset < this.#payload.length) {
      let n: number;
      try {
        n = binding.write(this.#fd, this.#payload, this.#offset, this.#payload.length - this.#offset);
      } catch {
        abandon(this.#codec);
        break;
      }
      if (n < 0) return false;
      this.#offset += n;
    }
    this.done = true;
    this.#watcher?.close();
    binding.closeFd(this.#fd);
    this.#onDone();
    return true;
  }

  /** Writes the rest, blocking until the deadline (a performance.now() time); false when it passed first. */
  flushSync(deadline: number): boolean {
    while (!this.done && !this.#writeSome()) {
      if (deadline === Infinity) {
        binding.poll(this.#fd, 2, -1);
        continue;
      }
      const left = Math.ceil(deadline - performance.now());
      if (left <= 0) return false;
      binding.poll(this.#fd, 2, left);
    }
    return true;
  }
}

export function activeChildren(): Process[] {
  const out: Process[] = [];
  for (const child of context().children) {
    if (child instanceof Process && child.isAlive()) out.push(child);
  }
  return out;
}

export function cpuCount(): number {
  return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
}

export function currentProcess(): ProcessInfo {
  return context().current;
}

export function parentProcess(): { pid: number; name: string } | null {
  return context().parent;
}

export function isMainProcess(): boolean {
  return context().isMain;
}

export function setStartMethod(method: StartMethod, options?: { force?: boolean }): void {
  const o = validateOptions(options, { call: 'setStartMethod()', keys: ['force'], boolean: 'force' });
  if (o.force !== undefined) validateBoolean(o.force, 'options.force');
  if (method === undefined) throw invalidType('method', "'forkserver' or 'spawn'", method);
  context().startMethod = startMethodOf(method, 'method')!;
}

export function getStartMethod(): StartMethod {
  return context().startMethod ?? defaultStartMethod();
}

/**
 * Modules (specifiers or paths) the forkserver imports once before it serves,
 * so that its children start with them loaded (Python's set_forkserver_preload).
 * Takes effect when the server next starts: call it before the first start().
 */
export function setForkserverPreload(modules: string[]): void {
  if (!Array.isArray(modules)) throw invalidType('modules', 'an array of strings', modules);
  modules.forEach((m, i) => validateString(m, `modules[${i}]`));
  context().forkserverPreload = [...modules];
}

/** Builds the Process object that stands for the running child (bootstrap only). */
export function reviveCurrent(Class: typeof Process, header: ChildHeader): Process {
  return Reflect.construct(Process, [{ [kRevive]: header }], Class) as Process;
}
