// Runs the benchmarks: every bench/*.bench.mjs, or those named on the command
// line, each in its own Node process, one after another. A name is a file
// (`process`), a file and the scenarios to keep (`sync:increments-wall`, passed
// on as --only=increments-wall), or a group below. `--json` is passed through:
// one JSON line per scenario.
//   node bench/run.mjs                  everything (npm run bench)
//   node bench/run.mjs pool manager:appends
//   node bench/run.mjs cold-starts      issue #13's targets only
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const groups = {
  // Issue #13 (forkserver): start -> join, Pool startup and first maps, the
  // locked increments' wall time, the Manager appends of fresh children.
  'cold-starts': ['process', 'pool:fresh,cold', 'sync:increments-wall', 'manager:appends'],
};

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const flags = args.filter((a) => a.startsWith('--'));
const names = args.filter((a) => !a.startsWith('--')).flatMap((n) => groups[n] ?? [n]);
const all = fs.readdirSync(here).filter((f) => f.endsWith('.bench.mjs')).sort();
const chosen = names.length === 0 ? all.map((file) => ({ file })) : names.map((n) => {
  const [name, only] = n.split(':');
  return { file: name.endsWith('.bench.mjs') ? name : `${name}.bench.mjs`, only };
});

let failed = 0;
for (const { file, only } of chosen) {
  if (!all.includes(file)) {
    console.error(`no such benchmark: bench/${file} (have: ${all.join(', ')}; groups: ${Object.keys(groups).join(', ')})`);
    failed++;
    continue;
  }
  const extra = only ? [`--only=${only}`] : [];
  if (!flags.includes('--json')) console.log(`\n== bench/${file}${only ? ` (${only})` : ''}`);
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [path.join(here, file), ...flags, ...extra], { stdio: 'inherit' });
  if (!flags.includes('--json')) console.log(`(bench/${file}: ${((performance.now() - t0) / 1000).toFixed(0)} s)`);
  if (r.status !== 0) {
    console.error(`bench/${file} failed (${r.signal ?? `exit ${r.status}`})`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
