// Scenario 22: ProcessPoolExecutor().map(isPrime, 1000000..1000999) finds 75 primes.
import { ProcessPoolExecutor, isMainProcess } from 'posix-multiprocessing';

export function isPrime(n) {
  if (n < 2) return false;
  if (n % 2 === 0) return n === 2;
  for (let i = 3; i * i <= n; i += 2) if (n % i === 0) return false;
  return true;
}

if (isMainProcess()) {
  const executor = new ProcessPoolExecutor();
  const numbers = Array.from({ length: 1000 }, (_, i) => 1_000_000 + i);
  const primes = [];
  let i = 0;
  for await (const prime of executor.map(isPrime, numbers)) {
    if (prime) primes.push(numbers[i]);
    i++;
  }
  await executor.shutdown();
  console.log(`${primes.length} primes between 1000000 and 1000999; first ${primes[0]}, last ${primes.at(-1)}`);
  if (primes.length !== 75) process.exitCode = 1;
}
