// Scenario 19: Pool(4) runs ten 1-second tasks via applyAsync in about 3 s;
// get() returns each result; map() keeps input order; only four worker pids.
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool, isMainProcess } from 'posix-multiprocessing';

export async function work(n) {
  await sleep(1000);
  return { n, pid: process.pid };
}

export function square(x) {
  return x * x;
}

if (isMainProcess()) {
  const pool = new Pool({ processes: 4 });
  const started = Date.now();
  const pending = Array.from({ length: 10 }, (_, i) => pool.applyAsync(work, [i]));
  const results = await Promise.all(pending.map((r) => r.get()));
  const seconds = (Date.now() - started) / 1000;
  const pids = new Set(results.map((r) => r.pid));
  console.log(`10 tasks in ${seconds.toFixed(1)} s on ${pids.size} workers: ${[...pids].join(', ')}`);
  const squares = await pool.map(square, [1, 2, 3, 4, 5, 6]);
  console.log('map:', squares.join(' '));
  pool.close();
  await pool.join();
  const ok = results.every((r, i) => r.n === i) && pids.size <= 4 && seconds < 6 && squares.join() === '1,4,9,16,25,36';
  if (!ok) process.exitCode = 1;
}
