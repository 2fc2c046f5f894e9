// Process: SCENARIOS 1-6 (7 lives in process-lifecycle.test.ts), exit codes,
// naming, the state machine (start/join/close) and argument validation.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';

import {
  Process,
  activeChildren,
  cpuCount,
  currentProcess,
  getStartMethod,
  getAllStartMethods,
  isMainProcess,
  parentProcess,
  setStartMethod,
} from 'posix-multiprocessing';
import * as targets from './fixtures/targets.mjs';
import { isRunning } from './support/proc';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pmp-process-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const out = (name: string) => path.join(tmp, name);
const readJson = (file: string) => JSON.parse(fs.readFileSync(file, 'utf8'));
const seconds = (since: number) => (performance.now() - since) / 1000;

async function waitForFile(file: string, ms = 10_000): Promise<string> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (fs.existsSync(file) && fs.statSync(file).size > 0) return fs.readFileSync(file, 'utf8');
    await sleep(20);
  }
  throw new Error(`${file} did not appear within ${ms} ms`);
}

describe('Process basics', () => {
  it('runs an exported target in a child and reports exit code 0', async () => {
    const file = out('report.json');
    const p = new Process({ target: targets.report, args: [file, { hello: 'world' }] });
    expect(p.pid).toBeUndefined();
    expect(p.exitCode).toBeNull();
    expect(p.isAlive()).toBe(false);
    p.start();
    expect(typeof p.pid).toBe('number');
    expect(await p.join()).toBe(0);
    expect(p.exitCode).toBe(0);
    expect(p.isAlive()).toBe(false);
    const seen = readJson(file);
    expect(seen.pid).toBe(p.pid);
    // Python's spawn gives the child the parent's sys.argv; so do we.
    expect(seen.argv.slice(1)).toEqual(process.argv.slice(1));
    expect(seen.ppid).toBe(process.pid);
    expect(seen.current.name).toBe(p.name);
    expect(seen.current.daemon).toBe(false);
    expect(seen.parent.pid).toBe(process.pid);
    expect(seen.parent.name).toBe('MainProcess');
    expect(seen.extra).toEqual({ hello: 'world' });
    expect(seen.stdinIsDevNull).toBe(true);
    expect(isMainProcess()).toBe(true);
  });

  it('main-process queries: currentProcess, parentProcess, cpuCount, start method', () => {
    expect(currentProcess().name).toBe('MainProcess');
    expect(currentProcess().pid).toBe(process.pid);
    expect(currentProcess().daemon).toBe(false);
    expect(parentProcess()).toBeNull();
    expect(isMainProcess()).toBe(true);
    const n = cpuCount();
    expect(Number.isInteger(n)).toBe(true);
    expect(n).toBeGreaterThanOrEqual(1);
    const platformDefault = process.platform === 'linux' ? 'forkserver' : 'spawn';
    // The start-method matrix (vitest.config.mjs) sets the method of this file's process.
    const current = (process.env.PMP_TEST_START_METHOD as typeof platformDefault | undefined) ?? platformDefault;
    expect(getStartMethod()).toBe(current);
    expect(getAllStartMethods()).toEqual(process.platform === 'linux' ? ['forkserver', 'spawn'] : ['spawn']);
    for (const method of getAllStartMethods()) {
      setStartMethod(method);
      expect(getStartMethod()).toBe(method);
    }
    setStartMethod(current);
    expect(getStartMethod()).toBe(current);
  });

  it('isMainProcess() is false in a child, and the child has no children of its own', async () => {
    const file = out('main.json');
    const p = new Process({ target: targets.reportMain, args: [file] });
    p.start();
    expect(await p.join()).toBe(0);
    expect(readJson(file)).toEqual({ isMain: false, children: 0 });
  });

  it('the child exits when its target returns, even with handles left open', async () => {
    const file = out('open-handle');
    const p = new Process({ target: targets.leaveTimerOpen, args: [file] });
    const t0 = performance.now();
    p.start();
    expect(await p.join(10)).toBe(0);
    expect(seconds(t0)).toBeLessThan(5);
    expect(fs.readFileSync(file, 'utf8')).toBe('returned');
  });

  it('a Process without a target runs nothing and exits 0', async () => {
    const p = new Process();
    p.start();
    expect(await p.join()).toBe(0);
  });
});

