// Scenario 20: a writer task puts the letters of 'itcast' on a queue; a later
// reader task gets all six. (Python uses a Manager queue; a plain Queue travels
// to pool workers as a handle to the same shared ring.)
import { Pool, Queue, isMainProcess } from 'posix-multiprocessing';

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
  const queue = new Queue();
  const pool = new Pool({ processes: 2 });
  await pool.apply(writer, [queue, 'itcast']);
  const got = await pool.apply(reader, [queue, 6]);
  pool.close();
  await pool.join();
  queue.close();
  if (got !== 'itcast') process.exitCode = 1;
}
