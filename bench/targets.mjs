// Child targets for the benchmarks: as small as a target can be, so that what is
// measured is the cost of a process, not of its work.
export function noop() {}
