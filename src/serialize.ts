// The codec for everything that crosses a process boundary: Process arguments,
// pipe and queue messages, pool tasks and results.
//
// Semantics are structured clone (Map, Set, Date, RegExp, BigInt, typed arrays,
// cycles, arrays with extra own properties), plus two things structured clone
// lacks: Errors keep name (custom subclasses too), message, stack, cause and own
// properties; and classes that hold OS objects (Lock, SharedMemory, Connection,
// ...) register how they travel, so they arrive as a handle to the same object.
//
// Cost: v8.serialize costs 6-11 µs per small message, JSON 0.7 µs. Most messages
// are plain JSON data, so a quick walk decides: JSON when it round-trips exactly,
// v8's serializer (after a walk that rewrites registered classes and Errors into
// tagged plain objects) otherwise. The first byte says which.
import type * as V8 from 'node:v8';

import * as errors from './errors';
import { withdrawOffers } from './fd-share';

// node:v8 costs a few ms to load (it pulls in streams); a child whose
// arguments are plain JSON never needs it, so it loads on first use.
let v8Module: typeof V8 | undefined;
const v8 = (): typeof V8 => (v8Module ??= require('node:v8') as typeof V8);

/** Context for transferables that carry fds (a Connection): the encoder lists
 *  the fds to pass alongside the bytes; the decoder receives them in order. */
export interface CodecContext {
  fds: number[];
  /** false: the channel cannot pass fds (a queue, the pool's channel, a one-way
   *  pipe), so they travel through this process's fd sharer (fd-share.ts). */
  carriesFds?: boolean;
  /** Keys of the fds offered to the sharer while encoding, so that a transport
   *  can withdraw them when the message is never delivered. */
  offers?: number[];
  /** What encoding took on the message's behalf (a reference to a shared
   *  block, ...), to give back if the message is never delivered: abandon()
   *  runs each once. A transferable's encode may add its own. */
  onAbandon?: Array<() => void>;
  /** How an error names where a part that cannot be cloned sits: a prefix
   *  for the path from the root (default ''; Process encodes { args }, so its
   *  errors say "args[0]"), or a function that rewrites the path (the pool's
   *  tuples). */
  root?: string | ((path: string) => string);
}

/**
 * The encoded message will never be delivered (a full queue, a closed
 * connection, a child that did not start): withdraws its fd offers and gives
 * back what its transferables took. Idempotent. encode() does it itself when
 * it throws.
 */
export function abandon(ctx: CodecContext | undefined): void {
  if (!ctx) return;
  const { offers, onAbandon } = ctx;
  ctx.offers = undefined;
  ctx.onAbandon = undefined;
  if (offers && offers.length > 0) {
    // Loaded here only: encoding plain data never needs the fd sharer.
    (require('./fd-share') as typeof import('./fd-share')).withdrawOffers(offers);
  }
  if (onAbandon) for (const undo of onAbandon) undo();
}

export interface Transferable<T> {
  /** Turn the object into plain, cloneable data (it may itself contain transferables). */
  encode(obj: T, ctx: CodecContext): unknown;
  /** Revive the object from that data. */
  decode(data: any, ctx: CodecContext): T;
}

interface Registration {
  tag: string;
  Class: abstract new (...args: any[]) => unknown;
  codec: Transferable<any>;
}

const kRegistry = Symbol.for('posix-multiprocessing.codec-registry');
const registry: { byTag: Map<string, Registration>; list: Registration[] } = ((globalThis as any)[kRegistry] ??= {
  byTag: new Map(),
  list: [],
});

/** Registers how instances of Class travel between processes. */
export function registerTransferable<T>(
  tag: string,
  Class: abstract new (...args: any[]) => T,
  codec: Transferable<T>,
): void {
  // Two copies of a module (a test runner's transform beside Node's own load,
  // or two installs) register two classes under one tag: instances of either
  // must travel, so both stay in the list; the latest decodes.
  const reg = { tag, Class, codec };
  const same = registry.list.findIndex((r) => r.Class === Class);
  if (same >= 0) registry.list.splice(same, 1, reg);
  else registry.list.push(reg);
  registry.byTag.set(tag, reg);
}

