// The forkserver start method (issue #13): a forked child is indistinguishable
// from a spawned one to the program; the server (one per thread, restarted
// after it died, gone with its caller); preloads; getContext(); the fallback to
// spawn under loader hooks; and the lines a dying child leaves on stderr under
// both methods. Everything here asks for 'forkserver' explicitly.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';

import { Pipe, Process, Queue, activeChildren, getAllStartMethods, getContext } from 'posix-multiprocessing';
import * as fx from './fixtures/forkserver.mjs';
import * as targets from './fixtures/targets.mjs';
import { forkservers, isRunning, osParent } from './support/proc';
import { runNode, startNode } from './support/run-node';

const methods = getAllStartMethods();
const hasForkserver = methods.includes('forkserver');
// Where the platform cannot fork children, every test of the method is skipped, saying why.
const titled = (title: string) => (hasForkserver ? title : `${title} (skipped: getAllStartMethods() is ${JSON.stringify(methods)} here)`);
const describeForkserver = (title: string, body: () => void) => describe.skipIf(!hasForkserver)(titled(title), body);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pmp-forkserver-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
let seq = 0;
const out = (name: string) => path.join(tmp, `${name}-${++seq}`);
const programs = path.join(__dirname, 'fixtures', 'programs');
const program = (name: string) => path.join(programs, name);
const readJson = (file: string) => JSON.parse(fs.readFileSync(file, 'utf8'));

async function waitFor<T>(probe: () => T | undefined | false, ms: number, what: string): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Runs target in a child under method and returns what reportSelf wrote. */
async function report(method: 'forkserver' | 'spawn', extra: unknown = null): Promise<any> {
  const file = out('report');
  const p = new Process({ target: fx.reportSelf, args: [file, extra], startMethod: method });
  p.start();
  expect(await p.join(30)).toBe(0);
  const seen = readJson(file);
  expect(seen.pid).toBe(p.pid);
  return seen;
}

/** This thread's forkserver: the one child of this process running forkserver-main. */
function theServer(): number {
  const servers = forkservers();
  expect(servers).toHaveLength(1);
  return servers[0];
}

// What a child's execArgv is, under both methods: the caller's, less the flags
// that would make the child a debugger target or a script runner.
const expectedExecArgv = process.execArgv.filter((f) => !/^--(inspect|eval|print|test|watch)/.test(f));

