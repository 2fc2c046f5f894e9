// The package imported from its TypeScript sources (as a test runner or a
// loader does) still starts children, which run the compiled build.
import { describe, expect, it } from 'vitest';

import { Lock, Manager, Pool, Process } from '../src/index';
import * as managerTargets from './fixtures/manager.mjs';
import * as tasks from './fixtures/pool.mjs';
import * as targets from './fixtures/targets.mjs';

describe('loaded from src/', () => {
  it('starts and joins a Process', async () => {
    const p = new Process({ target: targets.exitWith, args: [3] });
    p.start();
    expect(await p.join(20)).toBe(3);
  });

  it('runs pool tasks (the worker channel fd travels with the arguments)', async () => {
    const pool = new Pool({ processes: 1 });
    try {
      expect(await pool.apply(tasks.add, [1, 2])).toBe(3);
    } finally {
      pool.terminate();
      await pool.join();
    }
  });

  it('locks', () => {
    const lock = new Lock();
    expect(lock.acquireSync()).toBe(true);
    lock.release();
    lock.close();
  });

  it('starts a Manager whose proxies reach a child (which runs the build)', async () => {
    const m = await Manager.start();
    try {
      const list = await m.list();
      const p = new Process({ target: managerTargets.appendMany, args: [list, 2, 'src'] });
      p.start();
      expect(await p.join(20)).toBe(0);
      expect(await list.toArray()).toEqual(['src:0', 'src:1']);
      const srv = await Manager.serve({ port: 0, authkey: 'k' });
      await srv.close();
    } finally {
      await m.shutdown();
    }
  });
});
