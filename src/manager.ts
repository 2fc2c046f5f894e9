// Managers: a server (a process of its own, or the calling process over TCP)
// holds dicts, lists, namespaces, values, queues and locks; every process
// reaches them through proxies whose methods are requests to that server.
// This file is the client side: the Manager, the proxies, and the one
// authenticated connection per process per server that their requests share.
// The server is manager-server.ts; the wire protocol manager-protocol.ts.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { atExit, ExitPhase } from './at-exit';
import { Pipe, type Connection } from './connection';
import { QueueEmptyError, QueueFullError, TimeoutError, abortError, closedError, stateError } from './errors';
import { type LongTimeout, setLongTimeout } from './long-timeout';
import {
  FrameReader,
  HANDSHAKE_TIMEOUT_S,
  Op,
  Status,
  addressKey,
  clientHandshake,
  describeAddress,
  detach,
  frameHead,
  validateAuthkey,
  type ManagerAddress,
  type ObjectKind,
} from './manager-protocol';
import { serveTcp, type ManagerCore } from './manager-server';
import { distDir } from './paths';
import { Process, type StartMethod, startMethodOf } from './process';
import { track, untrack } from './resource-tracker';
import type { QueueWaitOptions } from './queues';
import { abandon, decode, encode, registerTransferable, type CodecContext } from './serialize';
import { coerce, ctypeOf, type TypeCode, type TypeName } from './sharedctypes';
import type { AcquireOptions } from './synchronize';
import {
  invalidType,
  type OptionsSpec,
  outOfRange,
  validateBoolean,
  validateInteger,
  validateObject,
  validateOptions,
  validateSignal,
  validateString,
  validateTimeout,
} from './validate';

const SERVER_MODULE = path.join(distDir, 'manager-server.js');
/** How long shutdown() waits for the server to stop by itself before killing it. */
const SHUTDOWN_GRACE_S = 5;

const codecContext = (): CodecContext => ({ fds: [], carriesFds: false });
// A request that is never sent gives back what its encoding took (serialize.ts abandon).
const contextOf = new WeakMap<Buffer, CodecContext>();

// Errors whose class the caller tests with instanceof: rebuilt here, since
// the codec revives only the built-in Error classes.
function localError(err: unknown): unknown {
  const code = (err as { code?: unknown } | null)?.code;
  const message = (err as { message?: string }).message;
  if (code === 'ERR_MP_QUEUE_EMPTY') return new QueueEmptyError(message);
  if (code === 'ERR_MP_QUEUE_FULL') return new QueueFullError(message);
  return err;
}

/** Cancels a pending call; an Aborted answer then rejects with `err`. */
type CancelCall = (err: Error) => void;

interface Pending {
  resolve(value: unknown): void;
  reject(err: unknown): void;
  signal?: AbortSignal;
  onAbort?: () => void;
  /** The calls of the proxy that made this request, which its close() cancels. */
  calls?: Set<CancelCall>;
  onClose?: CancelCall;
  /** Cancelled by that close(): an Aborted answer rejects with ERR_MP_CLOSED. */
  closedBy?: Error;
}

/**
 * One authenticated connection to a manager server. A net.Socket connects and
 * authenticates; then a Connection on the same socket carries the requests
 * and replies (manager-protocol.ts detach()). Requests are multiplexed by id;
 * a receive is pending, and keeps the event loop alive, only while a request
 * is, so a program that forgets shutdown() can still exit.
 */
class Link {
  readonly address: ManagerAddress;
  readonly #where: string;
  readonly #socket: net.Socket;
  /** The message transport once the handshake is done. */
  #conn: Connection | null = null;
  /** Whether a receive loop (#pump) is running. */
  #pumping = false;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #failure: Error | null = null;
  #open = false;
  /** Requests made before the handshake ended, sent in order once it has. */
  #backlog: Buffer[][] = [];
  /** Settles when the handshake is done; rejects with why it could not be. */
  readonly ready: Promise<void>;

