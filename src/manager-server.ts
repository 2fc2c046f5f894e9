// The manager's server: the shared objects (dicts, lists, namespaces, values,
// queues, locks) live here, and clients reach them by id over the protocol of
// manager-protocol.ts. It runs in a process of its own (managerMain, started by
// Manager.start()) or inside the calling process (Manager.serve()).
//
// Everything is asynchronous: a blocking call (a queue get on an empty queue, a
// lock acquire) parks as a waiter on its object and is answered later, so one
// client's wait never holds up another's requests.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

import type { Connection } from './connection';
import { QueueEmptyError, QueueFullError, stateError } from './errors';
import { type LongTimeout, setLongTimeout } from './long-timeout';
import {
  FrameReader,
  Op,
  Status,
  detach,
  frameHead,
  sendSwitch,
  serverHandshake,
  type ObjectKind,
} from './manager-protocol';
import { abandon, decode, encode, type CodecContext } from './serialize';
import { coerce, ctypeOf, type CType } from './sharedctypes';
import { invalidType, outOfRange } from './validate';

interface Client {
  id: number;
  /** Until the handshake is done; then destroyed (manager-protocol.ts detach()). */
  socket: net.Socket;
  /** The message transport after the handshake. */
  conn: Connection | null;
  /** Requests of this client parked on an object, by request id. */
  waits: Map<number, Waiter>;
  gone: boolean;
}

const MAX_UNAUTHENTICATED = 64;

/** Whether an answer can still reach the client. */
function connected(client: Client): boolean {
  return !client.gone && client.conn !== null && !client.conn.closed;
}

/** A parked request: answered once, by whichever comes first (the object, its
 *  timeout, a cancel from the client); dropped silently if the client goes. */
class Waiter {
  #timer: LongTimeout | undefined;
  #done = false;

  constructor(
    readonly server: ManagerCore,
    readonly client: Client,
    readonly reqId: number,
    readonly list: Waiter[],
    timeout: number | undefined,
    onTimeout: (w: Waiter) => void,
    /** A queue put's item, waiting for room. */
    readonly item?: unknown,
  ) {
    list.push(this);
    client.waits.set(reqId, this);
    if (timeout !== undefined) this.#timer = setLongTimeout(() => onTimeout(this), timeout * 1000);
  }

  /** Answers; false when the client is gone and nothing was sent. */
  settle(status: Status, value: unknown): boolean {
    return this.#finish() && this.server.reply(this.client, this.reqId, status, value);
  }

  drop(): void {
    this.#finish();
  }

  #finish(): boolean {
    if (this.#done) return false;
    this.#done = true;
    this.#timer?.clear();
    const i = this.list.indexOf(this);
    if (i >= 0) this.list.splice(i, 1);
    this.client.waits.delete(this.reqId);
    return true;
  }
}

/** Returned by a method that parked its request: the answer comes later. */
const PARKED = Symbol('parked');

interface CallContext {
  server: ManagerCore;
  client: Client;
  reqId: number;
}

abstract class Shared {
  abstract readonly kind: ObjectKind;
  abstract call(method: string, args: unknown[], ctx: CallContext): unknown;
  /** A client went away: forget its waiters (already dropped) and what it held. */
  clientGone(_client: Client): void {}
  close(): void {}
}

function unknownMethod(kind: string, method: unknown): TypeError {
  return new TypeError(`a manager ${kind} has no method ${String(method)}`);
}

// Keys are compared as Map keys are (SameValueZero). An object decoded from a
// request is a new object each time, so it could never match: refuse it.
function checkKey(key: unknown): unknown {
  if (key !== null && (typeof key === 'object' || typeof key === 'function' || typeof key === 'symbol')) {
    throw invalidType('key', 'a string, number, bigint, boolean, null or undefined', key);
  }
  return key;
}

function listIndex(i: unknown, length: number): number {
  if (typeof i !== 'number' || !Number.isInteger(i)) throw invalidType('index', 'an integer', i);
  const j = i < 0 ? i + length : i;
  if (j < 0 || j >= length) {
    throw outOfRange('index', length === 0 ? 'an index into a non-empty list' : `between ${-length} and ${length - 1}`, i);
  }
  return j;
}

