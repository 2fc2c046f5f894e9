// Scenario 12: a server child waits on a condition while a shared list (a file)
// is empty; two adder children append a name and notify(): the server serves both.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Condition, Process, isMainProcess } from 'posix-multiprocessing';

const items = (file) => fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);

export async function server(cond, list, count) {
  let served = 0;
  await cond.withLock(async () => {
    while (served < count) {
      await cond.waitFor(() => items(list).length > served);
      for (const name of items(list).slice(served)) console.log(`server: serving ${name}`);
      served = items(list).length;
    }
  });
}

export function adder(cond, list, name) {
  cond.withLockSync(() => {
    fs.appendFileSync(list, `${name}\n`);
    console.log(`adder: added ${name}`);
    cond.notify();
  });
}

if (isMainProcess()) {
  const list = path.join(os.tmpdir(), `pmp-scenario-12-${process.pid}.list`);
  fs.writeFileSync(list, '');
  const cond = new Condition();
  const s = new Process({ target: server, args: [cond, list, 2] });
  s.start();
  await new Promise((r) => setTimeout(r, 500)); // the server is waiting on an empty list
  const adders = ['alice', 'bob'].map((n) => new Process({ target: adder, args: [cond, list, n] }));
  adders.forEach((a) => a.start());
  for (const a of adders) await a.join();
  const code = await s.join();
  fs.rmSync(list);
  process.exit(code === 0 ? 0 : 1);
}
