// Start -> exit -> join latency of one child with an empty target: our Process
// against child_process.fork of an empty module and Python's multiprocessing
// (spawn and forkserver), median of TRIALS runs each, all in this one run.
// `--json` prints one JSON line per scenario instead of the table.
import { fork, execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Process, isMainProcess } from 'posix-multiprocessing';
import { noop as esmNoop } from './targets.mjs';

const require_ = (await import('node:module')).createRequire(import.meta.url);
const { noop: cjsNoop } = require_('./targets.cjs');

const here = path.dirname(fileURLToPath(import.meta.url));
const json = process.argv.includes('--json');
const TRIALS = Number(process.env.BENCH_TRIALS ?? 30);
const WARMUP = 3;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// Trials of the contenders alternate, so that load from elsewhere on a shared
// machine falls on both alike instead of on whichever ran during a burst.
async function measurePair(a, b) {
  for (let i = 0; i < WARMUP; i++) {
    await a();
    await b();
  }
  const ta = [];
  const tb = [];
  for (let i = 0; i < TRIALS; i++) {
    for (const [once, times] of i % 2 ? [[a, ta], [b, tb]] : [[b, tb], [a, ta]]) {
      const t0 = performance.now();
      await once();
      times.push(performance.now() - t0);
    }
  }
  return [median(ta), median(tb)];
}

async function ours(target) {
  const p = new Process({ target });
  p.start();
  const code = await p.join();
  if (code !== 0) throw new Error(`our child exited ${code}`);
}

function childProcessFork(file) {
  return new Promise((resolve, reject) => {
    const child = fork(path.join(here, file), [], { stdio: 'inherit' });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`fork child exited ${code}`))));
  });
}

function python(method) {
  try {
    const out = execFileSync('python3', [path.join(here, 'process_py.py'), method, String(TRIALS)], { encoding: 'utf8' });
    return JSON.parse(out).median_ms;
  } catch (err) {
    if (!json) console.error(`python3 ${method}: ${err.message.split('\n')[0]}`);
    return null;
  }
}

const round = (x) => (x === null ? null : Math.round(x * 100) / 100);

if (isMainProcess()) {
  const scenarios = [];
  for (const [kind, target, empty] of [
    ['ES module target', esmNoop, 'empty.mjs'],
    ['CommonJS target', cjsNoop, 'empty.cjs'],
  ]) {
    const [mine, theirs] = await measurePair(() => ours(target), () => childProcessFork(empty));
    scenarios.push({ scenario: `process start-exit-join (${kind})`, unit: 'ms', ours: mine, child_process_fork: theirs });
  }
  const spawn = python('spawn');
  const forkserver = python('forkserver');
  for (const s of scenarios) {
    s.python_spawn = spawn;
    s.python_forkserver = forkserver;
    s.ratio = s.ours / s.child_process_fork;
  }
  if (json) {
    for (const s of scenarios) {
      console.log(JSON.stringify(Object.fromEntries(Object.entries(s).map(([k, v]) => [k, typeof v === 'number' ? round(v) : v]))));
    }
  } else {
    console.log(`start -> exit -> join of one child, median of ${TRIALS} trials (ms)`);
    for (const s of scenarios) {
      console.log(`\n${s.scenario}`);
      console.log(`  posix-multiprocessing Process      ${s.ours.toFixed(1).padStart(7)}`);
      console.log(`  child_process.fork (empty module)  ${s.child_process_fork.toFixed(1).padStart(7)}`);
      console.log(`  Python multiprocessing 'spawn'     ${spawn === null ? '    n/a' : spawn.toFixed(1).padStart(7)}`);
      console.log(`  Python multiprocessing 'forkserver'${forkserver === null ? '    n/a' : forkserver.toFixed(1).padStart(7)}`);
      console.log(`  ratio ours / child_process.fork    ${s.ratio.toFixed(2).padStart(7)}`);
    }
  }
}
