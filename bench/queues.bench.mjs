// Queues and pipes side by side with CPython's multiprocessing and Node's
// child_process IPC: small messages one way, 1 MiB messages one way, and the
// round-trip latency of a small object. `--json` prints one line per scenario.
import { execFileSync, fork } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Pipe, Process, Queue, isMainProcess } from 'posix-multiprocessing';

const here = path.dirname(fileURLToPath(import.meta.url));
const SMALL_N = 200_000;
const BIG_N = 300;
const BIG_SIZE = 1024 * 1024;
const RTT_N = 5_000;

// ---- child targets (ours) ----

export function produceSmall(q, n) {
  for (let i = 0; i < n; i++) q.putSync({ i, s: 'hello' });
}

export function produceBig(q, n, size) {
  const payload = Buffer.alloc(size, 120);
  for (let i = 0; i < n; i++) q.putSync(payload);
}

export async function echo(conn, n, sync) {
  for (let i = 0; i < n; i++) conn.send(sync ? conn.recvSync() : await conn.recv());
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
  let t0 = 0;
  await new Promise((resolve) => {
    child.on('message', () => {
      if (count++ === 0) t0 = performance.now();
      if (count === n) resolve();
    });
  });
  const s = (performance.now() - t0) / 1000;
  child.kill();
  return unitBytes ? ((n - 1) * unitBytes) / s / 1e6 : (n - 1) / s;
}

async function cpRtt(n) {
  const child = fork(fileURLToPath(import.meta.url), ['--cp-child', 'rtt', '0']);
  const once = () => new Promise((resolve) => { child.once('message', resolve); child.send({ i: 1, s: 'ping' }); });
  for (let i = 0; i < 100; i++) await once();
  const t = performance.now();
  for (let i = 0; i < n; i++) await once();
  const us = ((performance.now() - t) / n) * 1000;
  child.kill();
  return us;
}

// ---- ours ----

async function oursSmall(n) {
  const q = new Queue();
  const p = new Process({ target: produceSmall, args: [q, n] });
  p.start();
  await q.get();
  const t = performance.now();
  for (let i = 1; i < n; i++) q.getSync();
  const rate = (n - 1) / ((performance.now() - t) / 1000);
  await p.join();
  q.close();
  return rate;
}

async function oursSmallAsync(n) {
  const q = new Queue();
  const p = new Process({ target: produceSmall, args: [q, n] });
  p.start();
  await q.get();
  const t = performance.now();
  for (let i = 1; i < n; i++) await q.get();
  const rate = (n - 1) / ((performance.now() - t) / 1000);
  await p.join();
  q.close();
  return rate;
}

async function oursBig(n, size) {
  const q = new Queue();
  const p = new Process({ target: produceBig, args: [q, n, size] });
  p.start();
  await q.get();
  const t = performance.now();
  for (let i = 1; i < n; i++) q.getSync();
  const mbs = ((n - 1) * size) / ((performance.now() - t) / 1000) / 1e6;
  await p.join();
  q.close();
  return mbs;
}

async function oursRtt(n, sync) {
  const [a, b] = Pipe();
  const p = new Process({ target: echo, args: [b, n + 100, sync] });
  p.start();
  b.close();
  const msg = { i: 1, s: 'ping' };
  for (let i = 0; i < 100; i++) {
    a.send(msg);
    sync ? a.recvSync() : await a.recv();
  }
  const t = performance.now();
  if (sync) {
    for (let i = 0; i < n; i++) {
      a.send({ i, s: 'ping' });
      a.recvSync();
    }
  } else {
    for (let i = 0; i < n; i++) {
      a.send({ i, s: 'ping' });
      await a.recv();
    }
  }
  const us = ((performance.now() - t) / n) * 1000;
  await p.join();
  a.close();
  return us;
}

function python(...args) {
  const out = execFileSync('python3', [path.join(here, 'queues_py.py'), ...args.map(String)], { encoding: 'utf8' });
  return JSON.parse(out.trim().split('\n').pop()).value;
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
  const small = await oursSmall(SMALL_N);
  const smallAsync = await oursSmallAsync(SMALL_N);
  const pySmall = python('small', SMALL_N / 4);
  const cpSmall = await cpOneWay('small', SMALL_N / 4);
  row('queue small msgs (getSync)', 'msgs/s', small, 'cpython', pySmall, true);
  row('queue small msgs (getSync)', 'msgs/s', small, 'child_process', cpSmall, true);
  row('queue small msgs (await get)', 'msgs/s', smallAsync, 'cpython', pySmall, true);
  const big = await oursBig(BIG_N, BIG_SIZE);
  const pyBig = python('big', BIG_N, BIG_SIZE);
  const cpBig = await cpOneWay('big', 100, BIG_SIZE);
  row('queue 1 MiB msgs', 'MB/s', big, 'cpython', pyBig, true);
  row('queue 1 MiB msgs', 'MB/s', big, 'child_process', cpBig, true);
  const rttAsync = await oursRtt(RTT_N, false);
  const rttSync = await oursRtt(RTT_N, true);
  const pyRtt = python('rtt', RTT_N);
  const cpRttUs = await cpRtt(RTT_N);
  row('pipe round trip (await recv)', 'µs', rttAsync, 'cpython', pyRtt, false);
  row('pipe round trip (await recv)', 'µs', rttAsync, 'child_process', cpRttUs, false);
  row('pipe round trip (recvSync)', 'µs', rttSync, 'cpython', pyRtt, false);
  row('pipe round trip (recvSync)', 'µs', rttSync, 'child_process', cpRttUs, false);
}

const cpIndex = process.argv.indexOf('--cp-child');
if (cpIndex >= 0) cpChild(process.argv[cpIndex + 1], Number(process.argv[cpIndex + 2]));
else if (isMainProcess() && process.argv[1] === fileURLToPath(import.meta.url)) await main();
