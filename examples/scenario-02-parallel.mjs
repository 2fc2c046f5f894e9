// Scenario 2: three processes in parallel. Each sleeps 1 s; the whole run takes
// about 1 s, not 3. activeChildren() lists Process-1..3 while they run.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Process, activeChildren, cpuCount, isMainProcess } from 'posix-multiprocessing';

const now = () => performance.timeOrigin + performance.now();

/** Sleeps, and records when the sleep began and ended. */
export async function nap(seconds, file) {
  const start = now();
  await sleep(seconds * 1000);
  fs.writeFileSync(file, JSON.stringify({ start, end: now() }));
}

if (isMainProcess()) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'scenario-02-'));
  console.log(`cpuCount(): ${cpuCount()}`);
  const t0 = performance.now();
  const ps = [1, 2, 3].map((i) => new Process({ target: nap, args: [1, path.join(dir, `${i}.json`)] }));
  for (const p of ps) p.start();
  const active = activeChildren();
  for (const p of active) console.log(`  running: ${p.name} pid ${p.pid}`);
  const codes = await Promise.all(ps.map((p) => p.join()));
  const took = (performance.now() - t0) / 1000;
  const windows = [1, 2, 3].map((i) => JSON.parse(fs.readFileSync(path.join(dir, `${i}.json`), 'utf8')));
  fs.rmSync(dir, { recursive: true, force: true });
  // Asleep at the same time: the last to fall asleep did so before the first woke.
  const overlap = Math.min(...windows.map((w) => w.end)) - Math.max(...windows.map((w) => w.start));
  console.log(`exit codes ${codes.join(', ')}; took ${took.toFixed(2)} s (with child startup); all three asleep together for ${(overlap / 1000).toFixed(2)} s`);
  const names = active.map((p) => p.name).sort();
  const ok = codes.every((c) => c === 0) && names.join() === 'Process-1,Process-2,Process-3' && overlap > 0 && cpuCount() >= 1;
  console.log(ok ? 'OK' : 'FAILED');
  process.exitCode = ok ? 0 : 1;
}
