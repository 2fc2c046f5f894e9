// `npm run demo`: a short real run. Four child processes, each a fresh Node,
// search disjoint ranges for primes in parallel while the parent watches them;
// one more child is terminated midway. Everything is reaped; nothing is left.
import { setTimeout as sleep } from 'node:timers/promises';
import { Process, activeChildren, cpuCount, currentProcess, isMainProcess, parentProcess } from 'posix-multiprocessing';

export function countPrimes(from, to) {
  let count = 0;
  for (let n = Math.max(2, from); n < to; n++) {
    let prime = true;
    for (let d = 2; d * d <= n; d++) {
      if (n % d === 0) {
        prime = false;
        break;
      }
    }
    if (prime) count++;
  }
  const me = currentProcess();
  console.log(`  ${me.name} (pid ${me.pid}, parent ${parentProcess().pid}): ${count} primes in [${from}, ${to})`);
  process.exitCode = 0;
  return count;
}

export async function sleepForever() {
  await sleep(60_000);
}

if (isMainProcess()) {
  console.log(`${currentProcess().name} pid ${process.pid}; ${cpuCount()} CPUs`);
  const t0 = performance.now();
  const step = 250_000;
  const workers = [0, 1, 2, 3].map((i) => new Process({ target: countPrimes, args: [i * step, (i + 1) * step], name: `Searcher-${i + 1}` }));
  const sleeper = new Process({ target: sleepForever, daemon: true });
  for (const p of [...workers, sleeper]) p.start();
  console.log(`running: ${activeChildren().map((p) => `${p.name}[${p.pid}]`).join(' ')}`);
  await sleep(300);
  sleeper.terminate();
  console.log(`${sleeper.name} terminated: exit code ${await sleeper.join()}`);
  const codes = await Promise.all(workers.map((p) => p.join()));
  console.log(`searchers exited with ${codes.join(', ')} after ${((performance.now() - t0) / 1000).toFixed(2)} s; still running: ${activeChildren().length}`);
  process.exitCode = codes.every((c) => c === 0) ? 0 : 1;
}
