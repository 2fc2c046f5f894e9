// Pool startup and throughput, side by side in one run: ours (both start
// methods) against CPython's multiprocessing.Pool ('fork' and 'forkserver'
// contexts), piscina (worker threads) and workerpool (processes), with issue
// #13's targets:
//   fresh  a fresh Pool(2) in a process that has made one before (our server
//          and CPython's are up): construction -> first result, its first map
//          of 100k trivial tasks, and the median of the maps after it
//   cold   a fresh process's first Pool(2): from the process's start to its
//          first result (interpreter start and imports included), then its first map
//   apply  trivial tasks submitted one by one (apply / submit, chunksize 1):
//          100k of ours, 20k of the others (their rates are 6-20k/s)
// Sides take turns, round by round; every figure is a median over the rounds.
// Usage: node bench/pool.bench.mjs [--json] [--quick] [--only=fresh|cold|apply]
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as os from 'node:os';

import { Pool, isMainProcess } from 'posix-multiprocessing';
import { identity } from './pool-task.mjs';
import { compare, median, onlyFilter, timeToFirstLine } from './trial.mjs';

const json = process.argv.includes('--json');
const quick = process.argv.includes('--quick');
const wanted = onlyFilter();
const N_MAP = 100_000;
const N_APPLY = quick ? 20_000 : 100_000;
// For CPython, piscina and workerpool, whose rates are 6-20k/s: a rate needs
// fewer tasks, and the run stays short.
const N_SLOW = quick ? 5_000 : 20_000;
const ROUNDS = 3;
const POOLS = 2; // fresh pools per side and round
const REPEAT = 5; // maps after the first, per pool
const here = (f) => fileURLToPath(new URL(f, import.meta.url));
const METHODS = ['forkserver', 'spawn'];
const CONTEXTS = ['fork', 'forkserver'];
const rate = (ms) => N_MAP / (ms / 1000);

// ---- ours ----

const input = Array.from({ length: N_MAP }, (_, i) => i);

async function freshPool(startMethod, repeat) {
  let t = performance.now();
  const pool = new Pool({ processes: 2, startMethod });
  await pool.apply(identity, [1]);
  const startup = performance.now() - t;
  const maps = [];
  for (let k = 0; k <= repeat; k++) {
    t = performance.now();
    const out = await pool.map(identity, input);
    maps.push(performance.now() - t);
    if (out.length !== N_MAP || out[N_MAP - 1] !== N_MAP - 1) throw new Error('map lost results');
  }
  pool.terminate();
  await pool.join();
  return { startup, firstMap: maps[0], maps: maps.slice(1) };
}

// `node pool.bench.mjs --cold <method>`: this process's first pool; "ready"
// at its first result, then the first map's time.
async function coldChild(startMethod) {
  const pool = new Pool({ processes: 2, startMethod });
  await pool.apply(identity, [1]);
  console.log('ready');
  const t = performance.now();
  await pool.map(identity, input);
  console.log(JSON.stringify({ first_map_ms: performance.now() - t }));
  pool.terminate();
  await pool.join();
}

async function coldRun(command, args) {
  const { ms, lines } = await timeToFirstLine(command, args);
  return { startup: ms, firstMap: JSON.parse(lines.at(-1)).first_map_ms };
}

async function oursApply() {
  const pool = new Pool({ processes: 2 });
  await Promise.all(Array.from({ length: 2000 }, (_, i) => pool.apply(identity, [i])));
  const t = performance.now();
  const pending = new Array(N_APPLY);
  for (let i = 0; i < N_APPLY; i++) pending[i] = pool.apply(identity, [i]);
  await Promise.all(pending);
  const apply = N_APPLY / ((performance.now() - t) / 1000);
  pool.terminate();
  await pool.join();
  return apply;
}

// ---- the others ----

function python(mode, ctx, ...args) {
  const out = execFileSync('python3', [here('./pool_py.py'), mode, ctx, ...args.map(String)], { encoding: 'utf8' });
  return JSON.parse(out.trim().split('\n').at(-1));
}

async function piscinaApply() {
  const { default: Piscina } = await import('piscina');
  const pool = new Piscina({ filename: here('./pool-task.mjs'), minThreads: 2, maxThreads: 2 });
  await Promise.all(Array.from({ length: 2000 }, (_, i) => pool.run(i)));
  const t = performance.now();
  const pending = new Array(N_SLOW);
  for (let i = 0; i < N_SLOW; i++) pending[i] = pool.run(i);
  await Promise.all(pending);
  const apply = N_SLOW / ((performance.now() - t) / 1000);
  await pool.destroy();
  return apply;
}

async function workerpoolApply() {
  const { default: workerpool } = await import('workerpool');
  const pool = workerpool.pool(here('./pool-task-worker.cjs'), { workerType: 'process', maxWorkers: 2, minWorkers: 2 });
  await Promise.all(Array.from({ length: 500 }, (_, i) => pool.exec('identity', [i])));
  const t = performance.now();
  const pending = new Array(N_SLOW);
  for (let i = 0; i < N_SLOW; i++) pending[i] = pool.exec('identity', [i]);
  await Promise.all(pending);
  const apply = N_SLOW / ((performance.now() - t) / 1000);
  await pool.terminate();
  return apply;
}

// ---- the run ----

const mine = (m) => `ours '${m}'`;
const theirs = (c) => `CPython Pool(2) '${c}'`;

