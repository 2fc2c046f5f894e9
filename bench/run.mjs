// Runs the benchmarks: every bench/*.bench.mjs, or those named on the command
// line (`node bench/run.mjs process`), each in its own Node process, one after
// another. `--json` is passed through: one JSON line per scenario.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const flags = args.filter((a) => a.startsWith('--'));
const names = args.filter((a) => !a.startsWith('--'));
const all = fs.readdirSync(here).filter((f) => f.endsWith('.bench.mjs')).sort();
const chosen = names.length === 0 ? all : names.map((n) => (n.endsWith('.bench.mjs') ? n : `${n}.bench.mjs`));

let failed = 0;
for (const file of chosen) {
  if (!all.includes(file)) {
    console.error(`no such benchmark: bench/${file} (have: ${all.join(', ')})`);
    failed++;
    continue;
  }
  if (!flags.includes('--json')) console.log(`\n== bench/${file}`);
  const r = spawnSync(process.execPath, [path.join(here, file), ...flags], { stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`bench/${file} failed (${r.signal ?? `exit ${r.status}`})`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
