// SharedMemory: a named POSIX shared memory segment, mapped once and exposed as
// a zero-copy Uint8Array, like Python's multiprocessing.shared_memory. Created
// with O_EXCL (a random name by default) or attached by name from any process,
// related or not. Policy lives here; native/shm.cc only makes the syscalls.
import { constants as bufferConstants } from 'node:buffer';
import { randomBytes } from 'node:crypto';

import { afterFork } from './after-fork';
import { closedError, stateError } from './errors';
import { binding } from './native';
import { track, trackFamily, untrack } from './resource-tracker';
import { reserve } from './segment';
import { registerTransferable } from './serialize';
import { invalidType, type OptionsSpec, outOfRange, validateBoolean, validateInteger, validateOptions } from './validate';

export interface SharedMemoryOptions {
  /** With or without the leading '/'. Default when creating: a random name. */
  name?: string;
  /** Create a new segment (O_CREAT | O_EXCL) instead of attaching to an existing one. */
  create?: boolean;
  /** Bytes; required (> 0) when creating, ignored when attaching (the real size is read back). */
  size?: number;
  /** Permission bits of a created segment (default 0o600, whatever the umask). */
  mode?: number;
  /**
   * Register the created segment with the resource tracker, which unlinks it
   * once the whole program tree has ended (also after a crash). Default: true
   * for a random name, false for an explicit name (such a segment persists
   * until unlink(), so unrelated programs can rely on it).
   */
  track?: boolean;
}

// POSIX leaves names implementation-defined; these are the portable rules
// glibc and macOS agree on: one leading '/', then a non-empty component with
// no further '/'. macOS limits the whole name to PSHMNAMLEN (31) bytes.
const MAX_NAME = process.platform === 'darwin' ? 31 : 255;

/** Normalises a user-supplied name to '/name'; TypeError/RangeError when unusable. */
export function normalizeShmName(value: unknown, argName = 'options.name'): string {
  if (typeof value !== 'string') throw invalidType(argName, 'a string', value);
  const body = value.startsWith('/') ? value.slice(1) : value;
  if (body.length === 0) throw outOfRange(argName, 'a non-empty name', value);
  if (body.includes('/')) throw outOfRange(argName, "a name without '/' (other than a leading one)", value);
  if (body.includes('\0')) throw outOfRange(argName, 'a name without NUL characters', value);
  if (body === '.' || body === '..') throw outOfRange(argName, "a name other than '.' or '..'", value);
  const bytes = Buffer.byteLength(body) + 1;
  if (bytes > MAX_NAME) throw outOfRange(argName, `at most ${MAX_NAME - 1} bytes long`, value);
  return `/${body}`;
}

/**
 * An ArrayBuffer cannot be longer than buffer.constants.MAX_LENGTH (4 GiB on
 * Node 20); asking N-API for a longer external one aborts the process, so the
 * size is checked before anything is mapped.
 */
export function checkMappable(size: number, what: string): void {
  if (size > bufferConstants.MAX_LENGTH) {
    throw outOfRange(what, `at most buffer.constants.MAX_LENGTH (${bufferConstants.MAX_LENGTH}) bytes to be mapped in Node`, size);
  }
}

// Random bytes are drawn in bulk: one randomBytes call costs more than the
// shm_open it names.
let pool = Buffer.alloc(0);
let poolAt = 0;
// A forked child draws its own.
afterFork(() => (poolAt = pool.length));

function randomHex(): string {
  if (poolAt + 6 > pool.length) {
    pool = randomBytes(6 * 256);
    poolAt = 0;
  }
  poolAt += 6;
  return pool.toString('hex', poolAt - 6, poolAt);
}

function randomName(): string {
  // The creator's pid says where a leftover came from; 48 random bits make an
  // O_EXCL collision a non-event; at most 26 bytes fit macOS's 31-byte limit.
  return `/pmp_${process.pid}_${randomHex()}`;
}

