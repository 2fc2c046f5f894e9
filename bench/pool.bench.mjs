// Pool throughput and startup, side by side in one run: ours vs CPython's
// multiprocessing.Pool, piscina (worker threads) and workerpool (processes).
//   100k trivial tasks via map with default chunking (best of ten runs each: steady state)
//   100k trivial tasks submitted one by one (apply / submit, chunksize 1)
//   pool startup to first result
// Usage: node bench/pool.bench.mjs [--json] [--quick]
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as os from 'node:os';
import Piscina from 'piscina';
import workerpool from 'workerpool';

import { Pool, isMainProcess } from 'posix-multiprocessing';
import { identity } from './pool-task.mjs';

const json = process.argv.includes('--json');
const quick = process.argv.includes('--quick');
const N_MAP = 100_000;
const N_APPLY = quick ? 20_000 : 100_000;
const N_SLOW = quick ? 5_000 : 20_000; // for workerpool, whose rate is ~8k/s
const here = (f) => fileURLToPath(new URL(f, import.meta.url));

function report(scenario, unit, figures) {
  const ratio = figures.ours / figures[Object.keys(figures).find((k) => k !== 'ours')];
  if (json) {
    console.log(JSON.stringify({ scenario, unit, ...figures, ratio: Number(ratio.toFixed(3)) }));
  } else {
    const cells = Object.entries(figures).map(([k, v]) => `${k} ${v.toFixed(unit === 'ms' ? 1 : 0)}`);
    console.log(`${scenario} (${unit}): ${cells.join(', ')}; ours/${Object.keys(figures)[1]} = ${ratio.toFixed(2)}`);
  }
}

async function ours() {
  let t = performance.now();
  const pool = new Pool({ processes: 2 });
  await pool.apply(identity, [1]);
  const startup = performance.now() - t;
  await pool.map(identity, Array.from({ length: 1000 }, (_, i) => i));
  const input = Array.from({ length: N_MAP }, (_, i) => i);
  let best = Infinity;
  for (let k = 0; k < 10; k++) {
    // best of ten, as for CPython: the first runs also pay for JIT warm-up
    t = performance.now();
    await pool.map(identity, input);
    best = Math.min(best, performance.now() - t);
  }
  const map = N_MAP / (best / 1000);
  await Promise.all(Array.from({ length: 2000 }, (_, i) => pool.apply(identity, [i])));
  t = performance.now();
  const pending = new Array(N_APPLY);
  for (let i = 0; i < N_APPLY; i++) pending[i] = pool.apply(identity, [i]);
  await Promise.all(pending);
  const apply = N_APPLY / ((performance.now() - t) / 1000);
  pool.terminate();
  await pool.join();
  return { map, apply, startup };
}

async function piscina() {
  let t = performance.now();
  const pool = new Piscina({ filename: here('./pool-task.mjs'), minThreads: 2, maxThreads: 2 });
  await pool.run(1);
  const startup = performance.now() - t;
  await Promise.all(Array.from({ length: 2000 }, (_, i) => pool.run(i)));
  t = performance.now();
  const pending = new Array(N_APPLY);
  for (let i = 0; i < N_APPLY; i++) pending[i] = pool.run(i);
  await Promise.all(pending);
  const apply = N_APPLY / ((performance.now() - t) / 1000);
  await pool.destroy();
  return { apply, startup };
}

async function workerpoolProcesses() {
  let t = performance.now();
  const pool = workerpool.pool(here('./pool-task-worker.cjs'), { workerType: 'process', maxWorkers: 2, minWorkers: 2 });
  await pool.exec('identity', [1]);
  const startup = performance.now() - t;
  await Promise.all(Array.from({ length: 500 }, (_, i) => pool.exec('identity', [i])));
  t = performance.now();
  const pending = new Array(N_SLOW);
  for (let i = 0; i < N_SLOW; i++) pending[i] = pool.exec('identity', [i]);
  await Promise.all(pending);
  const apply = N_SLOW / ((performance.now() - t) / 1000);
  await pool.terminate();
  return { apply, startup };
}

function python() {
  const out = execFileSync('python3', [here('./pool_py.py'), String(N_MAP), String(N_APPLY)], { encoding: 'utf8' });
  return JSON.parse(out.trim().split('\n').at(-1));
}

if (isMainProcess()) {
  if (!json) console.log(`pool benchmark: 2 workers, ${os.cpus().length} cpus, node ${process.version}`);
  const o = await ours();
  const py = python();
  const pi = await piscina();
  const wp = await workerpoolProcesses();
  report('pool.map 100k trivial tasks, default chunking', 'tasks/s', { ours: o.map, cpython: py.map });
  report('pool apply one by one, chunksize 1', 'tasks/s', {
    ours: o.apply,
    cpython: py.apply,
    piscina: pi.apply,
    workerpool: wp.apply,
  });
  if (!json) {
    console.log(`  ours/piscina = ${(o.apply / pi.apply).toFixed(2)}, ours/workerpool = ${(o.apply / wp.apply).toFixed(2)}`);
  }
  report('pool startup to first result', 'ms', { ours: o.startup, cpython: py.startup_ms, piscina: pi.startup, workerpool: wp.startup });
}
