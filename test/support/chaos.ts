// The chaos run shared by the pool tests and the stress suite.
import { expect } from 'vitest';

import { Pool, WorkerCrashedError } from 'posix-multiprocessing';
import * as tasks from '../fixtures/pool.mjs';

// Kills a random worker every `interval` ms while `count` tasks run: every task
// must settle, with its result or WorkerCrashedError; only the task a worker
// was running when killed fails, so there are no more failures than kills.
// Rounds of `count` tasks go on until three kills have landed (a pool of
// forked workers may finish one round before the first kill).
export async function chaos(count: number, interval: number): Promise<void> {
  const pool = new Pool({ processes: 2 });
  try {
    let kills = 0;
    const killer = setInterval(() => {
      const pids = pool.pids;
      const victim = pids[Math.floor(Math.random() * pids.length)];
      try {
        process.kill(victim, 'SIGKILL');
        kills++;
      } catch {
        // already gone
      }
    }, interval);
    const outcomes: PromiseSettledResult<unknown>[] = [];
    while (kills < 3) {
      const round = await Promise.allSettled(Array.from({ length: count }, (_, i) => pool.apply(tasks.square, [i])));
      outcomes.push(...round);
    }
    clearInterval(killer);
    let ok = 0;
    let failed = 0;
    for (const [k, o] of outcomes.entries()) {
      const i = k % count;
      if (o.status === 'fulfilled') {
        expect(o.value).toBe(i * i);
        ok++;
      } else {
        expect(o.reason).toBeInstanceOf(WorkerCrashedError);
        failed++;
      }
    }
    expect(kills).toBeGreaterThan(0);
    expect(ok).toBeGreaterThan(0);
    expect(failed).toBeLessThanOrEqual(kills);
    expect(await pool.map(tasks.square, [1, 2, 3])).toEqual([1, 4, 9]);
  } finally {
    pool.terminate();
    await pool.join();
  }
}
