// How every child starts: as `node [parent's execArgv] bootstrap.js` (spawn),
// or forked from a forkserver (forkserver-main.ts, which calls runChild after
// forked.ts has made the copy a process of its own). It reads its
// instructions from a pipe the parent filled and closed (fd 3 under spawn),
// becomes "Process-N" for the package, imports its target by reference, runs
// it, and exits as soon as the target settles (Python's rule: open handles do
// not keep a child alive), once its daemon children are terminated and the
// others joined (Python's _exit_function). Exit codes: 0 on return, 1 on a
// throw (printed on stderr under the process name, like Python's traceback),
// n on process.exit(n), 13 when the event loop empties with the target still
// pending (Node's code for an unsettled top-level await).
import * as fs from 'node:fs';
import { inspect } from 'node:util';

import { context, exitChildren, type ProcessInfo } from '../context';
import { importTarget } from '../import-target';
import { binding } from '../native';
import { Process, reviveCurrent, type ChildHeader } from '../process';
import { adoptCaller, reportDeath } from './forked';
import { decode, isPlainJson } from '../serialize';

let header: ChildHeader | undefined;

/** Reads and closes the instructions pipe (exported for the forkserver's warm-up). */
export function readInstructions(fd: number): { header: ChildHeader; body: Buffer } {
  const payload = fs.readFileSync(fd);
  fs.closeSync(fd);
  if (payload.length < 4) {
    // The parent died (or exited) before it could send anything.
    process.exit(1);
  }
  const headLength = payload.readUInt32LE(0);
  const head = JSON.parse(payload.toString('utf8', 4, 4 + headLength)) as ChildHeader;
  return { header: head, body: payload.subarray(4 + headLength) };
}

async function main(instructionsFd: number, argFds: number[] | undefined): Promise<void> {
  const instructions = readInstructions(instructionsFd);
  header = instructions.header;
  if (header.fork) adoptCaller(header.fork, header.parentPid);
  const ctx = context();
  ctx.isMain = false;
  ctx.identity = header.identity;
  ctx.parent = { pid: header.parentPid, name: header.parentName };
  if (header.startMethod) ctx.startMethod = header.startMethod;
  // Modules that read process.argv at top level see what they see in the parent.
  if (Array.isArray(header.argv)) process.argv = [process.argv[0], ...header.argv.slice(1)];
  ctx.current = { name: header.name, pid: process.pid, daemon: header.daemon };
  if (process.platform === 'darwin') binding.watchParent(header.parentPid, header.deathSignal);

  const target = header.target;
  ctx.bootstrapping = true;
  const exported = target ? await importTarget(target, `process ${header.name}`) : undefined;
  ctx.bootstrapping = false;
  const fds = argFds ?? Array.from({ length: header.fds }, (_, i) => 4 + i);
  // Arguments that are plain JSON need no codec registrations; anything else may
  // hold transferables, whose classes register themselves when the package
  // index loads. Loading it only then keeps the common child's startup short.
  if (!isPlainJson(instructions.body)) require('../index');
  const { args, props } = decode(instructions.body, { fds }) as { args: unknown[]; props?: Record<string, unknown> };

  let result: unknown;
  if (target?.kind === 'class') {
    const Class = exported as unknown as typeof Process;
    if (!(Class.prototype instanceof Process)) {
      throw new TypeError(`${target.url} export '${target.exportName}' is not a subclass of Process`);
    }
    const self = reviveCurrent(Class, header);
    Object.assign(self, props);
    ctx.current = self as ProcessInfo;
    result = self.run();
  } else {
    ctx.current = reviveCurrent(Process, header) as ProcessInfo;
    result = exported ? exported(...args) : undefined;
  }
  await result;
}

let settled = false;
let emptied = false;

async function finish(code: number): Promise<void> {
  settled = true;
  try {
    await exitChildren();
  } finally {
    process.exit(code);
  }
}

/** Runs the child whose instructions are on instructionsFd (argFds: where its arguments' fds are, if not at 4, 5, ...). */
export function runChild(instructionsFd: number, argFds?: number[]): void {
  // 'beforeExit' comes only when the event loop empties, never for
  // process.exit(); an exit code set by process.exit(n) or by an uncaught
  // exception is left alone.
  process.on('beforeExit', () => (emptied = true));
  process.on('exit', () => {
    if (settled || !emptied || process.exitCode !== undefined) return;
    process.exitCode = 13;
    const name = header?.name ?? '?';
    fs.writeSync(
      2,
      `Process ${name} (pid ${process.pid}): the target's promise never settled: the event loop ` +
        'emptied with nothing left to settle it; exit code 13, as for an unsettled top-level await\n',
    );
  });
  reportDeath(() => header?.name);
  main(instructionsFd, argFds).then(
    () => finish(0),
    (err) => {
      // Python's traceback heading, and a line naming the pid that died.
      const name = header?.name ?? '?';
      process.stderr.write(`Process ${name}:\n${inspect(err)}\nProcess ${name} (pid ${process.pid}) exited with code 1\n`);
      return finish(1);
    },
  );
}

if (require.main === module) runChild(3);