  /** timeout: seconds to connect and authenticate, undefined for no limit. */
  constructor(address: ManagerAddress, authkey: Buffer, timeout: number | undefined = HANDSHAKE_TIMEOUT_S) {
    this.address = address;
    this.#where = describeAddress(address);
    const socket = 'path' in address ? net.connect(address.path) : net.connect(address.port, address.host);
    this.#socket = socket;
    const reader = new FrameReader(socket);
    socket.on('error', (err) => {
      // Failing to connect is the OS's error (ECONNREFUSED, ENOENT); losing
      // an open connection is the manager going away, as for an orderly close.
      let failure: Error = err;
      if (this.#open) {
        failure = closedError(`the manager at ${this.#where}`);
        failure.message += ` (the connection was lost: ${err.message})`;
        failure.cause = err;
      }
      reader.fail(failure);
      this.#fail(failure);
    });
    socket.on('end', () => socket.destroy());
    socket.on('close', () => {
      const gone = closedError(`the manager at ${this.#where}`);
      gone.message += ' (its server stopped or the connection was lost)';
      reader.fail(gone);
      this.#fail(gone);
    });
    let deadline: LongTimeout | undefined;
    this.ready = new Promise<void>((resolve, reject) => {
      let connected = false;
      // One deadline for connecting and authenticating. Without it a TCP
      // connect to a host that drops packets waits out the kernel's SYN
      // retries (over two minutes on Linux), and a peer that accepts and then
      // says nothing holds the handshake for ever.
      if (timeout !== undefined) {
        deadline = setLongTimeout(() => {
          const err = new TimeoutError(
            connected
              ? `the manager at ${this.#where} did not complete the authentication handshake within ${timeout} s`
              : `could not connect to the manager at ${this.#where} within ${timeout} s`,
          );
          this.#fail(err);
          reader.fail(err);
          socket.destroy();
          reject(err);
        }, timeout * 1000);
      }
      const onConnect = () => {
        connected = true;
        if ('host' in address) socket.setNoDelay(true);
        clientHandshake(socket, reader, authkey, this.#where)
          .then(() => detach(socket, reader))
          .then((conn) => {
            if (this.#failure) {
              conn.close();
              reject(this.#failure);
              return;
            }
            this.#conn = conn;
            this.#open = true;
            const backlog = this.#backlog;
            this.#backlog = [];
            for (const [head, bytes] of backlog) this.#write(head, bytes);
            conn._setReadsRef(this.#pending.size > 0);
            void this.#pump();
            resolve();
          }, reject);
      };
      socket.once('connect', onConnect);
      socket.once('close', () => reject(this.#failure));
    })
      .finally(() => deadline?.clear())
      .catch((err) => {
        this.#fail(err);
        socket.destroy();
        throw err;
      });
    this.ready.catch(() => undefined);
  }

  get closed(): boolean {
    return this.#failure !== null;
  }

  #fail(err: Error): void {
    if (this.#failure) return;
    this.#failure = err;
    this.#socket.unref();
    this.#conn?.close();
    for (const [, bytes] of this.#backlog.splice(0)) abandon(contextOf.get(bytes));
    // Proxies that arrive later connect afresh: the server may be back.
    const key = addressKey(this.address);
    if (links.get(key) === this) links.delete(key);
    for (const [id, p] of [...this.#pending]) this.#settle(id, p)?.reject(err);
  }

  #settle(id: number, p: Pending): Pending {
    this.#pending.delete(id);
    if (p.onAbort) p.signal!.removeEventListener('abort', p.onAbort);
    if (p.onClose) p.calls!.delete(p.onClose);
    if (this.#pending.size === 0) this.#conn?._setReadsRef(false);
    return p;
  }

  // Receives replies, and the end of the stream when the server goes; the
  // receive keeps the process alive only while a request is pending.
  async #pump(): Promise<void> {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (this.#conn && !this.#failure) {
        let frame: Buffer;
        try {
          frame = await this.#conn.recvBytes();
        } catch (err) {
          this.#lost(err);
          return;
        }
        this.#onFrame(frame);
      }
    } finally {
      this.#pumping = false;
    }
  }

  // The connection ended or failed under an open link: the manager is gone.
  #lost(err: unknown): void {
    if (this.#failure) return;
    const gone = closedError(`the manager at ${this.#where}`);
    if ((err as { code?: unknown } | null)?.code === 'ERR_MP_EOF') gone.message += ' (its server stopped or the connection was lost)';
    else {
      gone.message += ` (the connection was lost: ${(err as Error | null)?.message ?? String(err)})`;
      gone.cause = err;
    }
    this.#fail(gone);
  }

  #onFrame(frame: Buffer): void {
    if (frame.length < 5) return;
    const id = frame.readUInt32BE(0);
    const p = this.#pending.get(id);
    if (!p) return;
    this.#settle(id, p);
    let value: unknown;
    try {
      value = decode(frame.subarray(5), codecContext());
    } catch (err) {
      p.reject(err);
      return;
    }
    if (frame[4] === Status.Ok) p.resolve(value);
    else if (frame[4] === Status.Aborted) p.reject(p.closedBy ?? abortError(p.signal!));
    else p.reject(localError(value));
  }

  /**
   * Sends a request; resolves with the server's answer. `calls`: the set of a
   * proxy's pending calls, whose close() cancels them (see BaseProxy.close).
   */
  async request(op: Op, body: unknown[], signal?: AbortSignal, calls?: Set<CancelCall>): Promise<unknown> {
    if (this.#failure) throw this.#failure;
    if (signal?.aborted) throw abortError(signal);
    const ctx = codecContext();
    const bytes = encode(body, ctx);
    if (ctx.offers || ctx.onAbandon) contextOf.set(bytes, ctx);
    // Ids wrap after 2^32 - 1 requests; one still pending (a get parked for
    // days) keeps its id, which the next request skips.
    let id = this.#nextId;
    while (this.#pending.has(id)) id = (id % 0xffffffff) + 1;
    this.#nextId = (id % 0xffffffff) + 1;
    return new Promise((resolve, reject) => {
      const p: Pending = { resolve, reject };
      if (signal) {
        // The server answers the cancelled request (Aborted), or its answer
        // crossed the cancel and wins: an item taken off a queue is never lost.
        p.signal = signal;
        p.onAbort = () => this.#send(0, Op.Cancel, encode([id], codecContext()));
        signal.addEventListener('abort', p.onAbort, { once: true });
      }
      if (calls) {
        p.calls = calls;
        p.onClose = (err) => {
          p.closedBy = err;
          this.#send(0, Op.Cancel, encode([id], codecContext()));
        };
        calls.add(p.onClose);
      }
      this.#pending.set(id, p);
      this.#send(id, op, bytes);
      // After the send: the receive may then hold the loop for a quick reply.
      if (this.#pending.size === 1) this.#conn?._setReadsRef(true);
    });
  }

  #send(id: number, op: Op, bytes: Buffer): void {
    if (this.#failure) {
      abandon(contextOf.get(bytes));
      return;
    }
    if (this.#open) this.#write(frameHead(id, op), bytes);
    else this.#backlog.push([frameHead(id, op), bytes]);
  }

  #write(head: Buffer, bytes: Buffer): void {
    try {
      this.#conn!.sendBytes(Buffer.concat([head, bytes], head.length + bytes.length));
    } catch (err) {
      abandon(contextOf.get(bytes));
      this.#lost(err);
    }
  }

  /** Ends the connection; pending and later requests fail with ERR_MP_CLOSED. */
  close(): void {
    this.#fail(closedError(`the manager at ${this.#where}`));
    this.#conn?.close();
    this.#socket.destroy();
  }
}

// One connection per process per server, shared by every proxy of that server
// in this process, however it arrived (made here, or received from another process).
const links = new Map<string, Link>();

function linkFor(address: ManagerAddress, authkey: Buffer): Link {
  const key = addressKey(address);
  let link = links.get(key);
  if (!link || link.closed) {
    link = new Link(address, authkey);
    links.set(key, link);
  }
  return link;
}

// ---- proxies -----------------------------------------------------------------

interface ProxyRef {
  address: ManagerAddress;
  authkey: Buffer;
  id: number;
  kind: ObjectKind;
}

const kCreate = Symbol('create');
const kEncode = Symbol('encode');

/** Common to every proxy: which object on which server, and how to reach it. */
abstract class BaseProxy {
  readonly #ref: ProxyRef;
  /** The link of the Manager that made this proxy; null for one that arrived from elsewhere. */
  readonly #link: Link | null;

  /** @internal Proxies come from a Manager's factories, or arrive from another process. */
  constructor(token: symbol, ref: ProxyRef, link: Link | null) {
    if (token !== kCreate) throw new TypeError('manager proxies are made by a Manager: use manager.dict(), manager.list(), ...');
    this.#ref = ref;
    this.#link = link;
  }

  #closed = false;
  // This proxy's calls still waiting for their answer: close() cancels them.
  readonly #calls = new Set<CancelCall>();

  protected _call(method: string, args: unknown[], signal?: AbortSignal): Promise<unknown> {
    if (this.#closed) return Promise.reject(closedError(`${this.constructor.name} ${this.#ref.id}`));
    const link = this.#link ?? linkFor(this.#ref.address, this.#ref.authkey);
    return link.request(Op.Call, [this.#ref.id, method, args], signal, this.#calls);
  }

  /**
   * Ends this handle only (like Queue.close()): its later calls reject with
   * ERR_MP_CLOSED; the object on the server and other proxies to it are
   * untouched. Twice is a no-op. Calls of this proxy parked on the server
   * (a get, a put, an acquire) are cancelled and reject with ERR_MP_CLOSED,
   * within a round trip; one whose answer crossed the cancel resolves with it
   * (an item taken off a queue is never lost).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const err = closedError(`${this.constructor.name} ${this.#ref.id}`);
    for (const cancel of [...this.#calls]) cancel(err);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** @internal */
  static [kEncode](proxy: BaseProxy): unknown {
    if (proxy.#closed) throw closedError(`${proxy.constructor.name} ${proxy.#ref.id}`);
    const r = proxy.#ref;
    return { a: r.address, k: r.authkey.toString('base64'), i: r.id, t: r.kind };
  }

  toString(): string {
    return `<${this.constructor.name} id=${this.#ref.id} manager=${describeAddress(this.#ref.address)}>`;
  }
}

function checkKey(key: unknown): void {
  if (key !== null && (typeof key === 'object' || typeof key === 'function' || typeof key === 'symbol')) {
    throw invalidType('key', 'a string, number, bigint, boolean, null or undefined (keys are compared by value)', key);
  }
}

function checkIndex(i: unknown, name = 'index'): void {
  if (typeof i !== 'number' || !Number.isInteger(i)) throw invalidType(name, 'an integer', i);
}

function toArray(items: unknown, name: string): unknown[] {
  if (items === null || items === undefined || typeof (items as Iterable<unknown>)[Symbol.iterator] !== 'function' || typeof items === 'string') {
    throw invalidType(name, 'an array or another iterable', items);
  }
  return [...(items as Iterable<unknown>)];
}

/** A dict on the manager (Python's DictProxy); keys are primitives compared by value. */
export class DictProxy<K = unknown, V = unknown> extends BaseProxy {
  /** The value for key, or undefined when there is none. */
  async get(key: K): Promise<V | undefined> {
    checkKey(key);
    return (await this._call('get', [key])) as V | undefined;
  }
  async set(key: K, value: V): Promise<void> {
    checkKey(key);
    await this._call('set', [key, value]);
  }
  async has(key: K): Promise<boolean> {
    checkKey(key);
    return (await this._call('has', [key])) as boolean;
  }
  /** Removes key; resolves true when it was there. */
  async delete(key: K): Promise<boolean> {
    checkKey(key);
    return (await this._call('delete', [key])) as boolean;
  }
  async keys(): Promise<K[]> {
    return (await this._call('keys', [])) as K[];
  }
  async values(): Promise<V[]> {
    return (await this._call('values', [])) as V[];
  }
  async entries(): Promise<[K, V][]> {
    return (await this._call('entries', [])) as [K, V][];
  }
  async size(): Promise<number> {
    return (await this._call('size', [])) as number;
  }
  /** A plain object copy (keys turned into strings). */
  async toObject(): Promise<Record<string, V>> {
    return (await this._call('toObject', [])) as Record<string, V>;
  }
}

/** A list on the manager (Python's ListProxy); negative indices count from the end. */
export class ListProxy<T = unknown> extends BaseProxy {
  /** The item at index; RangeError when there is none (Python's IndexError). */
  async get(index: number): Promise<T> {
    checkIndex(index);
    return (await this._call('get', [index])) as T;
  }
  async set(index: number, value: T): Promise<void> {
    checkIndex(index);
    await this._call('set', [index, value]);
  }
  async append(item: T): Promise<void> {
    await this._call('append', [item]);
  }
  async extend(items: Iterable<T>): Promise<void> {
    await this._call('extend', [toArray(items, 'items')]);
  }
  /** Removes and returns the item at index (default: the last). */
  async pop(index?: number): Promise<T> {
    if (index !== undefined) checkIndex(index);
    return (await this._call('pop', index === undefined ? [] : [index])) as T;
  }
  async length(): Promise<number> {
    return (await this._call('length', [])) as number;
  }
  /** A copy of the whole list. */
  async toArray(): Promise<T[]> {
    return (await this._call('toArray', [])) as T[];
  }
}

/** A Namespace on the manager: named attributes (undefined when unset). */
export class NamespaceProxy extends BaseProxy {
  async get<T = unknown>(name: string): Promise<T | undefined> {
    validateString(name, 'name');
    return (await this._call('get', [name])) as T | undefined;
  }
  async set(name: string, value: unknown): Promise<void> {
    validateString(name, 'name');
    await this._call('set', [name, value]);
  }
  /** A plain object copy of every attribute. */
  async toObject(): Promise<Record<string, unknown>> {
    return (await this._call('toObject', [])) as Record<string, unknown>;
  }
}

/** A typed value on the manager (Python's manager Value): 64-bit types hold bigints. */
export class ValueProxy<T extends number | bigint = number> extends BaseProxy {
  async get(): Promise<T> {
    return (await this._call('get', [])) as T;
  }
  async set(value: T): Promise<void> {
    await this._call('set', [value]);
  }
}

// As the local Queue's and Lock's: unknown keys and positional calls refused.
const MANAGER_START: OptionsSpec = { call: 'Manager.start()', keys: ['startMethod'] };
const QUEUE_WAIT: OptionsSpec = { call: 'the queue proxy call', keys: ['block', 'timeout', 'signal'], number: 'timeout', boolean: 'block' };
const LOCK_ACQUIRE: OptionsSpec = { call: 'lock.acquire()', keys: ['blocking', 'timeout', 'signal'], number: 'timeout', boolean: 'blocking' };

function queueWait(options: unknown): { block: boolean; timeout: number | undefined; signal: AbortSignal | undefined } {
  const o = validateOptions(options, QUEUE_WAIT);
  const block = o.block === undefined ? true : validateBoolean(o.block, 'options.block');
  return { block, timeout: validateTimeout(o.timeout, 'options.timeout'), signal: validateSignal(o.signal) };
}

/** A queue on the manager: Queue's methods, all async; timeouts in seconds. */
export class QueueProxy<T = unknown> extends BaseProxy {
  /** Puts obj, waiting while the queue is full; QueueFullError when the wait ends without room. */
  async put(obj: T, options?: QueueWaitOptions): Promise<void> {
    const { block, timeout, signal } = queueWait(options);
    await this._call('put', [obj, block, timeout], signal);
  }
  /** The oldest item, waiting while the queue is empty; QueueEmptyError when the wait ends without one. */
  async get(options?: QueueWaitOptions): Promise<T> {
    const { block, timeout, signal } = queueWait(options);
    return (await this._call('get', [block, timeout], signal)) as T;
  }
  async putNowait(obj: T): Promise<void> {
    await this._call('putNowait', [obj]);
  }
  async getNowait(): Promise<T> {
    return (await this._call('getNowait', [])) as T;
  }
  async qsize(): Promise<number> {
    return (await this._call('qsize', [])) as number;
  }
  async empty(): Promise<boolean> {
    return (await this._call('empty', [])) as boolean;
  }
  async full(): Promise<boolean> {
    return (await this._call('full', [])) as boolean;
  }
}

/**
 * A lock on the manager: Lock's methods, all async. Like Lock, it has no
 * owner (any process may release it). When the process whose acquire holds it
 * disconnects, the next acquirer takes it over and sees ownerDied === true.
 */
export class LockProxy extends BaseProxy {
  #ownerDied = false;

  /** True after this proxy took the lock over from a holder that went away, until its next release. */
  get ownerDied(): boolean {
    return this.#ownerDied;
  }

  /** Resolves true when acquired, false when the timeout passed (or blocking: false and it is held). */
  async acquire(options?: AcquireOptions): Promise<boolean> {
    const o = validateOptions(options, LOCK_ACQUIRE);
    const blocking = o.blocking === undefined ? true : validateBoolean(o.blocking, 'options.blocking');
    const timeout = validateTimeout(o.timeout, 'options.timeout');
    const signal = validateSignal(o.signal);
    const got = (await this._call('acquire', [blocking, timeout], signal)) as number;
    if (got === 2) this.#ownerDied = true;
    return got !== 0;
  }
  async release(): Promise<void> {
    await this._call('release', []);
    this.#ownerDied = false;
  }
  async locked(): Promise<boolean> {
    return (await this._call('locked', [])) as boolean;
  }
  /** Acquires, runs fn (sync or async) and always releases. */
  async withLock<R>(fn: () => R | Promise<R>): Promise<R> {
    if (typeof fn !== 'function') throw invalidType('fn', 'a function', fn);
    await this.acquire();
    try {
      return await fn();
    } finally {
      await this.release();
    }
  }
}

const proxyClasses: Record<ObjectKind, new (token: symbol, ref: ProxyRef, link: Link | null) => BaseProxy> = {
  dict: DictProxy,
  list: ListProxy,
  Namespace: NamespaceProxy,
  Value: ValueProxy,
  Queue: QueueProxy,
  Lock: LockProxy,
};

// A proxy travels as the server's address, the authkey and the object's id;
// the receiving process connects (once) when it first calls a method.
registerTransferable<BaseProxy>('ManagerProxy', BaseProxy, {
  encode: (proxy) => BaseProxy[kEncode](proxy),
  decode: (data: { a: ManagerAddress; k: string; i: number; t: ObjectKind }) => {
    const Class = proxyClasses[data.t];
    if (!Class) throw new TypeError(`cannot revive a manager proxy of kind ${String(data.t)}`);
    return new Class(kCreate, { address: data.a, authkey: Buffer.from(data.k, 'base64'), id: data.i, kind: data.t }, null);
  },
});

// ---- the manager ---------------------------------------------------------------

// The private directories of servers this process started. Each is removed
// by shutdown(), when its server ends (a crash included), at this process's
// exit even when shutdown() was never called, and, when this process dies
// without running any of that (SIGINT, SIGTERM, SIGKILL, a fatal error), by the
// resource tracker, which removes a 'process'-lifetime name once its
// registering process is gone. The server cannot do it then: it gets SIGKILL
// from the kernel when this process dies (a daemon's parent-death signal).
const ownDirs = new Set<string>();
let exitHook = false;
function ownDir(dir: string): void {
  ownDirs.add(dir);
  track(dir, 'socket-dir', { lifetime: 'process' });
  if (exitHook) return;
  exitHook = true;
  atExit(ExitPhase.Release, () => {
    for (const d of ownDirs) removeDir(d);
  });
}

function removeDir(dir: string): void {
  if (!ownDirs.delete(dir)) return;
  fs.rmSync(dir, { recursive: true, force: true });
  untrack(dir, 'socket-dir');
}

export interface ManagerConnectOptions {
  /** Default '127.0.0.1'. */
  host?: string;
  port: number;
  authkey: string | Buffer;
  /**
   * Seconds to connect and authenticate (default 10); then the promise
   * rejects with TimeoutError. null or Infinity: no limit of ours (the
   * kernel's connect timeout still applies).
   */
  timeout?: number | null;
}

export interface ManagerServeOptions {
  /** Default '127.0.0.1'; '0.0.0.0' or '::' to listen on every interface. */
  host?: string;
  /** Default 0: an ephemeral port (read it from srv.address). */
  port?: number;
  authkey: string | Buffer;
}

function validateHost(value: unknown): string {
  if (value === undefined) return '127.0.0.1';
  if (typeof value !== 'string') throw invalidType('options.host', 'a host name or IP address string', value);
  if (value.length === 0) throw outOfRange('options.host', 'a non-empty host name or IP address', value);
  return value;
}

function validateEntries(initial: unknown): [unknown, unknown][] {
  if (initial === undefined) return [];
  let entries: [unknown, unknown][];
  if (initial instanceof Map) entries = [...initial];
  else if (initial !== null && typeof initial === 'object' && typeof (initial as Iterable<unknown>)[Symbol.iterator] === 'function') {
    entries = [...(initial as Iterable<unknown>)].map((e, i) => {
      if (!Array.isArray(e) || e.length !== 2) throw invalidType(`initial[${i}]`, 'a [key, value] pair', e);
      return e as [unknown, unknown];
    });
  } else if (initial !== null && typeof initial === 'object') entries = Object.entries(initial);
  else throw invalidType('initial', 'a Map, an object or an iterable of [key, value] pairs', initial);
  for (const [k] of entries) checkKey(k);
  return entries;
}

type BigIntType = 'l' | 'L' | 'q' | 'Q' | 'int64' | 'uint64';

export class Manager {
  readonly #address: ManagerAddress;
  readonly #authkey: Buffer;
  readonly #link: Link;
  /** The server process (Manager.start()); null for a connection (Manager.connect()). */
  readonly #process: Process | null;
  readonly #dir: string | null;
  readonly #pid: number | undefined;
  #stopping: Promise<void> | null = null;

  private constructor(address: ManagerAddress, authkey: Buffer, link: Link, proc: Process | null, dir: string | null) {
    this.#address = address;
    this.#authkey = authkey;
    this.#link = link;
    this.#process = proc;
    this.#pid = proc?.pid;
    this.#dir = dir;
  }

  /** Starts a manager server process (Python's SyncManager().start()). */
  static async start(options?: { startMethod?: StartMethod }): Promise<Manager> {
    const opts = validateOptions(options, MANAGER_START) as { startMethod?: StartMethod };
    const startMethod = startMethodOf(opts.startMethod, 'options.startMethod');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `pmp-mgr-${process.pid}-`));
    fs.chmodSync(dir, 0o700);
    ownDir(dir);
    const authkey = crypto.randomBytes(32);
    const [ready, readyWriter] = Pipe(false);
    let proc: Process;
    try {
      proc = new Process({
        target: { module: SERVER_MODULE, export: 'managerMain' },
        args: [dir, authkey.toString('base64'), readyWriter],
        // A daemon: it never keeps the owner alive and dies with it (SIGKILL
        // from the kernel when the owner dies, however it dies).
        daemon: true,
        startMethod,
      });
      proc.name = proc.name.replace(/^Process/, 'SyncManager');
      proc.start();
    } catch (err) {
      ready.close();
      removeDir(dir);
      throw err;
    } finally {
      readyWriter.close();
    }
    const address: ManagerAddress = { path: path.join(dir, 'manager.sock') };
    let link: Link | undefined;
    try {
      let answer: unknown;
      try {
        answer = await ready.recv();
      } catch {
        const code = await proc.join();
        throw stateError(`the manager server process exited with code ${code} before it was ready`, 'ERR_MP_MANAGER_FAILED');
      }
      if (Array.isArray(answer) && answer[0] === 'error') throw answer[1];
      link = new Link(address, authkey);
      await link.ready;
    } catch (err) {
      link?.close();
      if (proc.exitCode === null) proc.kill();
      await proc.join();
      removeDir(dir);
      throw err;
    } finally {
      ready.close();
    }
    // A server that ends on its own (it crashed, or was killed) leaves its
    // directory to us.
    void proc.sentinel.then(() => removeDir(dir));
    links.set(addressKey(address), link);
    return new Manager(address, authkey, link, proc, dir);
  }

  /**
   * Serves a manager from this process over TCP, until srv.close(). Clients
   * (Manager.connect() with the same authkey) create and use objects there.
   */
  static async serve(options: ManagerServeOptions): Promise<ManagerServer> {
    const o = validateOptions(options, { call: 'Manager.serve()', keys: ['host', 'port', 'authkey'] });
    if (options === undefined) throw invalidType('options', 'an object with an authkey', options);
    const host = validateHost(o.host);
    const port = o.port === undefined ? 0 : validateInteger(o.port, 'options.port', 0, 65535);
    const authkey = validateAuthkey(o.authkey);
    const { core, server } = await serveTcp(host, port, authkey);
    return new ManagerServer(kCreate, core, server);
  }

  /**
   * Connects to a manager served with Manager.serve(); rejects with
   * AuthenticationError on a wrong authkey, TimeoutError when connecting and
   * authenticating take longer than options.timeout seconds (default 10).
   */
  static async connect(options: ManagerConnectOptions): Promise<Manager> {
    const o = validateOptions(options, { call: 'Manager.connect()', keys: ['host', 'port', 'authkey', 'timeout'] });
    if (options === undefined) throw invalidType('options', 'an object with a port and an authkey', options);
    const host = validateHost(o.host);
    if (o.port === undefined) throw invalidType('options.port', 'an integer between 1 and 65535', o.port);
    const port = validateInteger(o.port, 'options.port', 1, 65535);
    const authkey = validateAuthkey(o.authkey);
    const timeout = o.timeout === undefined ? HANDSHAKE_TIMEOUT_S : validateTimeout(o.timeout, 'options.timeout');
    const address: ManagerAddress = { host, port };
    const link = new Link(address, authkey, timeout);
    await link.ready;
    links.set(addressKey(address), link);
    return new Manager(address, authkey, link, null, null);
  }

  /** Where the server listens: { path } for Manager.start(), { host, port } for Manager.connect(). */
  get address(): ManagerAddress {
    return { ...this.#address };
  }

  /** The server process's pid (Manager.start() only). */
  get pid(): number | undefined {
    return this.#pid;
  }

  async #create<P extends BaseProxy>(kind: ObjectKind, args: unknown[]): Promise<P> {
    if (this.#stopping) throw closedError('manager');
    const id = (await this.#link.request(Op.New, [kind, args])) as number;
    return new proxyClasses[kind](kCreate, { address: this.#address, authkey: this.#authkey, id, kind }, this.#link) as P;
  }

  /** A dict, optionally filled from a Map, an object or [key, value] pairs. */
  async dict<K = unknown, V = unknown>(initial?: Map<K, V> | Record<string, V> | Iterable<[K, V]>): Promise<DictProxy<K, V>> {
    return this.#create('dict', [validateEntries(initial)]);
  }

  async list<T = unknown>(initial?: Iterable<T>): Promise<ListProxy<T>> {
    return this.#create('list', [initial === undefined ? [] : toArray(initial, 'initial')]);
  }

  /** A queue; maxsize <= 0 means no limit (Python's rule). */
  async Queue<T = unknown>(maxsize = 0): Promise<QueueProxy<T>> {
    validateInteger(maxsize, 'maxsize', Number.MIN_SAFE_INTEGER, 0x7fffffff);
    return this.#create('Queue', [Math.max(0, maxsize)]);
  }

  async Namespace(initial?: Record<string, unknown>): Promise<NamespaceProxy> {
    const attrs = initial === undefined ? {} : validateObject(initial, 'initial');
    return this.#create('Namespace', [{ ...attrs }]);
  }

  /** A value of a Python typecode or type name ('i', 'd', 'int64', ...); 64-bit integer types hold bigints. */
  Value(type: BigIntType, initial?: bigint | number): Promise<ValueProxy<bigint>>;
  Value(type: Exclude<TypeCode | TypeName, BigIntType>, initial?: number | boolean): Promise<ValueProxy<number>>;
  async Value(type: TypeCode | TypeName, initial: number | bigint | boolean = 0): Promise<ValueProxy<number | bigint>> {
    const t = ctypeOf(type);
    return this.#create('Value', [type, coerce(t, initial, 'initial')]);
  }

  async Lock(): Promise<LockProxy> {
    return this.#create('Lock', []);
  }

  /**
   * Manager.start(): stops the server process and waits for it (no zombie).
   * Manager.connect(): closes this connection; the server keeps serving.
   * Every proxy of this manager then rejects with ERR_MP_CLOSED. Twice is a no-op.
   */
  shutdown(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  /** The same as shutdown(). */
  close(): Promise<void> {
    return this.shutdown();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }

  async #stop(): Promise<void> {
    const proc = this.#process;
    if (proc && proc.exitCode === null && !this.#link.closed) {
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          this.#link.request(Op.Shutdown, []),
          new Promise((r) => (timer = setTimeout(r, SHUTDOWN_GRACE_S * 1000))),
        ]);
      } catch {
        // the server is gone already: joined below
      } finally {
        clearTimeout(timer);
      }
    }
    this.#link.close();
    if (proc) {
      if ((await proc.join(SHUTDOWN_GRACE_S)) === null) {
        proc.kill();
        await proc.join();
      }
      proc.close();
    }
    if (this.#dir) removeDir(this.#dir);
  }
}

/** A manager served from this process (Manager.serve()). */
export class ManagerServer {
  readonly #core: ManagerCore;
  readonly #server: net.Server;
  readonly #address: { host: string; port: number };
  #closing: Promise<void> | null = null;

  /** @internal */
  constructor(token: symbol, core: ManagerCore, server: net.Server) {
    if (token !== kCreate) throw new TypeError('use Manager.serve()');
    this.#core = core;
    this.#server = server;
    const a = server.address() as net.AddressInfo;
    this.#address = { host: a.address, port: a.port };
  }

  /** Where it listens; port is the real one when 0 was asked for. */
  get address(): { host: string; port: number } {
    return { ...this.#address };
  }

  get closed(): boolean {
    return this.#closing !== null;
  }

  /** Stops listening and ends every client's connection; twice is a no-op. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const stopped = new Promise<void>((resolve) => this.#server.close(() => resolve()));
      await this.#core.close();
      await stopped;
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
