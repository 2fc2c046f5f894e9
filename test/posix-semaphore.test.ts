import { execFile, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { BoundedSemaphore, Process, Queue, Semaphore } from 'posix-multiprocessing';
import heapModule from '../dist/cjs/heap.js';
import nativeModule from '../dist/cjs/native.js';
import { asyncWaitSpinConfig } from '../dist/cjs/spin.js';
import * as fx from './fixtures/posix-sem.mjs';
import { terminateWorkersProgram } from './support/workers';

const { binding } = nativeModule as { binding: any };
const { heap } = heapModule as { heap: () => any };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pmp-psem-'));
// The heap's segments (the Queue's) normally go at process exit; the leak check runs before that.
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
  heap().unlinkOwned();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let seq = 0;
/** A fresh name per use; the leak check at the end looks for this prefix. */
const fresh = () => `pmp-psem-${process.pid}-${++seq}`;
const PREFIX = `sem.pmp-psem-${process.pid}-`;
const posix = (name: string) => ({ name, posix: true });

function start(target: (...a: any[]) => unknown, ...args: unknown[]) {
  const p = new Process({ target, args });
  p.start();
  return p;
}

function run(file: string, args: string[], timeoutMs = 15_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as any).code ?? -1) : 0, stdout, stderr }),
    );
  });
}

