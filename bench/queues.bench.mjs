// Queues and pipes side by side with CPython's multiprocessing and Node's
// child_process IPC: small messages one way, 1 MiB messages one way, and the
// round-trip latency of a small object. `--json` prints one line per scenario.
import { execFileSync, fork } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Pipe, Process, Queue, isMainProcess } from 'posix-multiprocessing';

const here = path.dirname(fileURLToPath(import.meta.url));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
// Every side first runs untimed for WARM_MS (JIT tiers, caches, CPython's
// feeder thread, the pipes' spin estimates), then the timed part follows in
// the same run. Without it the figure measured mostly V8's warm-up: the first
// ~250k small messages here go at 0.2-2M/s, the rest at 4-7M/s.
const WARM_MS = 300;
const SMALL_N = 1_500_000;
const TRIALS = 3;
/** CPython and child_process move ~0.1M small msgs/s: fewer keep the run short. */
const OTHERS_SMALL_N = 80_000;
const BIG_N = 300;
const BIG_SIZE = 1024 * 1024;
const RTT_N = 10_000;

// ---- child targets (ours) ----

export function produceSmall(q, n) {
  for (let i = 0; i < n; i++) q.putSync({ i, s: 'hello' });
}

export function produceBig(q, n, size) {
  const payload = Buffer.alloc(size, 120);
  for (let i = 0; i < n; i++) q.putSync(payload);
}

export async function echo(conn, sync) {
  for (;;) {
    const m = sync ? conn.recvSync() : await conn.recv();
    if (m === null) return;
    conn.send(m);
  }
}

// ---- child_process side ----

function cpChild(mode, n) {
  if (mode === 'small') {
    // Keep at most a window in flight: process.send buffers without limit.
    let i = 0;
    const pump = () => {
      while (i < n) {
        const ok = process.send({ i, s: 'hello' });
        i++;
        if (!ok) return setImmediate(pump);
      }
    };
    pump();
  } else if (mode === 'big') {
    const payload = Buffer.alloc(BIG_SIZE, 120).toString('latin1');
    let i = 0;
    const pump = () => {
      while (i < n) {
        i++;
        if (!process.send(payload)) return setImmediate(pump);
      }
    };
    pump();
  } else {
    process.on('message', (m) => process.send(m));
  }
}

async function cpOneWay(mode, n, unitBytes) {
  const child = fork(fileURLToPath(import.meta.url), ['--cp-child', mode, String(n)], { serialization: 'advanced' });
  let count = 0;
  let warmEnd = Infinity;
  let t0 = 0;
  let from = 0;
  await new Promise((resolve) => {
    child.on('message', () => {
      count++;
      if (count === 1) warmEnd = performance.now() + WARM_MS;
      if (t0 === 0 && (count >= n / 2 || performance.now() >= warmEnd)) {
        t0 = performance.now();
        from = count;
      }
      if (count === n) resolve();
    });
  });
  const s = (performance.now() - t0) / 1000;
  child.kill();
  return unitBytes ? ((n - from) * unitBytes) / s / 1e6 : (n - from) / s;
}

// Round trips, untimed until WARM_MS have passed, then n timed; µs each.
// The warm-up starts after the first answer: until then the child is starting.
async function roundTrips(n, once) {
  await once();
  const warmEnd = performance.now() + WARM_MS;
  while (performance.now() < warmEnd) await once();
  const t = performance.now();
  for (let i = 0; i < n; i++) await once();
  return ((performance.now() - t) / n) * 1000;
}

async function cpRtt(n) {
  const child = fork(fileURLToPath(import.meta.url), ['--cp-child', 'rtt', '0']);
  let i = 0;
  const once = () => new Promise((resolve) => { child.once('message', resolve); child.send({ i: i++, s: 'ping' }); });
  const us = await roundTrips(n, once);
  child.kill();
  return us;
}

// ---- ours ----

// Gets n messages: untimed for WARM_MS (at most half of them), then timed.
async function drain(n, get) {
  await get();
  let i = 1;
  const warmEnd = performance.now() + WARM_MS;
  for (; i < n / 2 && (i & 1023 || performance.now() < warmEnd); i++) await get();
  const timed = n - i;
  const t = performance.now();
  for (; i < n; i++) await get();
  return { timed, s: (performance.now() - t) / 1000 };
}

async function oursSmall(n) {
  const q = new Queue();
  const p = new Process({ target: produceSmall, args: [q, n] });
  p.start();
  await q.get();
  let i = 1;
  const warmEnd = performance.now() + WARM_MS;
  for (; i < n / 2 && (i & 1023 || performance.now() < warmEnd); i++) q.getSync();
  const t = performance.now();
  const timed = n - i;
  for (; i < n; i++) q.getSync();
  const rate = timed / ((performance.now() - t) / 1000);
  await p.join();
  q.close();
  return rate;
}

async function oursSmallAsync(n) {
  const q = new Queue();
  const p = new Process({ target: produceSmall, args: [q, n] });
  p.start();
  const { timed, s } = await drain(n, () => q.get());
  await p.join();
  q.close();
  return timed / s;
}

async function oursBig(n, size) {
  const q = new Queue();
  const p = new Process({ target: produceBig, args: [q, n, size] });
  p.start();
  const { timed, s } = await drain(n, () => q.getSync());
  await p.join();
  q.close();
  return (timed * size) / s / 1e6;
}

