// Child targets for bench/shm.bench.mjs (a child imports its target by reference).
export function incrementLocked(v, times) {
  const lock = v.getLock();
  for (let i = 0; i < times; i++) {
    lock.acquireSync();
    v.value += 1;
    lock.release();
  }
}
