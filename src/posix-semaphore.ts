// new Semaphore(value, { name, posix: true }): a POSIX named semaphore ("/<name>",
// sem_open), which C programs and Python's ctypes can open by the same name.
// Other semaphores keep their count in our own shared-memory words, which only
// this package understands; this one is slower (a syscall per operation) but
// speaks the system's protocol. See docs/synchronization.md.
//
// The object is an instance of Semaphore (or BoundedSemaphore) with these
// methods instead of the word-based ones: Semaphore's constructor returns it
// (see openPosixSemaphore), so the hook into synchronize.ts stays one line.

import { abortError, closedError, stateError } from './errors';
import { binding, type SemHandle } from './native';
import { registerTransferable } from './serialize';
import { asyncWaitSpinConfig, SpinPolicy } from './spin';
import { withAcquired, withAcquiredSync } from './sync/with-lock';
import { ACQUIRE, ACQUIRE_SYNC, SEMAPHORE } from './sync/options';
import { validateMode, watchFromLoop } from './sync/words';
import type { AcquireOptions, AcquireSyncOptions, NamedOptions, Semaphore } from './synchronize';
import {
  invalidType,
  outOfRange,
  validateBoolean,
  validateInteger,
  validateOptions,
  validateSignal,
  validateTimeout,
} from './validate';

export interface SemaphoreOptions extends NamedOptions {
  /**
   * Use the POSIX named semaphore "/<name>" (sem_open), which programs written
   * in other languages can open too. Requires `name`. Default false.
   */
  posix?: boolean;
}

// macOS limits semaphore names to PSEMNAMLEN = 31 bytes, the leading '/'
// included; Linux to NAME_MAX - 4 ("sem." in /dev/shm). 200 matches the
// other named objects.
const NAME_MAX = process.platform === 'darwin' ? 30 : 200;
const NAME_RE = /^[A-Za-z0-9_.-]+$/;
const HAS_GETVALUE = process.platform !== 'darwin';

/** The POSIX name "/<name>" for a user's name, validated. */
export function posixSemaphoreName(name: unknown, argName: string): string {
  if (typeof name !== 'string') throw invalidType(argName, 'a string', name);
  if (name.length < 1 || name.length > NAME_MAX || !NAME_RE.test(name)) {
    throw outOfRange(argName, `1-${NAME_MAX} characters from A-Z a-z 0-9 _ . -`, name);
  }
  return `/${name}`;
}

/** Whether options ask for a POSIX semaphore (a non-boolean `posix` is a TypeError). */
export function posixRequested(options: unknown): boolean {
  if (options === null || typeof options !== 'object') return false;
  const posix = (options as { posix?: unknown }).posix;
  return posix !== undefined && validateBoolean(posix, 'options.posix');
}

export function unlinkPosixSemaphore(name: string): void {
  binding.semUnlink(posixSemaphoreName(name, 'name'));
}

// Opens "/<name>", creating it with `value` if it does not exist. The create is
// exclusive so that exactly one opener initialises it; the others attach and
// the creator's value stands (as for every named object).
function open(path: string, value: number, mode: number): SemHandle {
  for (let attempt = 0; ; attempt++) {
    try {
      return binding.semOpen(path, true, true, mode, value);
    } catch (err) {
      if ((err as { code?: string }).code !== 'EEXIST') throw err;
    }
    try {
      return binding.semOpen(path, false, false, 0, 0);
    } catch (err) {
      // Unlinked between our two opens: try to create it again.
      if ((err as { code?: string }).code === 'ENOENT' && attempt < 5) continue;
      throw err;
    }
  }
}

function overflowError(): Error {
  return stateError('Semaphore value would overflow', 'ERR_MP_SEMAPHORE_OVERFLOW');
}

/** The POSIX-backed Semaphore; never constructed directly (see openPosixSemaphore). */

class PosixSemaphore {
  #h: SemHandle | null;
  readonly #name: string;
  // The bound for release() (BoundedSemaphore: the value given to this handle), or -1.
  readonly #bound: number;
  // Cancels each pending acquire() with an error; close() calls them.
  readonly #pending = new Set<(err: Error) => void>();
  /** How long async acquires try from the event loop before waiting on a thread (src/spin.ts). */
  readonly #loop = new SpinPolicy(undefined, asyncWaitSpinConfig);

  constructor(handle: SemHandle, name: string, bound: number) {
    this.#h = handle;
    this.#name = name;
    this.#bound = bound;
  }

  /** The name given at construction (without the leading '/'). */
  get name(): string {
    return this.#name;
  }

  get #handle(): SemHandle {
    if (this.#h === null) throw closedError(this.constructor.name);
    return this.#h;
  }

