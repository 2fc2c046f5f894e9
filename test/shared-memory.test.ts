import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

import { Process, SharedMemory } from 'posix-multiprocessing';
import { binding } from '../dist/cjs/native.js';
import * as shmTargets from './fixtures/shm.mjs';
import { runNode } from './support/run-node';

const peerScript = path.join(__dirname, 'fixtures', 'programs', 'shm-peer.mjs');
const gcScript = path.join(__dirname, 'fixtures', 'programs', 'shm-gc.cjs');
const reuseScript = path.join(__dirname, 'fixtures', 'programs', 'shm-reuse.cjs');
const exists = (name: string) => fs.existsSync(`/dev/shm/${name}`);
// Names carry our pid, as the package's random names do, so the leak check can attribute them.
const uniqueName = (tag: string) => `pmp_${process.pid}_${tag}_${Math.random().toString(16).slice(2, 8)}`;

describe('SharedMemory: create, attach, close, unlink', () => {
  it('creates a segment with a random name, mode 0600, and attaches to it by name', () => {
    const a = SharedMemory.create(5000);
    try {
      expect(a.name).toMatch(/^[^/]+$/);
      expect(a.size).toBe(5000);
      expect(a.buf).toBeInstanceOf(Uint8Array);
      expect(a.buf.length).toBe(5000);
      expect(a.buf).toBe(a.buf); // one view, not a copy per access
      expect(fs.statSync(`/dev/shm/${a.name}`).mode & 0o777).toBe(0o600);
      // with or without the leading slash
      const b = SharedMemory.open(`/${a.name}`);
      const c = new SharedMemory({ name: a.name });
      expect(b.size).toBe(5000);
      a.buf[4999] = 42;
      b.buf[0] = 7;
      expect(c.buf[4999]).toBe(42);
      expect(a.buf[0]).toBe(7);
      b.close();
      c.close();
    } finally {
      a.close();
      a.unlink();
    }
    expect(exists(a.name)).toBe(false);
  });

  it('reports the real size on attach (rounded segments are not guessed)', () => {
    const name = uniqueName('size');
    const a = new SharedMemory({ name, create: true, size: 12345, mode: 0o640 });
    try {
      expect(fs.statSync(`/dev/shm/${name}`).mode & 0o777).toBe(0o640);
      const b = new SharedMemory({ name, size: 1 }); // size is ignored when attaching
      expect(b.size).toBe(12345);
      expect(b.buf.length).toBe(12345);
      b.close();
    } finally {
      a.close();
      a.unlink();
    }
  });

  it("fails with EEXIST when creating a name that exists, and ENOENT when attaching to a missing one", () => {
    const name = uniqueName('exist');
    const a = SharedMemory.create(64, { name });
    try {
      expect(() => SharedMemory.create(64, { name })).toThrow(expect.objectContaining({ code: 'EEXIST', syscall: 'shm_open' }));
      expect(() => new SharedMemory({ name: `/${name}`, create: true, size: 64 })).toThrow(
        expect.objectContaining({ code: 'EEXIST' }),
      );
    } finally {
      a.close();
      a.unlink();
    }
    let err: any;
    try {
      SharedMemory.open(name);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe('ENOENT');
    expect(err.errno).toBeLessThan(0);
    expect(err.message).toContain(name);
  });

  it('rejects bad sizes, names and options with TypeError/RangeError naming the argument', () => {
    expect(() => SharedMemory.create(0)).toThrow(RangeError);
    expect(() => SharedMemory.create(-1)).toThrow(RangeError);
    expect(() => SharedMemory.create(1.5)).toThrow(TypeError);
    expect(() => SharedMemory.create('10' as any)).toThrow(TypeError);
    // Larger than an ArrayBuffer may be: refused before anything is mapped (N-API would abort).
    expect(() => SharedMemory.create(2 ** 40)).toThrow(RangeError);
    expect(() => SharedMemory.create(2 ** 53)).toThrow(RangeError);
    expect(() => new SharedMemory({ create: true })).toThrow(/options\.size/);
    expect(() => new SharedMemory({ create: true, size: -5 })).toThrow(RangeError);
    expect(() => new SharedMemory({ create: true, size: Number.NaN })).toThrow(TypeError);
    expect(() => new SharedMemory()).toThrow(TypeError); // attach needs a name
    expect(() => new SharedMemory({ name: 42 as any })).toThrow(TypeError);
    expect(() => SharedMemory.open(undefined as any)).toThrow(TypeError);
    expect(() => SharedMemory.open('')).toThrow(RangeError);
    expect(() => SharedMemory.open('/')).toThrow(RangeError);
    expect(() => SharedMemory.open('a/b')).toThrow(/options\.name/);
    expect(() => SharedMemory.open('..')).toThrow(RangeError);
    expect(() => SharedMemory.open('a\0b')).toThrow(RangeError);
    expect(() => SharedMemory.open('x'.repeat(300))).toThrow(RangeError);
    expect(() => SharedMemory.create(8, { mode: 0o1000 })).toThrow(RangeError);
    expect(() => SharedMemory.create(8, { track: 'yes' as any })).toThrow(TypeError);
    expect(() => new SharedMemory('name' as any)).toThrow(TypeError);
  });

  it('close() detaches every view and is idempotent; use after close throws ERR_MP_CLOSED; unlink() after close works', () => {
    const shm = SharedMemory.create(4096);
    const view = shm.buf;
    const sub = shm.buf.subarray(10, 20);
    const dv = new DataView(shm.buf.buffer);
    view[10] = 1;
    shm.close();
    shm.close();
    expect(shm.closed).toBe(true);
    expect(view.length).toBe(0);
    expect(sub.length).toBe(0);
    expect(view[10]).toBeUndefined(); // out of bounds of a detached view, not a segfault
    expect(() => dv.getUint8(0)).toThrow(TypeError);
    expect(() => shm.buf).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    expect(shm.size).toBe(4096);
    expect(exists(shm.name)).toBe(true);
    shm.unlink();
    expect(exists(shm.name)).toBe(false);
    // Twice: the name is gone, as Python's FileNotFoundError says.
    expect(() => shm.unlink()).toThrow(expect.objectContaining({ code: 'ENOENT', syscall: 'shm_unlink' }));
  });

  it('[Symbol.dispose] closes', () => {
    const shm = SharedMemory.create(64);
    const view = shm.buf;
    shm[Symbol.dispose]();
    expect(view.length).toBe(0);
    shm.unlink();
  });

  it('a peer truncating the segment gives an error from buf, not SIGBUS', () => {
    const shm = SharedMemory.create(3 * 4096);
    try {
      fs.truncateSync(`/dev/shm/${shm.name}`, 4096);
      expect(() => shm.buf).toThrow(expect.objectContaining({ code: 'ERR_MP_SHM_TRUNCATED' }));
    } finally {
      shm.close();
      shm.unlink();
    }
  });
});

describe('mmap() and unmap(), the native mapping', () => {
  const mappedHere = (name: string) =>
    fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`/dev/shm/${name}`)).length;
  const fdOpen = (fd: number) => fs.existsSync(`/proc/self/fd/${fd}`);

  it('unmap() detaches every view, unmaps at once, closes an owned fd, and a second unmap() is a no-op', () => {
    const name = uniqueName('mmap');
    const fd = binding.shmOpen(`/${name}`, true, true, 0o600);
    try {
      binding.ftruncate(fd, 8192);
      const keep = binding.shmOpen(`/${name}`, false, false, 0);
      const owned = binding.mmap(fd, 8192, true);
      const borrowed = binding.mmap(keep, 4096, false);
      const view = new Uint8Array(owned);
      view[4097] = 9;
      expect(new Uint8Array(borrowed).length).toBe(4096);
      expect(mappedHere(name)).toBe(2);
      binding.unmap(owned);
      expect(owned.byteLength).toBe(0);
      expect(view.length).toBe(0);
      expect(view[4097]).toBeUndefined(); // a detached view reads nothing, never the unmapped address
      expect(fdOpen(fd)).toBe(false);
      expect(mappedHere(name)).toBe(1);
      binding.unmap(owned);
      expect(mappedHere(name)).toBe(1);
      binding.unmap(borrowed);
      expect(mappedHere(name)).toBe(0);
      expect(fdOpen(keep)).toBe(true); // not owned: still the caller's
      expect(binding.fstatSize(keep)).toBe(8192);
      binding.closeFd(keep);
    } finally {
      binding.shmUnlink(`/${name}`);
    }
  });

  it('refuses bad arguments with TypeError/RangeError, and a bad fd with EBADF', () => {
    expect(() => binding.mmap('3' as any, 4096, false)).toThrow(TypeError);
    expect(() => binding.mmap(-1, 4096, false)).toThrow(RangeError);
    expect(() => binding.mmap(0, 0, false)).toThrow(RangeError);
    expect(() => binding.mmap(0, 2 ** 40, false)).toThrow(RangeError); // longer than an ArrayBuffer: no abort
    expect(() => binding.mmap(987654, 4096, true)).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'mmap' }));
    expect(() => binding.unmap(new Uint8Array(4) as any)).toThrow(TypeError);
    expect(() => binding.unmap(undefined as any)).toThrow(TypeError);
    // An ArrayBuffer that mmap() did not make is refused and left as it was.
    const plain = new ArrayBuffer(16);
    expect(() => binding.unmap(plain)).toThrow(TypeError);
    expect(plain.byteLength).toBe(16);
  });

  it("a late finalizer never unmaps or closes what a later mmap() or shmOpen() reused", async () => {
    const name = uniqueName('reuse');
    const child = spawn(process.execPath, ['--expose-gc', reuseScript, name], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise((resolve, reject) => {
      child.on('error', reject);
      child.on('close', resolve);
    });
    expect(stderr).toBe('');
    expect(code).toBe(0);
    const seen = JSON.parse(stdout);
    expect(seen.collected).toBe(100); // every unmapped buffer was collected and finalized
    expect(seen.sum).toBe(100 * 100); // all map one segment: each live mapping reads the 100 bytes written through them
    expect(seen.openFds).toBe(100);
    expect(seen.mapped).toBe(100);
    expect(seen.mappedAfter).toBe(0);
    expect(exists(name)).toBe(false);
  }, 30000);

  it('mappings dropped without unmap() or close() are unmapped and their fds closed by GC, without a crash', async () => {
    const name = uniqueName('gc');
    const result = await runNode(gcScript, [name], ['--expose-gc']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const seen = JSON.parse(result.stdout);
    expect(seen.mappedBefore).toBe(401); // the owner's mapping and 400 dropped ones
    expect(seen.mappedAfter).toBe(1);
    expect(seen.extraFds).toBe(0);
    expect(seen.sum).toBe(2 * 19900); // what the dropped mappings wrote is in the segment
    expect(exists(name)).toBe(false);
  }, 30000);
});