class SharedDict extends Shared {
  readonly kind = 'dict';
  readonly map = new Map<unknown, unknown>();

  call(method: string, args: unknown[]): unknown {
    const m = this.map;
    switch (method) {
      case 'get':
        return m.get(checkKey(args[0]));
      case 'set':
        m.set(checkKey(args[0]), args[1]);
        return undefined;
      case 'has':
        return m.has(checkKey(args[0]));
      case 'delete':
        return m.delete(checkKey(args[0]));
      case 'keys':
        return [...m.keys()];
      case 'values':
        return [...m.values()];
      case 'entries':
        return [...m.entries()];
      case 'size':
        return m.size;
      case 'toObject':
        return Object.fromEntries([...m].map(([k, v]) => [String(k), v]));
      default:
        throw unknownMethod('dict', method);
    }
  }
}

class SharedList extends Shared {
  readonly kind = 'list';
  items: unknown[] = [];

  call(method: string, args: unknown[]): unknown {
    const a = this.items;
    switch (method) {
      case 'get':
        return a[listIndex(args[0], a.length)];
      case 'set':
        a[listIndex(args[0], a.length)] = args[1];
        return undefined;
      case 'append':
        a.push(args[0]);
        return undefined;
      case 'extend':
        for (const x of args[0] as unknown[]) a.push(x);
        return undefined;
      case 'pop': {
        if (a.length === 0) throw outOfRange('index', 'an index into a non-empty list (pop from an empty list)', args[0] ?? -1);
        const i = listIndex(args[0] ?? -1, a.length);
        return a.splice(i, 1)[0];
      }
      case 'length':
        return a.length;
      case 'toArray':
        return a;
      default:
        throw unknownMethod('list', method);
    }
  }
}

class SharedNamespace extends Shared {
  readonly kind = 'Namespace';
  readonly attrs = new Map<string, unknown>();

  call(method: string, args: unknown[]): unknown {
    switch (method) {
      case 'get':
        return this.attrs.get(args[0] as string);
      case 'set':
        this.attrs.set(args[0] as string, args[1]);
        return undefined;
      case 'toObject':
        return Object.fromEntries(this.attrs);
      default:
        throw unknownMethod('Namespace', method);
    }
  }
}

class SharedValue extends Shared {
  readonly kind = 'Value';
  value: number | bigint;

  constructor(readonly type: CType, initial: unknown) {
    super();
    this.value = coerce(type, initial, 'value');
  }

  call(method: string, args: unknown[]): unknown {
    switch (method) {
      case 'get':
        return this.value;
      case 'set':
        this.value = coerce(this.type, args[0], 'value');
        return undefined;
      default:
        throw unknownMethod('Value', method);
    }
  }
}

class SharedQueue extends Shared {
  readonly kind = 'Queue';
  readonly items: unknown[] = [];
  readonly getters: Waiter[] = [];
  readonly putters: Waiter[] = [];

  constructor(readonly maxsize: number) {
    super();
  }

  #full(): boolean {
    return this.maxsize > 0 && this.items.length >= this.maxsize;
  }

  // Putters parked on a full queue move in, oldest first, as room appears;
  // one whose client went away was never answered, and its item stays out.
  #admitPutters(): void {
    while (this.putters.length > 0 && !this.#full()) {
      const p = this.putters[0];
      if (!connected(p.client)) {
        p.drop();
        continue;
      }
      this.items.push(p.item);
      p.settle(Status.Ok, undefined);
    }
  }

  call(method: string, args: unknown[], ctx: CallContext): unknown {
    switch (method) {
      case 'put':
      case 'putNowait': {
        const [item, block = false, timeout] = args as [unknown, boolean?, number?];
        // A waiting getter means the queue is empty: hand the item over, to
        // one whose client can still be answered.
        while (this.getters.length > 0) {
          if (this.getters[0].settle(Status.Ok, item)) return undefined;
        }
        if (!this.#full()) {
          this.items.push(item);
          return undefined;
        }
        if (!block || timeout === 0) throw new QueueFullError();
        new Waiter(ctx.server, ctx.client, ctx.reqId, this.putters, timeout, (w) => w.settle(Status.Error, new QueueFullError()), item);
        return PARKED;
      }
      case 'get':
      case 'getNowait': {
        const [block = false, timeout] = args as [boolean?, number?];
        if (this.items.length > 0) {
          const item = this.items.shift();
          this.#admitPutters();
          return item;
        }
        if (!block || timeout === 0) throw new QueueEmptyError();
        new Waiter(ctx.server, ctx.client, ctx.reqId, this.getters, timeout, (w) => w.settle(Status.Error, new QueueEmptyError()));
        return PARKED;
      }
      case 'qsize':
        return this.items.length;
      case 'empty':
        return this.items.length === 0;
      case 'full':
        return this.#full();
      default:
        throw unknownMethod('Queue', method);
    }
  }
}

