// The contract's import line (API.md) links from ES modules and CommonJS.
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';

import * as esm from 'posix-multiprocessing';

const CONTRACT = `Process, Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition, Barrier,
  SharedMemory, Value, RawValue, SharedArray, RawArray, Pipe, Connection,
  Queue, SimpleQueue, JoinableQueue, Pool, ProcessPoolExecutor, Manager,
  cpuCount, activeChildren, currentProcess, parentProcess, isMainProcess,
  setStartMethod, getStartMethod,
  BrokenBarrierError, QueueEmptyError, QueueFullError, WorkerCrashedError,
  OwnerDiedError, TimeoutError, AuthenticationError`
  .split(',')
  .map((s) => s.trim());

describe('exports', () => {
  it('every name of the contract is exported, the same from ESM and CommonJS', () => {
    const cjs = createRequire(import.meta.url)('posix-multiprocessing');
    for (const name of CONTRACT) {
      expect(typeof (esm as Record<string, unknown>)[name], name).not.toBe('undefined');
      expect(cjs[name], name).toBe((esm as Record<string, unknown>)[name]);
    }
  });

  it('error classes carry stable codes', () => {
    const codes: Record<string, string> = {
      BrokenBarrierError: 'ERR_MP_BROKEN_BARRIER',
      QueueEmptyError: 'ERR_MP_QUEUE_EMPTY',
      QueueFullError: 'ERR_MP_QUEUE_FULL',
      WorkerCrashedError: 'ERR_MP_WORKER_CRASHED',
      OwnerDiedError: 'ERR_MP_OWNER_DIED',
      TimeoutError: 'ERR_MP_TIMEOUT',
      AuthenticationError: 'ERR_MP_AUTH',
    };
    for (const [name, code] of Object.entries(codes)) {
      const Ctor = (esm as Record<string, any>)[name];
      const err = name === 'WorkerCrashedError' ? new Ctor('x', 1, null) : new Ctor();
      expect(err).toBeInstanceOf(Error);
      expect(err.name).toBe(name);
      expect(err.code).toBe(code);
    }
  });

  it('Manager validates its arguments at the boundary', async () => {
    await expect(esm.Manager.connect({} as any)).rejects.toThrow(TypeError);
    await expect(esm.Manager.serve({ authkey: '' })).rejects.toThrow(RangeError);
  });
});
