// Sleeping until a 32-bit word in shared memory changes: the one kernel service
// the queues need, a futex wait/wake (native/futex.cc). Everything that waits
// re-checks its condition, so spurious wake-ups are harmless.
import { binding } from './native';

export type WaitResult = 'ok' | 'timed-out' | 'not-equal' | 'cancelled';

/** A word in shared memory that processes can sleep on. */
export interface WaitWord {
  readonly i32: Int32Array;
  readonly index: number;
}

const byteOffsetOf = (word: WaitWord) => word.i32.byteOffset + word.index * 4;

/**
 * Blocks the thread while the word equals expected, up to timeoutMs (negative: no
 * limit); in a worker thread, also until the worker is being terminated.
 */
export function waitSync(word: WaitWord, expected: number, timeoutMs: number): WaitResult {
  return binding.futexWait(word.i32.buffer as ArrayBuffer, byteOffsetOf(word), expected, timeoutMs);
}

/**
 * The async twin: resolves when the word changes, on timeout, or when cancelled;
 * rejects (with a system error) only if no thread could serve the wait.
 */
export function waitAsync(
  word: WaitWord,
  expected: number,
  timeoutMs: number,
): { promise: Promise<WaitResult>; cancel(): void } {
  let handle: { cancel(): void } | undefined;
  const promise = new Promise<WaitResult>((resolve, reject) => {
    handle = binding.futexWaitAsync(word.i32.buffer as ArrayBuffer, byteOffsetOf(word), expected, timeoutMs, (r, error) => {
      if (r === 'error') reject(error);
      // 'fault' (the mapping went away under the wait) ends it like a cancel.
      else resolve(r === 'fault' ? 'cancelled' : r);
    });
  });
  return { promise, cancel: () => handle!.cancel() };
}

/** Wakes every process sleeping on the word. */
export function wakeAll(word: WaitWord): void {
  binding.futexWake(word.i32.buffer as ArrayBuffer, byteOffsetOf(word), 0x7fffffff);
}

/** Wakes one process sleeping on the word. */
export function wakeOne(word: WaitWord): void {
  binding.futexWake(word.i32.buffer as ArrayBuffer, byteOffsetOf(word), 1);
}
