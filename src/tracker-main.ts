// The resource tracker process (started by resource-tracker.ts, one per program
// tree): reads REGISTER/UNREGISTER lines from fd 3 until EOF, which comes when
// every process of the tree has exited, then unlinks what is still registered
// and warns about it, as CPython's resource_tracker does. Names registered
// with an owner pid (process-lifetime objects) are unlinked as soon as that
// process is gone; a heap segment (kind 'heap') only once, in addition, no
// other process and no message in flight refers to it (its header's count).
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

import { SEGMENT_HEADER_BYTES, SEGMENT_MAGIC, SEGMENT_VERSION, W_DONE, W_FOREIGN, W_MAGIC, W_VERSION } from './heap-layout';
import { binding, type Mapping } from './native';

type Unlinker = (name: string) => void;

// The package names shared-memory segments (the synchronisation primitives
// live in them too) and managers' socket directories; a kind without an
// unlinker is reported rather than silently dropped.
const unlinkers: Record<string, Unlinker | undefined> = {
  shm: (name) => binding.shmUnlink(name),
  heap: (name) => binding.shmUnlink(name),
  // Its sockets, then the directory itself: anything else in it makes rmdir
  // fail, which is reported rather than deleted.
  'socket-dir': (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      if (entry.isSocket()) fs.rmSync(path.join(dir, entry.name), { force: true });
    }
    fs.rmdirSync(dir);
  },
};

// After each chunk the tracker stops reading for a moment: messages written
// meanwhile wait in the pipe buffer instead of waking this process once per
// message, which would cost every create/unlink a context switch (it was half
// the cost of a SharedMemory create+unlink cycle). A writer only waits if the
// pipe fills within the nap.
const NAP_MS = 10;
// How often owners of process-lifetime names are checked for being alive.
const OWNER_CHECK_MS = 250;

// A ^C in the terminal, or a SIGTERM sent to the whole program, must not end
// the tracker before the program's processes are gone.
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const) process.on(sig, () => {});

interface Entry {
  kind: string;
  name: string;
  pid?: number;
  /** name is a prefix: every shm name starting with it is ours (resource-tracker.ts trackFamily). */
  family?: boolean;
}
const registered = new Map<string, Entry>();

function handle(line: string): void {
  let msg: { op?: unknown; kind?: unknown; name?: unknown; pid?: unknown };
  try {
    msg = JSON.parse(line);
  } catch {
    return;
  }
  if (typeof msg.name !== 'string' || typeof msg.kind !== 'string') return;
  const key = `${msg.kind}\0${msg.name}`;
  if (msg.op === 'REGISTER') {
    const entry: Entry = { kind: msg.kind, name: msg.name };
    if (typeof msg.pid === 'number' && Number.isInteger(msg.pid) && msg.pid > 0) entry.pid = msg.pid;
    if ((msg as { family?: unknown }).family === true) entry.family = true;
    registered.set(key, entry);
  } else if (msg.op === 'UNREGISTER') {
    registered.delete(key);
    dropOrphan(key);
  } else if (msg.op === 'OWNER_GONE') {
    // The heap that made this segment ended (its process's or worker
    // thread's exit, native/shm.cc) while others still refer to it: from now
    // on it goes as soon as nothing does, as if its owner's pid were gone.
    const entry = registered.get(key);
    if (entry?.kind === 'heap' && !orphans.has(key)) {
      const d = ownerGone(key, entry, entry.pid ?? 0);
      if (d) warn('a heap segment whose owner ended was unlinked', [d]);
    }
  }
}

// ---- heap segments whose creator is gone ----------------------------------------

interface Header {
  mapping: Mapping;
  i32: Int32Array;
}

/** Maps a heap segment's header: null when it is gone, 'unreadable' when it has no valid header. */
function mapHeader(name: string): Header | null | 'unreadable' {
  let fd: number;
  try {
    fd = binding.shmOpen(name, false, false, 0o600);
  } catch (err) {
    return (err as { code?: string }).code === 'ENOENT' ? null : 'unreadable';
  }
  try {
    if (binding.fstatSize(fd) < SEGMENT_HEADER_BYTES) return 'unreadable';
    const mapping = new binding.Mapping(fd, SEGMENT_HEADER_BYTES);
    const i32 = new Int32Array(mapping.buffer, 0, SEGMENT_HEADER_BYTES / 4);
    if (i32[W_MAGIC] !== SEGMENT_MAGIC || i32[W_VERSION] !== SEGMENT_VERSION) {
      mapping.unmap();
      return 'unreadable';
    }
    return { mapping, i32 };
  } catch {
    return 'unreadable';
  } finally {
    binding.closeFd(fd);
  }
}

// Segments of processes that are gone, still referenced by other processes'
// handles or by messages not yet received; checked with the owners. A
// reference held by a process that was killed is never given back: such a
// segment stays until the tree ends.
const orphans = new Map<string, { entry: Entry; header: Header; crashed: boolean; pid: number }>();

function dropOrphan(key: string): void {
  const o = orphans.get(key);
  if (!o) return;
  orphans.delete(key);
  o.header.mapping.unmap();
}

