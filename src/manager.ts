// Managers (a server process holding shared dicts, lists, queues and locks,
// reachable locally or over the network) are part of the API contract but not
// built yet. The name is exported so that programs importing the contract's
// full list of names load; every entry point rejects with ERR_MP_UNSUPPORTED
// and says what to use meanwhile.
import { stateError } from './errors';

function unsupported(): Error {
  return stateError(
    'Manager is not available in this version of posix-multiprocessing. Share state with ' +
      'Queue, Value, SharedArray or SharedMemory, passed to processes and pool tasks (docs/api.md, Managers)',
    'ERR_MP_UNSUPPORTED',
  );
}

export class Manager {
  private constructor() {
    throw unsupported();
  }

  /** Starts a manager server process (not available yet: rejects with ERR_MP_UNSUPPORTED). */
  static start(): Promise<never> {
    return Promise.reject(unsupported());
  }

  /** Serves a manager over the network (not available yet: rejects with ERR_MP_UNSUPPORTED). */
  static serve(_options?: unknown): Promise<never> {
    return Promise.reject(unsupported());
  }

  /** Connects to a remote manager (not available yet: rejects with ERR_MP_UNSUPPORTED). */
  static connect(_options?: unknown): Promise<never> {
    return Promise.reject(unsupported());
  }
}