function registrationOf(value: object): Registration | undefined {
  for (const reg of registry.list) if (value instanceof reg.Class) return reg;
  return undefined;
}

const JSON_TAG = 0x4a; // 'J'
const V8_TAG = 0x56; // 'V'
const MARK = '\u0000pmp';

// ---- fast path: is the value plain JSON data that JSON round-trips exactly? ----

// envelope: arrays nearer the top than this depth are the caller's own framing
// (the pool's message tuples), known to hold nothing but their elements.
function isJsonSafe(value: unknown, depth: number, envelope: number): boolean {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return true;
    case 'number':
      return Number.isFinite(value) && !Object.is(value, -0);
    case 'object': {
      if (value === null) return true;
      if (depth > 32) return false; // deep or cyclic: the v8 path handles it
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
          if (!(i in value) || !isJsonSafe(value[i], depth + 1, envelope)) return false;
        }
        return depth < envelope || !hasExtraKeys(value);
      }
      if (Object.getPrototypeOf(value) !== Object.prototype) return false;
      for (const key in value) {
        if (key === MARK) return false;
        if (!isJsonSafe((value as Record<string, unknown>)[key], depth + 1, envelope)) return false;
      }
      return true;
    }
    default:
      return false;
  }
}

/** Whether a dense array (every index present: callers check the elements
 *  first) has own enumerable properties besides its elements ([1, 2, extra:
 *  'x'], a RegExp match's index/input/groups): structured clone keeps them,
 *  JSON drops them. Object.values counts them with the elements; it is the
 *  cheapest way JS shows them (about 25 ns an element for large arrays, where
 *  Object.keys, which makes a string of every index, takes about 135). */
export function hasExtraKeys(a: readonly unknown[]): boolean {
  return Object.values(a).length !== a.length;
}

// ---- general path ----------------------------------------------------------

function cloneError(message: string): Error {
  const e = new TypeError(message) as TypeError & { code: string };
  e.code = 'ERR_MP_DATA_CLONE';
  return e;
}

const passThrough = (v: object): boolean =>
  v instanceof Date ||
  v instanceof RegExp ||
  ArrayBuffer.isView(v) ||
  v instanceof ArrayBuffer ||
  // boxed primitives: structured clone keeps them
  v instanceof Boolean ||
  v instanceof Number ||
  v instanceof String ||
  (typeof BigInt !== 'undefined' && Object.prototype.toString.call(v) === '[object BigInt]');

// What structured clone refuses (v8.serialize throws DataCloneError for these);
// copying their (absent) own properties would silently turn them into {}.
function uncloneable(v: object): string | undefined {
  if (v instanceof WeakMap) return 'WeakMap';
  if (v instanceof WeakSet) return 'WeakSet';
  if (typeof WeakRef !== 'undefined' && v instanceof WeakRef) return 'WeakRef';
  if (v instanceof Promise) return 'Promise';
  if (typeof SharedArrayBuffer !== 'undefined' && v instanceof SharedArrayBuffer) {
    return 'SharedArrayBuffer (it cannot be shared between processes; use SharedMemory)';
  }
  return undefined;
}

function isError(v: object): v is Error {
  return v instanceof Error || Object.prototype.toString.call(v) === '[object Error]';
}