/** The owner of a heap segment is gone: unlinks it now if nothing refers to it, else watches it. Returns what to report. */
function ownerGone(key: string, entry: Entry, pid: number): string | null {
  const header = mapHeader(entry.name);
  if (header === null) {
    registered.delete(key); // its owner unlinked it and exited before saying so
    return null;
  }
  if (header !== 'unreadable') {
    const crashed = Atomics.load(header.i32, W_DONE) !== 1;
    if (Atomics.load(header.i32, W_FOREIGN) > 0) {
      entry.pid = undefined; // watched below from now on
      orphans.set(key, { entry, header, crashed, pid });
      return null;
    }
    header.mapping.unmap();
    registered.delete(key);
    const d = unlink(entry);
    return crashed ? d : null;
  }
  registered.delete(key);
  return unlink(entry);
}

function checkOrphans(): void {
  for (const [key, o] of orphans) {
    if (Atomics.load(o.header.i32, W_FOREIGN) > 0) continue;
    dropOrphan(key);
    registered.delete(key);
    const d = unlink(o.entry);
    if (d && o.crashed) warn(`process ${o.pid} ended without cleaning up; unlinked`, [d]);
  }
}

/** Unlinks an entry; a description for the warning, or null when it was already gone. */
function unlink(entry: Entry): string | null {
  const fn = unlinkers[entry.kind];
  if (!fn) return `${entry.kind} ${entry.name} (not unlinked: no unlinker for this kind)`;
  try {
    fn(entry.name);
    return `${entry.kind} ${entry.name}`;
  } catch (err) {
    // ENOENT: its owner unlinked it but died before saying so. Nothing leaked.
    if ((err as { code?: string }).code === 'ENOENT') return null;
    return `${entry.kind} ${entry.name} (unlink failed: ${(err as Error).message})`;
  }
}

function warn(what: string, list: string[]): void {
  if (list.length === 0) return;
  process.stderr.write(`posix-multiprocessing resource tracker: ${what}:\n  ${list.join('\n  ')}\n`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: a process we may not signal has the pid now; treat as alive (never unlink too early).
    return (err as { code?: string }).code !== 'ESRCH';
  }
}

// A pid that is reused before the check only delays the cleanup to the end
// of the tree; a dead pid is never mistaken for a live one.
function checkOwners(): void {
  const byPid = new Map<number, Entry[]>();
  for (const [key, entry] of registered) {
    if (entry.pid === undefined) continue;
    let list = byPid.get(entry.pid);
    if (!list) byPid.set(entry.pid, (list = []));
    list.push(entry);
    void key;
  }
  for (const [pid, entries] of byPid) {
    if (isAlive(pid)) continue;
    const done: string[] = [];
    for (const entry of entries) {
      const key = `${entry.kind}\0${entry.name}`;
      let d: string | null;
      if (entry.kind === 'heap') {
        d = ownerGone(key, entry, pid);
      } else {
        registered.delete(key);
        d = unlink(entry);
      }
      if (d) done.push(d);
    }
    warn(`process ${pid} ended without cleaning up; unlinked`, done);
  }
  checkOrphans();
}

// The members of a family that still exist. Only shm families are registered,
// and only on Linux, where every shm name is an entry of /dev/shm.
function members(family: Entry): Entry[] {
  if (family.kind !== 'shm') return [family]; // reported as having no unlinker
  const body = family.name.slice(1);
  let entries: string[];
  try {
    entries = fs.readdirSync('/dev/shm');
  } catch {
    return [];
  }
  return entries.filter((e) => e.startsWith(body)).map((e) => ({ kind: 'shm', name: `/${e}` }));
}

// A heap segment whose owner ended normally, still referenced at the end (a
// message nobody received, a handle of a killed process), is not a leak of the
// program's: it goes without a warning.
function handedOver(key: string, entry: Entry): boolean {
  if (entry.kind !== 'heap') return false;
  const o = orphans.get(key);
  if (o) return !o.crashed;
  const header = mapHeader(entry.name);
  if (header === null || header === 'unreadable') return false;
  const done = Atomics.load(header.i32, W_DONE) === 1;
  header.mapping.unmap();
  return done;
}

function cleanUp(): void {
  const done: string[] = [];
  for (const [key, entry] of registered) {
    const quiet = handedOver(key, entry);
    dropOrphan(key);
    for (const one of entry.family ? members(entry) : [entry]) {
      const d = unlink(one);
      if (d && !quiet) done.push(d);
    }
  }
  registered.clear();
  warn(`${done.length} named object(s) were still registered when the program ended and have been cleaned up`, done);
}

// fd 3 is the read end of the pipe; a libuv pipe handle polls it on the event
// loop (no thread parked in read()).
const input = new net.Socket({ fd: 3, readable: true, writable: false });
let pending = '';
input.setEncoding('utf8');
input.on('data', (chunk: string) => {
  pending += chunk;
  let nl: number;
  while ((nl = pending.indexOf('\n')) >= 0) {
    handle(pending.slice(0, nl));
    pending = pending.slice(nl + 1);
  }
  input.pause();
  setTimeout(() => input.resume(), NAP_MS);
});
const ownerTimer = setInterval(checkOwners, OWNER_CHECK_MS);
const finish = (): void => {
  clearInterval(ownerTimer);
  cleanUp();
  process.exit(0);
};
input.on('end', finish);
input.on('error', finish);
