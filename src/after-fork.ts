// State a module keeps per process (its pid in a constant, a cache of random
// bytes) is copied into every child a forkserver forks. Such a module
// registers here how to make its copy its own; a forked child runs these
// first thing (child/forked.ts), before any code of the program.
const hooks: (() => void)[] = [];

/** Registers fn to run in each child forked from this process. */
export function afterFork(fn: () => void): void {
  hooks.push(fn);
}

/** Runs the registered repairs (in a freshly forked child only). */
export function runAfterFork(): void {
  for (const fn of hooks) fn();
}
