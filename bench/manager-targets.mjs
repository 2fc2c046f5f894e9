// Child targets for bench/manager.bench.mjs.

/** Says it is ready, waits for the go, makes n appends to a manager list (a round trip each), says done. */
export async function appendMany(list, n, ready, go, done) {
  await ready.put(1);
  await go.get();
  for (let i = 0; i < n; i++) await list.append(i);
  await done.put(1);
}

/** n appends to a manager list (a round trip each), from the first moment. */
export async function appendAll(list, n) {
  for (let i = 0; i < n; i++) await list.append(i);
}
