// Start -> exit -> join latency of one child with a trivial target, both our
// start methods against child_process.fork of an empty module and CPython's
// multiprocessing ('fork', 'forkserver', 'spawn' contexts), all in this one run,
// with issue #13's targets. Also: a process's first start (a forkserver start
// boots the server), the minor page faults a child takes before its target
// runs, and where the time of one of our starts goes.
//   node bench/process.bench.mjs [--json]   (BENCH_ROUNDS=n: rounds, default 5)
import { execFileSync, fork } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Process, isMainProcess } from 'posix-multiprocessing';
import { noop as esmNoop } from './targets.mjs';
import { probe } from './probe-target.mjs';
import { compare as printComparison, median, trialOrMain } from './trial.mjs';

const { noop: cjsNoop } = createRequire(import.meta.url)('./targets.cjs');

const here = path.dirname(fileURLToPath(import.meta.url));
const self = fileURLToPath(import.meta.url);
const json = process.argv.includes('--json');
// Each round times every contender BATCH times, ours and child_process's in
// turn (trial by trial), CPython's in one process per context, then takes one
// cold first start of each in a fresh process: a slow spell of the shared
// host falls on all of them alike. Figures are medians over all rounds.
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const BATCH = 6;

function ours(target, startMethod) {
  return async () => {
    const p = new Process({ target, startMethod });
    p.start();
    const code = await p.join();
    if (code !== 0) throw new Error(`our ${startMethod} child exited ${code}`);
  };
}

function childProcessFork(file) {
  return () =>
    new Promise((resolve, reject) => {
      const child = fork(path.join(here, file), [], { stdio: 'inherit' });
      child.on('error', reject);
      child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`fork child exited ${code}`))));
    });
}

const contenders = {
  'fs-esm': ours(esmNoop, 'forkserver'),
  'fs-cjs': ours(cjsNoop, 'forkserver'),
  'spawn-esm': ours(esmNoop, 'spawn'),
  'spawn-cjs': ours(cjsNoop, 'spawn'),
  'cp-esm': childProcessFork('empty.mjs'),
  'cp-cjs': childProcessFork('empty.cjs'),
};

// One batch of every contender, trial by trial, the order rotating.
async function batch(times) {
  const keys = Object.keys(contenders);
  for (let i = 0; i < BATCH; i++) {
    for (let k = 0; k < keys.length; k++) {
      const key = keys[(i + k) % keys.length];
      const t0 = performance.now();
      await contenders[key]();
      (times[key] ??= []).push(performance.now() - t0);
    }
  }
}

// A start of ours with the probe target: its page faults and CPU time until
// the target runs, and the phases (start() itself, start() returned -> target
// entered, target -> join resolved).
async function probeOnce(startMethod, file) {
  const t0 = process.hrtime.bigint();
  const p = new Process({ target: probe, args: [file], startMethod });
  p.start();
  const t1 = process.hrtime.bigint();
  if ((await p.join()) !== 0) throw new Error(`probe child (${startMethod}) failed`);
  const t3 = process.hrtime.bigint();
  const { at, faults, userUs, systemUs } = JSON.parse(fs.readFileSync(file, 'utf8'));
  fs.rmSync(file);
  const ms = (a, b) => Number(b - a) / 1e6;
  return { faults, user: userUs / 1000, system: systemUs / 1000, start: ms(t0, t1), toTarget: ms(t1, BigInt(at)), toJoin: ms(BigInt(at), t3) };
}

function python(method) {
  try {
    const out = execFileSync('python3', [path.join(here, 'process_py.py'), method, String(BATCH)], { encoding: 'utf8' });
    return JSON.parse(out);
  } catch (err) {
    if (!json) console.error(`python3 ${method}: ${err.message.split('\n')[0]}`);
    return null;
  }
}

// One cold first start in this fresh process (`--trial cold-<method>`).
async function trial(key) {
  const t0 = performance.now();
  if (key === 'cold-cp') await childProcessFork('empty.mjs')();
  else await ours(esmNoop, key.slice('cold-'.length))();
  return performance.now() - t0;
}

const fmt = (x, d = 1) => (typeof x === 'number' ? x.toFixed(d) : 'n/a');

