// The contract's import line (API.md) links from ES modules and CommonJS.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
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

  // An imported name compiles to a property load on the CommonJS exports
  // object of the module that defines it. A re-export (`export { x } from`)
  // defines an accessor there, which turns that object to dictionary mode, and
  // every such load into a hash lookup: PID, read from sync/words.ts in the
  // Lock's fast path, cost 2.5 ns of a 22 ns acquire+release pair that way.
  // Only the package's entry point re-exports.
  it('no module but the entry point has a dictionary-mode exports object', () => {
    const dist = path.join(__dirname, '..', 'dist', 'cjs');
    const modules = fs
      .readdirSync(dist, { recursive: true, encoding: 'utf8' })
      .filter((f) => f.endsWith('.js') && f !== 'index.js')
      // Programs, not libraries: loading them runs them.
      .filter((f) => !f.startsWith(`child${path.sep}`) && f !== 'tracker-main.js');
    expect(modules.length).toBeGreaterThan(20);
    const script = `const slow = [];
      for (const f of ${JSON.stringify(modules)}) if (!%HasFastProperties(require(${JSON.stringify(dist)} + '/' + f))) slow.push(f);
      console.log(JSON.stringify(slow));`;
    const out = execFileSync(process.execPath, ['--allow-natives-syntax', '-e', script], { encoding: 'utf8' });
    expect(JSON.parse(out)).toEqual([]);
  });
});
