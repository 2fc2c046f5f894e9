// Manager benchmark: ours vs CPython's multiprocessing.Manager(), side by side.
//   node bench/manager.bench.mjs [--json] [--only=<part of a scenario key>]
// Every proxy call is a round trip to the manager's server process on both
// sides; these measure that round trip, and the start of a manager.
//   start    Manager.start() -> first dict answer -> shutdown()
//   dict     one set(k, v) plus one get(k) from the owner, per pair
//   queue    one put() plus one get() on a manager Queue, per pair
//   appends  4 fresh processes x 250 appends to one manager list, all at once,
//            timed from the go (the children booted, their code cold)
//   appends-wall  the same from creating the 4 processes to all joined
// CPython runs the 'fork' context (3.11's default on Linux). Issue #13's target
// for the appends: ours <= CPython's.
// Every trial runs in a fresh process (this file with --trial, or python3
// bench/manager_py.py), the sides in turn; each figure is the median.
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { compare, median, onlyFilter, trialOrMain } from './trial.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const self = fileURLToPath(import.meta.url);
const TRIALS = 3;
/** Both sides make calls untimed this long first (manager_py.py's WARM_S):
 *  our first few thousand calls (about half a second) run 3-4 times slower,
 *  until V8 has compiled both ends' paths; CPython has nothing to warm. The
 *  appends scenario's children are timed cold. */
const WARM_MS = 1000;

const scenarios = [
  { scenario: 'Manager start -> first dict answer -> shutdown', key: 'start', unit: 'ms', n: 1 },
  { scenario: 'dict set(k, v) + get(k) round trips, per pair', key: 'dict', unit: 'us', n: 5_000 },
  { scenario: 'manager Queue put() + get(), per pair', key: 'queue', unit: 'us', n: 5_000 },
  { scenario: '4 fresh processes x 250 appends to one manager list, all at once, from the go', key: 'appends', unit: 'ms', n: 250, trials: 5, target: { atMost: 1 } },
  { scenario: '4 fresh processes x 250 appends to one manager list, wall time including the 4 starts', key: 'appends-wall', unit: 'ms', n: 250, trials: 5, target: { atMost: 1 } },
];

async function timedPairs(step, n) {
  const warmEnd = performance.now() + WARM_MS;
  while (performance.now() < warmEnd) await step(0);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await step(i);
  return ((performance.now() - t0) * 1000) / n;
}

async function trial(key, n) {
  const { Manager, Process } = await import('../dist/esm/index.mjs');
  if (key === 'start') {
    const t0 = performance.now();
    const m = await Manager.start();
    const d = await m.dict();
    await d.set('k', 1);
    if ((await d.get('k')) !== 1) throw new Error('dict lost a write');
    await m.shutdown();
    return performance.now() - t0;
  }
  const m = await Manager.start();
  try {
    if (key === 'dict') {
      const d = await m.dict();
      return await timedPairs(async (i) => {
        await d.set('k', i);
        if ((await d.get('k')) !== i) throw new Error('dict lost a write');
      }, n);
    }
    if (key === 'queue') {
      const q = await m.Queue();
      return await timedPairs(async (i) => {
        await q.put(i);
        if ((await q.get()) !== i) throw new Error('queue lost an item');
      }, n);
    }
    if (key === 'appends') {
      const { appendMany } = await import('./manager-targets.mjs');
      const list = await m.list();
      const [ready, go, done] = [await m.Queue(), await m.Queue(), await m.Queue()];
      const ps = Array.from({ length: 4 }, () => new Process({ target: appendMany, args: [list, n, ready, go, done] }));
      for (const p of ps) p.start();
      for (const _ of ps) await ready.get();
      // Timed from the go to the last append, the children booted.
      const t0 = performance.now();
      for (const _ of ps) await go.put(1);
      for (const _ of ps) await done.get();
      const ms = performance.now() - t0;
      for (const p of ps) if ((await p.join()) !== 0) throw new Error('child failed');
      if ((await list.length()) !== 4 * n) throw new Error(`list has ${await list.length()} items, not ${4 * n}`);
      return ms;
    }
    if (key === 'appends-wall') {
      const { appendAll } = await import('./manager-targets.mjs');
      const list = await m.list();
      const t0 = performance.now();
      const ps = Array.from({ length: 4 }, () => new Process({ target: appendAll, args: [list, n] }));
      for (const p of ps) p.start();
      for (const p of ps) if ((await p.join()) !== 0) throw new Error('child failed');
      const ms = performance.now() - t0;
      if ((await list.length()) !== 4 * n) throw new Error(`list has ${await list.length()} items, not ${4 * n}`);
      return ms;
    }
    throw new Error(`unknown scenario ${key}`);
  } finally {
    await m.shutdown();
  }
}

async function main() {
  const json = process.argv.includes('--json');
  const wanted = onlyFilter();
  for (const s of scenarios) {
    if (!wanted(s.key)) continue;
    const ours = [];
    const py = [];
    // The sides in turn, so a slow spell of the host falls on both alike.
    for (let t = 0; t < (s.trials ?? TRIALS); t++) {
      ours.push(JSON.parse(execFileSync(process.execPath, [self, '--trial', s.key, String(s.n)], { encoding: 'utf8' })).value);
      py.push(JSON.parse(execFileSync('python3', [path.join(here, 'manager_py.py'), s.key, String(s.n)], { encoding: 'utf8' })).value);
    }
    const o = median(ours);
    const p = median(py);
    if (s.target) {
      if (!json) console.log(`${s.scenario}: median of ${ours.length} trials each, a fresh process each`);
      compare({ json, scenario: s.scenario, unit: s.unit, oursLabel: 'ours (forkserver)', ours: o, theirsLabel: "CPython 'fork'", theirs: p, target: s.target });
    } else if (json) {
      console.log(JSON.stringify({ scenario: s.scenario, unit: s.unit, ours: +o.toFixed(3), cpython: +p.toFixed(3), ratio: +(o / p).toFixed(3) }));
    } else {
      console.log(`${s.scenario}\n  ours ${o.toFixed(2)} ${s.unit}   CPython ${p.toFixed(2)} ${s.unit}   ratio ours/CPython ${(o / p).toFixed(3)} (lower is better)`);
    }
  }
}

await trialOrMain(trial, main);