// Tracked random names on Linux belong to this process's family,
// /pmp_<pid>_<family token>_<hex>, registered with the tracker once (see
// trackFamily). The token keeps the family apart from names of an earlier
// process with the same pid, from untracked random names, and from names
// chosen by hand.
const canTrackFamily = process.platform === 'linux';
let family: string | undefined;

/** Whether this process's family is registered (registering it if need be). */
function joinFamily(): boolean {
  if (family !== undefined) return true;
  if (!canTrackFamily) return false;
  const prefix = `/pmp_${process.pid}_${randomBytes(4).toString('hex')}_`;
  if (!trackFamily(prefix, 'shm')) return false;
  family = prefix;
  return true;
}

/**
 * Maps the whole segment and hands the fd over to the mapping: the addon
 * unmaps the memory and closes the fd together, exactly once, when close()
 * detaches the buffer or when a SharedMemory dropped without close() is
 * collected (native/shm.cc). (That
 * replaces a FinalizationRegistry entry per segment, which cost more than the
 * mmap.)
 */
function mapShared(fd: number, size: number): ArrayBuffer {
  return binding.mmap(fd, size, true);
}

const SHM: OptionsSpec = { call: 'new SharedMemory()', keys: ['name', 'create', 'size', 'mode', 'track'] };
const SHM_CREATE: OptionsSpec = { call: 'SharedMemory.create()', keys: ['name', 'mode', 'track'] };

export class SharedMemory {
  #name: string; // with the leading '/'
  #size: number;
  // Owned by #mapping: the unmapping closes it (see mapShared).
  #fd: number;
  #mapping: ArrayBuffer | undefined;
  #buf: Uint8Array | undefined;
  // Registered with the tracker under its own name (a name of the family
  // needs no messages at all: the tracker finds it by prefix).
  #tracked: boolean;

