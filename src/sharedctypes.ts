// Value, RawValue, SharedArray, RawArray: typed numbers and arrays in shared
// memory, as Python's multiprocessing.sharedctypes. Memory comes from the shared
// heap (heap.ts), so many small Values share one mapping; the lock, when there
// is one, is injected (an RLock by default, or any lock the caller supplies).

import { closedError, stateError } from './errors';
import { heap, type BlockRef, type Hold } from './heap';
import { binding, type Mapping } from './native';
import { type CodecContext, registerTransferable } from './serialize';
import { checkMappable } from './shared-memory';
import { invalidType, type OptionsSpec, outOfRange, validateInteger, validateOptions } from './validate';

/** Python's array/ctypes typecodes and their names. */
export type TypeCode = 'b' | 'B' | 'h' | 'H' | 'i' | 'I' | 'l' | 'L' | 'q' | 'Q' | 'f' | 'd';
export type TypeName = 'int8' | 'uint8' | 'int16' | 'uint16' | 'int32' | 'uint32' | 'int64' | 'uint64' | 'float32' | 'float64';

type AnyTypedArray =
  | Int8Array | Uint8Array | Int16Array | Uint16Array | Int32Array | Uint32Array
  | BigInt64Array | BigUint64Array | Float32Array | Float64Array;
type TypedArrayCtor = new (buffer: ArrayBuffer, byteOffset: number, length: number) => AnyTypedArray;

export interface CType {
  code: TypeCode;
  name: TypeName;
  size: number;
  Array: TypedArrayCtor;
  bigint: boolean;
}

// 'l'/'L' are C long: 8 bytes on LP64 (Linux and macOS, x64 and arm64), which is
// what CPython's ctypes.c_long is there, so they are 64-bit and bigint here too.
const TYPES: CType[] = [
  { code: 'b', name: 'int8', size: 1, Array: Int8Array, bigint: false },
  { code: 'B', name: 'uint8', size: 1, Array: Uint8Array, bigint: false },
  { code: 'h', name: 'int16', size: 2, Array: Int16Array, bigint: false },
  { code: 'H', name: 'uint16', size: 2, Array: Uint16Array, bigint: false },
  { code: 'i', name: 'int32', size: 4, Array: Int32Array, bigint: false },
  { code: 'I', name: 'uint32', size: 4, Array: Uint32Array, bigint: false },
  { code: 'l', name: 'int64', size: 8, Array: BigInt64Array, bigint: true },
  { code: 'L', name: 'uint64', size: 8, Array: BigUint64Array, bigint: true },
  { code: 'q', name: 'int64', size: 8, Array: BigInt64Array, bigint: true },
  { code: 'Q', name: 'uint64', size: 8, Array: BigUint64Array, bigint: true },
  { code: 'f', name: 'float32', size: 4, Array: Float32Array, bigint: false },
  { code: 'd', name: 'float64', size: 8, Array: Float64Array, bigint: false },
];
const BY_KEY = new Map<string, CType>();
for (const t of TYPES) {
  BY_KEY.set(t.code, t);
  if (!BY_KEY.has(t.name)) BY_KEY.set(t.name, t);
}

export function ctypeOf(type: unknown): CType {
  if (typeof type !== 'string') throw invalidType('type', 'a typecode string or type name', type);
  const t = BY_KEY.get(type);
  if (!t) {
    throw outOfRange('type', `one of ${TYPES.map((x) => `'${x.code}'`).join(' ')} or a name such as 'int32' or 'float64'`, type);
  }
  return t;
}

/** Converts a JS value to what a typed array of this type stores; TypeError otherwise. */
export function coerce(t: CType, value: unknown, argName: string): number | bigint {
  if (t.bigint) {
    if (typeof value === 'bigint') return value;
    if (typeof value === 'number' && Number.isSafeInteger(value)) return BigInt(value);
    throw invalidType(argName, `a bigint (or a safe integer) for type '${t.code}'`, value);
  }
  if (typeof value === 'number') {
    // Like ctypes: a fraction is refused, not truncated; an integer out of
    // the type's range wraps, as c_int(2**40) does.
    if (Number.isInteger(value) || t.Array === Float32Array || t.Array === Float64Array) return value;
    throw invalidType(argName, `an integer for type '${t.code}'`, value);
  }
  if (typeof value === 'boolean') return value ? 1 : 0;
  throw invalidType(argName, `a number for type '${t.code}'`, value);
}

/** The lock interface Value and SharedArray accept: Lock, RLock, or anything shaped like them. */
export interface LockLike {
  acquire(options?: object): Promise<boolean>;
  acquireSync(options?: object): boolean;
  release(): void;
  withLock<T>(fn: () => T | Promise<T>): Promise<T>;
}