// Rewrites a value into something v8's serializer keeps exactly, preserving
// shared references and cycles through `seen`.
function prepare(value: unknown, ctx: CodecContext, seen: Map<object, unknown>): unknown {
  if (typeof value === 'function') {
    throw cloneError(`${value.name || 'anonymous function'} could not be cloned: functions travel by reference as Process targets, not as values`);
  }
  if (typeof value === 'symbol') throw cloneError(`${String(value)} could not be cloned`);
  if (value === null || typeof value !== 'object') return value;
  const hit = seen.get(value);
  if (hit !== undefined) return hit;
  if (passThrough(value)) {
    seen.set(value, value);
    return value;
  }
  const refused = uncloneable(value);
  if (refused) throw cloneError(`a ${refused} could not be cloned`);
  const reg = registrationOf(value);
  if (reg) {
    const out: Record<string, unknown> = { [MARK]: reg.tag };
    seen.set(value, out);
    out.d = prepare(reg.codec.encode(value, ctx), ctx, seen);
    return out;
  }
  if (isError(value)) return prepareError(value, ctx, seen);
  if (Array.isArray(value)) {
    // Extra own properties go beside the elements, in a tagged envelope (set
    // up front, so that a cycle through the array meets the envelope too).
    const out: unknown[] = new Array(value.length);
    const extra = extraKeys(value);
    let envelope: Record<string, unknown> | undefined;
    if (extra) {
      envelope = { [MARK]: 'Array', d: out, p: {} };
      seen.set(value, envelope);
    } else {
      seen.set(value, out);
    }
    for (let i = 0; i < value.length; i++) if (i in value) out[i] = prepareAt(value, i, value[i], ctx, seen);
    if (!envelope) return out;
    const props = envelope.p as Record<string, unknown>;
    for (const key of extra!) defineOwn(props, key, prepareAt(value, key, (value as unknown as Record<string, unknown>)[key], ctx, seen));
    return envelope;
  }
  if (value instanceof Map) {
    const out = new Map();
    seen.set(value, out);
    for (const [k, v] of value) out.set(prepareAt(value, MAP_KEY, k, ctx, seen), prepareAt(value, MAP_VALUE, v, ctx, seen));
    return out;
  }
  if (value instanceof Set) {
    const out = new Set();
    seen.set(value, out);
    for (const v of value) out.add(prepareAt(value, SET_ITEM, v, ctx, seen));
    return out;
  }
  // A plain object, or an instance of some other class: structured clone keeps
  // its own enumerable properties and drops the prototype.
  const body: Record<string, unknown> = {};
  let out: Record<string, unknown> = body;
  if (Object.prototype.hasOwnProperty.call(value, MARK)) out = { [MARK]: 'Object', d: body };
  seen.set(value, out);
  for (const key of Object.keys(value)) {
    defineOwn(body, key, prepareAt(value, key, (value as Record<string, unknown>)[key], ctx, seen));
  }
  return out;
}

// Where a part that cannot be cloned sits, so the error can say which
// argument it is and what: the path is collected as the error unwinds, with
// the outermost class instance on it (a Socket in args[0] fails on one of its
// callbacks, deep inside; "args[0] (a Socket)" is what the user needs).
const MAP_KEY = Symbol('map key');
const MAP_VALUE = Symbol('map value');
const SET_ITEM = Symbol('set item');

interface Located {
  code?: unknown;
  pmpPath?: string;
  pmpHolder?: { name: string; tail: number };
}

function prepareAt(holder: object, key: string | number | symbol, value: unknown, ctx: CodecContext, seen: Map<object, unknown>): unknown {
  try {
    return prepare(value, ctx, seen);
  } catch (err) {
    const e = err as Located | null;
    if (e !== null && typeof e === 'object' && e.code === 'ERR_MP_DATA_CLONE') {
      const step =
        typeof key === 'number'
          ? `[${key}]`
          : key === MAP_KEY
            ? '.<a Map key>'
            : key === MAP_VALUE
              ? '.<a Map value>'
              : key === SET_ITEM
                ? '.<a Set item>'
                : /^[A-Za-z_$][\w$]*$/.test(key as string)
                  ? `.${key as string}`
                  : `[${JSON.stringify(key)}]`;
      e.pmpPath = step + (e.pmpPath ?? '');
      const proto = Object.getPrototypeOf(holder);
      if (proto !== null && proto !== Object.prototype && !Array.isArray(holder) && !(holder instanceof Map) && !(holder instanceof Set)) {
        e.pmpHolder = { name: (holder as { constructor?: { name?: string } }).constructor?.name || 'object', tail: e.pmpPath.length };
      }
    }
    throw err;
  }
}

/** Rewrites a clone error with the path prepareAt collected, from `root`. */
function locate(err: unknown, root: CodecContext['root']): void {
  const e = err as (Located & Error) | null;
  if (e === null || typeof e !== 'object' || e.pmpPath === undefined) return;
  const name = (path: string): string => (typeof root === 'function' ? root(path) : (root ?? '') + path).replace(/^\./, '');
  const at = name(e.pmpPath);
  if (e.pmpHolder) {
    const where = name(e.pmpPath.slice(0, e.pmpPath.length - e.pmpHolder.tail)) || 'the value';
    e.message = `${where} (an instance of ${e.pmpHolder.name}) cannot be sent to another process: ${e.message} (at ${at})`;
  } else {
    e.message = `${at || 'the value'}: ${e.message}`;
  }
  delete e.pmpPath;
  delete e.pmpHolder;
}