describe('SCENARIOS 1-6', () => {
  it('1. one process: alive with a pid while it sleeps, exit code 0 after join', async () => {
    const p = new Process({ target: targets.helloThenSleep, args: [1] });
    p.start();
    expect(p.isAlive()).toBe(true);
    expect(p.pid).toBeGreaterThan(0);
    expect(isRunning(p.pid!)).toBe(true);
    expect(await p.join()).toBe(0);
    expect(p.exitCode).toBe(0);
    expect(p.isAlive()).toBe(false);
  });

  // Wall-clock figures include each child's startup, which on a shared, busy
  // machine can reach seconds; so the children record when they slept, and
  // the tests assert on those windows and on how promptly the parent noticed.
  const now = () => performance.timeOrigin + performance.now();
  const windowOf = (file: string) => readJson(file) as { start: number; end: number };

  it('2. three processes in parallel sleep at the same time; activeChildren lists them', async () => {
    const files = [0, 1, 2].map((i) => out(`parallel-${i}.json`));
    const ps = files.map((f) => new Process({ target: targets.sleepWindow, args: [f, 1] }));
    const numbers = ps.map((p) => Number(/^Process-(\d+)$/.exec(p.name)?.[1]));
    expect(numbers[1]).toBe(numbers[0] + 1);
    expect(numbers[2]).toBe(numbers[0] + 2);
    const t0 = performance.now();
    for (const p of ps) p.start();
    const active = activeChildren();
    expect(active).toHaveLength(3);
    expect(new Set(active)).toEqual(new Set(ps));
    expect(active.map((p) => p.pid).sort()).toEqual(ps.map((p) => p.pid).sort());
    expect(cpuCount()).toBeGreaterThanOrEqual(1);
    expect(await Promise.all(ps.map((p) => p.join()))).toEqual([0, 0, 0]);
    const joined = now();
    const windows = files.map(windowOf);
    // All three were asleep at once: the latest start precedes the earliest end.
    expect(Math.max(...windows.map((w) => w.start))).toBeLessThan(Math.min(...windows.map((w) => w.end)));
    for (const w of windows) expect(w.end - w.start).toBeGreaterThanOrEqual(990);
    expect(joined - Math.max(...windows.map((w) => w.end))).toBeLessThan(1000);
    expect(seconds(t0)).toBeGreaterThan(0.99);
    expect(activeChildren()).toEqual([]);
  });

  it('3. join order: children of 1, 2, 3 s are joined in turn as each ends', async () => {
    const files = [1, 2, 3].map((s) => out(`order-${s}.json`));
    const ps = [1, 2, 3].map((s, i) => new Process({ target: targets.sleepWindow, args: [files[i], s] }));
    for (const p of ps) p.start();
    const joined: number[] = [];
    for (const p of ps) {
      expect(await p.join()).toBe(0);
      joined.push(now());
    }
    const windows = files.map(windowOf);
    windows.forEach((w, i) => {
      expect(w.end - w.start).toBeGreaterThanOrEqual((i + 1) * 1000 - 10);
      // Each join returns once that child has ended, and promptly.
      expect(joined[i]).toBeGreaterThanOrEqual(w.end);
      expect(joined[i] - w.end).toBeLessThan(1000);
    });
    // They ran side by side: the 3 s child was asleep while the 1 s one was.
    expect(windows[2].start).toBeLessThan(windows[0].end);
  });

  it('3. started and joined one at a time, the durations add up', async () => {
    const t0 = performance.now();
    const windows = [];
    for (const [i, s] of [0.3, 0.6, 0.9].entries()) {
      const file = out(`serial-${i}.json`);
      const p = new Process({ target: targets.sleepWindow, args: [file, s] });
      p.start();
      expect(await p.join()).toBe(0);
      windows.push(windowOf(file));
    }
    for (let i = 1; i < windows.length; i++) expect(windows[i].start).toBeGreaterThanOrEqual(windows[i - 1].end);
    expect(seconds(t0)).toBeGreaterThan(1.8 - 0.05);
  });

  it('4. subclass: run() runs in the child, named MyProcess-N, sees its pid and its parent', async () => {
    const file = out('greeter.json');
    const g = new targets.Greeter();
    expect(g.name).toMatch(/^Greeter-\d+$/);
    (g as any).outFile = file;
    (g as any).greeting = 'hi';
    g.start();
    expect(await g.join()).toBe(0);
    const seen = readJson(file);
    expect(seen).toEqual({ name: g.name, pid: g.pid, ppid: process.pid, greeting: 'hi', self: true });

    class MyProcess extends Process {}
    const a = new MyProcess();
    const b = new MyProcess();
    const na = Number(/^MyProcess-(\d+)$/.exec(a.name)?.[1]);
    expect(b.name).toBe(`MyProcess-${na + 1}`);
  });

  it('4. a subclass whose run() throws exits 1', async () => {
    const p = new targets.Failing();
    p.start();
    expect(await p.join()).toBe(1);
  });

  it('5. isolation: a child changing module state leaves the parent copy alone', async () => {
    const file = out('counter');
    const before = targets.readModuleCounter();
    const p = new Process({ target: targets.bumpModuleCounter, args: [file] });
    p.start();
    expect(await p.join()).toBe(0);
    expect(fs.readFileSync(file, 'utf8')).toBe(String(before + 100));
    expect(targets.readModuleCounter()).toBe(before);
  });

  it('6. terminate: a child sleeping 2 s terminated after 1 s exits -15; name is read/write', async () => {
    const p = new Process({ target: targets.sleepFor, args: [2] });
    expect(p.name).toMatch(/^Process-\d+$/);
    p.name = 'renamed';
    expect(p.name).toBe('renamed');
    const t0 = performance.now();
    p.start();
    await sleep(1000);
    expect(p.isAlive()).toBe(true);
    p.terminate();
    expect(await p.join()).toBe(-15);
    expect(seconds(t0)).toBeLessThan(3);
    expect(p.isAlive()).toBe(false);
    expect(p.exitCode).toBe(-15);
    p.name = 'after';
    expect(p.name).toBe('after');
    // Signalling a process that already ended does nothing.
    p.terminate();
    p.kill();
  });
});