function isLockLike(v: unknown): v is LockLike {
  if (v === null || typeof v !== 'object') return false;
  const o = v as Record<string, unknown>;
  return typeof o.acquire === 'function' && typeof o.acquireSync === 'function' && typeof o.release === 'function' && typeof o.withLock === 'function';
}

// Python's Value('i', 0, lock=False): the keyword is an option here, and
// Value('i', 0, false) says so.
const lockSpec = (call: string): OptionsSpec => ({ call, keys: ['lock'], boolean: 'lock' });
const VALUE_OPTIONS = lockSpec('new Value()');
const ARRAY_OPTIONS = lockSpec('new SharedArray()');

function lockOption(options: unknown, spec: OptionsSpec): LockLike | boolean {
  const opts = validateOptions(options, spec);
  const lock = opts.lock;
  if (lock === undefined || lock === true) return true;
  if (lock === false) return false;
  if (!isLockLike(lock)) throw invalidType('options.lock', 'a boolean or a lock (with acquire, acquireSync, release, withLock)', lock);
  return lock;
}

// The default lock is an RLock (synchronize.ts), loaded on first use so that
// raw objects and user-supplied locks need nothing from that module.
function defaultLock(): LockLike {
  let mod: { RLock?: new () => LockLike };
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    mod = require('./synchronize');
  } catch (err) {
    throw stateError(
      'the default lock of Value/SharedArray is an RLock, which this build does not provide; ' +
        'pass { lock: false } or your own lock',
      'ERR_MP_UNSUPPORTED',
    );
  }
  if (typeof mod.RLock !== 'function') throw stateError('synchronize.RLock is missing', 'ERR_MP_UNSUPPORTED');
  return new mod.RLock();
}

// Every handle holds one reference to its block (heap.ts), given back by
// close() or, failing that, when the handle (and every view of it) is
// collected; each message that carries the object holds one more until it is
// received. The block is reused only when no process refers to it any more.

const kRevive = Symbol('revive');

interface Revived {
  [kRevive]: true;
  type: TypeCode;
  ref: BlockRef;
  length: number;
  lock: LockLike | null;
}

function isRevived(v: unknown): v is Revived {
  return v !== null && typeof v === 'object' && (v as Revived)[kRevive] === true;
}

let holdOfScalar: (v: object) => Hold | undefined;
let holdOfVector: (v: object) => Hold | undefined;

/** @internal (tests) where a Value's or an array's block is, or undefined for anything else. */
export function blockOf(obj: object): BlockRef | undefined {
  const hold = holdOfScalar(obj) ?? holdOfVector(obj);
  return hold && { segment: hold.segment, offset: hold.offset, size: hold.size };
}

// ---- single values ---------------------------------------------------------

abstract class SharedScalar<T extends number | bigint> {
  readonly #ctype: CType;
  readonly #hold: Hold;
  #view: AnyTypedArray | undefined;