async function fresh() {
  const ours = Object.fromEntries(METHODS.map((m) => [m, { startup: [], firstMap: [], maps: [] }]));
  const py = Object.fromEntries(CONTEXTS.map((c) => [c, { startup: [], firstMap: [], maps: [] }]));
  // Untimed: our server boots; CPython's pools process makes one untimed pool too.
  for (const m of METHODS) await freshPool(m, 0);
  for (let r = 0; r < ROUNDS; r++) {
    for (let i = 0; i < POOLS; i++) {
      for (const m of i % 2 ? [...METHODS].reverse() : METHODS) {
        const x = await freshPool(m, REPEAT);
        ours[m].startup.push(x.startup);
        ours[m].firstMap.push(x.firstMap);
        ours[m].maps.push(...x.maps);
      }
    }
    for (const c of CONTEXTS) {
      const x = python('pools', c, POOLS + 1, N_MAP, REPEAT);
      py[c].startup.push(...x.startup_ms.slice(1));
      py[c].firstMap.push(...x.first_map_ms.slice(1));
      py[c].maps.push(...x.map_ms.slice(REPEAT));
    }
  }
  const n = ROUNDS * POOLS;
  let scenario = 'fresh Pool(2) construction -> first result (a pool made before in the process)';
  if (!json) console.log(`\n${scenario}: median of ${n} pools (ms)`);
  for (const m of METHODS) {
    for (const c of CONTEXTS) {
      compare({ json, scenario, unit: 'ms', oursLabel: mine(m), ours: median(ours[m].startup), theirsLabel: theirs(c), theirs: median(py[c].startup), target: m === 'forkserver' ? { atMost: 1 } : undefined });
    }
  }
  scenario = `first map of ${N_MAP / 1000}k trivial tasks on a fresh Pool(2)`;
  if (!json) console.log(`\n${scenario}: median of ${n} pools (tasks/s)`);
  for (const m of METHODS) {
    for (const c of CONTEXTS) {
      compare({ json, scenario, unit: 'tasks/s', digits: 0, oursLabel: mine(m), ours: rate(median(ours[m].firstMap)), theirsLabel: theirs(c), theirs: rate(median(py[c].firstMap)), target: m === 'forkserver' ? { atLeast: 1 } : undefined });
    }
  }
  scenario = `repeated maps of ${N_MAP / 1000}k trivial tasks (the ${REPEAT} after each fresh pool's first)`;
  if (!json) console.log(`\n${scenario}: median of ${n * REPEAT} maps (tasks/s)`);
  for (const m of METHODS) {
    for (const c of CONTEXTS) {
      compare({ json, scenario, unit: 'tasks/s', digits: 0, oursLabel: mine(m), ours: rate(median(ours[m].maps)), theirsLabel: theirs(c), theirs: rate(median(py[c].maps)), target: m === 'forkserver' ? { atLeast: 1 } : undefined });
    }
  }
}

async function cold() {
  const ours = Object.fromEntries(METHODS.map((m) => [m, []]));
  const py = Object.fromEntries(CONTEXTS.map((c) => [c, []]));
  for (let r = 0; r < ROUNDS; r++) {
    for (const m of METHODS) ours[m].push(await coldRun(process.execPath, [fileURLToPath(import.meta.url), '--cold', m]));
    for (const c of CONTEXTS) py[c].push(await coldRun('python3', [here('./pool_py.py'), 'cold', c, N_MAP]));
  }
  let scenario = 'a fresh process: process start -> its first Pool(2) -> first result';
  if (!json) console.log(`\n${scenario} (ours: the forkserver boots here): median of ${ROUNDS} processes (ms)`);
  for (const m of METHODS) {
    for (const c of CONTEXTS) {
      compare({ json, scenario, unit: 'ms', oursLabel: mine(m), ours: median(ours[m].map((x) => x.startup)), theirsLabel: theirs(c), theirs: median(py[c].map((x) => x.startup)), target: m === 'forkserver' ? { atMost: 1 } : undefined });
    }
  }
  scenario = `a fresh process: the first map of ${N_MAP / 1000}k trivial tasks on its first Pool(2)`;
  if (!json) console.log(`\n${scenario}: median of ${ROUNDS} processes (tasks/s)`);
  for (const m of METHODS) {
    for (const c of CONTEXTS) {
      compare({ json, scenario, unit: 'tasks/s', digits: 0, oursLabel: mine(m), ours: rate(median(ours[m].map((x) => x.firstMap))), theirsLabel: theirs(c), theirs: rate(median(py[c].map((x) => x.firstMap))), target: m === 'forkserver' ? { atLeast: 1 } : undefined });
    }
  }
}

async function apply() {
  const rates = { ours: [], cpython: [], piscina: [], workerpool: [] };
  for (let r = 0; r < ROUNDS; r++) {
    rates.ours.push(await oursApply());
    rates.cpython.push(python('apply', 'fork', N_SLOW).apply);
    rates.piscina.push(await piscinaApply());
    rates.workerpool.push(await workerpoolApply());
  }
  const scenario = 'pool apply one by one, chunksize 1';
  if (!json) console.log(`\n${scenario}: median of ${ROUNDS} runs (tasks/s)`);
  const o = median(rates.ours);
  for (const [label, key] of [[theirs('fork'), 'cpython'], ['piscina (worker threads)', 'piscina'], ['workerpool (processes)', 'workerpool']]) {
    compare({ json, scenario, unit: 'tasks/s', digits: 0, oursLabel: "ours (default method)", ours: o, theirsLabel: label, theirs: median(rates[key]) });
  }
}

if (isMainProcess()) {
  const at = process.argv.indexOf('--cold');
  if (at !== -1) {
    await coldChild(process.argv[at + 1]);
  } else {
    if (!json) console.log(`pool benchmark: 2 workers, ${os.cpus().length} cpus, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}, node ${process.version}`);
    if (wanted('fresh')) await fresh();
    if (wanted('cold')) await cold();
    if (wanted('apply')) await apply();
  }
}
