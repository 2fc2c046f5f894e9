// Scenario 18: shared memory between unrelated processes. This program creates
// a block and starts a second program the ordinary way (child_process, not a
// Process child); that program attaches by name, reads our greeting and writes
// its answer; we read it back, unlink, and show the name is gone.
//   node examples/scenario-18-shared-memory.mjs
// (Run with an argument, `node examples/scenario-18-shared-memory.mjs <name>`, it
// plays the second program itself.)
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { SharedMemory } from 'posix-multiprocessing';

const peerName = process.argv[2];
if (peerName) {
  const shm = SharedMemory.open(peerName);
  const end = shm.buf.indexOf(0);
  console.log(`[peer pid ${process.pid}] read: ${Buffer.from(shm.buf.subarray(0, end)).toString()}`);
  shm.buf.set(Buffer.from(`hello back from pid ${process.pid}`), 128);
  shm.close();
} else {
  const shm = SharedMemory.create(256);
  shm.buf.set(Buffer.from(`hello from pid ${process.pid}`));
  console.log(`created ${shm.name} (${shm.size} bytes)`);
  process.stdout.write(execFileSync(process.execPath, [fileURLToPath(import.meta.url), shm.name], { encoding: 'utf8' }));
  const end = shm.buf.indexOf(0, 128);
  console.log(`read back: ${Buffer.from(shm.buf.subarray(128, end)).toString()}`);
  shm.close();
  shm.unlink();
  console.log(`after unlink, /dev/shm/${shm.name} exists: ${fs.existsSync(`/dev/shm/${shm.name}`)}`);
  try {
    SharedMemory.open(shm.name);
  } catch (err) {
    console.log(`attaching again fails with ${err.code}`);
  }
}