/** The holder of a lock whose holder went away: the next acquirer takes it over and is told. */
const ORPHANED = -1;
/** What acquire answers. */
const NOT_ACQUIRED = 0;
const ACQUIRED = 1;
const ACQUIRED_OWNER_DIED = 2;

class SharedLock extends Shared {
  readonly kind = 'Lock';
  /** Id of the client whose acquire holds the lock, ORPHANED, or null when free. */
  holder: number | null = null;
  readonly waiters: Waiter[] = [];

  call(method: string, args: unknown[], ctx: CallContext): unknown {
    switch (method) {
      case 'acquire': {
        const [blocking = true, timeout] = args as [boolean?, number?];
        if (this.holder === null || this.holder === ORPHANED) {
          const died = this.holder === ORPHANED;
          this.holder = ctx.client.id;
          return died ? ACQUIRED_OWNER_DIED : ACQUIRED;
        }
        if (!blocking || timeout === 0) return NOT_ACQUIRED;
        new Waiter(ctx.server, ctx.client, ctx.reqId, this.waiters, timeout, (w) => w.settle(Status.Ok, NOT_ACQUIRED));
        return PARKED;
      }
      case 'release':
        if (this.holder === null) throw stateError('release() called on an unlocked Lock', 'ERR_MP_LOCK_NOT_HELD');
        this.#handOver(ACQUIRED);
        return undefined;
      case 'locked':
        return this.holder !== null;
      default:
        throw unknownMethod('Lock', method);
    }
  }

  #handOver(answer: number): void {
    for (;;) {
      const next = this.waiters[0];
      if (!next) {
        this.holder = answer === ACQUIRED_OWNER_DIED ? ORPHANED : null;
        return;
      }
      // Not to a waiter whose client went away: it would orphan the lock.
      if (!connected(next.client)) {
        next.drop();
        continue;
      }
      this.holder = next.client.id;
      next.settle(Status.Ok, answer);
      return;
    }
  }

  // Like the package's Lock when its holder process dies: not a silent
  // deadlock. The lock passes to the next waiter, or to the next acquirer,
  // which is told (ownerDied) that what it protects may be half-updated.
  override clientGone(client: Client): void {
    if (this.holder === client.id) this.#handOver(ACQUIRED_OWNER_DIED);
  }
}

function create(kind: unknown, args: unknown[]): Shared {
  switch (kind) {
    case 'dict': {
      const d = new SharedDict();
      for (const [k, v] of (args[0] ?? []) as [unknown, unknown][]) d.map.set(checkKey(k), v);
      return d;
    }
    case 'list': {
      const l = new SharedList();
      l.items = (args[0] ?? []) as unknown[];
      return l;
    }
    case 'Namespace': {
      const n = new SharedNamespace();
      for (const [k, v] of Object.entries((args[0] ?? {}) as Record<string, unknown>)) n.attrs.set(k, v);
      return n;
    }
    case 'Value':
      return new SharedValue(ctypeOf(args[0]), args[1]);
    case 'Queue':
      return new SharedQueue(args[0] as number);
    case 'Lock':
      return new SharedLock();
    default:
      throw new TypeError(`a manager cannot create objects of kind ${String(kind)}`);
  }
}

// Values cross this server through the codec both ways. A Connection's fd
// cannot ride a stream socket, so it goes through the fd sharer (fd-share.ts).
const codecContext = (): CodecContext => ({ fds: [], carriesFds: false });

export interface CoreOptions {
  /** Clients may stop the server (Manager.start()); over the network only srv.close() does. */
  allowShutdown: boolean;
}

