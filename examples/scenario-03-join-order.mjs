// Scenario 3: join order. Children sleeping 1, 2 and 3 s, joined in turn: the
// parent sees them end at about 1, 2 and 3 s. Started and joined one at a time
// instead, they take the sum.
import { setTimeout as sleep } from 'node:timers/promises';
import { Process, isMainProcess } from 'posix-multiprocessing';

export async function nap(seconds) {
  await sleep(seconds * 1000);
}

const since = (t0) => (performance.now() - t0) / 1000;

if (isMainProcess()) {
  let ok = true;
  let t0 = performance.now();
  const ps = [1, 2, 3].map((s) => new Process({ target: nap, args: [s] }));
  for (const p of ps) p.start();
  // Each end is the sleep plus that child's startup (a tenth of a second on an
  // idle machine, more on a busy one): each join comes after i + 1 s, and the
  // three come about a second apart.
  let previous = 0;
  for (const [i, p] of ps.entries()) {
    await p.join();
    const t = since(t0);
    console.log(`together: ${p.name} (${i + 1} s) joined at ${t.toFixed(2)} s`);
    ok &&= t > i + 1 - 0.05 && (i === 0 || (t - previous > 0.3 && t - previous < 1.9));
    previous = t;
  }
  t0 = performance.now();
  for (const s of [1, 2, 3]) {
    const p = new Process({ target: nap, args: [s] });
    p.start();
    await p.join();
  }
  const sum = since(t0);
  console.log(`one at a time: ${sum.toFixed(2)} s in all`);
  ok &&= sum > 5.95;
  console.log(ok ? 'OK' : 'FAILED');
  process.exitCode = ok ? 0 : 1;
}
