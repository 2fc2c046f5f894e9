// Runs around every test file: after the file, this process must have no zombie
// children, no fds beyond those it had before, and /dev/shm no new entries.
import { afterAll, beforeAll, expect } from 'vitest';

import { fdTable, shmEntries, zombieChildren } from './proc';

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

  await settle(() => [...shmEntries()].every((e) => shmBefore.has(e)), 3000);
  const newShm = [...shmEntries()].filter((e) => !shmBefore.has(e));
  expect(newShm, '/dev/shm entries left behind').toEqual([]);

  await settle(() => leakedFds().length === 0, 2000);
  expect(leakedFds(), 'fds left open').toEqual([]);
});

// An fd is leaked when it is open now and was not before, or now points at
// something else. Our own kinds only: vitest's workers open and close fds of
// their own (files, its IPC), which are not ours to judge.
function leakedFds(): string[] {
  const now = fdTable();
  const out: string[] = [];
  for (const [fd, target] of now) {
    if (fdsBefore.get(fd) === target) continue;
    if (/^(pipe:|socket:|anon_inode:\[?pidfd|\/dev\/shm\/|anon_inode:\[eventfd\])/.test(target)) out.push(`${fd} -> ${target}`);
  }
  return out;
}