// Assignment of an own '__proto__' key would set the copy's prototype instead
// of copying the property; structured clone keeps it as a data property.
function defineOwn(target: Record<string, unknown>, key: string, v: unknown): void {
  if (key === '__proto__') Object.defineProperty(target, key, { value: v, writable: true, enumerable: true, configurable: true });
  else target[key] = v;
}

// The own enumerable keys of an array that are not indices, or undefined.
// An array without any is told apart cheaply (see hasExtraKeys); otherwise
// Object.keys lists indices first, then the other keys: only the tail is read.
function extraKeys(a: unknown[]): string[] | undefined {
  const values = Object.values(a).length;
  if (values === a.length) return undefined;
  // Holes: as many values as elements present means no extra keys either.
  let present = 0;
  for (let i = 0; i < a.length; i++) if (i in a) present++;
  if (values === present) return undefined;
  const keys = Object.keys(a);
  let j = keys.length;
  while (j > 0 && !isIndexKey(keys[j - 1])) j--;
  return j < keys.length ? keys.slice(j) : undefined;
}

function isIndexKey(key: string): boolean {
  const n = Number(key);
  return n >>> 0 === n && n !== 0xffffffff && String(n) === key;
}

// ---- Errors ------------------------------------------------------------------
//
// An Error travels as its parts and is rebuilt as a real Error of its nearest
// built-in class (util.types.isNativeError is true, so structuredClone and
// v8.serialize keep it an Error on the other side); a subclass keeps its name,
// not its class — except this package's own error classes (errors.ts), which
// every process has, so a QueueEmptyError or a WorkerCrashedError that
// travels is still one (instanceof holds) on the other side. An Error is most often a failure being reported, so a part
// that cannot travel (a callback, a socket, a getter that throws) is left out
// instead of failing the whole report, and the copy's `droppedProperties`
// says which and why.

const errorConstructors = new Map<string, ErrorConstructor>([
  ['Error', Error],
  ['TypeError', TypeError],
  ['RangeError', RangeError],
  ['SyntaxError', SyntaxError],
  ['ReferenceError', ReferenceError],
  ['EvalError', EvalError],
  ['URIError', URIError],
  ['AggregateError', AggregateError as unknown as ErrorConstructor],
  ...[
    errors.BrokenBarrierError,
    errors.QueueEmptyError,
    errors.QueueFullError,
    errors.EOFError,
    errors.WorkerCrashedError,
    errors.OwnerDiedError,
    errors.TimeoutError,
    errors.AuthenticationError,
  ].map((C) => [C.name, C as unknown as ErrorConstructor] as const),
]);

function builtinErrorClass(err: object): string {
  for (let p = Object.getPrototypeOf(err); p !== null; p = Object.getPrototypeOf(p)) {
    const ctor = Object.prototype.hasOwnProperty.call(p, 'constructor') ? p.constructor : undefined;
    if (typeof ctor === 'function' && errorConstructors.get(ctor.name) === ctor) return ctor.name;
  }
  return 'Error';
}

const DROPPED = Symbol('dropped');

function prepareError(err: Error, ctx: CodecContext, seen: Map<object, unknown>): Record<string, unknown> {
  const ctor = builtinErrorClass(err);
  const out: Record<string, unknown> = { [MARK]: 'Error', ctor };
  seen.set(err, out);
  const source = err as unknown as Record<string, unknown>;
  const dropped: Record<string, string> = {};
  const part = (key: string): unknown => preparePart(source, key, ctx, seen, dropped);
  const set = (key: string, v: unknown) => {
    if (v !== DROPPED) out[key] = v;
  };
  set('name', part('name'));
  set('message', part('message'));
  set('stack', part('stack'));
  if ('cause' in err) set('cause', part('cause'));
  // AggregateError keeps its errors in an own, non-enumerable property.
  if (ctor === 'AggregateError') set('errors', part('errors'));
  const props: Record<string, unknown> = {};
  for (const key of Object.keys(err)) {
    const v = part(key);
    if (v !== DROPPED) defineOwn(props, key, v);
  }
  out.props = props;
  if (Object.keys(dropped).length > 0) out.dropped = dropped;
  return out;
}