async function main() {
  if (!json) console.log(`start -> exit -> join of one child, trivial target; ${os.cpus().length} cpus, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}, node ${process.version}`);
  // Untimed: boots our server, and the first spawns pay for cold caches.
  for (let i = 0; i < 2; i++) for (const once of Object.values(contenders)) await once();
  const times = {};
  const py = { fork: [], forkserver: [], spawn: [] };
  const pyCold = { fork: [], forkserver: [], spawn: [] };
  const pyFaults = { fork: [], forkserver: [], spawn: [] };
  const cold = { 'cold-forkserver': [], 'cold-spawn': [], 'cold-cp': [] };
  const probes = { forkserver: [], spawn: [] };
  const probeFile = path.join(os.tmpdir(), `pmp-bench-probe-${process.pid}.json`);
  for (let r = 0; r < ROUNDS; r++) {
    await batch(times);
    for (const method of Object.keys(py)) {
      const res = python(method);
      if (res === null) continue;
      py[method].push(...res.times);
      pyCold[method].push(res.cold_ms);
      pyFaults[method].push(...res.faults);
    }
    for (const key of Object.keys(cold)) {
      cold[key].push(JSON.parse(execFileSync(process.execPath, [self, '--trial', key, '0'], { encoding: 'utf8' })).value);
    }
    for (const method of Object.keys(probes)) {
      for (let i = 0; i < 2; i++) probes[method].push(await probeOnce(method, probeFile));
    }
  }
  const m = (xs) => (xs.length ? median(xs) : null);
  // Times: lower is better, and the targets are upper bounds on the ratio.
  const compare = (scenario, oursLabel, ours, theirsLabel, theirs, atMost) =>
    printComparison({ json, scenario, unit: 'ms', oursLabel, ours, theirsLabel, theirs, target: atMost === undefined ? undefined : { atMost } });
  const t = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)]));
  const p = Object.fromEntries(Object.entries(py).map(([k, v]) => [k, m(v)]));
  const n = ROUNDS * BATCH;

  for (const [kind, sfx] of [['ES module target', 'esm'], ['CommonJS target', 'cjs']]) {
    const scenario = `start -> join, trivial ${kind}`;
    if (!json) console.log(`\n${scenario}: median of ${n} trials each (ms)`);
    compare(scenario, "ours 'forkserver'", t[`fs-${sfx}`], "CPython 'fork'", p.fork, 2);
    compare(scenario, "ours 'forkserver'", t[`fs-${sfx}`], `child_process.fork (empty .${sfx === 'esm' ? 'mjs' : 'cjs'})`, t[`cp-${sfx}`], 0.1);
    compare(scenario, "ours 'forkserver'", t[`fs-${sfx}`], "CPython 'forkserver'", p.forkserver);
    compare(scenario, "ours 'forkserver'", t[`fs-${sfx}`], "CPython 'spawn'", p.spawn);
    compare(scenario, "ours 'spawn'", t[`spawn-${sfx}`], `child_process.fork (empty .${sfx === 'esm' ? 'mjs' : 'cjs'})`, t[`cp-${sfx}`], 1.0);
    compare(scenario, "ours 'spawn'", t[`spawn-${sfx}`], "CPython 'spawn'", p.spawn);
  }

  const c = Object.fromEntries(Object.entries(cold).map(([k, v]) => [k, median(v)]));
  const pc = Object.fromEntries(Object.entries(pyCold).map(([k, v]) => [k, m(v)]));
  const scenario = 'first start -> join in a fresh process, trivial ES module target';
  if (!json) console.log(`\n${scenario} (ours: the forkserver boots its server; CPython's too): median of ${ROUNDS} (ms)`);
  compare(scenario, "ours 'forkserver'", c['cold-forkserver'], "CPython 'fork'", pc.fork);
  compare(scenario, "ours 'forkserver'", c['cold-forkserver'], "CPython 'forkserver'", pc.forkserver);
  compare(scenario, "ours 'forkserver'", c['cold-forkserver'], 'child_process.fork (empty .mjs)', c['cold-cp']);
  compare(scenario, "ours 'spawn'", c['cold-spawn'], 'child_process.fork (empty .mjs)', c['cold-cp']);
  compare(scenario, "ours 'spawn'", c['cold-spawn'], "CPython 'spawn'", pc.spawn);

  const f = Object.fromEntries(Object.entries(probes).map(([k, v]) => [k, {
    faults: median(v.map((x) => x.faults)), user: median(v.map((x) => x.user)), system: median(v.map((x) => x.system)),
    start: median(v.map((x) => x.start)),
    toTarget: median(v.map((x) => x.toTarget)), toJoin: median(v.map((x) => x.toJoin)),
  }]));
  const pf = Object.fromEntries(Object.entries(pyFaults).map(([k, v]) => [k, m(v)]));
  if (json) {
    for (const [method, x] of Object.entries(f)) {
      console.log(JSON.stringify({ scenario: `child's minor page faults and CPU time at target entry, and phases of a start (ms)`, ours: method, minor_faults: x.faults, child_user_ms: +x.user.toFixed(2), child_system_ms: +x.system.toFixed(2), start_call_ms: +x.start.toFixed(2), start_to_target_ms: +x.toTarget.toFixed(2), target_to_join_ms: +x.toJoin.toFixed(2) }));
    }
    console.log(JSON.stringify({ scenario: "CPython child's minor page faults at target entry", ...Object.fromEntries(Object.entries(pf).map(([k, v]) => [`cpython_${k}`, v])) }));
  } else {
    console.log(`\nwhat a child has taken when its target starts (minor page faults, CPU ms in user and kernel mode),`);
    console.log(`and where a start's time goes (ms): median of ${ROUNDS * 2} probes`);
    console.log('                       faults    user  kernel   start() call   start() -> target   target -> join resolved');
    for (const [method, x] of Object.entries(f)) {
      console.log(`  ours '${method}'`.padEnd(24) + `${String(x.faults).padStart(6)}  ${fmt(x.user).padStart(6)}  ${fmt(x.system).padStart(6)}   ${fmt(x.start, 2).padStart(12)}   ${fmt(x.toTarget, 2).padStart(17)}   ${fmt(x.toJoin, 2).padStart(23)}`);
    }
    for (const [method, v] of Object.entries(pf)) console.log(`  CPython '${method}'`.padEnd(24) + `${String(v).padStart(6)}`);
  }
}

if (isMainProcess()) await trialOrMain(trial, main);
