// Scenario 7: daemon. A daemon child sleeping 2 s is killed when the parent's
// work ends after 1 s; a non-daemon sibling runs to completion. Then: a parent
// killed with SIGKILL leaves no child behind.
//
// The example runs itself as the parent of each case (`node this-file case`),
// so that it can watch that parent end from the outside.
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Process, isMainProcess } from 'posix-multiprocessing';

export async function napThenMark(seconds, file) {
  await sleep(seconds * 1000);
  fs.writeFileSync(file, 'finished');
}

const alive = (pid) => {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^[ZX]$/.test(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]);
  } catch {
    if (process.platform !== 'linux') {
      try {
        process.kill(pid, 0);
        return true;
      } catch {}
    }
    return false;
  }
};

const self = fileURLToPath(import.meta.url);
const [mode, dir] = process.argv.slice(2);

if (isMainProcess() && mode === 'daemon-parent') {
  // A daemon (2 s) and a non-daemon (1 s): the parent's own work takes 1 s.
  const d = new Process({ target: napThenMark, args: [2, path.join(dir, 'daemon')], daemon: true });
  const w = new Process({ target: napThenMark, args: [1, path.join(dir, 'worker')] });
  d.start();
  w.start();
  console.log(JSON.stringify({ daemon: d.pid, worker: w.pid }));
  await sleep(1000);
} else if (isMainProcess() && mode === 'killed-parent') {
  const d = new Process({ target: napThenMark, args: [30, path.join(dir, 'never')], daemon: true });
  const w = new Process({ target: napThenMark, args: [30, path.join(dir, 'never')] });
  d.start();
  w.start();
  console.log(JSON.stringify({ daemon: d.pid, worker: w.pid }));
  setInterval(() => {}, 1000);
} else if (isMainProcess()) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'scenario-07-'));
  let ok = true;

  const t0 = performance.now();
  const pids = JSON.parse(execFileSync(process.execPath, [self, 'daemon-parent', tmp], { encoding: 'utf8' }));
  const took = (performance.now() - t0) / 1000;
  await sleep(1500); // past the daemon's 2 s
  const workerDone = fs.existsSync(path.join(tmp, 'worker'));
  const daemonDone = fs.existsSync(path.join(tmp, 'daemon'));
  console.log(`parent ended after ${took.toFixed(2)} s; non-daemon finished: ${workerDone}; daemon finished: ${daemonDone}; daemon alive: ${alive(pids.daemon)}`);
  ok &&= workerDone && !daemonDone && !alive(pids.daemon);

  const parent = spawn(process.execPath, [self, 'killed-parent', tmp], { stdio: ['ignore', 'pipe', 'inherit'] });
  let text = '';
  parent.stdout.on('data', (d) => (text += d));
  while (!text.includes('\n')) await sleep(20);
  const orphans = JSON.parse(text);
  parent.kill('SIGKILL');
  await new Promise((r) => parent.on('exit', r));
  await sleep(1000);
  console.log(`after SIGKILL of the parent: daemon alive ${alive(orphans.daemon)}, non-daemon alive ${alive(orphans.worker)}`);
  ok &&= !alive(orphans.daemon) && !alive(orphans.worker);

  fs.rmSync(tmp, { recursive: true, force: true });
  console.log(ok ? 'OK' : 'FAILED');
  process.exitCode = ok ? 0 : 1;
}
