// A child target that reports, from its first line, what its start cost: the
// monotonic clock (process.hrtime, CLOCK_MONOTONIC: comparable across
// processes), the minor page faults the child has taken so far and its CPU
// time in user and in kernel mode (a forked child's counters start at the
// fork), written to the file named by the parent. Kept apart from
// targets.mjs so that the timed trivial target imports nothing.
import { writeFileSync } from 'node:fs';

export function probe(file) {
  const at = process.hrtime.bigint();
  const { minorPageFault: faults, userCPUTime: userUs, systemCPUTime: systemUs } = process.resourceUsage();
  writeFileSync(file, JSON.stringify({ at: String(at), faults, userUs, systemUs }));
}