async function oursRtt(n, sync) {
  const [a, b] = Pipe();
  const p = new Process({ target: echo, args: [b, sync] });
  p.start();
  b.close();
  let i = 0;
  const us = sync
    ? await roundTrips(n, () => {
        a.send({ i: i++, s: 'ping' });
        a.recvSync();
      })
    : await roundTrips(n, async () => {
        a.send({ i: i++, s: 'ping' });
        await a.recv();
      });
  a.send(null);
  await p.join();
  a.close();
  return us;
}

function python(...args) {
  const out = execFileSync('python3', [path.join(here, 'queues_py.py'), ...args.map(String)], { encoding: 'utf8' });
  return JSON.parse(out.trim().split('\n').pop()).value;
}

// Figures between two processes swing from run to run (ours mostly with
// whether the consumer keeps catching up with the producer): each side's
// figure is the median of TRIALS trials, the sides taking turns, so that a
// slow spell of the host falls on all of them alike.
async function mediansInTurn(sides) {
  const trials = sides.map(() => []);
  for (let t = 0; t < TRIALS; t++) {
    for (const [k, run] of sides.entries()) trials[k].push(await run());
  }
  return trials.map(median);
}

/** Waits until the 1-minute load average is below the CPU count, at most maxMs; returns the ms waited. */
async function quietMachine(maxMs) {
  const start = performance.now();
  while (os.loadavg()[0] >= os.availableParallelism() && performance.now() - start < maxMs) {
    await new Promise((r) => setTimeout(r, 5000));
  }
  return performance.now() - start;
}

async function main() {
  const json = process.argv.includes('--json');
  const rows = [];
  const row = (scenario, unit, ours, competitor, theirs, higherIsBetter) => {
    const ratio = higherIsBetter ? ours / theirs : theirs / ours;
    rows.push({ scenario, unit, ours, [competitor]: theirs, ratio });
    if (json) console.log(JSON.stringify({ scenario, unit, ours: +ours.toFixed(2), [competitor]: +theirs.toFixed(2), ratio: +ratio.toFixed(2) }));
    else console.log(`${scenario.padEnd(34)} ours ${ours.toFixed(1).padStart(12)} ${unit.padEnd(8)} ${competitor.padEnd(14)} ${theirs.toFixed(1).padStart(12)}   ×${ratio.toFixed(2)} ${higherIsBetter ? '(higher is better)' : '(their time / ours: higher is better)'}`);
  };
  // The receivers do not spin while the 1-minute load average is above the
  // CPU count + 1 (src/spin.ts), and it decays slowly after a busy minute:
  // say what it was, so a slow round trip can be read.
  if (!json) console.log(`load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} on ${os.availableParallelism()} CPUs`);
  // --only=small,big,rtt runs some of the scenarios.
  const only = process.argv.find((a) => a.startsWith('--only='))?.slice(7).split(',');
  const wanted = (name) => !only || only.includes(name);
  if (wanted('small')) {
    const [small, smallAsync, pySmall, cpSmall] = await mediansInTurn([
      () => oursSmall(SMALL_N),
      () => oursSmallAsync(SMALL_N),
      () => python('small', OTHERS_SMALL_N, WARM_MS),
      () => cpOneWay('small', OTHERS_SMALL_N),
    ]);
    row('queue small msgs (getSync)', 'msgs/s', small, 'cpython', pySmall, true);
    row('queue small msgs (getSync)', 'msgs/s', small, 'child_process', cpSmall, true);
    row('queue small msgs (await get)', 'msgs/s', smallAsync, 'cpython', pySmall, true);
  }
  if (wanted('big')) {
    const big = await oursBig(BIG_N, BIG_SIZE);
    const pyBig = python('big', BIG_N, WARM_MS, BIG_SIZE);
    const cpBig = await cpOneWay('big', 100, BIG_SIZE);
    row('queue 1 MiB msgs', 'MB/s', big, 'cpython', pyBig, true);
    row('queue 1 MiB msgs', 'MB/s', big, 'child_process', cpBig, true);
  }
  if (wanted('rtt')) {
    // The scenarios before this one (and the benchmarks before this file)
    // raise the 1-minute load average above the bar that turns the
    // receivers' spin off; it falls back only slowly. Round trips are meant
    // to be measured on a quiet machine, so wait (bounded) for it, all sides
    // alike.
    const waited = await quietMachine(120_000);
    if (!json && waited > 0) console.log(`(waited ${(waited / 1000).toFixed(0)} s for the load average to fall: ${os.loadavg()[0].toFixed(2)})`);
    const [rttAsync, rttSync, pyRtt, cpRttUs] = await mediansInTurn([
      () => oursRtt(RTT_N, false),
      () => oursRtt(RTT_N, true),
      () => python('rtt', RTT_N, WARM_MS),
      () => cpRtt(RTT_N),
    ]);
    row('pipe round trip (await recv)', 'µs', rttAsync, 'cpython', pyRtt, false);
    row('pipe round trip (await recv)', 'µs', rttAsync, 'child_process', cpRttUs, false);
    row('pipe round trip (recvSync)', 'µs', rttSync, 'cpython', pyRtt, false);
    row('pipe round trip (recvSync)', 'µs', rttSync, 'child_process', cpRttUs, false);
  }
}

const cpIndex = process.argv.indexOf('--cp-child');
if (cpIndex >= 0) cpChild(process.argv[cpIndex + 1], Number(process.argv[cpIndex + 2]));
else if (isMainProcess() && process.argv[1] === fileURLToPath(import.meta.url)) await main();
