// Scenario 4: subclass. run() runs in the child; default names are
// MyProcess-1, MyProcess-2; the child sees its own pid and its parent's.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Process, isMainProcess, parentProcess } from 'posix-multiprocessing';

export class MyProcess extends Process {
  run() {
    const seen = { name: this.name, pid: process.pid, parent: parentProcess().pid, ppid: process.ppid };
    console.log(`  in ${this.name}: pid ${seen.pid}, parent ${seen.parent}`);
    fs.writeFileSync(this.report, JSON.stringify(seen));
  }
}

if (isMainProcess()) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'scenario-04-'));
  const ps = [new MyProcess(), new MyProcess()];
  ps.forEach((p, i) => (p.report = path.join(dir, `${i}.json`)));
  for (const p of ps) p.start();
  const codes = await Promise.all(ps.map((p) => p.join()));
  let ok = codes.every((c) => c === 0);
  ps.forEach((p, i) => {
    const seen = JSON.parse(fs.readFileSync(p.report, 'utf8'));
    ok &&= p.name === `MyProcess-${i + 1}` && seen.name === p.name && seen.pid === p.pid;
    ok &&= seen.parent === process.pid && seen.ppid === process.pid;
  });
  fs.rmSync(dir, { recursive: true, force: true });
  console.log(`names: ${ps.map((p) => p.name).join(', ')}; parent pid ${process.pid}`);
  console.log(ok ? 'OK' : 'FAILED');
  process.exitCode = ok ? 0 : 1;
}
