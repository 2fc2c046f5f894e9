// The resource tracker process (started by resource-tracker.ts, one per program
// tree): reads REGISTER/UNREGISTER lines from fd 3 until EOF, which comes when
// every process of the tree has exited, then unlinks what is still registered
// and warns about it, as CPython's resource_tracker does. Names registered
// with an owner pid (process-lifetime objects: heap segments) are unlinked as
// soon as that process is gone, which is what its normal exit would have done.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

import { binding } from './native';

type Unlinker = (name: string) => void;

// The package names shared-memory segments (the synchronisation primitives
// live in them too) and managers' socket directories; a kind without an
// unlinker is reported rather than silently dropped.
const unlinkers: Record<string, Unlinker | undefined> = {
  shm: (name) => binding.shmUnlink(name),
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
      registered.delete(`${entry.kind}\0${entry.name}`);
      const d = unlink(entry);
      if (d) done.push(d);
    }
    warn(`process ${pid} ended without cleaning up; unlinked`, done);
  }
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

function cleanUp(): void {
  const done: string[] = [];
  for (const entry of registered.values()) {
    for (const one of entry.family ? members(entry) : [entry]) {
      const d = unlink(one);
      if (d) done.push(d);
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
