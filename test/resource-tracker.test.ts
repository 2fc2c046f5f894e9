import { execFile, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

import { Process, SharedMemory } from 'posix-multiprocessing';
import * as shmTargets from './fixtures/shm.mjs';
import { isRunning } from './support/proc';

const programs = path.join(__dirname, 'fixtures', 'programs');
const run = promisify(execFile);
const exists = (name: string) => fs.existsSync(`/dev/shm/${name}`);

interface Run {
  child: ChildProcess;
  lines: Promise<any[]>;
  stderr: () => string;
  exited: Promise<number | null>;
}

/**
 * Starts a program in its own process group; `lines` resolves with its first n JSON lines.
 * With stderrFile, its stderr (and its tracker's) goes there: a long report by
 * the tracker, which exits right after writing it, must not meet a full pipe.
 */
function start(script: string, args: string[], n: number, stderrFile?: string): Run {
  const errFd = stderrFile === undefined ? undefined : fs.openSync(stderrFile, 'w');
  const child = spawn(process.execPath, [path.join(programs, script), ...args], {
    stdio: ['ignore', 'pipe', errFd ?? 'pipe'],
    detached: true,
  });
  if (errFd !== undefined) fs.closeSync(errFd);
  let out = '';
  let err = '';
  child.stderr?.on('data', (d) => (err += d));
  const lines = new Promise<any[]>((resolve, reject) => {
    child.stdout!.on('data', (d) => {
      out += d;
      const got = out.split('\n').slice(0, -1).filter(Boolean); // complete lines only
      if (got.length >= n) resolve(got.slice(0, n).map((l) => JSON.parse(l)));
    });
    child.on('close', () => reject(new Error(`program ended before printing ${n} lines: ${out}\n${err}`)));
  });
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { child, lines, stderr: () => (stderrFile === undefined ? err : fs.readFileSync(stderrFile, 'utf8')), exited };
}

async function waitFor(check: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return check();
}


// Opens only to unlink, and closes: the fd must not wait for GC, or the
// file's fd leak check sees it.
function unlinkByName(name: string): void {
  const shm = SharedMemory.open(name);
  try {
    shm.unlink();
  } finally {
    shm.close();
  }
}

describe('resource tracker', () => {
  it('SIGKILL of a whole program tree holding segments: within seconds /dev/shm holds none of them', async () => {
    const run = start('shm-tree.mjs', [], 3);
    const reports = await run.lines;
    const names: string[] = reports.flatMap((r) => r.names);
    const pids: number[] = reports.map((r) => r.pid);
    // main: its SharedMemory + heap segment; each child: its SharedMemory + heap segment
    expect(names.length).toBeGreaterThanOrEqual(6);
    expect(names.every(exists)).toBe(true);

    process.kill(-run.child.pid!, 'SIGKILL'); // the program's whole process group
    expect(await run.exited).toBeNull();
    expect(await waitFor(() => pids.every((p) => !isRunning(p)), 5000)).toBe(true);
    expect(await waitFor(() => names.every((n) => !exists(n)), 5000)).toBe(true);
    // The tracker says what it cleaned up (it shares the program's stderr).
    expect(await waitFor(() => names.every((n) => run.stderr().includes(n)), 3000)).toBe(true);
    expect(run.stderr()).toContain('resource tracker');
  }, 30_000);

  it('{ track: false } opts a segment out: it survives the crash of its creator', async () => {
    const run = start('shm-tree.mjs', ['--untracked'], 3);
    const reports = await run.lines;
    const main = reports.find((r) => r.label === 'main');
    const names: string[] = reports.flatMap((r) => r.names);
    const untracked: string = main.untracked;
    try {
      process.kill(-run.child.pid!, 'SIGKILL');
      await run.exited;
      expect(await waitFor(() => names.every((n) => !exists(n)), 5000)).toBe(true);
      expect(exists(untracked)).toBe(true);
      expect(run.stderr()).not.toContain(untracked);
    } finally {
      unlinkByName(untracked);
    }
  }, 30_000);

  it('tracked random names need no message each, yet a SIGKILL right after create() leaves none; other names are not touched', async () => {
    const file = path.join(os.tmpdir(), `pmp-family-${process.pid}.json`);
    const run = start('shm-family.mjs', [file], 1);
    run.lines.catch(() => {}); // it prints nothing: the report is the file
    expect(await run.exited).toBeNull(); // killed itself
    const [json, last] = fs.readFileSync(file, 'utf8').split('\n');
    fs.rmSync(file);
    const { kept, unlinked, untracked, lookalike } = JSON.parse(json);
    try {
      // One family per process: /pmp_<pid>_<token>_<hex>, so the tracker finds them by prefix.
      const family = kept[0].slice(0, -12);
      expect(family).toMatch(/^pmp_\d+_[0-9a-f]{8}_$/);
      for (const name of [...kept, ...unlinked, last]) expect(name.startsWith(family)).toBe(true);
      expect(untracked.startsWith(family)).toBe(false);
      expect(await waitFor(() => [...kept, last].every((n) => !exists(n)), 5000)).toBe(true);
      expect(await waitFor(() => [...kept, last].every((n) => run.stderr().includes(n)), 3000)).toBe(true);
      for (const name of unlinked) expect(run.stderr()).not.toContain(name); // gone before the end: nothing to report
      expect(exists(untracked)).toBe(true);
      // A hand-chosen name outside the family that happens to look alike.
      expect(lookalike.startsWith(family)).toBe(false);
      expect(exists(lookalike)).toBe(true);
    } finally {
      for (const name of [untracked, lookalike]) if (exists(name)) unlinkByName(name);
    }
  }, 30_000);

  it('a program that forgets unlink() exiting normally: the tracker unlinks and warns; heap segments go at exit', async () => {
    const run = start('shm-forget.mjs', [], 1);
    const [report] = await run.lines;
    expect(await run.exited).toBe(0);
    expect(await waitFor(() => report.names.every((n: string) => !exists(n)), 5000)).toBe(true);
    // Only the forgotten SharedMemory is reported; heap segments were unlinked by their owner.
    expect(await waitFor(() => run.stderr().includes(report.names[0]), 3000)).toBe(true);
    for (const heapSegment of report.names.slice(1)) expect(run.stderr()).not.toContain(heapSegment);
  }, 30_000);

  it('a segment created with an explicit name persists after its creator exits, until unlink()', async () => {
    const name = `pmp_${process.pid}_named`;
    const run = start('shm-forget.mjs', ['--named', name], 1);
    const [report] = await run.lines;
    expect(report.named).toBe(name);
    expect(await run.exited).toBe(0);
    try {
      expect(await waitFor(() => !exists(report.names[0]), 5000)).toBe(true);
      expect(exists(name)).toBe(true);
    } finally {
      unlinkByName(name);
    }
    expect(exists(name)).toBe(false);
  }, 30_000);

  it("a killed child's heap segments are unlinked while the rest of the tree runs on", async () => {
    const file = path.join(os.tmpdir(), `pmp-heap-${process.pid}.json`);
    fs.rmSync(file, { force: true });
    const p = new Process({ target: shmTargets.holdHeap, args: [file] });
    p.start();
    try {
      expect(await waitFor(() => fs.existsSync(file) && fs.readFileSync(file, 'utf8').length > 0, 15_000)).toBe(true);
      const segments: string[] = JSON.parse(fs.readFileSync(file, 'utf8'));
      expect(segments.length).toBe(1);
      expect(exists(segments[0])).toBe(true);
      p.kill();
      expect(await p.join(10)).toBe(-9);
      expect(await waitFor(() => !exists(segments[0]), 5000)).toBe(true);
    } finally {
      fs.rmSync(file, { force: true });
    }
  }, 30_000);

  it('children share the parent tree\'s tracker: no tracker of their own, nothing extra left open', async () => {
    const shm = SharedMemory.create(64); // starts this process's tracker
    try {
      const tracker = (globalThis as any)[Symbol.for('posix-multiprocessing.resource-tracker')];
      expect(tracker.fd).toBeGreaterThan(2);
      expect(isRunning(tracker.pid)).toBe(true);
      const file = path.join(os.tmpdir(), `pmp-tracker-${process.pid}.json`);
      const p = new Process({ target: shmTargets.reportTracker, args: [file] });
      p.start();
      expect(await p.join(20)).toBe(0);
      const seen = JSON.parse(fs.readFileSync(file, 'utf8'));
      fs.rmSync(file);
      expect(seen.pid).toBeNull(); // the child started no tracker
      expect(seen.ino).toBe(fs.fstatSync(tracker.fd).ino); // it writes into our tracker's pipe
      expect(seen.env).toBeNull(); // and does not pass the variable on to unrelated programs
      // Still the one tracker, still running.
      expect(isRunning(tracker.pid)).toBe(true);
    } finally {
      shm.close();
      shm.unlink();
    }
  });
  it('one tracker for a program whose 20 worker threads each create segments and start a Process', async () => {
    const { stdout } = await run(process.execPath, [path.join(programs, 'tracker-workers.cjs')], { timeout: 90_000 });
    const { base, after, trackers, inodes, children } = JSON.parse(stdout);
    // The first worker started the one tracker; no later worker added a
    // tracker or an fd, and every child wrote into the same pipe.
    expect(trackers.length).toBe(1);
    expect(after).toBe(base);
    expect(children).toBe(20);
    expect(inodes.length).toBe(1);
    // The program has ended: its tracker reads EOF and exits.
    expect(await waitFor(() => !isRunning(trackers[0]), 5000)).toBe(true);
  }, 100_000);

  it("lines still queued when a program exits are written by its 'exit' hook: the tracker gets every name", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pmp-flood-exit-'));
    const flood = start('tracker-flood.mjs', [dir, '1', '300', 'exit'], 1, path.join(dir, 'stderr'));
    flood.lines.catch(() => {}); // it prints nothing: the report is a file
    const trackerFile = path.join(dir, 'tracker.pid');
    let names: string[] = [];
    try {
      expect(await flood.exited).toBe(0);
      const report = JSON.parse(fs.readFileSync(path.join(dir, 'names.json'), 'utf8'));
      names = report.names;
      expect(report.queued[0]).toBeGreaterThan(0);
      expect(await waitFor(() => !isRunning(report.tracker), 5000)).toBe(true);
      expect(names.filter(exists)).toEqual([]);
    } finally {
      if (fs.existsSync(trackerFile)) {
        try {
          process.kill(Number(fs.readFileSync(trackerFile, 'utf8')), 'SIGCONT');
        } catch {
          // gone
        }
      }
      for (const name of names) if (exists(name)) unlinkByName(name);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 40_000);

  it('a full pipe: lines of 4 processes wait in each and reach the tracker whole, so a SIGKILL of the tree leaves no name', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pmp-flood-'));
    const flood = start('tracker-flood.mjs', [dir, '4', '300'], 1, path.join(dir, 'stderr'));
    let tracker = 0;
    try {
      const [report] = await flood.lines;
      tracker = report.tracker;
      const { queued, names } = report;
      // While the tracker was stopped, lines had to wait in every process.
      expect(queued.every((n: number) => n > 0)).toBe(true);
      expect(names.length).toBe(1200);
      expect(names.every(exists)).toBe(true);
      process.kill(-flood.child.pid!, 'SIGKILL');
      await flood.exited;
      expect(await waitFor(() => names.every((n: string) => !exists(n)), 10_000)).toBe(true);
      // The tracker unlinked each of them, from a line it read whole: every
      // name it reports is one of ours, and each once.
      expect(await waitFor(() => !isRunning(tracker), 5000)).toBe(true);
      const reported = flood.stderr().split('\n').filter((l) => l.startsWith('  shm /pmp-flood-')).map((l) => l.slice(6));
      expect(reported.sort()).toEqual([...names].sort());
    } finally {
      // Never leave a stopped tracker or a flood behind, whatever failed.
      if (tracker) {
        try {
          process.kill(tracker, 'SIGCONT');
        } catch {
          // gone
        }
      }
      if (flood.child.exitCode === null && flood.child.signalCode === null) process.kill(-flood.child.pid!, 'SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
