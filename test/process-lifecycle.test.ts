// Process lifecycle across many children and across process deaths: reaping at
// scale, side by side with child_process, daemons (SCENARIO 7), parent-death
// signals, joining non-daemon children at exit, children of terminated worker
// threads, the fork-bomb guard, fd hygiene, and loading the package from
// CommonJS, ESM and TypeScript (tsx) programs.
import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

import { Process, activeChildren } from 'posix-multiprocessing';
import { binding } from '../dist/cjs/native.js';
import * as targets from './fixtures/targets.mjs';
import { childPids, isRunning } from './support/proc';
import { terminateWorkersProgram } from './support/workers';

const run = promisify(execFile);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pmp-lifecycle-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const out = (name: string) => path.join(tmp, name);
const programs = path.join(__dirname, 'fixtures', 'programs');
const program = (name: string) => path.join(programs, name);
const seconds = (since: number) => (performance.now() - since) / 1000;

async function waitFor<T>(probe: () => T | undefined, ms: number, what: string): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const readFileIfAny = (file: string) => (fs.existsSync(file) && fs.statSync(file).size > 0 ? fs.readFileSync(file, 'utf8') : undefined);

describe('many children', () => {
  it('100 children started and joined all exit 0, and none is left', async () => {
    const ps = Array.from({ length: 100 }, () => new Process({ target: targets.noop }));
    for (const p of ps) p.start();
    const codes = await Promise.all(ps.map((p) => p.join(60)));
    expect(codes).toEqual(Array(100).fill(0));
    const pids = new Set(ps.map((p) => p.pid));
    expect(pids.size).toBe(100);
    expect(childPids().filter((pid) => pids.has(pid))).toEqual([]);
  }, 90_000);

  it('100 children terminated all exit -15', async () => {
    // Each is terminated as soon as start() returns (after its exec): a hundred
    // Nodes booting at once would only measure how loaded the machine is.
    const ps = Array.from({ length: 100 }, () => new Process({ target: targets.sleepFor, args: [60] }));
    for (const p of ps) {
      p.start();
      p.terminate();
    }
    const codes = await Promise.all(ps.map((p) => p.join(30)));
    expect(codes).toEqual(Array(100).fill(-15));
    expect(activeChildren()).toEqual([]);
  }, 60_000);

  it('child_process.spawn keeps reporting its own exits while our children run (50 + 50)', async () => {
    const ours = Array.from({ length: 50 }, (_, i) => new Process({ target: targets.exitWith, args: [i % 5] }));
    const theirs: Promise<number | null>[] = [];
    for (let i = 0; i < 50; i++) {
      ours[i].start();
      const child = spawn('/bin/sh', ['-c', `exit ${10 + (i % 7)}`], { stdio: 'ignore' });
      theirs.push(new Promise((resolve, reject) => {
        child.on('error', reject);
        child.on('exit', (code) => resolve(code));
      }));
    }
    const [ourCodes, theirCodes] = await Promise.all([Promise.all(ours.map((p) => p.join(60))), Promise.all(theirs)]);
    expect(ourCodes).toEqual(ours.map((_, i) => i % 5));
    expect(theirCodes).toEqual(theirs.map((_, i) => 10 + (i % 7)));
  }, 90_000);
});