describe('SharedMemory across processes', () => {
  it('travels to a child as the same segment: each side sees what the other wrote', async () => {
    const shm = SharedMemory.create(1024);
    try {
      shm.buf.set(Buffer.from('from parent'));
      const p = new Process({ target: shmTargets.shmCheckAndWrite, args: [shm, 'from parent', '|from child'] });
      p.start();
      expect(await p.join(20)).toBe(0);
      expect(Buffer.from(shm.buf.subarray(0, 22)).toString()).toBe('from parent|from child');
    } finally {
      shm.close();
      shm.unlink();
    }
  });

  it('a child attaches by name', async () => {
    const shm = SharedMemory.create(64);
    try {
      const p = new Process({ target: shmTargets.shmOpenAndWrite, args: [shm.name, 'by name'] });
      p.start();
      expect(await p.join(20)).toBe(0);
      expect(Buffer.from(shm.buf.subarray(0, 7)).toString()).toBe('by name');
    } finally {
      shm.close();
      shm.unlink();
    }
  });

  it('scenario 18: an unrelated process attaches by name, writes, we read it back; after unlink the name is gone', async () => {
    const shm = SharedMemory.create(256);
    shm.buf.set(Buffer.from('hello from the creator'));
    const result = await runNode(peerScript, [shm.name, 'hello from the peer']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const seen = JSON.parse(result.stdout);
    expect(seen.seen).toBe('hello from the creator');
    expect(seen.size).toBe(256);
    expect(seen.pid).not.toBe(process.pid);
    expect(Buffer.from(shm.buf.subarray(64, 64 + 19)).toString()).toBe('hello from the peer');
    shm.close();
    shm.unlink();
    expect(exists(shm.name)).toBe(false);
    expect(() => SharedMemory.open(shm.name)).toThrow(expect.objectContaining({ code: 'ENOENT' }));
    const again = await runNode(peerScript, [shm.name, 'x']);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toContain('ENOENT');
  });
});
