// Child targets for bench/sync.bench.mjs (a child imports its target from a file).
import { heap } from '../dist/cjs/heap.js';

function ints(ref) {
  const block = heap().attach(ref);
  return new Int32Array(block.buffer, block.offset, block.size / 4);
}

/** n locked increments of c[0]. One function for the warm-up and the timed
 *  run, so the timed run executes code V8 has already optimized. */
function incrementMany(lock, c, n) {
  for (let i = 0; i < n; i++) {
    lock.acquireSync();
    c[0] = c[0] + 1;
    lock.release();
  }
}

/** Both children meet, increment together for warmMs untimed (counting
 *  those in c[3 + slot]), meet again, then make n timed increments and store
 *  the µs taken in c[1 + slot]. The warm-up must be contended, as the timed
 *  run is: warmed alone, V8 optimizes only the uncontended path, and the
 *  timed run's first contended acquires deoptimize the loop and run
 *  interpreted for milliseconds while both CPUs are busy (seen with
 *  --trace-deopt; a separate warm-up loop, as before, is not warmed at all). */
export function incrementLoop(lock, barrier, ref, n, slot, warmMs) {
  const c = ints(ref);
  barrier.waitSync();
  const warmEnd = performance.now() + warmMs;
  let warm = 0;
  while (performance.now() < warmEnd) {
    incrementMany(lock, c, 10_000);
    warm += 10_000;
  }
  c[3 + slot] = warm;
  barrier.waitSync();
  const t0 = performance.now();
  incrementMany(lock, c, n);
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

/** n increments of a shared Value under its own lock (an RLock, as CPython's
 *  Value has), cold: what a user's first program does. times[slot] gets the
 *  monotonic clock at entry (ms), times[2 + slot] the loop's ms. */
export function incrementValue(v, n, times, slot) {
  times.array[slot] = Number(process.hrtime.bigint()) / 1e6;
  const t0 = performance.now();
  const lock = v.getLock();
  for (let i = 0; i < n; i++) {
    lock.acquireSync();
    v.value += 1;
    lock.release();
  }
  times.array[2 + slot] = performance.now() - t0;
}