describeForkserver('a forked child is indistinguishable from a spawned one', () => {
  it('it reports what a spawned child reports: argv, execArgv, env, cwd, ppid, parent, stdio, signal dispositions and mask', async () => {
    process.env.PMP_FS_VAR = 'in-process';
    try {
      const forked = await report('forkserver');
      const spawned = await report('spawn');
      const same = ['argv', 'execArgv', 'env', 'dropped', 'cwd', 'ppid', 'parent', 'stdin', 'stdout', 'stderr', 'counter', 'signals'];
      const pick = (r: any) => Object.fromEntries(same.map((k) => [k, r[k]]));
      expect(pick(forked)).toEqual(pick(spawned));
      expect(forked.env).toBe('in-process');
      // They differ only in who forked them: the server, or this process.
      expect(spawned.osParent).toBe(process.pid);
      expect(forkservers()).toContain(forked.osParent);
    } finally {
      delete process.env.PMP_FS_VAR;
    }
  });

  it('fresh module state: neither the parent\'s change nor an earlier child\'s is seen', async () => {
    const mine = fx.bumpCounter(5);
    const first = await report('forkserver');
    const second = await report('forkserver');
    // Each child adds 1000 after reporting: the second never sees the first's.
    expect([first.counter, second.counter]).toEqual([0, 0]);
    expect(fx.bumpCounter(0)).toBe(mine); // nor does the parent
  });

  it('process.argv and process.execArgv are the caller\'s (no --single-threaded)', async () => {
    const seen = await report('forkserver');
    expect(seen.argv).toEqual(process.argv);
    expect(seen.execArgv).toEqual(expectedExecArgv);
    expect(seen.execArgv).not.toContain('--single-threaded');

    // And of a program started with flags and arguments of its own.
    const file = out('argv');
    const flags = ['--max-old-space-size=300', '--no-warnings', '--stack-size=900'];
    const run = await runNode(program('fs-run.mjs'), ['forkserver', 'reportSelf', JSON.stringify([file]), 'Argv-1', 'extra'], flags);
    expect(run.stderr).toBe('');
    const caller = JSON.parse(run.stdout.trim().split('\n').at(-1)!);
    expect(caller.exitCode).toBe(0);
    const child = readJson(file);
    expect(child.argv).toEqual(caller.argv);
    expect(child.argv.slice(-5)).toEqual(['forkserver', 'reportSelf', JSON.stringify([file]), 'Argv-1', 'extra']);
    expect(child.execArgv).toEqual(flags);
    expect(caller.execArgv).toEqual(flags);
  });

  it('env and cwd are the caller\'s as they were at each start()', async () => {
    const [d1, d2] = [out('cwd-a'), out('cwd-b')];
    fs.mkdirSync(d1);
    fs.mkdirSync(d2);
    const [f1, f2] = [out('env-a'), out('env-b')];
    const run = await runNode(program('fs-env-cwd.mjs'), ['forkserver', d1, d2, f1, f2]);
    expect(run.stderr).toBe('');
    expect(JSON.parse(run.stdout)).toEqual([0, 0]);
    const [a, b] = [readJson(f1), readJson(f2)];
    expect({ env: a.env, dropped: a.dropped, cwd: a.cwd }).toEqual({ env: 'first', dropped: 'present', cwd: d1 });
    expect({ env: b.env, dropped: b.dropped, cwd: b.cwd }).toEqual({ env: 'second', dropped: null, cwd: d2 });
    // Both were forked by one server, which booted at the first start().
    expect(a.osParent).toBe(b.osParent);
    expect(a.osParent).not.toBe(a.ppid);
  });

  it('process.pid is its own; process.ppid and parentProcess() are the caller', async () => {
    const seen = await report('forkserver');
    expect(seen.kernelPid).toBe(seen.pid);
    expect(seen.pid).not.toBe(seen.osParent);
    expect(seen.ppid).toBe(process.pid);
    expect(seen.parent).toEqual({ pid: process.pid, name: 'MainProcess' });
    expect(seen.osParent).toBe(theServer());
  });

  it('Math.random() sequences and crypto.randomUUID() differ across 3 children', async () => {
    const files = [0, 1, 2].map(() => out('random'));
    const ps = files.map((file) => new Process({ target: fx.reportSelf, args: [file], startMethod: 'forkserver' }));
    for (const p of ps) p.start();
    expect(await Promise.all(ps.map((p) => p.join(30)))).toEqual([0, 0, 0]);
    const seen = files.map(readJson);
    const sequences = new Set(seen.map((s) => JSON.stringify(s.random)));
    expect(sequences.size).toBe(3);
    const draws = seen.flatMap((s) => s.random);
    expect(new Set(draws).size).toBe(9);
    for (const x of draws) expect(x >= 0 && x < 1).toBe(true);
    expect(new Set(seen.map((s) => s.uuid)).size).toBe(3);
  });

  it('process.uptime() and performance.now() count from the child\'s start, not the server\'s', async () => {
    await report('forkserver'); // the server runs
    await sleep(1500); // and has run for 1.5 s at least
    const before = Date.now();
    const seen = await report('forkserver');
    // Generous: a loaded 2-core machine takes a few hundred ms to fork and import.
    expect(seen.uptime).toBeGreaterThanOrEqual(0);
    expect(seen.uptime).toBeLessThan(1);
    expect(seen.now).toBeGreaterThanOrEqual(0);
    expect(seen.now).toBeLessThan(1000);
    // The clock's origin is the fork: origin + now is the wall clock.
    expect(seen.timeOrigin).toBeGreaterThanOrEqual(before - 50);
    expect(Math.abs(seen.timeOrigin + seen.now - seen.wall)).toBeLessThan(100);
  });

  it('stdout and stderr are the caller\'s at start(), not the server\'s; stdin is /dev/null', async () => {
    const [outFile, errFile] = [out('stdout'), out('stderr')];
    const run = await runNode(program('fs-stdio.mjs'), ['forkserver', outFile, errFile]);
    expect(run.code).toBe(0);
    // The first child printed on the program's stdout and stderr, which the server inherited at boot...
    expect(run.stdout).toBe('stdout of first\n');
    expect(run.stderr).toBe('stderr of first\n');
    // ...the second where the program's fds 1 and 2 pointed when it started it.
    expect(fs.readFileSync(outFile, 'utf8')).toBe('stdout of second\n');
    expect(fs.readFileSync(errFile, 'utf8')).toBe('stderr of second\n');

    const seen = await report('forkserver');
    expect(seen.stdin).toBe('/dev/null');
    expect(seen.stdout).toBe(fs.readlinkSync('/proc/self/fd/1'));
    expect(seen.stderr).toBe(fs.readlinkSync('/proc/self/fd/2'));
  });

  it('exit codes: 0 on return, 1 on throw, n on process.exit(n), -9 after kill(), -15 after terminate()', async () => {
    const start = (target: (...a: any[]) => unknown, args: unknown[] = []) => {
      const p = new Process({ target, args, startMethod: 'forkserver' });
      p.start();
      return p;
    };
    const returns = start(targets.noop);
    const throws = start(targets.throwError, ['thrown on purpose (exit code test)']);
    const exits = start(targets.exitWith, [42]);
    const killed = start(targets.sleepFor, [30]);
    const terminated = start(targets.sleepFor, [30]);
    killed.kill();
    terminated.terminate();
    expect(await Promise.all([returns, throws, exits, killed, terminated].map((p) => p.join(30)))).toEqual([0, 1, 42, -9, -15]);
    expect([returns, throws, exits, killed, terminated].map((p) => p.exitCode)).toEqual([0, 1, 42, -9, -15]);
  });

  it('daemon children are ended at the caller\'s exit; non-daemon children are joined first', async () => {
    const dir = out('daemons');
    fs.mkdirSync(dir);
    const t0 = performance.now();
    const run = await runNode(program('fs-daemons.mjs'), ['forkserver', dir]);
    const took = (performance.now() - t0) / 1000;
    expect(run.stderr).toBe('');
    const pids = JSON.parse(run.stdout);
    // The program lived for its non-daemon child (1 s), which did its work.
    expect(took).toBeGreaterThan(1);
    expect(fs.readFileSync(path.join(dir, 'worker'), 'utf8')).toBe(String(pids.worker));
    await waitFor(() => !isRunning(pids.daemon), 2000, 'the daemon to end');
    await sleep(Math.max(0, 2500 - (performance.now() - t0))); // past the daemon's 2 s
    expect(fs.existsSync(path.join(dir, 'daemon'))).toBe(false);
  });

  it('activeChildren() lists the children, never the server', async () => {
    const ps = [0, 1].map(() => new Process({ target: targets.sleepFor, args: [30], startMethod: 'forkserver' }));
    for (const p of ps) p.start();
    try {
      const server = theServer();
      const listed = activeChildren().map((c) => c.pid);
      expect(listed.sort()).toEqual(ps.map((p) => p.pid).sort());
      expect(listed).not.toContain(server);
    } finally {
      for (const p of ps) p.kill();
      await Promise.all(ps.map((p) => p.join(10)));
    }
    expect(activeChildren()).toEqual([]);
  });

  it('arguments holding fds work: a Connection end and a Queue', async () => {
    const [mine, theirs] = Pipe();
    const p = new Process({ target: fx.greetOn, args: [theirs], startMethod: 'forkserver' });
    p.start();
    theirs.close();
    expect(await mine.recv()).toEqual({ from: p.pid });
    expect(await p.join(30)).toBe(0);
    mine.close();

    const input = new Queue();
    const output = new Queue();
    const q = new Process({ target: fx.relayOnQueue, args: [input, output], startMethod: 'forkserver' });
    q.start();
    await input.put(41);
    expect(await output.get({ timeout: 30 })).toEqual({ from: q.pid, value: 41 });
    expect(await q.join(30)).toBe(0);
    input.close();
    output.close();
  });
});

