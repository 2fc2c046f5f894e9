// Child targets for bench/sync.bench.mjs (a child imports its target from a file).
import { heap } from '../dist/cjs/heap.js';

function ints(ref) {
  const block = heap().attach(ref);
  return new Int32Array(block.buffer, block.offset, block.size / 4);
}

/** warm untimed locked increments (V8 compiles the loop meanwhile), then the
 *  barrier, then n timed ones; stores its elapsed µs in c[1 + slot]. */
export function incrementLoop(lock, barrier, ref, n, slot, warm) {
  const c = ints(ref);
  for (let i = 0; i < warm; i++) {
    lock.acquireSync();
    c[0] = c[0] + 1;
    lock.release();
  }
  barrier.waitSync();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    lock.acquireSync();
    c[0] = c[0] + 1;
    lock.release();
  }
  c[1 + slot] = Math.round((performance.now() - t0) * 1000);
}

/** The other end of the ping-pong: await ping.acquire() then pong.release(), until stop is set. */
export async function pong(ping, pongSem, stop) {
  for (;;) {
    await ping.acquire();
    if (stop.isSet()) return;
    pongSem.release();
  }
}

/** The same with acquireSync(): the thread sleeps in the kernel. */
export function pongSync(ping, pongSem, stop) {
  for (;;) {
    ping.acquireSync();
    if (stop.isSet()) return;
    pongSem.release();
  }
}
