// The cost of passing a Connection through a channel that cannot carry fds
// (issue #5): a child puts/sends the same Connection N times, the parent takes
// each (the fd is fetched from the child's fd sharer while decoding) and closes
// it. Side by side with CPython, which does the same through resource_sharer.
// `--json` prints one line per scenario.
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Pipe, Pool, Process, Queue, SimpleQueue, isMainProcess } from 'posix-multiprocessing';

const here = path.dirname(fileURLToPath(import.meta.url));
const N = 2000;
const POOL_N = 500;

// ---- child targets (ours) ----

// The sender must stay alive until everything was taken: it waits for release.
export async function putConnections(q, n, release) {
  const [a, b] = Pipe();
  for (let i = 0; i < n; i++) q.putSync(a);
  await release.get();
  a.close();
  b.close();
}

export async function sendConnections(w, n, release) {
  const [a, b] = Pipe();
  for (let i = 0; i < n; i++) w.send(a);
  await release.get();
  a.close();
  b.close();
}

export function closeIt(conn) {
  conn.close();
  return 1;
}

// ---- ours ----

async function oursQueue(n) {
  const q = new Queue();
  const release = new SimpleQueue();
  const p = new Process({ target: putConnections, args: [q, n, release] });
  p.start();
  (await q.get()).close();
  const t = performance.now();
  for (let i = 1; i < n; i++) q.getSync().close();
  const us = ((performance.now() - t) / (n - 1)) * 1000;
  release.putSync(1);
  await p.join();
  q.close();
  release.close();
  return us;
}

async function oursPipe(n) {
  const [r, w] = Pipe(false);
  const release = new SimpleQueue();
  const p = new Process({ target: sendConnections, args: [w, n, release] });
  p.start();
  w.close();
  (await r.recv()).close();
  const t = performance.now();
  for (let i = 1; i < n; i++) r.recvSync().close();
  const us = ((performance.now() - t) / (n - 1)) * 1000;
  release.putSync(1);
  await p.join();
  r.close();
  release.close();
  return us;
}

async function oursPool(n) {
  const pool = new Pool({ processes: 1 });
  const [a, b] = Pipe();
  await pool.apply(closeIt, [b]);
  const t = performance.now();
  for (let i = 0; i < n; i++) await pool.apply(closeIt, [b]);
  const us = ((performance.now() - t) / n) * 1000;
  pool.close();
  await pool.join();
  a.close();
  b.close();
  return us;
}

function python(...args) {
  const out = execFileSync('python3', [path.join(here, 'fd_transfer_py.py'), ...args.map(String)], { encoding: 'utf8' });
  return JSON.parse(out.trim().split('\n').pop()).value;
}

async function main() {
  const json = process.argv.includes('--json');
  const row = (scenario, unit, ours, competitor, theirs) => {
    const ratio = theirs / ours;
    if (json) console.log(JSON.stringify({ scenario, unit, ours: +ours.toFixed(2), [competitor]: +theirs.toFixed(2), ratio: +ratio.toFixed(2) }));
    else console.log(`${scenario.padEnd(40)} ours ${ours.toFixed(1).padStart(9)} ${unit.padEnd(4)} ${competitor.padEnd(8)} ${theirs.toFixed(1).padStart(9)}   ×${ratio.toFixed(2)} (lower is better)`);
  };
  row('Connection through a Queue (per item)', 'µs', await oursQueue(N), 'cpython', python('queue', N));
  row('Connection over a one-way Pipe', 'µs', await oursPipe(N), 'cpython', python('pipe', N));
  row('pool.apply(fn, [conn]) round trip', 'µs', await oursPool(POOL_N), 'cpython', python('pool', POOL_N));
}

if (isMainProcess() && process.argv[1] === fileURLToPath(import.meta.url)) await main();