// One part of an Error, or DROPPED (noted in `dropped`) when it cannot travel.
// What the failed attempt registered is undone: entries in `seen` (they may
// stand for half-built copies), fds listed for the channel, offers made to
// the fd sharer, which nobody would ever claim, and references taken for the
// message (ctx.onAbandon).
function preparePart(
  source: Record<string, unknown>,
  key: string,
  ctx: CodecContext,
  seen: Map<object, unknown>,
  dropped: Record<string, string>,
): unknown {
  const seenMark = seen.size;
  const fdMark = ctx.fds.length;
  const offerMark = ctx.offers?.length ?? 0;
  const abandonMark = ctx.onAbandon?.length ?? 0;
  try {
    return prepare(source[key], ctx, seen);
  } catch (reason) {
    // What transferables inside the part took (a reference to a shared
    // block, ...) is given back now: the part is never sent.
    if (ctx.onAbandon && ctx.onAbandon.length > abandonMark) {
      for (const undo of ctx.onAbandon.splice(abandonMark)) undo();
    }
    if (seen.size > seenMark) {
      const added: object[] = [];
      let i = 0;
      for (const k of seen.keys()) if (i++ >= seenMark) added.push(k);
      for (const k of added) seen.delete(k);
    }
    ctx.fds.length = fdMark;
    if (ctx.offers && ctx.offers.length > offerMark) withdrawOffers(ctx.offers.splice(offerMark));
    dropped[key] = describeFailure(reason);
    return DROPPED;
  }
}

function describeFailure(reason: unknown): string {
  try {
    // The codec's own refusal says why; anything else was thrown by a getter
    // or a transferable's encode().
    if ((reason as { code?: unknown } | null)?.code === 'ERR_MP_DATA_CLONE') return (reason as Error).message;
    return `reading or encoding it threw ${String(reason)}`;
  } catch {
    return 'it could not be cloned';
  }
}

function reviveError(data: Record<string, any>, ctx: CodecContext, seen: Map<object, unknown>): Error {
  const Ctor = errorConstructors.get(data.ctor) ?? Error;
  const err: Error = data.ctor === 'AggregateError' ? new AggregateError([]) : new Ctor();
  seen.set(data, err);
  const has = (key: string) => Object.prototype.hasOwnProperty.call(data, key);
  const define = (key: string, value: unknown, enumerable: boolean) =>
    Object.defineProperty(err, key, { value, writable: true, configurable: true, enumerable });
  // message, stack, cause and errors are own, non-enumerable properties of a
  // native Error; a name that differs from the class's goes the same way.
  if (has('message')) define('message', revive(data.message, ctx, seen), false);
  if (has('stack')) define('stack', revive(data.stack, ctx, seen), false);
  else delete err.stack; // the one captured here would describe this process
  if (has('name') && data.name !== err.name) define('name', revive(data.name, ctx, seen), false);
  if (has('cause')) define('cause', revive(data.cause, ctx, seen), false);
  if (has('errors')) define('errors', revive(data.errors, ctx, seen), false);
  const props = (data.props ?? {}) as Record<string, unknown>;
  for (const key of Object.keys(props)) define(key, revive(props[key], ctx, seen), true);
  if (has('dropped')) define('droppedProperties', data.dropped, true);
  return err;
}

