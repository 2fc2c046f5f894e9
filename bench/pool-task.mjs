// The trivial task every pool in bench/pool.bench.mjs runs.
export function identity(x) {
  return x;
}
export default identity;