describeForkserver('the server', () => {
  it('one per caller thread: every child of this thread is forked by it', async () => {
    const ps = [0, 1, 2].map(() => new Process({ target: targets.sleepFor, args: [0.2], startMethod: 'forkserver' }));
    for (const p of ps) p.start();
    const server = theServer();
    expect(ps.map((p) => osParent(p.pid!))).toEqual([server, server, server]);
    expect(await Promise.all(ps.map((p) => p.join(30)))).toEqual([0, 0, 0]);
    expect(theServer()).toBe(server);
  });

  it('SIGKILLed: the children it runs end with it, and the next start() boots a new one', async () => {
    const worker = new Process({ target: targets.sleepFor, args: [30], startMethod: 'forkserver' });
    const daemon = new Process({ target: targets.sleepFor, args: [30], daemon: true, startMethod: 'forkserver' });
    worker.start();
    daemon.start();
    const old = theServer();
    process.kill(old, 'SIGKILL');
    // Each dies of its death signal: SIGTERM for a non-daemon child, SIGKILL for a daemon.
    expect(await worker.join(5)).toBe(-15);
    expect(await daemon.join(5)).toBe(-9);
    await waitFor(() => !isRunning(old), 2000, 'the old server to go');

    const after = await report('forkserver');
    const server = theServer();
    expect(server).not.toBe(old);
    expect(after.osParent).toBe(server);
  });

  it('the caller SIGKILLed: the server and every child are gone within about 1 s', async () => {
    const dir = out('orphans');
    fs.mkdirSync(dir);
    const caller = startNode(program('fs-orphans.mjs'), ['forkserver', dir, '4']);
    const { children, servers } = await caller.line<{ children: number[]; servers: number[] }>((v) => 'children' in v, 20_000);
    expect(servers).toHaveLength(1);
    for (const pid of [...children, ...servers]) expect(isRunning(pid)).toBe(true);
    const t0 = performance.now();
    caller.kill('SIGKILL');
    expect((await caller.ended).signal).toBe('SIGKILL');
    await waitFor(() => ![...children, ...servers].some(isRunning), 3000, 'the server and children to go');
    expect(performance.now() - t0).toBeLessThan(1200);
    // The daemon child (0) was SIGKILLed: it ignores SIGTERM and never recorded
    // one; the others were sent SIGTERM, as under spawn.
    expect(fs.existsSync(path.join(dir, 'child-0'))).toBe(false);
    for (let i = 1; i < children.length; i++) expect(fs.readFileSync(path.join(dir, `child-${i}`), 'utf8')).toBe('SIGTERM');
  });

  it('worker threads start processes through servers of their own, which go when the worker ends', async () => {
    const run = await runNode(program('fs-worker.cjs'));
    expect(run.stderr).toBe('');
    const { results, left } = JSON.parse(run.stdout);
    expect(results.map((r: any) => r.mode)).toEqual(['return', 'terminate']);
    for (const r of results) {
      expect(r.servers).toHaveLength(1);
      expect(r.osParent).toBe(r.servers[0]);
    }
    expect(results[0].servers[0]).not.toBe(results[1].servers[0]);
    expect(results[0].exitCode).toBe(0);
    // Both servers, and the child the terminated worker left running, are gone.
    expect(left).toEqual([]);
  });
});

