// Scenario 20: a writer pool task puts the letters of 'itcast' on a Manager
// queue; a later reader task gets all six. As in Python, the queue lives in
// the manager's server process and the tasks receive proxies to it.
import { Manager, Pool, isMainProcess } from 'posix-multiprocessing';

export async function writer(queue, word) {
  for (const letter of word) {
    await queue.put(letter);
    console.log(`writer ${process.pid} put ${letter}`);
  }
}

export async function reader(queue, count) {
  const letters = [];
  for (let i = 0; i < count; i++) letters.push(await queue.get({ timeout: 10 }));
  console.log(`reader ${process.pid} got ${letters.join('')}`);
  return letters.join('');
}

if (isMainProcess()) {
  const manager = await Manager.start();
  const queue = await manager.Queue();
  const pool = new Pool({ processes: 2 });
  await pool.apply(writer, [queue, 'itcast']);
  const got = await pool.apply(reader, [queue, 6]);
  pool.close();
  await pool.join();
  const left = await queue.qsize();
  await manager.shutdown();
  if (got === 'itcast' && left === 0) console.log('OK');
  else process.exitCode = 1;
}