describe('daemons and parent death (SCENARIO 7)', () => {
  it('7. a daemon child is killed when the parent ends; the non-daemon sibling completes', async () => {
    const dir = fs.mkdtempSync(out('daemon-'));
    const t0 = performance.now();
    const { stdout } = await run(process.execPath, [program('daemon-end.mjs'), dir], { timeout: 20_000 });
    const took = seconds(t0);
    const pids = JSON.parse(stdout);
    // The parent stayed alive for its non-daemon child (1 s); the daemon (2 s)
    // never finished, whatever the startup delays were.
    expect(took).toBeGreaterThan(1);
    expect(fs.readFileSync(path.join(dir, 'worker'), 'utf8')).toBe(String(pids.worker));
    await waitFor(() => (isRunning(pids.daemon) ? undefined : true), 2000, 'the daemon to end');
    await sleep(1500); // past the daemon's 2 s: it must not have finished its work
    expect(fs.existsSync(path.join(dir, 'daemon'))).toBe(false);
  }, 30_000);

  it('a pending join() on a daemon child keeps the parent alive until it ends', async () => {
    const { stdout } = await run(process.execPath, [program('daemon-join.mjs')], { timeout: 20_000 });
    expect(JSON.parse(stdout)).toEqual({ exitCode: 0 });
  }, 30_000);

  it('a parent killed with SIGKILL leaves no child behind (daemon and non-daemon)', async () => {
    const parent = spawn(process.execPath, [program('orphans.mjs')], { stdio: ['ignore', 'pipe', 'inherit'] });
    let text = '';
    parent.stdout.on('data', (d) => (text += d));
    const exited = new Promise((resolve) => parent.on('exit', (code, signal) => resolve(signal)));
    const pids = await waitFor(() => (text.includes('\n') ? JSON.parse(text) : undefined), 15_000, 'the pids');
    expect(isRunning(pids.daemon)).toBe(true);
    expect(isRunning(pids.worker)).toBe(true);
    parent.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    await sleep(1000);
    expect(isRunning(pids.daemon)).toBe(false);
    expect(isRunning(pids.worker)).toBe(false);
  }, 30_000);

  for (const daemon of [false, true]) {
    it(`a child killed with SIGKILL takes its ${daemon ? 'daemon' : 'non-daemon'} grandchild with it`, async () => {
      const file = out(`grandchild-${daemon}`);
      // A daemon process may not have children, so the middle process is not one.
      const p = new Process({ target: targets.startGrandchild, args: [file, daemon] });
      p.start();
      const grandchild = Number(await waitFor(() => readFileIfAny(file), 15_000, 'the grandchild pid'));
      expect(isRunning(grandchild)).toBe(true);
      p.kill();
      expect(await p.join(10)).toBe(-9);
      await sleep(1000);
      expect(isRunning(grandchild)).toBe(false);
    }, 30_000);
  }

  it('a daemon process may not start children (ERR_MP_DAEMONIC)', async () => {
    const file = out('daemonic.json');
    const p = new Process({ target: targets.tryStartChild, args: [file], daemon: true });
    p.start();
    expect(await p.join(20)).toBe(0);
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toMatchObject({ code: 'ERR_MP_DAEMONIC' });
  });

  it('a non-daemon child may start children of its own', async () => {
    const file = out('nondaemonic');
    const p = new Process({ target: targets.tryStartChild, args: [file] });
    p.start();
    expect(await p.join(20)).toBe(0);
    expect(fs.readFileSync(file, 'utf8')).toBe('started');
  });
});

describe("a process's exit joins its non-daemon children (Python's _exit_function)", () => {
  it('a child that returns waits for its non-daemon grandchild, and its join() resolves after it', async () => {
    const file = out('joined-grandchild');
    const p = new Process({ target: targets.startMarkerAndReturn, args: [file, false, 1] });
    p.start();
    expect(await p.join(30)).toBe(0);
    // The grandchild did its work (its file holds its pid) and was gone before the child ended.
    const grandchild = Number(fs.readFileSync(`${file}.pid`, 'utf8'));
    expect(fs.readFileSync(file, 'utf8')).toBe(String(grandchild));
    expect(isRunning(grandchild)).toBe(false);
  }, 40_000);

  it('a child that returns terminates its daemon grandchild at once', async () => {
    const file = out('daemon-grandchild');
    const p = new Process({ target: targets.startMarkerAndReturn, args: [file, true, 1] });
    const t0 = performance.now();
    p.start();
    expect(await p.join(30)).toBe(0);
    const grandchild = Number(fs.readFileSync(`${file}.pid`, 'utf8'));
    await waitFor(() => (isRunning(grandchild) ? undefined : true), 5000, 'the daemon grandchild to end');
    // Past the 1 s it would have slept since the child started it: it never marked its file.
    await sleep(Math.max(0, 1500 - (performance.now() - t0)));
    expect(fs.existsSync(file)).toBe(false);
  }, 40_000);

  for (const [when, delay, bytes] of [
    ['200 ms after start()', 200, 0],
    ['right after start(), with an argument larger than a pipe holds', 0, 4 << 20],
  ] as const) {
    it(`process.exit(0) ${when}: the non-daemon children complete their work first`, async () => {
      const dir = fs.mkdtempSync(out('exit-early-'));
      await run(process.execPath, [program('exit-early.mjs'), dir, String(delay), String(bytes)], { timeout: 30_000 });
      // Both were joined before the program ended: their files are there now.
      expect(fs.existsSync(path.join(dir, 'marker'))).toBe(true);
      // The other found the Value on its queue after the 'exit' event: the
      // join ran before the hooks that release what children still use.
      expect(fs.readFileSync(path.join(dir, 'value'), 'utf8')).toBe('42');
    }, 40_000);
  }

  it('process.exit() right after a send() the pipe could not take whole: written out before the reader is joined', async () => {
    const { stdout } = await run(process.execPath, [program('exit-order.mjs'), 'flush'], { timeout: 30_000 });
    expect(stdout).toBe(`child got ${4 * 1024 * 1024}\n`);
  }, 40_000);

  it("a handle a child closes in its own 'exit' listener gives its reference back once, not twice", async () => {
    const { stdout } = await run(process.execPath, [program('exit-order.mjs'), 'release'], { timeout: 30_000 });
    expect(stdout).toBe('value 12345\n');
  }, 40_000);

  it('joinSync() right after start() with an argument larger than a pipe holds', () => {
    const p = new Process({ target: targets.sleepFor, args: [0, 'x'.repeat(4 << 20)] });
    p.start();
    // The child can only end once it has read its arguments, which the parent
    // must then write while it blocks.
    expect(p.joinSync(20)).toBe(0);
  }, 40_000);

  it('joinSync(timeout) keeps its timeout while a child does not read its arguments', async () => {
    // In a program of its own: a join that ignored its timeout would block this test's thread.
    const { stdout } = await run(process.execPath, [program('join-timeout.mjs')], { timeout: 30_000 });
    const [first, second] = stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(first.result).toBe(null);
    expect(first.ms).toBeLessThan(3000);
    expect(second.exit).toBe(0);
  }, 40_000);
});