describe('exit codes', () => {
  it('0 on return, 1 on throw or rejection, n from process.exit(n), -9 after kill()', async () => {
    const cases: [Process, number][] = [
      [new Process({ target: targets.noop }), 0],
      [new Process({ target: targets.throwError, args: ['boom'] }), 1],
      [new Process({ target: targets.rejectLater, args: ['later'] }), 1],
      [new Process({ target: targets.exitWith, args: [7] }), 7],
      [new Process({ target: targets.exitWith, args: [0] }), 0],
    ];
    for (const [p] of cases) p.start();
    for (const [p, code] of cases) expect(await p.join(20)).toBe(code);

    const k = new Process({ target: targets.sleepFor, args: [30] });
    k.start();
    k.kill();
    expect(await k.join(10)).toBe(-9);
    expect(k.exitCode).toBe(-9);
  });

  it('sentinel resolves with the exit code', async () => {
    const p = new Process({ target: targets.exitWith, args: [3] });
    expect(() => p.sentinel).toThrow(expect.objectContaining({ code: 'ERR_MP_NOT_STARTED' }));
    p.start();
    expect(await p.sentinel).toBe(3);
    expect(await p.join()).toBe(3);
  });

  it('exitCode is set without join once the child has exited (reaped by the parent)', async () => {
    const p = new Process({ target: targets.noop });
    p.start();
    const deadline = Date.now() + 10_000;
    while (p.exitCode === null && Date.now() < deadline) await sleep(20);
    expect(p.exitCode).toBe(0);
    expect(isRunning(p.pid!)).toBe(false);
  });
});

