// The entry point of every child: `node [parent's execArgv] bootstrap.js`.
// It reads its instructions from fd 3 (a pipe the parent filled and closed),
// becomes "Process-N" for the package, imports its target by reference, runs
// it, and exits as soon as the target settles (Python's rule: open handles do
// not keep a child alive). Exit codes: 0 on return, 1 on a throw (printed on
// stderr under the process name, like Python's traceback), n on process.exit(n).
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { inspect } from 'node:util';

import { context, type ProcessInfo } from '../context';
import { binding } from '../native';
import { Process, reviveCurrent, type ChildHeader } from '../process';
import { decode, isPlainJson } from '../serialize';

// tsc turns import() into require() in CommonJS output; a target may be an ES
// module, so keep a real dynamic import.
const importModule = new Function('specifier', 'return import(specifier)') as (s: string) => Promise<any>;

let header: ChildHeader | undefined;

function fail(err: unknown): never {
  const name = header?.name ?? `pid ${process.pid}`;
  process.stderr.write(`Process ${name}:\n${inspect(err)}\n`);
  process.exit(1);
}

function readInstructions(): { header: ChildHeader; body: Buffer } {
  const payload = fs.readFileSync(3);
  fs.closeSync(3);
  if (payload.length < 4) {
    // The parent died (or exited) before it could send anything.
    process.exit(1);
  }
  const headLength = payload.readUInt32LE(0);
  const head = JSON.parse(payload.toString('utf8', 4, 4 + headLength)) as ChildHeader;
  return { header: head, body: payload.subarray(4 + headLength) };
}

// Codes that require() reports before it evaluates anything: the module is
// fine, but only import() can load it (top-level await, or a loader that hooks
// only import).
const importOnly = new Set(['ERR_REQUIRE_ASYNC_MODULE', 'ERR_REQUIRE_ESM', 'ERR_UNKNOWN_FILE_EXTENSION', 'ERR_REQUIRE_CYCLE_MODULE']);

// Loaders given with --import/--loader may hook only import() (module.register
// hooks do not see require), and would then transform what require() reads raw.
const loaderFlag = /(^|\s)--(import|loader|experimental-loader)\b/;
const hasLoaders = process.execArgv.some((a) => loaderFlag.test(a)) || loaderFlag.test(process.env.NODE_OPTIONS ?? '');

// require() first: it loads CommonJS and (Node >= 20.19) synchronous ES modules
// without starting the asynchronous ESM loader, which is a good part of a
// child's startup. Everything else, and everything under loaders, goes through
// import().
async function loadModule(url: string): Promise<any> {
  if (url.startsWith('file:') && !hasLoaders) {
    try {
      return require(fileURLToPath(url));
    } catch (err) {
      if (!importOnly.has((err as { code?: string }).code ?? '')) throw err;
    }
  }
  return importModule(url);
}

async function loadExport(ref: NonNullable<ChildHeader['target']>): Promise<any> {
  const ns = await loadModule(ref.url);
  let value = ns[ref.exportName];
  if (value === undefined && ns.default && typeof ns.default === 'object') value = ns.default[ref.exportName];
  if (typeof value !== 'function') {
    throw Object.assign(
      new Error(`${ref.url} has no exported function named '${ref.exportName}' in the child process`),
      { code: 'ERR_MP_TARGET_NOT_IMPORTABLE' },
    );
  }
  return value;
}

async function main(): Promise<void> {
  const instructions = readInstructions();
  header = instructions.header;
  const ctx = context();
  ctx.isMain = false;
  ctx.identity = header.identity;
  ctx.parent = { pid: header.parentPid, name: header.parentName };
  ctx.current = { name: header.name, pid: process.pid, daemon: header.daemon };
  if (process.platform === 'darwin') binding.watchParent(header.parentPid, header.deathSignal);

  const target = header.target;
  ctx.bootstrapping = true;
  const exported = target ? await loadExport(target) : undefined;
  ctx.bootstrapping = false;
  const fds = Array.from({ length: header.fds }, (_, i) => 4 + i);
  // Arguments that are plain JSON need no codec registrations; anything else may
  // hold transferables, whose classes register themselves when the package
  // index loads. Loading it only then keeps the common child's startup short.
  if (!isPlainJson(instructions.body)) require('../index');
  const { args, props } = decode(instructions.body, { fds }) as { args: unknown[]; props?: Record<string, unknown> };

  let result: unknown;
  if (target?.kind === 'class') {
    if (!(exported.prototype instanceof Process)) {
      throw new TypeError(`${target.url} export '${target.exportName}' is not a subclass of Process`);
    }
    const self = reviveCurrent(exported, header);
    Object.assign(self, props);
    ctx.current = self as ProcessInfo;
    result = self.run();
  } else {
    ctx.current = reviveCurrent(Process, header) as ProcessInfo;
    result = exported ? exported(...args) : undefined;
  }
  await result;
}

main().then(
  () => process.exit(0),
  (err) => fail(err),
);