describe('children of worker threads', () => {
  it('worker threads terminated with children running leave no zombie and no child behind', async () => {
    // Each worker runs a 30 s Process and a 4-process Pool. They get their
    // death signal as the worker's environment is torn down (on Linux the
    // kernel sends it too, as the worker's thread ends), and the process-wide
    // reaper reaps them: within the program's 10 s, all are gone.
    const { stdout } = await run(process.execPath, [program('worker-children.cjs')], { timeout: 60_000 });
    const { pids, left } = JSON.parse(stdout);
    expect(pids.length).toBe(10);
    expect(left).toEqual({});
  }, 70_000);
});

describe('child startup', () => {
  it('the child sees no fds of the parent beyond stdio', async () => {
    const opened: number[] = [];
    opened.push(fs.openSync(out('fd-probe-a'), 'w'));
    opened.push(fs.openSync(out('fd-probe-b'), 'w'));
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const parentTargets = new Set<string>();
      // The resource tracker's pipe is the one fd every child shares on
      // purpose (its EOF tells the tracker the program tree is gone).
      const tracker = (globalThis as Record<symbol, { fd?: number } | undefined>)[
        Symbol.for('posix-multiprocessing.resource-tracker')
      ];
      for (const fd of fs.readdirSync('/proc/self/fd')) {
        if (Number(fd) <= 2 || Number(fd) === tracker?.fd) continue;
        try {
          const link = fs.readlinkSync(`/proc/self/fd/${fd}`);
          // Paths and pipe/socket inodes name one open file; anon inodes do not.
          if (/^(\/|pipe:|socket:)/.test(link)) parentTargets.add(link);
        } catch {
          // the readdir fd
        }
      }
      const file = out('fds.json');
      const p = new Process({ target: targets.report, args: [file, null] });
      p.start();
      expect(await p.join(20)).toBe(0);
      const seen = JSON.parse(fs.readFileSync(file, 'utf8'));
      const childTargets = Object.entries(seen.fdTargets as Record<string, string>)
        .filter(([fd]) => Number(fd) > 2)
        .map(([, link]) => link);
      expect(childTargets.filter((link) => parentTargets.has(link))).toEqual([]);
      expect(childTargets.filter((link) => link.includes(tmp))).toEqual([]);
      expect(seen.stdinIsDevNull).toBe(true);
    } finally {
      for (const fd of opened) fs.closeSync(fd);
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('env and execArgv carry over; options.env replaces the environment', async () => {
    const a = out('env-a.json');
    const b = out('env-b.json');
    process.env.PMP_TEST_VAR = 'inherited';
    try {
      const p = new Process({ target: targets.report, args: [a, null] });
      const q = new Process({ target: targets.report, args: [b, null], env: { PMP_TEST_VAR: 'given', PATH: process.env.PATH ?? '' } });
      p.start();
      q.start();
      expect(await p.join(20)).toBe(0);
      expect(await q.join(20)).toBe(0);
    } finally {
      delete process.env.PMP_TEST_VAR;
    }
    const seenA = JSON.parse(fs.readFileSync(a, 'utf8'));
    expect(seenA.env).toBe('inherited');
    expect(seenA.execArgv).toEqual(process.execArgv.filter((f) => !/^--(inspect|eval|print|test|watch)/.test(f)));
    expect(JSON.parse(fs.readFileSync(b, 'utf8')).env).toBe('given');
  });

  it('fork-bomb guard: starting a process at top level of the target module fails in the child', async () => {
    const { stdout, stderr } = await run(process.execPath, [program('bomb.mjs')], { timeout: 20_000 });
    const result = JSON.parse(stdout);
    expect(result.exitCode).toBe(1);
    expect(stderr).toContain('ERR_MP_BOOTSTRAPPING');
    expect(stderr).toContain('isMainProcess()');
    expect(stderr).toMatch(/^Process Process-1:/m);
  }, 30_000);

  it('a throwing target prints its error on the child stderr prefixed with the process name', async () => {
    const { stdout, stderr } = await run(process.execPath, [program('run.mjs'), 'throwError', '["kaboom"]', 'Worker-7'], { timeout: 20_000 });
    expect(JSON.parse(stdout).exitCode).toBe(1);
    expect(stderr).toMatch(/^Process Worker-7:\nTypeError: kaboom\n\s+at throwError/m);
    expect(stderr).toContain("code: 'E_FIXTURE'");
  }, 30_000);

  it('process.exit(n) in the child is its exit code, with nothing on stderr', async () => {
    const { stdout, stderr } = await run(process.execPath, [program('run.mjs'), 'exitWith', '[42]'], { timeout: 20_000 });
    expect(JSON.parse(stdout).exitCode).toBe(42);
    expect(stderr).toBe('');
  }, 30_000);

  it('a target whose promise never settles exits 13 once its event loop empties, and says so', async () => {
    const { stdout, stderr } = await run(process.execPath, [program('run.mjs'), 'neverSettle', '[]', 'Stuck-1'], { timeout: 20_000 });
    const { pid, exitCode } = JSON.parse(stdout);
    expect(exitCode).toBe(13);
    expect(stderr).toBe(
      `Process Stuck-1 (pid ${pid}): the target's promise never settled: the event loop emptied with nothing ` +
        'left to settle it; exit code 13, as for an unsettled top-level await\n',
    );
  }, 30_000);

  it('the addon loads in a worker thread, which can start and join children', async () => {
    const { stdout } = await run(process.execPath, [program('worker-thread.cjs')], { timeout: 30_000 });
    expect(JSON.parse(stdout)).toEqual({ main: 3, worker: 4, cpus: true });
  }, 40_000);

  it('terminating a worker thread with children\'s exits not yet reported does not abort the process', async () => {
    // The worker blocks its thread until its children have exited, so their
    // exits are still to be reported by its loop when it is terminated. That
    // report then finds an environment that can not run JS, and the failed
    // call used to escape as a C++ exception (SIGABRT, every run).
    const entry = path.resolve('dist/cjs/index.js');
    const target = { module: path.resolve('test/fixtures/targets.mjs'), export: 'sleepFor' };
    const worker = `
      const fs = require('node:fs');
      const { Process } = require(${JSON.stringify(entry)});
      const children = [0, 1, 2].map(() => {
        const p = new Process({ target: ${JSON.stringify(target)}, args: [0] });
        p.start();
        p.join();
        return p;
      });
      const exited = (pid) => {
        try {
          return fs.readFileSync('/proc/' + pid + '/stat', 'utf8').split(') ')[1][0] === 'Z';
        } catch {
          return true;
        }
      };
      const nap = new Int32Array(new SharedArrayBuffer(4));
      while (!children.every((p) => exited(p.pid))) Atomics.wait(nap, 0, 0, 5);
      require('node:worker_threads').parentPort.postMessage('waiting');
      Atomics.wait(nap, 0, 0, 1000);
    `;
    const { stdout } = await run(process.execPath, ['-e', terminateWorkersProgram(worker)], { timeout: 60_000 });
    expect(stdout).toBe('done\n');
  }, 90_000);

  it('an exec that fails is a system error with a code, and leaves no child', () => {
    const before = childPids().length;
    expect(() => binding.spawn('/nonexistent/node', ['/nonexistent/node'], [], [], 15)).toThrow(
      expect.objectContaining({ code: 'ENOENT', syscall: 'execve' }),
    );
    expect(childPids().length).toBeLessThanOrEqual(before);
  });

  it('the package works from CommonJS require()', async () => {
    const file = out('cjs.json');
    const { stdout } = await run(process.execPath, [program('cjs-parent.cjs'), file], { timeout: 20_000 });
    expect(JSON.parse(stdout)).toEqual({ exitCode: 0 });
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ isMain: false, name: 'Process-1' });
  }, 30_000);

  it('the package works from an ES module import', async () => {
    const file = out('esm.json');
    const { stdout } = await run(process.execPath, [program('esm-parent.mjs'), file], { timeout: 20_000 });
    expect(JSON.parse(stdout)).toEqual({ exitCode: 0 });
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ isMain: false, name: 'Process-1' });
  }, 30_000);

  it('a TypeScript target works when the parent runs under tsx', async () => {
    const file = out('ts.json');
    const { stdout } = await run(process.execPath, ['--import', 'tsx', program('ts-parent.ts'), file], {
      timeout: 30_000,
      cwd: path.join(__dirname, '..'),
    });
    expect(JSON.parse(stdout)).toEqual({ exitCode: 0 });
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ isMain: false, name: 'Process-1', execArgv: ['--import', 'tsx'] });
  }, 40_000);
});
