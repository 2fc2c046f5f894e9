// The resource tracker process (started by resource-tracker.ts, one per program
// tree): reads REGISTER/UNREGISTER lines from fd 3 until EOF, which comes when
// every process of the tree has exited, then unlinks what is still registered
// and warns about it, as CPython's resource_tracker does.
import * as fs from 'node:fs';

import { binding } from './native';

type Unlinker = (name: string) => void;

// Named semaphores are unlinked through the binding's semUnlink when the
// addon has one (branch `sync`); until then such names are only reported.
const unlinkers: Record<string, Unlinker | undefined> = {
  shm: (name) => binding.shmUnlink(name),
  semaphore: (binding as unknown as { semUnlink?: Unlinker }).semUnlink,
};

// A ^C in the terminal, or a SIGTERM sent to the whole program, must not end
// the tracker before the program's processes are gone. (Handlers installed
// through process.on keep the default action from running; the loop below
// blocks, so they never run, and SA_RESTART restarts the read.)
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const) process.on(sig, () => {});

const registered = new Map<string, { kind: string; name: string }>();

function handle(line: string): void {
  let msg: { op?: unknown; kind?: unknown; name?: unknown };
  try {
    msg = JSON.parse(line);
  } catch {
    return;
  }
  if (typeof msg.name !== 'string' || typeof msg.kind !== 'string') return;
  const key = `${msg.kind}\0${msg.name}`;
  if (msg.op === 'REGISTER') registered.set(key, { kind: msg.kind, name: msg.name });
  else if (msg.op === 'UNREGISTER') registered.delete(key);
}

// After each read the tracker naps: messages written meanwhile wait in the
// pipe buffer instead of waking this process once per message, which would
// cost every create/unlink a context switch (it was half the cost of a
// SharedMemory create+unlink cycle). A full pipe only makes a writer wait for
// the end of the nap.
const NAP_MS = 10;
const napWord = new Int32Array(new SharedArrayBuffer(4));

function readUntilEof(): void {
  const chunk = Buffer.allocUnsafe(64 * 1024);
  let pending = '';
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(3, chunk, 0, chunk.length, null);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'EINTR' || code === 'EAGAIN') continue;
      return;
    }
    if (n === 0) return;
    Atomics.wait(napWord, 0, 0, NAP_MS);
    pending += chunk.toString('utf8', 0, n);
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      handle(pending.slice(0, nl));
      pending = pending.slice(nl + 1);
    }
  }
}

function cleanUp(): void {
  const leaked: string[] = [];
  for (const { kind, name } of registered.values()) {
    const unlink = unlinkers[kind];
    if (!unlink) {
      leaked.push(`${kind} ${name} (not unlinked: no unlinker for this kind)`);
      continue;
    }
    try {
      unlink(name);
      leaked.push(`${kind} ${name}`);
    } catch (err) {
      // ENOENT: its owner unlinked it but died before saying so. Nothing leaked.
      if ((err as { code?: string }).code !== 'ENOENT') leaked.push(`${kind} ${name} (unlink failed: ${(err as Error).message})`);
    }
  }
  if (leaked.length > 0) {
    process.stderr.write(
      `posix-multiprocessing resource tracker: ${leaked.length} named object(s) were still registered ` +
        `when the program ended and have been cleaned up:\n  ${leaked.join('\n  ')}\n`,
    );
  }
}

readUntilEof();
cleanUp();
process.exit(0);
