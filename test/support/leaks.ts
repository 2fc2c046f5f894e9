// Runs around every test file: after the file, this process must have no zombie
// children (nor may its forkserver), no fds beyond those it had before, and
// /dev/shm no new entries.
import * as fs from 'node:fs';
import { afterAll, beforeAll, expect } from 'vitest';

import { childPids, fdTable, forkservers, pidfdTarget, shmEntries, zombieChildren } from './proc';

let fdsBefore: Map<string, string>;
let shmBefore: Set<string>;

// /dev/shm is shared by every program on the machine, including test files
// running beside this one. Our names carry the creating pid (pmp-<pid>-...,
// pmp-q-<pid>-..., SharedMemory's pmp_<pid>_...), so an entry counts against
// this file when that pid is this process or one it started; the tree is
// sampled while the file runs. A test names its own objects with its pid
// anywhere in the name (t-<pid>-lock, pmp-example-<pid>): any number there
// between separators counts. Names without a pid are always counted, except
// CPython's (sem.mp-..., psm_...: benchmarks run it beside the tests). This
// process's own heap segments (pmp-<pid>-...) live as long as it does and are
// unlinked at its exit (test/resource-tracker.test.ts checks that), so they
// are not a leak.
const ourPids = new Set<number>([process.pid]);
function sampleTree(): void {
  // Every thread of this process; only the main thread of descendants (Node
  // spawns from the thread that asks, almost always the main one), to keep
  // each sample cheap while a hundred children run.
  const queue = childPids(process.pid);
  while (queue.length) {
    const pid = queue.pop()!;
    ourPids.add(pid);
    queue.push(...mainThreadChildren(pid));
  }
}
function mainThreadChildren(pid: number): number[] {
  try {
    const text = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
    return text ? text.split(/\s+/).map(Number) : [];
  } catch {
    return []; // gone
  }
}
const sampler = setInterval(sampleTree, 50);
sampler.unref();

function isOurs(entry: string): boolean {
  if (entry.startsWith(`pmp-${process.pid}-`)) return false;
  const numbers = entry.match(/(?<=^|[.\-_])\d+(?=$|[.\-_])/g);
  if (numbers) return numbers.some((n) => ourPids.has(Number(n)));
  return !/^(sem\.mp-|psm_)/.test(entry);
}

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
  // A forkserver reaps the children it forked: none may stay a zombie there either.
  const zombies = () => [...zombieChildren(), ...forkservers().flatMap((server) => zombieChildren(server))];
  await settle(() => zombies().length === 0, 3000);
  expect(zombies(), 'zombie children left behind').toEqual([]);

  sampleTree();
  clearInterval(sampler);
  const newShm = () => [...shmEntries()].filter((e) => !shmBefore.has(e) && isOurs(e));
  await settle(() => newShm().length === 0, 3000);
  expect(newShm(), '/dev/shm entries left behind').toEqual([]);

  await settle(() => leakedFds().length === 0, 2000);
  expect(leakedFds(), 'fds left open').toEqual([]);
});

// The resource tracker's pipe stays open for the life of the process (its EOF
// is what tells the tracker the program ended); its fd is published on
// globalThis by src/resource-tracker.ts.
function lifelongFds(): Set<string> {
  const state = (globalThis as Record<symbol, { fd?: number } | undefined>)[Symbol.for('posix-multiprocessing.resource-tracker')];
  const fds = new Set(state && typeof state.fd === 'number' && state.fd >= 0 ? [String(state.fd)] : []);
  // The fd sharer's listening socket and wake pipe live as long as the process
  // too (src/fd-share.ts); the duplicates it holds are not listed, so they count.
  const sharer = (globalThis as Record<symbol, { ownFds(): number[] } | undefined>)[Symbol.for('posix-multiprocessing.fd-sharer')];
  for (const fd of sharer?.ownFds() ?? []) fds.add(String(fd));
  // This thread's forkserver lives until the process ends (src/forkserver.ts):
  // the caller's end of its control socket, and the pidfd watching it.
  const server = (globalThis as Record<symbol, { forkserver?: { pid: number; ctrl: number } | null } | undefined>)[
    Symbol.for('posix-multiprocessing.context')
  ]?.forkserver;
  if (server && server.ctrl >= 0) {
    fds.add(String(server.ctrl));
    for (const [fd, target] of fdTable()) {
      if (target === 'anon_inode:[pidfd]' && pidfdTarget(fd) === server.pid) fds.add(fd);
    }
  }
  return fds;
}

// An fd is leaked when it is open now and was not before, or now points at
// something else. Our own kinds only: vitest's workers open and close fds of
// their own (files, its IPC), which are not ours to judge.
function leakedFds(): string[] {
  const now = fdTable();
  const out: string[] = [];
  const lifelong = lifelongFds();
  for (const [fd, target] of now) {
    if (fdsBefore.get(fd) === target || lifelong.has(fd)) continue;
    if (/^(pipe:|socket:|anon_inode:\[?pidfd|\/dev\/shm\/|anon_inode:\[eventfd\])/.test(target)) out.push(`${fd} -> ${target}`);
  }
  return out;
}
