// What the benchmarks share: the fresh-process trial runner, the median, the
// --only filter, and the timing of a fresh process from its start to its
// first line of output (a cold start as a user meets it).
import { spawn } from 'node:child_process';

// A benchmark file that runs each trial in a fresh process is its own trial
// runner: `node x.bench.mjs --trial <key> <n>` runs one trial and prints
// {"value"}; without --trial the file runs its main().
export async function trialOrMain(trial, main) {
  if (process.argv[2] === '--trial') {
    const value = await trial(process.argv[3], Number(process.argv[4]));
    console.log(JSON.stringify({ value }));
    process.exit(0);
  }
  await main();
}

/** The median (the mean of the middle two for an even count). */
export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** `--only=<part of a scenario key>[,<another>...]` from the command line: a test keeping the scenarios to run. */
export function onlyFilter(argv = process.argv) {
  const only = argv.find((a) => a.startsWith('--only='))?.slice('--only='.length).split(',');
  return (key) => !only || only.some((part) => key.includes(part));
}

/**
 * Starts `command args` and times it from just before the spawn to the arrival
 * of its first line on stdout; resolves, once it has exited with 0, to
 * { ms, lines }: the time, and every line it printed. A cold start measured
 * from the outside, as a user waiting for a program meets it (interpreter
 * start and imports included).
 */
export function timeToFirstLine(command, args) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let ms = null;
    let out = '';
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      if (ms === null && chunk.includes('\n')) ms = performance.now() - t0;
      out += chunk;
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code !== 0 || ms === null) reject(new Error(`${command} ${args.join(' ')}: ${signal ?? `exit ${code}`}, ${ms === null ? 'no output' : 'after its first line'}`));
      else resolve({ ms, lines: out.trim().split('\n') });
    });
  });
}

const fmt = (x, d) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(d) : 'n/a');
const round = (x, d) => (typeof x === 'number' && Number.isFinite(x) ? Number(x.toFixed(d)) : null);

/**
 * Prints one comparison: our figure beside a competitor's from the same run,
 * the ratio ours/theirs, and, when the issue sets one, its target and whether
 * the ratio meets it (target: { atMost } for times, { atLeast } for rates).
 * With json, one JSON line instead.
 */
export function compare({ json, scenario, unit, oursLabel, ours, theirsLabel, theirs, target, digits = 1 }) {
  const ratio = typeof ours === 'number' && typeof theirs === 'number' ? ours / theirs : null;
  let met = null;
  let goal = '';
  if (target && ratio !== null) {
    met = 'atMost' in target ? ratio <= target.atMost : ratio >= target.atLeast;
    goal = `target ${'atMost' in target ? `<= ${target.atMost}` : `>= ${target.atLeast}`}: ${met ? 'met' : 'NOT met'}`;
  }
  if (json) {
    console.log(JSON.stringify({
      scenario, unit, ours_label: oursLabel, ours: round(ours, 3), competitor: theirsLabel, theirs: round(theirs, 3),
      ratio: round(ratio, 3), ...(target ? { target, met } : {}),
    }));
  } else {
    console.log(`  ${oursLabel.padEnd(20)} ${fmt(ours, digits).padStart(9)}  vs  ${theirsLabel.padEnd(32)} ${fmt(theirs, digits).padStart(9)} ${unit.padEnd(7)} ratio ${fmt(ratio, 3).padStart(6)}   ${goal}`);
  }
}