  constructor(options?: SharedMemoryOptions) {
    if (typeof options === 'string') {
      // Python's SharedMemory(name) habit: say what to write.
      throw invalidType('options', `an options object: write SharedMemory.open(${JSON.stringify(options)}) or new SharedMemory({ name: ${JSON.stringify(options)} })`, options);
    }
    const opts = validateOptions(options, SHM) as SharedMemoryOptions;
    const create = opts.create === undefined ? false : validateBoolean(opts.create, 'options.create');
    const size = opts.size === undefined ? 0 : validateInteger(opts.size, 'options.size', 0);
    const mode = opts.mode === undefined ? 0o600 : validateInteger(opts.mode, 'options.mode', 0, 0o777);
    if (opts.track !== undefined) validateBoolean(opts.track, 'options.track');
    const random = opts.name === undefined || opts.name === null;
    if (random && !create) throw invalidType('options.name', 'a string (a name is required unless options.create is true)', opts.name);
    let name = random ? '' : normalizeShmName(opts.name);
    if (create && size === 0) throw outOfRange('options.size', 'a positive integer when creating a segment', size);
    if (create) checkMappable(size, 'options.size');
    const tracked = create && (opts.track ?? random);
    // A tracked random name comes from the family when it can (then there is
    // nothing to tell the tracker, now or at unlink()), else stands alone.
    const inFamily = random && tracked && joinFamily();
    const draw = (): string => (inFamily ? family + randomHex() : randomName());
    if (random) name = draw();
    this.#tracked = tracked && !inFamily;

    // A random name that collides (astronomically unlikely) is simply drawn again.
    let fd: number;
    for (let attempt = 0; ; attempt++) {
      try {
        fd = binding.shmOpen(name, create, create, mode);
        break;
      } catch (err) {
        if (random && (err as { code?: string }).code === 'EEXIST' && attempt < 8) {
          name = draw();
          continue;
        }
        throw err;
      }
    }
    try {
      // Every page allocated now: a full /dev/shm is ENOSPC here, not SIGBUS
      // at the first write to a page tmpfs cannot back.
      if (create) reserve(fd, name, size);
      this.#size = create ? size : binding.fstatSize(fd);
      if (this.#size === 0) {
        throw stateError(`cannot map shared memory '${name.slice(1)}': it has size 0`, 'ERR_MP_SHM_EMPTY');
      }
      checkMappable(this.#size, create ? 'options.size' : `the size of shared memory '${name.slice(1)}'`);
      this.#mapping = mapShared(fd, this.#size);
    } catch (err) {
      binding.closeFd(fd);
      if (create) {
        try {
          binding.shmUnlink(name);
        } catch {
          // already gone
        }
      }
      throw err;
    }
    this.#name = name;
    // The fd stays open so that buf can check, with one fstat, that no peer
    // has truncated the segment (an access beyond its end would be SIGBUS).
    this.#fd = fd;
    if (this.#tracked) track(name, 'shm');
  }

  /** Creates a new segment of `size` bytes (random name unless `name` is given). */
  static create(size: number, options?: Omit<SharedMemoryOptions, 'create' | 'size'>): SharedMemory {
    validateInteger(size, 'size', 1, bufferConstants.MAX_LENGTH);
    return new SharedMemory({ ...validateOptions(options, SHM_CREATE), create: true, size });
  }

  /** Attaches to an existing segment by name. */
  static open(name: string): SharedMemory {
    if (typeof name !== 'string') throw invalidType('name', 'a string', name);
    return new SharedMemory({ name });
  }

  /** The segment's name, without the leading '/' (as Python reports it). */
  get name(): string {
    return this.#name.slice(1);
  }

  /** The segment's size in bytes: the real size, read back on attach. */
  get size(): number {
    return this.#size;
  }

  /**
   * The whole segment as a zero-copy view; the same object on every access.
   * Throws ERR_MP_SHM_TRUNCATED if another process shrank the segment below
   * the mapping, where touching the memory would raise SIGBUS.
   */
  get buf(): Uint8Array {
    this.#checkOpen();
    if (binding.fstatSize(this.#fd) < this.#size) {
      throw stateError(
        `shared memory '${this.name}' was truncated by another process below its mapped size of ${this.#size} bytes`,
        'ERR_MP_SHM_TRUNCATED',
      );
    }
    return (this.#buf ??= new Uint8Array(this.#mapping!));
  }

  /** Unmaps this process's view (every view of buf becomes length 0). The segment lives on. Idempotent. */
  close(): void {
    if (!this.#mapping) return;
    // Detaches every view, then unmaps and closes the fd at once.
    binding.unmap(this.#mapping);
    this.#mapping = undefined;
    this.#buf = undefined;
    this.#fd = -1;
  }

  /**
   * Removes the name (processes that mapped it keep their mappings). Allowed
   * after close(). A name already gone (unlinked before, here or by a peer)
   * throws ENOENT, as Python's unlink() and fs.unlinkSync() do.
   */
  unlink(): void {
    try {
      binding.shmUnlink(this.#name);
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') this.#untrack();
      throw err;
    }
    this.#untrack();
  }

  #untrack(): void {
    if (this.#tracked) {
      untrack(this.#name, 'shm');
      this.#tracked = false;
    }
  }

  get closed(): boolean {
    return this.#mapping === undefined;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #checkOpen(): void {
    if (!this.#mapping) throw closedError(`shared memory '${this.name}'`);
  }

  toString(): string {
    return `SharedMemory(${JSON.stringify(this.name)}, size=${this.#size}${this.closed ? ', closed' : ''})`;
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }

  /** @internal the name with its leading '/', for the codec. */
  static nameOf(shm: SharedMemory): string {
    if (!shm.#mapping) throw closedError(`shared memory '${shm.name}'`);
    return shm.#name;
  }
}

// Another process receives a handle attached by name to the same segment. The
// creator keeps the tracker registration: the receiver never unlinks on its own.
registerTransferable('SharedMemory', SharedMemory, {
  encode: (shm) => ({ name: SharedMemory.nameOf(shm) }),
  decode: (data: { name: string }) => new SharedMemory({ name: data.name }),
});