describe('join', () => {
  it('join(0) returns null at once while the child runs', async () => {
    const p = new Process({ target: targets.sleepFor, args: [30] });
    p.start();
    const t0 = performance.now();
    expect(await p.join(0)).toBeNull();
    expect(seconds(t0)).toBeLessThan(0.1);
    expect(p.joinSync(0)).toBeNull();
    p.terminate();
    expect(await p.join()).toBe(-15);
  });

  it('join(timeout) returns null after about timeout seconds', async () => {
    const p = new Process({ target: targets.sleepFor, args: [30] });
    p.start();
    const t0 = performance.now();
    expect(await p.join(0.5)).toBeNull();
    const took = seconds(t0);
    expect(took).toBeGreaterThan(0.45);
    expect(took).toBeLessThan(1.5);
    expect(p.isAlive()).toBe(true);
    p.kill();
    expect(await p.join(null)).toBe(-9);
  });

  it('joinSync blocks until the child ends, or returns null after the timeout', async () => {
    const p = new Process({ target: targets.sleepFor, args: [0.5] });
    p.start();
    let t0 = performance.now();
    expect(p.joinSync(0.1)).toBeNull();
    expect(seconds(t0)).toBeGreaterThan(0.08);
    expect(seconds(t0)).toBeLessThan(1);
    t0 = performance.now();
    expect(p.joinSync()).toBe(0);
    expect(seconds(t0)).toBeLessThan(3);
    expect(p.exitCode).toBe(0);
    expect(p.joinSync()).toBe(0);
    expect(await p.join()).toBe(0);
    expect(await p.sentinel).toBe(0);
  });

  it('a timeout longer than setTimeout can take (2^31 ms, 24.8 days) does not expire at once', async () => {
    const p = new Process({ target: targets.sleepFor, args: [0.3] });
    p.start();
    // Node's setTimeout fires such a delay after 1 ms: join would return null.
    expect(await p.join(3e6)).toBe(0);
    expect(await p.join(1e9)).toBe(0);
  });

  it('several joiners all see the exit code', async () => {
    const p = new Process({ target: targets.exitWith, args: [5] });
    p.start();
    expect(await Promise.all([p.join(), p.join(), p.join(20)])).toEqual([5, 5, 5]);
  });
});

describe('state machine', () => {
  it('start twice throws; join before start throws', async () => {
    const p = new Process({ target: targets.noop });
    await expect(p.join()).rejects.toMatchObject({ code: 'ERR_MP_NOT_STARTED' });
    expect(() => p.joinSync()).toThrow(expect.objectContaining({ code: 'ERR_MP_NOT_STARTED' }));
    expect(() => p.terminate()).toThrow(expect.objectContaining({ code: 'ERR_MP_NOT_STARTED' }));
    p.start();
    expect(() => p.start()).toThrow(expect.objectContaining({ code: 'ERR_MP_ALREADY_STARTED' }));
    expect(() => {
      p.daemon = true;
    }).toThrow(expect.objectContaining({ code: 'ERR_MP_ALREADY_STARTED' }));
    expect(await p.join()).toBe(0);
  });

  it('close() while running throws; after join it works, then methods throw ERR_MP_CLOSED', async () => {
    const p = new Process({ target: targets.sleepFor, args: [0.3] });
    p.start();
    expect(() => p.close()).toThrow(expect.objectContaining({ code: 'ERR_MP_PROCESS_RUNNING' }));
    expect(await p.join()).toBe(0);
    p.close();
    p.close(); // twice is a no-op
    const closed = expect.objectContaining({ code: 'ERR_MP_CLOSED' });
    expect(() => p.pid).toThrow(closed);
    expect(() => p.exitCode).toThrow(closed);
    expect(() => p.isAlive()).toThrow(closed);
    expect(() => p.start()).toThrow(closed);
    expect(() => p.terminate()).toThrow(closed);
    expect(() => p.kill()).toThrow(closed);
    expect(() => p.joinSync()).toThrow(closed);
    expect(() => p.sentinel).toThrow(closed);
    await expect(p.join()).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
  });

  it('close() of a never-started process works; Symbol.dispose closes', () => {
    const p = new Process({ target: targets.noop });
    p.close();
    expect(() => p.start()).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    const q = new Process({ target: targets.noop });
    q[Symbol.dispose]();
    expect(() => q.isAlive()).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
  });

  it('daemon is settable before start and inherited as the default', () => {
    const p = new Process({ target: targets.noop });
    expect(p.daemon).toBe(false);
    p.daemon = true;
    expect(p.daemon).toBe(true);
    expect(new Process({ daemon: true }).daemon).toBe(true);
    expect(() => {
      p.daemon = 'yes' as any;
    }).toThrow(TypeError);
    expect(String(p)).toMatch(/^<Process name='Process-\d+' initial daemon>$/);
  });
});

