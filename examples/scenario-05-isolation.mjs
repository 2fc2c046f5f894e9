// Scenario 5: isolation. A child that changes a module-level variable does not
// change the parent's copy: each process has its own memory.
import { Process, isMainProcess } from 'posix-multiprocessing';

let counter = 0;

export function bump() {
  counter += 100;
  console.log(`  child: counter = ${counter}`);
  if (counter !== 100) process.exit(2);
}

if (isMainProcess()) {
  counter = 1;
  const p = new Process({ target: bump });
  p.start();
  const code = await p.join();
  console.log(`parent: counter = ${counter}`);
  const ok = code === 0 && counter === 1;
  console.log(ok ? 'OK' : 'FAILED');
  process.exitCode = ok ? 0 : 1;
}