/**
 * The objects and the clients of one manager. Objects live until the server
 * stops: proxies are not reference-counted (see docs/manager.md).
 */
export class ManagerCore {
  readonly #authkey: Buffer;
  readonly #options: CoreOptions;
  readonly #objects = new Map<number, Shared>();
  readonly #clients = new Set<Client>();
  // Ids start at a random point, so that a proxy kept from an earlier server
  // at the same address (and key) finds no object here (ERR_MP_NO_OBJECT)
  // instead of silently reaching another one. Below 2^48: exact as numbers.
  #nextObject = crypto.randomInt(1, 2 ** 47);
  /** Connections still in the authentication handshake. */
  #unauthenticated = 0;
  #nextClient = 1;
  #closing: Promise<void> | null = null;
  #stopped!: () => void;
  /** Resolves when the server has stopped (close(), or a client's shutdown request). */
  readonly stopped = new Promise<void>((resolve) => (this.#stopped = resolve));

  constructor(authkey: Buffer, options: CoreOptions) {
    this.#authkey = authkey;
    this.#options = options;
  }

  get closed(): boolean {
    return this.#closing !== null;
  }

  accept(socket: net.Socket): void {
    if (this.#closing) {
      socket.destroy();
      return;
    }
    // Each unauthenticated connection may hold a handshake's buffer for up to
    // its timeout: past MAX_UNAUTHENTICATED at once, new ones are refused.
    if (this.#unauthenticated >= MAX_UNAUTHENTICATED) {
      socket.destroy();
      return;
    }
    if (socket.remoteFamily) socket.setNoDelay(true);
    const client: Client = { id: this.#nextClient++, socket, conn: null, waits: new Map(), gone: false };
    const reader = new FrameReader(socket);
    this.#clients.add(client);
    // A client is gone from its first sign of going ('end', 'error'), not
    // only from 'close', which comes a loop phase later: in between, a put
    // would hand its item to the dead client's parked get, lost.
    const gone = (): void => {
      reader.fail(stateError('the client went away', 'ERR_MP_EOF'));
      this.#gone(client);
    };
    socket.on('error', gone);
    socket.on('end', () => {
      gone();
      socket.destroy();
    });
    socket.on('close', gone);
    this.#unauthenticated++;
    serverHandshake(socket, reader, this.#authkey)
      .finally(() => this.#unauthenticated--)
      .then(
        (ok) => {
          // A wrong key: this connection is dropped, the server keeps serving.
          if (!ok || this.#closing) socket.end();
          else void this.#serve(client, reader);
        },
        () => socket.destroy(),
      );
  }

  // Switches the client to its Connection, then takes its requests one by one
  // until it goes: the end of its stream (or an error) is its going.
  async #serve(client: Client, reader: FrameReader): Promise<void> {
    let conn: Connection;
    try {
      conn = await detach(client.socket, reader);
    } catch {
      client.socket.destroy();
      this.#gone(client);
      return;
    }
    if (client.gone || this.#closing) {
      conn.close();
      this.#gone(client);
      return;
    }
    client.conn = conn;
    try {
      sendSwitch(conn);
    } catch {
      conn.close();
      this.#gone(client);
      return;
    }
    for (;;) {
      let frame: Buffer;
      try {
        frame = await conn.recvBytes();
      } catch {
        conn.close();
        this.#gone(client);
        return;
      }
      this.#onFrame(client, frame);
      if (client.gone) return;
    }
  }

  #gone(client: Client): void {
    if (client.gone) return;
    client.gone = true;
    this.#clients.delete(client);
    // Its parked requests first, so that nothing is handed to them below.
    for (const w of [...client.waits.values()]) w.drop();
    for (const obj of this.#objects.values()) obj.clientGone(client);
  }

  /** Answers a request; false when the client is gone and nothing was sent. */
  reply(client: Client, id: number, status: Status, value: unknown): boolean {
    if (!connected(client)) return false;
    let body: Buffer;
    let ctx = codecContext();
    try {
      body = encode(value, ctx);
    } catch (err) {
      status = Status.Error;
      body = encode(err, (ctx = codecContext()));
    }
    const head = frameHead(id, status);
    try {
      client.conn!.sendBytes(Buffer.concat([head, body], head.length + body.length));
    } catch {
      abandon(ctx);
      // The client went away (EPIPE, ECONNRESET): its receive loop ends with
      // the closed Connection and drops it (#gone).
      client.conn!.close();
      return false;
    }
    return true;
  }

  #onFrame(client: Client, frame: Buffer): void {
    if (frame.length < 5) {
      client.conn?.close();
      this.#gone(client);
      return;
    }
    const id = frame.readUInt32BE(0);
    const op = frame[4];
    try {
      const body = decode(frame.subarray(5), codecContext()) as unknown[];
      if (!Array.isArray(body)) throw new TypeError('manager protocol error: a request body must be an array');
      switch (op) {
        case Op.New: {
          const [kind, args] = body as [unknown, unknown[]];
          const objectId = this.#nextObject++;
          this.#objects.set(objectId, create(kind, args ?? []));
          this.reply(client, id, Status.Ok, objectId);
          return;
        }
        case Op.Call: {
          const [objectId, method, args] = body as [number, string, unknown[]];
          const obj = this.#objects.get(objectId);
          if (!obj) throw stateError(`the manager holds no object with id ${objectId}`, 'ERR_MP_NO_OBJECT');
          const result = obj.call(method, Array.isArray(args) ? args : [], { server: this, client, reqId: id });
          if (result !== PARKED) this.reply(client, id, Status.Ok, result);
          return;
        }
        case Op.Cancel:
          client.waits.get(body[0] as number)?.settle(Status.Aborted, undefined);
          return;
        case Op.Shutdown:
          if (!this.#options.allowShutdown) {
            throw stateError('this manager is served with Manager.serve(): only its srv.close() stops it', 'ERR_MP_NOT_ALLOWED');
          }
          this.reply(client, id, Status.Ok, null);
          void this.close();
          return;
        default:
          throw new TypeError(`manager protocol error: unknown operation ${op}`);
      }
    } catch (err) {
      this.reply(client, id, Status.Error, err);
    }
  }

  /** Stops serving: every client's connection is ended (their pending calls
   *  fail with ERR_MP_CLOSED on their side) and the objects are dropped. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      // Replies already queued are written first (Connection.close()); a
      // client still in the handshake is cut off.
      for (const c of [...this.#clients]) {
        if (c.conn) c.conn.close();
        else c.socket.destroy();
      }
      for (const c of [...this.#clients]) this.#gone(c);
      for (const obj of this.#objects.values()) obj.close();
      this.#objects.clear();
      this.#stopped();
    })();
    return this.#closing;
  }
}

function listen(server: net.Server, where: string | { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const done = () => {
      server.off('error', reject);
      resolve();
    };
    if (typeof where === 'string') server.listen(where, done);
    else server.listen(where.port, where.host, done);
  });
}

/** A manager served over TCP from the calling process (Manager.serve()). */
export async function serveTcp(host: string, port: number, authkey: Buffer): Promise<{ core: ManagerCore; server: net.Server }> {
  const core = new ManagerCore(authkey, { allowShutdown: false });
  const server = net.createServer((socket) => core.accept(socket));
  await listen(server, { host, port });
  return { core, server };
}

/**
 * The manager server process's main (Manager.start()): listens on a Unix
 * socket in the private directory `dir`, says so on `ready`, and serves until
 * a client asks it to shut down. It never outlives its owner: it is a daemon
 * child (killed by the kernel when the owner dies), and it also stops when it
 * sees its parent change, for systems without a parent-death signal.
 */
export async function managerMain(dir: string, authkey: string, ready: Connection): Promise<void> {
  const socketPath = path.join(dir, 'manager.sock');
  const core = new ManagerCore(Buffer.from(authkey, 'base64'), { allowShutdown: true });
  const server = net.createServer((socket) => core.accept(socket));
  try {
    await listen(server, socketPath);
  } catch (err) {
    ready.send(['error', err]);
    ready.close();
    throw err;
  }
  ready.send(['ready']);
  ready.close();
  const parent = process.ppid;
  const watch = setInterval(() => {
    if (process.ppid !== parent) void core.close();
  }, 500);
  watch.unref();
  await core.stopped;
  clearInterval(watch);
  server.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
