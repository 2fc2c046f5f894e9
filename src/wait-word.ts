// Sleeping until a 32-bit word in shared memory changes: the one kernel service
// the queues need. With the futex binding (native/futex.cc) it is a real
// futex wait/wake; without it (an addon built before futex.cc existed) waits
// degrade to polling the word with a growing sleep, which is correct but slower
// to wake. Everything that waits re-checks its condition, so spurious wake-ups
// are harmless.
import { binding } from './native';

export type WaitResult = 'ok' | 'timed-out' | 'not-equal' | 'cancelled';

interface FutexBinding {
  futexWait(buffer: ArrayBuffer, byteOffset: number, expected: number, timeoutMs: number): WaitResult;
  futexWake(buffer: ArrayBuffer, byteOffset: number, count: number): number;
  futexWaitAsync(
    buffer: ArrayBuffer,
    byteOffset: number,
    expected: number,
    timeoutMs: number,
    callback: (result: WaitResult) => void,
  ): { cancel(): void };
}

const futex = binding as unknown as Partial<FutexBinding>;
export const hasFutex =
  typeof futex.futexWait === 'function' && typeof futex.futexWake === 'function' && typeof futex.futexWaitAsync === 'function';

/** A word in shared memory that processes can sleep on. */
export interface WaitWord {
  readonly i32: Int32Array;
  readonly index: number;
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));

function sleepMs(ms: number): void {
  Atomics.wait(sleeper, 0, 0, ms);
}

/** Blocks the thread while the word equals expected, up to timeoutMs (negative: no limit). */
export function waitSync(word: WaitWord, expected: number, timeoutMs: number): WaitResult {
  const { i32, index } = word;
  if (hasFutex) {
    return futex.futexWait!(i32.buffer as ArrayBuffer, i32.byteOffset + index * 4, expected, timeoutMs);
  }
  const deadline = timeoutMs < 0 ? Infinity : performance.now() + timeoutMs;
  let step = 0.05;
  for (;;) {
    if (Atomics.load(i32, index) !== expected) return 'ok';
    const left = deadline - performance.now();
    if (left <= 0) return 'timed-out';
    sleepMs(Math.min(step, left));
    step = Math.min(step * 2, 5);
  }
}

/** The async twin: resolves when the word changes, on timeout, or when cancelled. */
export function waitAsync(
  word: WaitWord,
  expected: number,
  timeoutMs: number,
): { promise: Promise<WaitResult>; cancel(): void } {
  const { i32, index } = word;
  if (hasFutex) {
    let handle: { cancel(): void } | undefined;
    const promise = new Promise<WaitResult>((resolve) => {
      handle = futex.futexWaitAsync!(i32.buffer as ArrayBuffer, i32.byteOffset + index * 4, expected, timeoutMs, resolve);
    });
    return { promise, cancel: () => handle!.cancel() };
  }
  let timer: NodeJS.Timeout | undefined;
  let settle: (r: WaitResult) => void = () => {};
  const promise = new Promise<WaitResult>((resolve) => {
    settle = (r) => {
      clearTimeout(timer);
      resolve(r);
    };
    const deadline = timeoutMs < 0 ? Infinity : performance.now() + timeoutMs;
    let step = 1;
    const check = () => {
      if (Atomics.load(i32, index) !== expected) return settle('ok');
      const left = deadline - performance.now();
      if (left <= 0) return settle('timed-out');
      timer = setTimeout(check, Math.min(step, left));
      step = Math.min(step * 2, 8);
    };
    check();
  });
  return { promise, cancel: () => settle('cancelled') };
}

/** Wakes every process sleeping on the word. */
export function wakeAll(word: WaitWord): void {
  if (hasFutex) futex.futexWake!(word.i32.buffer as ArrayBuffer, word.i32.byteOffset + word.index * 4, 0x7fffffff);
}

/** Wakes one process sleeping on the word. */
export function wakeOne(word: WaitWord): void {
  if (hasFutex) futex.futexWake!(word.i32.buffer as ArrayBuffer, word.i32.byteOffset + word.index * 4, 1);
}
