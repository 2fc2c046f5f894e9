// Scenario 21: a manager's list() and dict() are changed by several children,
// and the parent sees every change (Python's Manager().list() / .dict()).
import { Manager, Process, isMainProcess } from 'posix-multiprocessing';

export async function worker(shared, registry, n) {
  await shared.append(n * n);
  await registry.set(`child-${n}`, { pid: process.pid, square: n * n });
}

if (isMainProcess()) {
  const manager = await Manager.start();
  const shared = await manager.list(['parent']);
  const registry = await manager.dict();
  const children = [1, 2, 3, 4, 5].map((n) => new Process({ target: worker, args: [shared, registry, n] }));
  for (const p of children) p.start();
  const codes = await Promise.all(children.map((p) => p.join()));
  const items = await shared.toArray();
  const seen = await registry.toObject();
  console.log('list:', items);
  console.log('dict:', seen);
  await manager.shutdown();
  const squares = items.slice(1).sort((a, b) => a - b);
  const ok =
    codes.every((c) => c === 0) &&
    items[0] === 'parent' &&
    squares.join() === '1,4,9,16,25' &&
    children.every((p, i) => seen[`child-${i + 1}`]?.pid === p.pid && seen[`child-${i + 1}`].square === (i + 1) ** 2);
  if (ok) console.log('OK');
  else process.exitCode = 1;
}