// Undoes prepare(): tagged objects become their classes again; everything else
// is revived in place so that shared references and cycles stay intact.
function revive(value: unknown, ctx: CodecContext, seen: Map<object, unknown>): unknown {
  if (value === null || typeof value !== 'object') return value;
  const hit = seen.get(value);
  if (hit !== undefined) return hit;
  if (passThrough(value)) return value;
  if (Array.isArray(value)) {
    seen.set(value, value);
    for (let i = 0; i < value.length; i++) if (i in value) value[i] = revive(value[i], ctx, seen);
    return value;
  }
  if (value instanceof Map) {
    seen.set(value, value);
    const entries = [...value];
    value.clear();
    for (const [k, v] of entries) value.set(revive(k, ctx, seen), revive(v, ctx, seen));
    return value;
  }
  if (value instanceof Set) {
    seen.set(value, value);
    const items = [...value];
    value.clear();
    for (const v of items) value.add(revive(v, ctx, seen));
    return value;
  }
  const obj = value as Record<string, any>;
  const tag = obj[MARK];
  if (tag === undefined) {
    seen.set(obj, obj);
    for (const key of Object.keys(obj)) obj[key] = revive(obj[key], ctx, seen);
    return obj;
  }
  if (tag === 'Error') return reviveError(obj, ctx, seen);
  if (tag === 'Array') {
    const arr = obj.d as unknown[];
    seen.set(obj, arr);
    revive(arr, ctx, seen);
    // Defined, not assigned: a setter on Array.prototype must not see them.
    for (const key of Object.keys(obj.p)) {
      Object.defineProperty(arr, key, { value: revive(obj.p[key], ctx, seen), writable: true, enumerable: true, configurable: true });
    }
    return arr;
  }
  if (tag === 'Object') {
    seen.set(obj, obj.d);
    return revive(obj.d, ctx, seen);
  }
  const reg = registry.byTag.get(tag);
  if (!reg) throw cloneError(`cannot revive a ${tag}: its class is not registered in this process`);
  const result = reg.codec.decode(revive(obj.d, ctx, new Map()), ctx);
  seen.set(obj, result);
  return result;
}

/** The JSON text of a value when JSON round-trips it exactly, else null.
 *  (JSON text never contains a raw newline, so it can be newline-framed.)
 *  envelope: how many levels of arrays from the top are the caller's own
 *  framing, not checked for extra properties (each check costs O(length)). */
export function encodeJson(value: unknown, envelope = 0): string | null {
  return isJsonSafe(value, 0, envelope) ? JSON.stringify(value) : null;
}

/** Encodes a value; transferables that carry fds append them to ctx.fds. */
export function encode(value: unknown, ctx: CodecContext = { fds: [] }): Buffer {
  if (isJsonSafe(value, 0, 0)) {
    const json = JSON.stringify(value);
    const out = Buffer.allocUnsafe(1 + Buffer.byteLength(json));
    out[0] = JSON_TAG;
    out.write(json, 1);
    return out;
  }
  if (value === undefined) return Buffer.from([V8_TAG]);
  let body: Buffer;
  try {
    body = v8().serialize(prepare(value, ctx, new Map()));
  } catch (err) {
    abandon(ctx);
    locate(err, ctx.root);
    throw err;
  }
  const out = Buffer.allocUnsafe(1 + body.length);
  out[0] = V8_TAG;
  body.copy(out, 1);
  return out;
}

/** True when encode() took the JSON path: decoding needs no registered classes. */
export function isPlainJson(bytes: Uint8Array): boolean {
  return bytes.length > 0 && bytes[0] === JSON_TAG;
}

/** Decodes what encode() produced; ctx.fds are the fds that came with it. */
export function decode(bytes: Uint8Array, ctx: CodecContext = { fds: [] }): unknown {
  if (bytes.length === 0) throw cloneError('cannot decode an empty message');
  const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf[0] === JSON_TAG) return JSON.parse(buf.toString('utf8', 1));
  if (buf[0] === V8_TAG) {
    if (buf.length === 1) return undefined;
    // v8's deserializer returns typed arrays as views into the bytes it reads
    // when they happen to be aligned; a transport reuses its receive buffer,
    // so the bytes must belong to this message alone.
    return revive(v8().deserialize(Buffer.from(buf.subarray(1))), ctx, new Map());
  }
  throw cloneError(`cannot decode a message with tag 0x${buf[0].toString(16)}`);
}

/** The JSON text that encode() would store after its tag byte, when the value
 *  takes the JSON fast path; undefined otherwise. Lets a transport write the
 *  text straight into its own memory (the queues' ring) without a Buffer between. */
export function encodeJsonText(value: unknown): string | undefined {
  return isJsonSafe(value, 0, 0) ? JSON.stringify(value) : undefined;
}

/** The first byte of a JSON-coded message. */
export const JSON_TAG_BYTE = JSON_TAG;