describe('bad input', () => {
  const typeError = (re: RegExp) => expect.objectContaining({ name: 'TypeError', message: expect.stringMatching(re) });
  const rangeError = (re: RegExp) => expect.objectContaining({ name: 'RangeError', message: expect.stringMatching(re) });

  it('wrong option types are TypeErrors naming the option', () => {
    expect(() => new Process(42 as any)).toThrow(typeError(/options/));
    expect(() => new Process(null as any)).toThrow(typeError(/options/));
    expect(() => new Process({ target: 42 as any })).toThrow(typeError(/options\.target/));
    expect(() => new Process({ target: 'noop' as any })).toThrow(typeError(/options\.target/));
    expect(() => new Process({ target: null as any })).toThrow(typeError(/options\.target/));
    expect(() => new Process({ args: 'x' as any })).toThrow(typeError(/options\.args/));
    expect(() => new Process({ name: 5 as any })).toThrow(typeError(/options\.name/));
    expect(() => new Process({ daemon: 1 as any })).toThrow(typeError(/options\.daemon/));
    expect(() => new Process({ env: { A: 1 } as any })).toThrow(typeError(/options\.env\.A/));
    expect(() => new Process({ startMethod: 3 as any })).toThrow(typeError(/options\.startMethod/));
    expect(() => new Process({ startMethod: 'thread' as any })).toThrow(rangeError(/options\.startMethod/));
    expect(() => setStartMethod('nope' as any)).toThrow(rangeError(/method/));
    const p = new Process();
    expect(() => {
      p.name = undefined as any;
    }).toThrow(typeError(/name/));
  });

  it("the 'fork' start method throws a clear error; 'forkserver' is refused only where it cannot run", () => {
    expect(() => new Process({ startMethod: 'fork' as any })).toThrow(
      expect.objectContaining({ code: 'ERR_MP_UNSUPPORTED', message: expect.stringMatching(/fork.*spawn/s) }),
    );
    if (process.platform === 'linux') {
      expect(() => new Process({ startMethod: 'forkserver' })).not.toThrow();
    } else {
      expect(() => new Process({ startMethod: 'forkserver' })).toThrow(
        expect.objectContaining({ code: 'ERR_MP_UNSUPPORTED', message: expect.stringMatching(/forkserver.*spawn/) }),
      );
    }
    const before = getStartMethod();
    expect(() => setStartMethod('fork' as any)).toThrow(expect.objectContaining({ code: 'ERR_MP_UNSUPPORTED' }));
    expect(getStartMethod()).toBe(before);
  });

  it('negative, NaN or non-number timeouts are rejected', async () => {
    const p = new Process({ target: targets.sleepFor, args: [0.2] });
    p.start();
    await expect(p.join(-1)).rejects.toThrow(rangeError(/timeout/));
    await expect(p.join(NaN)).rejects.toThrow(typeError(/timeout/));
    await expect(p.join('1' as any)).rejects.toThrow(typeError(/timeout/));
    expect(() => p.joinSync(-0.5)).toThrow(rangeError(/timeout/));
    expect(await p.join(Infinity)).toBe(0);
  });

  it('arguments that cannot be cloned fail at start() and no child is left', () => {
    const p = new Process({ target: targets.echoArgs, args: [out('never'), () => 1] });
    expect(() => p.start()).toThrow(expect.objectContaining({ code: 'ERR_MP_DATA_CLONE' }));
    expect(p.pid).toBeUndefined();
    const q = new Process({ target: targets.echoArgs, args: [out('never'), Symbol('s')] });
    expect(() => q.start()).toThrow(expect.objectContaining({ code: 'ERR_MP_DATA_CLONE' }));
    expect(activeChildren()).toEqual([]);
  });
});