describeForkserver('setForkserverPreload() and getContext()', () => {
  it('a preload runs once, in the server; forked children find it loaded, with state of their own', async () => {
    const dir = out('preload');
    fs.mkdirSync(dir);
    const log = path.join(dir, 'log');
    process.env.PMP_FS_PRELOAD_LOG = log;
    let run;
    try {
      run = await runNode(program('fs-preload.mjs'), ['ok', dir]);
    } finally {
      delete process.env.PMP_FS_PRELOAD_LOG;
    }
    expect(run.stderr).toBe('');
    expect(JSON.parse(run.stdout)).toEqual({ codes: [0, 0, 0] });
    const [a, b, spawned] = ['fork-1', 'fork-2', 'spawn'].map((n) => readJson(path.join(dir, n)));
    const server = a.loadedBy;
    // Evaluated by the server, before either forked child existed...
    expect(b.loadedBy).toBe(server);
    expect([a.pid, b.pid]).not.toContain(server);
    // ...each with the module's state as the server left it.
    expect([a.count, b.count]).toEqual([1, 1]);
    // A spawned child evaluates the module itself.
    expect(spawned.loadedBy).toBe(spawned.pid);
    expect(fs.readFileSync(log, 'utf8')).toBe(`${server}\n${spawned.pid}\n`);
    // The module's own value, drawn once in the server, is the same in both;
    // the preload filled Node's UUID cache in the server, yet each child
    // draws UUIDs of its own.
    expect(b.instance).toBe(a.instance);
    expect(new Set([a.uuid, b.uuid, a.instance]).size).toBe(3);
  });

  it('a preload that throws fails that start() with its error as the cause, leaving nothing running', async () => {
    const dir = out('preload-throws');
    fs.mkdirSync(dir);
    const run = await runNode(program('fs-preload.mjs'), ['throws', dir]);
    const { error, left, after } = JSON.parse(run.stdout);
    expect(error).toMatchObject({ code: 'ERR_MP_FORKSERVER', message: expect.stringContaining('preload failed on purpose') });
    expect(error.cause).toMatchObject({ name: 'RangeError', message: 'preload failed on purpose', code: 'E_PRELOAD_FIXTURE' });
    expect(error.cause.stack).toContain('forkserver-preload-throws.mjs');
    // The failed server leaves on its own (exit code 1) and is reaped by the
    // caller's loop: within 1 s of the failed start(), nothing is left.
    expect(left).toEqual([]);
    expect(fs.existsSync(path.join(dir, 'never'))).toBe(false);
    // Without the preload, the next start() boots a server that works.
    expect(after).toBe(0);
  });

  it('a target module that throws at import: the child exits 1 with the error on its stderr', async () => {
    const run = await runNode(program('fs-run.mjs'), ['forkserver', 'forkserver-import-throws.mjs#unreachable', '[]', 'Importer-1']);
    const { pid, exitCode } = JSON.parse(run.stdout.trim().split('\n').at(-1)!);
    expect(exitCode).toBe(1);
    expect(run.stderr).toMatch(/^Process Importer-1:\nRangeError: target module failed at import on purpose\n/m);
    expect(run.stderr).toContain(`Process Importer-1 (pid ${pid}) exited with code 1`);
  });

  it("getContext('spawn') and getContext('forkserver') start their children their way", async () => {
    const spawnCtx = getContext('spawn');
    const forkCtx = getContext('forkserver');
    const sleeper = (ctx: typeof spawnCtx) => {
      const p = new ctx.Process({ target: targets.sleepFor, args: [30] });
      p.start();
      return p;
    };
    const spawned = sleeper(spawnCtx);
    const forked = sleeper(forkCtx);
    const spawnPool = new spawnCtx.Pool({ processes: 1 });
    const forkPool = new forkCtx.Pool({ processes: 1 });
    try {
      await Promise.all([spawnPool.apply(targets.noop, []), forkPool.apply(targets.noop, [])]);
      const server = theServer();
      expect(osParent(spawned.pid!)).toBe(process.pid);
      expect(osParent(forked.pid!)).toBe(server);
      expect(spawnPool.pids.map(osParent)).toEqual([process.pid]);
      expect(forkPool.pids.map(osParent)).toEqual([server]);
    } finally {
      spawned.kill();
      forked.kill();
      spawnPool.close();
      forkPool.close();
      await Promise.all([spawned.join(10), forked.join(10), spawnPool.join(), forkPool.join()]);
    }
  });
});