describe('Semaphore({ name, posix: true })', () => {
  it('counts 2 -> 1 -> 0 across processes; timed acquires return false after ~T (sync and async)', async () => {
    const name = fresh();
    const s = new Semaphore(2, posix(name));
    try {
      expect(s).toBeInstanceOf(Semaphore);
      expect(s).not.toBeInstanceOf(BoundedSemaphore);
      expect(s.name).toBe(name);
      expect(fs.existsSync(`/dev/shm/sem.${name}`)).toBe(true);
      expect(s.getValue()).toBe(2);
      expect(s.acquireSync()).toBe(true);
      expect(s.getValue()).toBe(1);
      const file = path.join(tmp, 'take.json');
      expect(await start(fx.takeAndReport, s, file).join(20)).toBe(0);
      expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ before: 1, got: true, after: 0, bounded: 'Semaphore' });
      expect(s.getValue()).toBe(0);
      expect(s.locked()).toBe(true);
      expect(s.acquireSync({ blocking: false })).toBe(false);
      expect(await s.acquire({ blocking: false })).toBe(false);
      expect(s.acquireSync({ timeout: 0 })).toBe(false);

      let t0 = performance.now();
      expect(s.acquireSync({ timeout: 0.3 })).toBe(false);
      let dt = performance.now() - t0;
      expect(dt).toBeGreaterThanOrEqual(290);
      expect(dt).toBeLessThan(1500);
      t0 = performance.now();
      expect(await s.acquire({ timeout: 0.3 })).toBe(false);
      dt = performance.now() - t0;
      expect(dt).toBeGreaterThanOrEqual(290);
      expect(dt).toBeLessThan(1500);

      s.release(2);
      expect(s.getValue()).toBe(2);
      expect(await s.withLock(async () => s.getValue())).toBe(1);
      expect(s.withLockSync(() => s.getValue())).toBe(1);
      await expect(s.withLock(() => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
      expect(s.getValue()).toBe(2);
    } finally {
      s.close();
      Semaphore.unlink(name, { posix: true });
    }
  }, 30_000);

  it('a release in a child process wakes an async waiter in the parent; a blocked acquireSync too', async () => {
    const name = fresh();
    const s = new Semaphore(0, posix(name));
    try {
      const t0 = performance.now();
      const waiting = s.acquire({ timeout: 20 });
      const child = start(fx.releaseAfter, s, 300);
      expect(await waiting).toBe(true);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(250);
      expect(await child.join(20)).toBe(0);

      const child2 = start(fx.releaseAfter, s, 300);
      expect(s.acquireSync({ timeout: 20 })).toBe(true);
      expect(await child2.join(20)).toBe(0);
      expect(s.getValue()).toBe(0);
    } finally {
      s.close();
      Semaphore.unlink(name, { posix: true });
    }
  }, 40_000);

  it('travels through a Queue and as a BoundedSemaphore (the child re-opens it by name)', async () => {
    const name = fresh();
    const s = new Semaphore(0, posix(name));
    const q = new Queue();
    try {
      const child = start(fx.releaseFromQueue, q);
      await q.put(s);
      expect(await s.acquire({ timeout: 20 })).toBe(true);
      expect(await child.join(20)).toBe(0);
    } finally {
      s.close();
      q.close();
      Semaphore.unlink(name, { posix: true });
    }

    const bname = fresh();
    const b = new BoundedSemaphore(2, posix(bname));
    try {
      expect(b).toBeInstanceOf(BoundedSemaphore);
      expect(b).toBeInstanceOf(Semaphore);
      expect(() => b.release()).toThrow(expect.objectContaining({ name: 'RangeError', code: 'ERR_MP_SEMAPHORE_OVERRELEASED' }));
      expect(b.getValue()).toBe(2);
      const file = path.join(tmp, 'btake.json');
      expect(await start(fx.takeAndReport, b, file).join(20)).toBe(0);
      expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ before: 2, got: true, after: 1, bounded: 'BoundedSemaphore' });
      b.release();
      expect(() => b.release(1)).toThrow(RangeError);
      b.acquireSync();
      expect(() => b.release(2)).toThrow(RangeError);
      // The bound is this handle's value: an attacher that says 3 may go to 3.
      const b3 = new BoundedSemaphore(3, posix(bname));
      expect(b3.getValue()).toBe(1);
      b3.release(2);
      expect(b3.getValue()).toBe(3);
      expect(() => b3.release()).toThrow(RangeError);
      b3.close();
    } finally {
      b.close();
      BoundedSemaphore.unlink(bname, { posix: true });
    }
  }, 40_000);

  it('meets a Python program using ctypes sem_open on the same name', async () => {
    const python = ['python3', 'python'].find((p) => {
      try {
        execFileSync(p, ['-c', 'import ctypes'], { stdio: 'ignore' });
        return true;
      } catch {
        return false;
      }
    });
    if (!python) {
      console.warn('skipped: no python3 with ctypes on PATH');
      return;
    }
    // Two semaphores, so neither side can take back its own post: Python posts
    // `ping` (waking our async acquire), then waits for our post on `pong`.
    const script = `
import ctypes, sys, time
# The interpreter's own symbols include libc's sem_open (glibc >= 2.34, macOS;
# older glibc has it in libpthread, which python3 links). find_library would
# spawn ldconfig or a compiler to find the file.
lib = ctypes.CDLL(None, use_errno=True)
lib.sem_open.restype = ctypes.c_void_p
failed = (None, 0, ctypes.c_void_p(-1).value)
def open_(name):
    s = lib.sem_open(name.encode(), ctypes.c_int(0))
    if s in failed:
        sys.exit('sem_open %s: errno %d' % (name, ctypes.get_errno()))
    return ctypes.c_void_p(s)
ping, pong = open_(sys.argv[1]), open_(sys.argv[2])
if lib.sem_post(ping) != 0: sys.exit('sem_post failed')
deadline = time.monotonic() + 10
while lib.sem_trywait(pong) != 0:
    if time.monotonic() > deadline: sys.exit('timed out waiting for pong')
    time.sleep(0.001)
lib.sem_close(ping); lib.sem_close(pong)
print('got pong')
`;
    const ping = new Semaphore(0, posix(fresh()));
    const pong = new Semaphore(0, posix(fresh()));
    try {
      const woken = ping.acquire({ timeout: 15 });
      const done = run(python, ['-c', script, `/${ping.name}`, `/${pong.name}`]);
      expect(await woken).toBe(true);
      pong.release();
      const r = await done;
      expect(r.stderr).toBe('');
      expect(r).toMatchObject({ code: 0, stdout: 'got pong\n' });
      expect(ping.getValue()).toBe(0);
      expect(pong.getValue()).toBe(0);
    } finally {
      for (const s of [ping, pong]) {
        s.close();
        Semaphore.unlink(s.name!, { posix: true });
      }
    }
  }, 30_000);

  it('meets a C program (compiled with cc) that posts to ours and creates one we attach to', async () => {
    const src = path.join(tmp, 'sem.c');
    const exe = path.join(tmp, 'sem-prog');
    fs.writeFileSync(
      src,
      `#include <fcntl.h>
#include <semaphore.h>
#include <stdio.h>
int main(int argc, char **argv) {
  sem_t *ours = sem_open(argv[1], 0);
  if (ours == SEM_FAILED) { perror("sem_open ours"); return 2; }
  for (int i = 0; i < 3; i++) if (sem_post(ours) != 0) { perror("sem_post"); return 3; }
  sem_t *theirs = sem_open(argv[2], O_CREAT | O_EXCL, 0600, 5);
  if (theirs == SEM_FAILED) { perror("sem_open theirs"); return 4; }
  sem_close(ours);
  sem_close(theirs);
  puts("ok");
  return 0;
}
`,
    );
    try {
      execFileSync('cc', [src, '-o', exe, '-pthread'], { stdio: 'pipe' });
    } catch (err) {
      console.warn(`skipped: no working C compiler (${(err as Error).message.split('\n')[0]})`);
      return;
    }
    const ours = new Semaphore(0, posix(fresh()));
    const theirsName = fresh();
    try {
      const woken = ours.acquire({ timeout: 15 });
      const r = await run(exe, [`/${ours.name}`, `/${theirsName}`]);
      expect(r).toMatchObject({ code: 0, stdout: 'ok\n', stderr: '' });
      expect(await woken).toBe(true);
      expect(ours.getValue()).toBe(2);
      // The C program created it with 5: attaching keeps the creator's value.
      const theirs = new Semaphore(1, posix(theirsName));
      expect(theirs.getValue()).toBe(5);
      expect(theirs.acquireSync({ blocking: false })).toBe(true);
      theirs.close();
    } finally {
      ours.close();
      Semaphore.unlink(ours.name!, { posix: true });
      try {
        Semaphore.unlink(theirsName, { posix: true });
      } catch {
        // the program failed before creating it
      }
    }
  }, 30_000);

  it('rejects bad names, values and options with TypeError/RangeError naming the argument', async () => {
    const name = fresh();
    const bad: [() => unknown, ErrorConstructor, RegExp][] = [
      [() => new Semaphore(1, { posix: true }), TypeError, /options\.name/],
      [() => new Semaphore(1, { name: 5 as never, posix: true }), TypeError, /options\.name/],
      [() => new Semaphore(1, { name: 'a/b', posix: true }), RangeError, /options\.name/],
      [() => new Semaphore(1, { name: '', posix: true }), RangeError, /options\.name/],
      [() => new Semaphore(1, { name: 'x'.repeat(201), posix: true }), RangeError, /options\.name/],
      [() => new Semaphore(1, { name, posix: 'yes' as never }), TypeError, /options\.posix/],
      [() => new Semaphore(-1, posix(name)), RangeError, /value/],
      [() => new Semaphore(1.5, posix(name)), TypeError, /value/],
      [() => new Semaphore(binding.semValueMax + 1, posix(name)), RangeError, /value/],
      [() => new Semaphore(1, { name, posix: true, mode: 0o1000 }), RangeError, /options\.mode/],
      [() => Semaphore.unlink('a/b', { posix: true }), RangeError, /name/],
    ];
    for (const [fn, Type, msg] of bad) {
      expect(fn).toThrow(Type);
      expect(fn).toThrow(msg);
    }
    expect(fs.existsSync(`/dev/shm/sem.${name}`)).toBe(false);
    class Mine extends Semaphore {}
    expect(() => new Mine(1, posix(name))).toThrow(TypeError);

    const s = new Semaphore(1, posix(name));
    try {
      expect(() => s.release(0)).toThrow(RangeError);
      expect(() => s.release(binding.semValueMax)).toThrow(expect.objectContaining({ code: 'ERR_MP_SEMAPHORE_OVERFLOW' }));
      expect(s.getValue()).toBe(1);
      expect(() => s.release(1.5 as never)).toThrow(TypeError);
      expect(() => s.acquireSync({ timeout: -1 })).toThrow(RangeError);
      expect(() => s.acquireSync({ blocking: 1 as never })).toThrow(TypeError);
      await expect(s.acquire({ timeout: 'x' as never })).rejects.toBeInstanceOf(TypeError);
      expect(() => s.withLockSync(5 as never)).toThrow(TypeError);
    } finally {
      s.close();
      Semaphore.unlink(name, { posix: true });
    }
  });

  it('OS errors have the system-error shape (EEXIST, ENOENT); mode is honoured', () => {
    const name = fresh();
    const h = binding.semOpen(`/${name}`, true, true, 0o640, 0);
    try {
      expect(() => binding.semOpen(`/${name}`, true, true, 0o600, 0)).toThrow(
        expect.objectContaining({ code: 'EEXIST', errno: -17, syscall: 'sem_open', path: `/${name}` }),
      );
      expect(fs.statSync(`/dev/shm/sem.${name}`).mode & 0o777).toBe(0o640);
    } finally {
      binding.semClose(h);
      binding.semUnlink(`/${name}`);
    }
    expect(() => Semaphore.unlink(name, { posix: true })).toThrow(
      expect.objectContaining({ code: 'ENOENT', errno: -2, syscall: 'sem_unlink', path: `/${name}` }),
    );
    const s = new Semaphore(0, { name, posix: true, mode: 0o604 });
    try {
      expect(fs.statSync(`/dev/shm/sem.${name}`).mode & 0o777).toBe(0o604);
    } finally {
      s.close();
      Semaphore.unlink(name, { posix: true });
    }
  });

  it('use after close throws ERR_MP_CLOSED; close() ends pending acquires; dispose closes', async () => {
    const name = fresh();
    const s = new Semaphore(0, posix(name));
    const pending = [s.acquire(), s.acquire({ timeout: 30 })];
    await sleep(50);
    s.close();
    s.close();
    for (const p of pending) await expect(p).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    const closed = expect.objectContaining({ code: 'ERR_MP_CLOSED' });
    expect(() => s.acquireSync()).toThrow(closed);
    expect(() => s.release()).toThrow(closed);
    expect(() => s.getValue()).toThrow(closed);
    expect(() => s.locked()).toThrow(closed);
    await expect(s.acquire()).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
    // The native layer refuses a closed handle too, instead of touching freed memory.
    const h = binding.semOpen(`/${name}`, false, false, 0, 0);
    binding.semClose(h);
    expect(() => binding.semPost(h, 1)).toThrow(closed);
    expect(() => binding.semTryWait(h)).toThrow(closed);
    expect(() => binding.semWaitAsync(h, 10, () => {})).toThrow(closed);
    expect(() => binding.semPost({}, 1)).toThrow(TypeError);

    const d = new Semaphore(1, posix(name));
    d[Symbol.dispose]();
    expect(() => d.getValue()).toThrow(closed);
    Semaphore.unlink(name, { posix: true });
  });

  it('unlink removes the name: handles keep the old semaphore, a new open creates a new one', () => {
    const name = fresh();
    const a = new Semaphore(2, posix(name));
    const b = new Semaphore(9, posix(name));
    expect(b.getValue()).toBe(2);
    Semaphore.unlink(name, { posix: true });
    expect(fs.existsSync(`/dev/shm/sem.${name}`)).toBe(false);
    b.acquireSync();
    expect(a.getValue()).toBe(1);
    const c = new Semaphore(7, posix(name));
    expect(c.getValue()).toBe(7);
    expect(a.getValue()).toBe(1);
    for (const s of [a, b, c]) s.close();
    Semaphore.unlink(name, { posix: true });
    // The word-based named semaphore of the same name is a different object.
    const w = new Semaphore(4, { name });
    expect(w.getValue()).toBe(4);
    w.close();
    Semaphore.unlink(name);
  });

  it('an aborted acquire never consumes a unit, even when a release races with the abort', async () => {
    const name = fresh();
    const s = new Semaphore(0, posix(name));
    let got = 0;
    let posted = 0;
    let aborted = 0;
    try {
      for (let i = 0; i < 60; i++) {
        const ac = new AbortController();
        const p = s.acquire({ signal: ac.signal }).then(
          (v) => {
            if (v) got++;
          },
          (e) => {
            if (e.name !== 'AbortError') throw e;
            aborted++;
          },
        );
        // Sometimes the waiter thread is already blocked, sometimes not yet.
        if (i % 3 === 1) await sleep(2);
        if (i % 3 === 2) await sleep(0);
        s.release();
        posted++;
        ac.abort();
        await p;
      }
      // A cancelled thread notices within a 100 ms slice and gives back what it took.
      await sleep(300);
      expect(got + aborted).toBe(60);
      expect(got + s.getValue()).toBe(posted);
      // A unit taken by a cancelled wait is given back by its own thread: this
      // thread blocks in acquireSync and could not help.
      while (s.acquireSync({ blocking: false }));
      const ac = new AbortController();
      const p = s.acquire({ signal: ac.signal, timeout: 5 });
      await sleep(20);
      ac.abort();
      s.release();
      const t0 = performance.now();
      expect(s.acquireSync({ timeout: 5 })).toBe(true);
      expect(performance.now() - t0).toBeLessThan(1000);
      await expect(p).rejects.toMatchObject({ name: 'AbortError' });
      expect(s.getValue()).toBe(0);
    } finally {
      s.close();
      Semaphore.unlink(name, { posix: true });
    }
  }, 30_000);

  it('the event loop stays responsive, and the libuv threadpool free, while 10 async acquires wait', async () => {
    const name = fresh();
    const s = new Semaphore(0, posix(name));
    try {
      const waits = Array.from({ length: 10 }, () => s.acquire({ timeout: 20 }));
      let ticks = 0;
      let maxGap = 0;
      let last = performance.now();
      const timer = setInterval(() => {
        const now = performance.now();
        maxGap = Math.max(maxGap, now - last);
        last = now;
        ticks++;
      }, 10);
      // Eight fs calls need the threadpool (4 threads): parked waits would starve them.
      const t0 = performance.now();
      await Promise.all(Array.from({ length: 8 }, () => fs.promises.stat(tmp)));
      const fsMs = performance.now() - t0;
      await sleep(400);
      clearInterval(timer);
      expect(fsMs).toBeLessThan(1000);
      expect(ticks).toBeGreaterThanOrEqual(15);
      expect(maxGap).toBeLessThan(250);
      s.release(10);
      expect(await Promise.all(waits)).toEqual(Array(10).fill(true));
      expect(s.getValue()).toBe(0);
    } finally {
      s.close();
      Semaphore.unlink(name, { posix: true });
    }
  }, 30_000);

  it('worker threads terminated with POSIX waits pending: no crash, and no unit kept by their threads', async () => {
    const name = fresh();
    const s = new Semaphore(0, posix(name));
    const entry = path.resolve('dist/cjs/index.js');
    const worker = `
      const { Semaphore } = require(${JSON.stringify(entry)});
      const s = new Semaphore(0, { name: ${JSON.stringify(name)}, posix: true });
      s.acquire().then(() => {}, () => {}); s.acquire({ timeout: 0.2 }).then(() => {}, () => {});
      require('node:worker_threads').parentPort.postMessage('waiting');
    `;
    // Stays alive (the terminated workers' waiter threads with it) until told.
    const main = terminateWorkersProgram(worker, { stayAlive: true });
    try {
      const child = spawn(process.execPath, ['-e', main], { stdio: ['pipe', 'pipe', 'inherit'] });
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      let out = '';
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d) => {
          out += d;
          if (out.includes('done\n')) resolve();
        });
        child.once('exit', () => reject(new Error(`exited early: ${out}`)));
      });
      // The workers' waits were cancelled by their environments' cleanup: the
      // threads stop within a slice, and one that took a unit first gives it
      // back (it has no environment to deliver to). Units stay with us.
      s.release(2);
      await sleep(400);
      expect(s.getValue()).toBe(2);
      expect(s.acquireSync({ timeout: 5 })).toBe(true);
      expect(s.acquireSync({ timeout: 5 })).toBe(true);
      child.stdin.write('x');
      expect(await exited).toBe(0);
    } finally {
      s.close();
      Semaphore.unlink(name, { posix: true });
    }
  }, 40_000);

  it('the macOS wait (sem_trywait with naps, no sem_timedwait) keeps timeouts, run here with PMP_SEM_POLL_WAIT=1', () => {
    const script = path.join(__dirname, 'fixtures', 'programs', 'sem-poll-wait.mjs');
    const env = { ...process.env, PMP_SEM_POLL_WAIT: '1' };
    const out = JSON.parse(execFileSync(process.execPath, [script], { encoding: 'utf8', env, timeout: 30_000 }));
    expect(out.polls).toBe(true);
    expect(binding.semWaitsPoll).toBe(false); // this process: sem_timedwait
    // A finite timeout ends the wait after about that long, never much later.
    for (const r of [out.syncTimeout, out.asyncTimeout]) {
      expect(r.got).toBe(false);
      expect(r.ms).toBeGreaterThanOrEqual(280);
      expect(r.ms).toBeLessThan(1500);
    }
    // A release seen at the next look (naps are at most 10 ms), not at the timeout.
    for (const r of [out.syncReleased, out.asyncReleased]) {
      expect(r.got).toBe(true);
      expect(r.ms).toBeGreaterThanOrEqual(150);
      expect(r.ms).toBeLessThan(3000);
    }
  }, 40_000);

  describe('async acquires that first try from the event loop', () => {
    // A watch long enough that everything below happens during it, on any load.
    const saved = { ...asyncWaitSpinConfig };
    beforeAll(() => Object.assign(asyncWaitSpinConfig, { limitUs: 300_000, loadGuard: false }));
    afterAll(() => Object.assign(asyncWaitSpinConfig, saved));

    it('a release during the watch is taken, a short timeout ends on time, the loop keeps running', async () => {
      const name = fresh();
      const s = new Semaphore(0, posix(name));
      let ticks = 0;
      const timer = setInterval(() => ticks++, 10);
      setTimeout(() => s.release(), 100);
      const t0 = performance.now();
      expect(await s.acquire({ timeout: 20 })).toBe(true);
      expect(performance.now() - t0).toBeLessThan(5000);
      expect(ticks).toBeGreaterThanOrEqual(3);
      clearInterval(timer);
      const t1 = performance.now();
      expect(await s.acquire({ timeout: 0.05 })).toBe(false);
      expect(performance.now() - t1).toBeGreaterThanOrEqual(45);
      s.close();
      Semaphore.unlink(name, { posix: true });
    });

    it('an abort or a close() during the watch ends it at once, and takes no unit', async () => {
      const name = fresh();
      const s = new Semaphore(0, posix(name));
      const ac = new AbortController();
      setImmediate(() => ac.abort());
      await expect(s.acquire({ signal: ac.signal })).rejects.toMatchObject({ name: 'AbortError' });
      s.release();
      expect(s.acquireSync({ timeout: 0 })).toBe(true);
      const pending = s.acquire();
      setImmediate(() => s.close());
      await expect(pending).rejects.toMatchObject({ code: 'ERR_MP_CLOSED' });
      Semaphore.unlink(name, { posix: true });
    });
  });

  it('leaves nothing behind: no /dev/shm/sem.* entries of this file', () => {
    expect(fs.readdirSync('/dev/shm').filter((e) => e.startsWith(PREFIX))).toEqual([]);
  });
});
