// Scenario 9: six children buy from a JSON ticket file under a lock: the count
// never goes below 0 and exactly as many buy as there were tickets.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Lock, Process, isMainProcess } from 'posix-multiprocessing';

export function buy(lock, file) {
  lock.withLockSync(() => {
    const state = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (state.tickets > 0) {
      state.tickets -= 1;
      state.buyers.push(process.pid);
      console.log(`${process.pid} bought a ticket, ${state.tickets} left`);
    } else {
      console.log(`${process.pid}: sold out`);
    }
    fs.writeFileSync(file, JSON.stringify(state));
  });
}

if (isMainProcess()) {
  const file = path.join(os.tmpdir(), `pmp-scenario-09-${process.pid}.json`);
  fs.writeFileSync(file, JSON.stringify({ tickets: 4, buyers: [] }));
  const lock = new Lock();
  const kids = Array.from({ length: 6 }, () => new Process({ target: buy, args: [lock, file] }));
  kids.forEach((k) => k.start());
  for (const k of kids) await k.join();
  const state = JSON.parse(fs.readFileSync(file, 'utf8'));
  fs.rmSync(file);
  console.log(`tickets left: ${state.tickets}; buyers: ${state.buyers.length}`);
  process.exit(state.tickets === 0 && state.buyers.length === 4 ? 0 : 1);
}