describeForkserver('garbage collection in a forked child', () => {
  // Each full collection posts a job to Node's platform worker threads, which
  // the fork did not copy; before the server parked its workers, the 4th or
  // 5th hung for ever in pthread_cond_signal().
  it('a forked child whose old generation is collected ten times exits 0', async () => {
    const p = new Process({ target: fx.collectOld, args: [10], startMethod: 'forkserver' });
    p.start();
    const code = await p.join(30);
    if (code === null) p.kill();
    expect(code).toBe(0);
  }, 40_000);
});

describeForkserver('the fallback to spawn under loader hooks', () => {
  it('a .ts target while the parent runs under --import tsx works with the default method (spawned)', async () => {
    const [a, b] = [out('ts-default'), out('ts-forkserver')];
    const run = await runNode(program('fs-ts-parent.ts'), [a, b], ['--import', 'tsx']);
    expect(run.stderr).toBe('');
    const { codes, method, pid } = JSON.parse(run.stdout);
    expect(codes).toEqual([0, 0]);
    expect(method).toBe('forkserver'); // the default stays, the start falls back
    for (const file of [a, b]) {
      const seen = readJson(file);
      expect(seen.osParent).toBe(pid); // spawned by the program itself, not forked by a server
      expect(seen.execArgv).toEqual(['--import', 'tsx']);
    }
  }, 60_000);
});

