// Scenario 14: a child acquires an RLock twice and releases twice; another
// process (here the parent) cannot acquire it in between.
import { setTimeout as sleep } from 'node:timers/promises';
import { Event, Process, RLock, isMainProcess } from 'posix-multiprocessing';

export async function twice(rlock, held, done) {
  rlock.acquireSync();
  rlock.acquireSync();
  console.log(`child: holds the RLock ${rlock.count} times`);
  held.set();
  await sleep(500);
  rlock.release();
  console.log(`child: released once, still holds it ${rlock.count} time(s)`);
  await sleep(500);
  done.set();
  rlock.release();
  console.log('child: released twice');
}

if (isMainProcess()) {
  const rlock = new RLock();
  const held = new Event();
  const done = new Event();
  const child = new Process({ target: twice, args: [rlock, held, done] });
  child.start();
  await held.wait();
  let ok = true;
  for (let i = 0; i < 4; i++) {
    const got = rlock.acquireSync({ blocking: false });
    console.log(`parent: try-acquire while the child holds it -> ${got}`);
    ok &&= got === false || done.isSet();
    if (got) rlock.release();
    await sleep(200);
  }
  const got = await rlock.acquire({ timeout: 5 });
  console.log(`parent: acquire after the child's second release -> ${got}`);
  rlock.release();
  await child.join();
  process.exit(ok && got && child.exitCode === 0 ? 0 : 1);
}