  acquireSync(options?: AcquireSyncOptions): boolean {
    const h = this.#handle;
    if (options === undefined) return binding.semTryWait(h) || binding.semTimedWait(h, -1);
    const o = validateOptions(options, ACQUIRE_SYNC);
    const blocking = o.blocking === undefined ? true : validateBoolean(o.blocking, 'options.blocking');
    const timeout = validateTimeout(o.timeout, 'options.timeout');
    if (binding.semTryWait(h)) return true;
    if (!blocking || timeout === 0) return false;
    return binding.semTimedWait(h, timeout === undefined ? -1 : Math.ceil(timeout * 1000));
  }

  async acquire(options?: AcquireOptions): Promise<boolean> {
    const h = this.#handle;
    const o = validateOptions(options, ACQUIRE);
    let timeout = validateTimeout(o.timeout, 'options.timeout');
    const signal = validateSignal(o.signal);
    if (o.blocking !== undefined && !validateBoolean(o.blocking, 'options.blocking')) timeout = 0;
    if (signal?.aborted) throw abortError(signal);
    if (binding.semTryWait(h)) return true;
    if (timeout === 0) return false;
    const start = performance.now();
    const deadline = timeout === undefined ? Infinity : start + timeout * 1000;
    // First from the event loop, as the futex-based primitives do
    // (sync/words.ts waitAsync): a wait handed to a thread costs two wake-ups
    // when it ends. sem_trywait is a user-space atomic in glibc.
    const budgetUs = this.#loop.budget();
    if (budgetUs > 0) {
      const r = await watchFromLoop(() => binding.semTryWait(h), Math.min(deadline, start + budgetUs / 1000), signal);
      if (r === 'aborted') throw abortError(signal!);
      if (r === 'ok') {
        this.#loop.record((performance.now() - start) * 1000);
        return true;
      }
      if (this.#h === null) throw closedError(this.constructor.name); // closed meanwhile
      if (performance.now() >= deadline) return false;
    }
    const ms = timeout === undefined ? -1 : Math.max(1, Math.ceil(deadline - performance.now()));
    const got = await this.#waitOnThread(h, ms, signal);
    this.#loop.record((performance.now() - start) * 1000);
    return got;
  }

  #waitOnThread(h: SemHandle, ms: number, signal: AbortSignal | undefined): Promise<boolean> {
    return new Promise<boolean>((resolve, reject) => {
      let done = false;
      // Ends the wait from this side. The native side posts back a unit its
      // thread took after this cancel, so an abandoned wait never eats one.
      const stop = (err: Error): void => {
        if (done) return;
        done = true;
        wait.cancel();
        this.#pending.delete(stop);
        signal?.removeEventListener('abort', onAbort);
        reject(err);
      };
      const onAbort = (): void => stop(abortError(signal!));
      const wait = binding.semWaitAsync(h, ms, (result, error) => {
        if (done) return;
        done = true;
        this.#pending.delete(stop);
        signal?.removeEventListener('abort', onAbort);
        if (result === 'ok') resolve(true);
        else if (result === 'timed-out') resolve(false);
        else reject(error ?? closedError(this.constructor.name));
      });
      this.#pending.add(stop);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Adds n to the value (n sem_post calls), waking up to n waiters. */
  release(n: number = 1): void {
    const h = this.#handle;
    validateInteger(n, 'n', 1, binding.semValueMax);
    if (this.#bound >= 0) this.#checkBound(h, n);
    // sem_post adds one at a time and fails with EOVERFLOW only at the limit:
    // refuse a release that cannot fit before posting any of it (as the
    // word-based Semaphore does), rather than post part and then throw.
    else if (n > 1 && HAS_GETVALUE && binding.semGetValue(h) + n > binding.semValueMax) throw overflowError();
    try {
      binding.semPost(h, n);
    } catch (err) {
      if ((err as { code?: string }).code === 'EOVERFLOW') throw overflowError();
      throw err;
    }
  }

  // Racy by nature, as CPython's: another process may post between the read
  // and our post, so two releases at the bound can both pass. It catches the
  // plain bug (releasing more than was acquired) without a lock around it.
  #checkBound(h: SemHandle, n: number): void {
    let over: boolean;
    if (HAS_GETVALUE) {
      over = binding.semGetValue(h) + n > this.#bound;
    } else if (this.#bound === 1) {
      // macOS has no sem_getvalue. Like CPython there, only a bound of 1 is
      // checked: a successful trywait means the value was already 1.
      over = binding.semTryWait(h);
      if (over) binding.semPost(h, 1);
    } else {
      over = false;
    }
    if (over) {
      throw Object.assign(new RangeError(`BoundedSemaphore released too many times (its initial value is ${this.#bound})`), {
        code: 'ERR_MP_SEMAPHORE_OVERRELEASED',
      });
    }
  }

  /** The current value (sem_getvalue). macOS: throws ERR_MP_UNSUPPORTED. */
  getValue(): number {
    const h = this.#handle;
    if (!HAS_GETVALUE) throw stateError('getValue() of a POSIX semaphore is not supported on macOS (no sem_getvalue)', 'ERR_MP_UNSUPPORTED');
    return binding.semGetValue(h);
  }

  locked(): boolean {
    const h = this.#handle;
    if (HAS_GETVALUE) return binding.semGetValue(h) === 0;
    // CPython's _is_zero() where sem_getvalue is missing: take and give back.
    if (!binding.semTryWait(h)) return true;
    binding.semPost(h, 1);
    return false;
  }

  withLock<T>(fn: () => T | Promise<T>): Promise<T> {
    return withAcquired(this, fn);
  }

  withLockSync<T>(fn: () => T): T {
    return withAcquiredSync(this, fn);
  }

  /**
   * Closes this handle (sem_close); pending acquire() calls reject with
   * ERR_MP_CLOSED. The semaphore itself lives on until unlinked.
   */
  close(): void {
    const h = this.#h;
    if (h === null) return;
    this.#h = null;
    for (const stop of [...this.#pending]) stop(closedError(this.constructor.name));
    binding.semClose(h);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Word-based objects travel as a heap reference; this one travels by name. */
  ref(): never {
    throw stateError('a POSIX semaphore has no shared-memory words; it travels by name', 'ERR_MP_UNSUPPORTED');
  }

  /** @internal what a child needs to open it again. */
  transferData(): { name: string; bound: number } {
    void this.#handle;
    return { name: this.#name, bound: this.#bound };
  }
}

// Construction targets whose prototypes sit on Semaphore's and BoundedSemaphore's
// (set by linkPosixSemaphore), so `instanceof` holds for both and the codec can
// tell the two apart. Reflect.construct with one of them as new.target makes a
// PosixSemaphore (private fields and all) with that prototype.
const PosixTarget = function PosixSemaphore() {} as unknown as new () => PosixSemaphore;
const PosixBoundedTarget = function PosixBoundedSemaphore() {} as unknown as new () => PosixSemaphore;
let linkedSemaphore: unknown = null;
let linkedBounded: unknown = null;

function protoOn(base: { prototype: object }): object {
  // Every own member but `constructor`, so o.constructor stays Semaphore/BoundedSemaphore.
  const own: PropertyDescriptorMap = {};
  for (const key of Reflect.ownKeys(PosixSemaphore.prototype)) {
    if (key !== 'constructor') own[key] = Object.getOwnPropertyDescriptor(PosixSemaphore.prototype, key)!;
  }
  return Object.create(base.prototype, own);
}

function make(path: string, name: string, bounded: boolean, bound: number, handle: SemHandle): Semaphore {
  try {
    const target = bounded ? PosixBoundedTarget : PosixTarget;
    return Reflect.construct(PosixSemaphore, [handle, name, bounded ? bound : -1], target) as unknown as Semaphore;
  } catch (err) {
    binding.semClose(handle);
    throw err;
  }
}

/**
 * Called by synchronize.ts once Semaphore and BoundedSemaphore exist, before
 * their own codec entries: the codec takes the first registration that matches,
 * and these objects are instances of those classes too.
 */
export function linkPosixSemaphore(
  SemaphoreClass: abstract new (...args: never[]) => unknown,
  BoundedClass: abstract new (...args: never[]) => unknown,
): void {
  PosixTarget.prototype = protoOn(SemaphoreClass) as PosixSemaphore;
  PosixBoundedTarget.prototype = protoOn(BoundedClass) as PosixSemaphore;
  linkedSemaphore = SemaphoreClass;
  linkedBounded = BoundedClass;
  for (const [tag, Target, bounded] of [
    ['pmp.PosixBoundedSemaphore', PosixBoundedTarget, true],
    ['pmp.PosixSemaphore', PosixTarget, false],
  ] as const) {
    registerTransferable(tag, Target, {
      encode: (o) => o.transferData(),
      // The child opens the same name, without creating: if it was unlinked
      // meanwhile the decode fails with ENOENT rather than making a new one.
      decode: (d: { name: string; bound: number }) => {
        const path = posixSemaphoreName(d.name, 'name');
        return make(path, d.name, bounded, d.bound, binding.semOpen(path, false, false, 0, 0)) as unknown as PosixSemaphore;
      },
    });
  }
}

/** What `new Semaphore(value, { name, posix: true })` returns (and the same for BoundedSemaphore). */
export function openPosixSemaphore(newTarget: unknown, value: unknown, options: SemaphoreOptions): Semaphore {
  if (newTarget !== linkedSemaphore && newTarget !== linkedBounded) {
    // A user's subclass: its overrides would be shadowed by these methods, silently.
    throw invalidType('options.posix', 'false in a subclass of Semaphore (only Semaphore and BoundedSemaphore open POSIX semaphores)', true);
  }
  validateOptions(options, SEMAPHORE);
  const v = validateInteger(value, 'value', 0, binding.semValueMax);
  if (options.name === undefined) throw invalidType('options.name', 'a string when options.posix is true', undefined);
  const path = posixSemaphoreName(options.name, 'options.name');
  const mode = validateMode(options.mode);
  return make(path, options.name, newTarget === linkedBounded, v, open(path, v, mode));
}