describe.each(methods)('death lines on stderr, under %s', (method) => {
  const runTarget = (target: string, args: unknown[], name: string) =>
    runNode(program('fs-run.mjs'), [method, target, JSON.stringify(args), name]);
  const result = (stdout: string) => JSON.parse(stdout.trim().split('\n').at(-1)!);

  it('a target that throws: "Process NAME:", the error, and a line with the name and pid', async () => {
    const run = await runTarget('throwError', ['kaboom'], 'Thrower-1');
    const { pid, exitCode } = result(run.stdout);
    expect(exitCode).toBe(1);
    expect(run.stderr).toMatch(/^Process Thrower-1:\nTypeError: kaboom\n\s+at throwError/m);
    expect(run.stderr).toContain(`Process Thrower-1 (pid ${pid}) exited with code 1`);
  });

  it('an uncaught exception from a timer: "Process NAME (pid N) died of an uncaught exception"', async () => {
    const run = await runTarget('throwFromTimer', ['timer went off on purpose'], 'Timer-1');
    const { pid, exitCode } = result(run.stdout);
    expect(exitCode).toBe(1);
    expect(run.stderr).toContain(`Process Timer-1 (pid ${pid}) died of an uncaught exception`);
    expect(run.stderr).toContain('timer went off on purpose');
  });

  it('an unhandled rejection: "Process NAME (pid N) died of an unhandled rejection"', async () => {
    const run = await runTarget('rejectUnhandled', ['rejected on purpose'], 'Rejecter-1');
    const { pid, exitCode } = result(run.stdout);
    expect(exitCode).toBe(1);
    expect(run.stderr).toContain(`Process Rejecter-1 (pid ${pid}) died of an unhandled rejection`);
    expect(run.stderr).toContain('rejected on purpose');
  });

  for (const signal of ['SIGKILL', 'SIGSEGV'] as const) {
    it(`a child killed by an outside ${signal}: the parent prints "Process NAME (pid N) was killed by ${signal}"`, async () => {
      const caller = startNode(program('fs-run.mjs'), [method, 'sleepFor', '[30]', 'Victim-1']);
      const { started } = await caller.line<{ started: number }>((v) => 'started' in v, 20_000);
      // Killed once it runs its target (its module imported), as a crash would find it.
      await sleep(300);
      process.kill(started, signal);
      const run = await caller.ended;
      expect(result(run.stdout)).toMatchObject({ pid: started, exitCode: -os.constants.signals[signal] });
      expect(run.stderr).toContain(`Process Victim-1 (pid ${started}) was killed by ${signal}`);
    });
  }
});
