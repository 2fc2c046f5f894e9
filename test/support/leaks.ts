// Runs around every test file: after the file, this process must have no zombie
// children, no fds beyond those it had before, and /dev/shm no new entries.
import { afterAll, beforeAll, expect } from 'vitest';

import { fdTable, isRunning, shmEntries, zombieChildren } from './proc';

let fdsBefore: Map<string, string>;
let shmBefore: Set<string>;

beforeAll(() => {
  fdsBefore = fdTable();
  shmBefore = shmEntries();
});

async function settle(check: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
}

afterAll(async () => {
  // Children killed at the end of a test are reaped on the next loop turns.
  await settle(() => zombieChildren().length === 0, 3000);
  expect(zombieChildren(), 'zombie children left behind').toEqual([]);

  await settle(() => newShmEntries().length === 0, 3000);
  const newShm = newShmEntries();
  expect(newShm, '/dev/shm entries left behind').toEqual([]);

  await settle(() => leakedFds().length === 0, 2000);
  expect(leakedFds(), 'fds left open').toEqual([]);
});

// Test files run in parallel and /dev/shm is shared, so an entry is judged by
// the pid its name carries (heap segments /pmp-<pid>-..., random SharedMemory
// names /pmp_<pid>_...): entries of another process that is still running are
// that process's business. This process's heap segments live as long as it does
// and are unlinked at its exit (or by the resource tracker after a crash;
// test/resource-tracker.test.ts checks both), so they are not a leak either.
function newShmEntries(): string[] {
  return [...shmEntries()].filter((e) => {
    if (shmBefore.has(e)) return false;
    // This process's heap segments (pmp-<pid>-...) are process-lifetime.
    if (e.startsWith(`pmp-${process.pid}-`)) return false;
    // The first all-digit component of a name is taken as its creator's pid
    // (pmp_<pid>_..., pmp-<pid>-..., and the package's other objects, pmp-<kind>-<pid>-...).
    const m = /(?:^|[-_])(\d+)(?=[-_]|$)/.exec(e);
    if (!m) return true;
    const pid = Number(m[1]);
    return pid === process.pid || !isRunning(pid);
  });
}

// The resource tracker's pipe stays open for the life of the process (its EOF
// is what tells the tracker the program ended); its fd is published on
// globalThis by src/resource-tracker.ts.
function trackerFds(): Set<string> {
  const state = (globalThis as Record<symbol, { fd?: number } | undefined>)[Symbol.for('posix-multiprocessing.resource-tracker')];
  return new Set(state && typeof state.fd === 'number' && state.fd >= 0 ? [String(state.fd)] : []);
}

// An fd is leaked when it is open now and was not before, or now points at
// something else. Our own kinds only: vitest's workers open and close fds of
// their own (files, its IPC), which are not ours to judge.
function leakedFds(): string[] {
  const now = fdTable();
  const out: string[] = [];
  const tracker = trackerFds();
  for (const [fd, target] of now) {
    if (fdsBefore.get(fd) === target || tracker.has(fd)) continue;
    if (/^(pipe:|socket:|anon_inode:\[?pidfd|\/dev\/shm\/|anon_inode:\[eventfd\])/.test(target)) out.push(`${fd} -> ${target}`);
  }
  return out;
}