  static {
    holdOfScalar = (v) => (#hold in v ? v.#hold : undefined);
  }

  protected constructor(type: unknown, initial: unknown, revived: Revived | undefined) {
    if (revived) {
      this.#ctype = ctypeOf(revived.type);
      if (revived.ref?.size !== this.#ctype.size) throw invalidType('handle', `a ${this.#ctype.name} block`, revived.ref);
      const block = heap().adopt(revived.ref, this);
      this.#hold = block.hold;
      this.#view = new this.#ctype.Array(block.buffer, block.offset, 1);
      return;
    }
    this.#ctype = ctypeOf(type);
    const v = coerce(this.#ctype, initial ?? 0, 'initial');
    const block = heap().allocate(this.#ctype.size, this.#ctype.size, this);
    this.#hold = block.hold;
    this.#view = new this.#ctype.Array(block.buffer, block.offset, 1);
    this.#view[0] = v as never;
  }

  /** The typecode ('i', 'd', ...). */
  get typecode(): TypeCode {
    return this.#ctype.code;
  }

  // Aligned loads and stores of up to 8 bytes are single instructions on every
  // supported CPU, so a reader never sees a torn value; read-modify-write
  // (value += 1) needs the lock.
  get value(): T {
    if (!this.#view) throw closedError(`${this.constructor.name}('${this.#ctype.code}')`);
    return this.#view[0] as T;
  }

  set value(v: T) {
    if (!this.#view) throw closedError(`${this.constructor.name}('${this.#ctype.code}')`);
    this.#view[0] = coerce(this.#ctype, v, 'value') as never;
  }

  /** Ends this handle: further use throws ERR_MP_CLOSED. Other processes' handles are unaffected. */
  close(): void {
    if (!this.#view) return;
    this.#view = undefined;
    heap().release(this.#hold);
  }

  get closed(): boolean {
    return this.#view === undefined;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** @internal what travels to another process, with the reference the message holds. */
  protected encodeBase(ctx: CodecContext): { type: TypeCode; ref: BlockRef } {
    if (!this.#view) throw closedError(`${this.constructor.name}('${this.#ctype.code}')`);
    return { type: this.#ctype.code, ref: heap().share(this.#hold, ctx) };
  }

  toString(): string {
    return `${this.constructor.name}('${this.#ctype.code}', ${this.#view ? String(this.#view[0]) : 'closed'})`;
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }
}

/** A number (bigint for 64-bit types) in shared memory, with a lock for read-modify-write. */
export class Value<T extends number | bigint = number> extends SharedScalar<T> {
  #lock: LockLike | boolean;

  constructor(type: TypeCode | TypeName, initial: NoInfer<T> | number | bigint = 0, options?: { lock?: boolean | LockLike }) {
    const revived = isRevived(type) ? type : undefined;
    super(revived ? undefined : type, initial, revived);
    this.#lock = revived ? revived.lock ?? false : lockOption(options, VALUE_OPTIONS);
  }

  /** The lock guarding this value: an RLock unless another lock was given. */
  getLock(): LockLike {
    if (this.closed) throw closedError(`Value('${this.typecode}')`);
    if (this.#lock === false) {
      throw stateError('this Value was created with { lock: false } and has no lock', 'ERR_MP_NO_LOCK');
    }
    if (this.#lock === true) this.#lock = defaultLock();
    return this.#lock;
  }

  /** @internal */
  static encode(v: Value<any>, ctx: CodecContext): unknown {
    const base = v.encodeBase(ctx);
    // The lock must exist before it travels: every process has to share one.
    return { ...base, lock: v.#lock === false ? null : v.getLock() };
  }
}

/** A number in shared memory without a lock (Python's RawValue). */
export class RawValue<T extends number | bigint = number> extends SharedScalar<T> {
  constructor(type: TypeCode | TypeName, initial: NoInfer<T> | number | bigint = 0) {
    const revived = isRevived(type) ? type : undefined;
    super(revived ? undefined : type, initial, revived);
  }

  /** @internal */
  static encode(v: RawValue<any>, ctx: CodecContext): unknown {
    return v.encodeBase(ctx);
  }
}

// ---- arrays ----------------------------------------------------------------

// An array maps its heap segment once more, privately, so that close() can
// detach the typed view it handed out (a view over the heap's shared mapping
// could not be detached without detaching every other object in the segment).
function mapPrivately(ref: BlockRef): Mapping {
  const fd = binding.shmOpen(ref.segment, false, false, 0o600);
  try {
    const size = binding.fstatSize(fd);
    checkMappable(size, 'segment size');
    if (ref.offset + ref.size > size) throw outOfRange('block', `inside its segment of ${size} bytes`, `${ref.offset}+${ref.size}`);
    return new binding.Mapping(fd, size);
  } finally {
    binding.closeFd(fd);
  }
}

function initialValues(t: CType, sizeOrValues: unknown): { length: number; values: ArrayLike<number | bigint> | null } {
  if (typeof sizeOrValues === 'number') {
    return { length: validateInteger(sizeOrValues, 'sizeOrValues', 0, 2 ** 31 - 1), values: null };
  }
  if (sizeOrValues !== null && typeof sizeOrValues === 'object' && Symbol.iterator in sizeOrValues) {
    const values = Array.from(sizeOrValues as Iterable<unknown>, (v, i) => coerce(t, v, `sizeOrValues[${i}]`));
    return { length: values.length, values };
  }
  throw invalidType('sizeOrValues', 'a non-negative integer or an iterable of numbers', sizeOrValues);
}

abstract class SharedVector<A extends AnyTypedArray> {
  readonly #ctype: CType;
  readonly #hold: Hold;
  readonly #length: number;
  #mapping: Mapping | undefined;
  #array: A | undefined;

  static {
    holdOfVector = (v) => (#hold in v ? v.#hold : undefined);
  }

  protected constructor(type: unknown, sizeOrValues: unknown, revived: Revived | undefined) {
    let ref: BlockRef;
    if (revived) {
      this.#ctype = ctypeOf(revived.type);
      const length = revived.length;
      if (!Number.isInteger(length) || length < 0 || revived.ref?.size !== Math.max(1, length) * this.#ctype.size) {
        throw invalidType('handle', `an array of ${length} ${this.#ctype.name}`, revived.ref);
      }
      this.#length = length;
      this.#hold = heap().adopt(revived.ref).hold;
      ref = revived.ref;
    } else {
      this.#ctype = ctypeOf(type);
      const { length, values } = initialValues(this.#ctype, sizeOrValues);
      checkMappable(length * this.#ctype.size + 4096, 'sizeOrValues (in bytes)');
      // A zero-length array still takes one element's space: blocks are never empty.
      const block = heap().allocate(Math.max(1, length) * this.#ctype.size, this.#ctype.size);
      this.#hold = block.hold;
      ref = { segment: block.segment, offset: block.offset, size: block.size };
      this.#length = length;
      if (values) new this.#ctype.Array(block.buffer, block.offset, length).set(values as never);
    }
    try {
      this.#mapping = mapPrivately(ref);
    } catch (err) {
      heap().release(this.#hold);
      throw err;
    }
    this.#array = new this.#ctype.Array(this.#mapping.buffer, ref.offset, this.#length) as A;
    // The reference goes when this object and its view are both gone: the
    // view is registered, and this object holds it.
    heap().releaseWith(this.#array, this.#hold);
  }

  /** A typed view of the shared elements (Float64Array for 'd', BigInt64Array for 'q', ...). Detached by close(). */
  get array(): A {
    if (!this.#array) throw closedError(`${this.constructor.name}('${this.#ctype.code}')`);
    return this.#array;
  }

  get length(): number {
    return this.#length;
  }

  get typecode(): TypeCode {
    return this.#ctype.code;
  }

  /** Unmaps this handle's view (array becomes length 0); other processes are unaffected. Idempotent. */
  close(): void {
    if (!this.#mapping) return;
    this.#mapping.unmap();
    this.#mapping = undefined;
    this.#array = undefined;
    heap().release(this.#hold);
  }

  get closed(): boolean {
    return this.#mapping === undefined;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  protected encodeBase(ctx: CodecContext): { type: TypeCode; ref: BlockRef; length: number } {
    if (!this.#mapping) throw closedError(`${this.constructor.name}('${this.#ctype.code}')`);
    return { type: this.#ctype.code, ref: heap().share(this.#hold, ctx), length: this.#length };
  }

  toString(): string {
    return `${this.constructor.name}('${this.#ctype.code}', ${this.#array ? `[${Array.from(this.#array as ArrayLike<unknown>).join(', ')}]` : 'closed'})`;
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }
}

/** An array in shared memory with a lock (Python's multiprocessing.Array). */
export class SharedArray<A extends AnyTypedArray = AnyTypedArray> extends SharedVector<A> {
  #lock: LockLike | boolean;

  constructor(type: TypeCode | TypeName, sizeOrValues: number | Iterable<number | bigint>, options?: { lock?: boolean | LockLike }) {
    const revived = isRevived(type) ? type : undefined;
    super(revived ? undefined : type, sizeOrValues, revived);
    this.#lock = revived ? revived.lock ?? false : lockOption(options, ARRAY_OPTIONS);
  }

  getLock(): LockLike {
    if (this.closed) throw closedError(`SharedArray('${this.typecode}')`);
    if (this.#lock === false) {
      throw stateError('this SharedArray was created with { lock: false } and has no lock', 'ERR_MP_NO_LOCK');
    }
    if (this.#lock === true) this.#lock = defaultLock();
    return this.#lock;
  }

  /** @internal */
  static encode(a: SharedArray<any>, ctx: CodecContext): unknown {
    const base = a.encodeBase(ctx);
    return { ...base, lock: a.#lock === false ? null : a.getLock() };
  }
}

/** An array in shared memory without a lock (Python's RawArray). */
export class RawArray<A extends AnyTypedArray = AnyTypedArray> extends SharedVector<A> {
  constructor(type: TypeCode | TypeName, sizeOrValues: number | Iterable<number | bigint>) {
    const revived = isRevived(type) ? type : undefined;
    super(revived ? undefined : type, sizeOrValues, revived);
  }

  /** @internal */
  static encode(a: RawArray<any>, ctx: CodecContext): unknown {
    return a.encodeBase(ctx);
  }
}

// In another process each arrives attached to the same shared bytes (and the
// same lock, which is itself transferable).
function revivedArgs(data: any): Revived {
  return { [kRevive]: true, type: data.type, ref: data.ref, length: data.length ?? 1, lock: data.lock ?? null };
}

registerTransferable('Value', Value, {
  encode: (v, ctx) => Value.encode(v, ctx),
  decode: (data) => new Value(revivedArgs(data) as never),
});
registerTransferable('RawValue', RawValue, {
  encode: (v, ctx) => RawValue.encode(v, ctx),
  decode: (data) => new RawValue(revivedArgs(data) as never),
});
registerTransferable('SharedArray', SharedArray, {
  encode: (a, ctx) => SharedArray.encode(a, ctx),
  decode: (data) => new SharedArray(revivedArgs(data) as never, 0),
});
registerTransferable('RawArray', RawArray, {
  encode: (a, ctx) => RawArray.encode(a, ctx),
  decode: (data) => new RawArray(revivedArgs(data) as never, 0),
});
