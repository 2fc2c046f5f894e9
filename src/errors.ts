// Error classes with stable codes, and the helpers that build the uniform
// messages for bad arguments and closed objects.

export class MultiprocessingError extends Error {
  readonly code: string;
  constructor(message: string, code: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
  override get name(): string {
    return this.constructor.name;
  }
}

export class BrokenBarrierError extends MultiprocessingError {
  constructor(message = 'the barrier is broken', options?: { cause?: unknown }) {
    super(message, 'ERR_MP_BROKEN_BARRIER', options);
  }
}

export class QueueEmptyError extends MultiprocessingError {
  constructor(message = 'the queue is empty') {
    super(message, 'ERR_MP_QUEUE_EMPTY');
  }
}

export class QueueFullError extends MultiprocessingError {
  constructor(message = 'the queue is full') {
    super(message, 'ERR_MP_QUEUE_FULL');
  }
}

/** recv() on a connection whose other end is closed (Python's EOFError). */
export class EOFError extends MultiprocessingError {
  constructor(message = 'end of stream') {
    super(message, 'ERR_MP_EOF');
  }
}

export class WorkerCrashedError extends MultiprocessingError {
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  constructor(message: string, exitCode: number | null, signal: NodeJS.Signals | null) {
    super(message, 'ERR_MP_WORKER_CRASHED');
    this.exitCode = exitCode;
    this.signal = signal;
  }
}

export class OwnerDiedError extends MultiprocessingError {
  constructor(message = 'the owner of the lock died while holding it') {
    super(message, 'ERR_MP_OWNER_DIED');
  }
}

export class TimeoutError extends MultiprocessingError {
  constructor(message = 'the operation timed out') {
    super(message, 'ERR_MP_TIMEOUT');
  }
}

export class AuthenticationError extends MultiprocessingError {
  constructor(message = 'authentication failed') {
    super(message, 'ERR_MP_AUTH');
  }
}

/** An Error with a stable `code`, for states Python reports with ValueError/AssertionError. */
export function stateError(message: string, code: string): Error & { code: string } {
  const e = new Error(message) as Error & { code: string };
  e.code = code;
  return e;
}

export function closedError(what: string): Error & { code: string } {
  return stateError(`${what} is closed`, 'ERR_MP_CLOSED');
}

/**
 * What every async wait in the package rejects with when its AbortSignal
 * fires: an AbortError in Node's own shape (`name: 'AbortError'`,
 * `code: 'ABORT_ERR'`, the signal's reason as `cause`), as fs,
 * timers/promises, events.once and child_process reject.
 */
export function abortError(signal: AbortSignal): Error {
  const e = new Error('The operation was aborted', { cause: signal.reason }) as Error & { code: string };
  e.name = 'AbortError';
  e.code = 'ABORT_ERR';
  return e;
}
