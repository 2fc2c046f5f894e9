// The forkserver: `node --single-threaded [caller's flags] forkserver-main.js`,
// with its control socket on fd 3 (see ../forkserver.ts for the caller's side,
// native/forkserver.cc for the wire). It loads the package, the preloads and
// what children commonly run, warms the hot paths so that children start with
// compiled code, reports ready, and then serves from native code, idle: it
// never runs JS again as a server. In each child, forkserverServe() returns,
// and the child becomes the process the caller asked for.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';

import { context } from '../context';
import { importModule, importTarget } from '../import-target';
import { binding } from '../native';
import { distDir } from '../paths';

const CTRL = 3;

/** The caller's first message. */
export interface ServerConfig {
  /** Modules to import once, as setForkserverPreload() named them. */
  preload: string[];
}

function receive(): ServerConfig | null {
  const buf = Buffer.alloc(1 << 16);
  const n = binding.recvmsg(CTRL, buf, 0, buf.length, [], -1);
  if (n <= 0) return null;
  return JSON.parse(buf.toString('utf8', 0, n)) as ServerConfig;
}

function send(message: unknown): void {
  const data = Buffer.from(JSON.stringify(message));
  binding.sendmsg(CTRL, data, 0, data.length, []);
}

// A preload names a module as the caller would import it: a path (relative to
// the caller's cwd, which the server shares), a file: URL, or a specifier
// resolved from the cwd like an import in a file there.
function resolvePreload(spec: string): string {
  if (spec.startsWith('file:') || spec.startsWith('node:')) return spec;
  if (spec.startsWith('.') || path.isAbsolute(spec)) return pathToFileURL(path.resolve(spec)).href;
  try {
    return pathToFileURL(createRequire(path.join(process.cwd(), 'noop.js')).resolve(spec)).href;
  } catch {
    return spec; // import() says what is wrong, or finds what require cannot (import-only exports)
  }
}

// What children run, compiled before the first fork: the child bootstrap, the
// argument codec, the pool's worker loop and the manager server. Only code
// without side effects on OS state runs here (no segments, no tracker
// registration, no random-number caches: children must not share those).
async function warm(): Promise<void> {
  require('../index');
  require('./bootstrap');
  require('./forked');
  require('../pool-worker');
  require('../manager-server');
  // The ES module loader, which a child pays for on its first import() if
  // the server never used it; and the package's ES module face with it.
  await importModule(pathToFileURL(path.join(distDir, '..', 'esm', 'index.mjs')).href);
  const { encode, decode } = require('../serialize') as typeof import('../serialize');
  // Enough rounds for V8 to compile the codec's paths, few enough that the
  // boot (which the first start() waits for) stays short.
  const samples: unknown[] = [{ args: [1, 'two', [3], { four: 4 }] }, { args: [new Map([[1, 2]]), new Set([1]), 10n, new Float64Array(4)] }];
  for (let i = 0; i < 300; i++) {
    for (const sample of samples) decode(encode(sample, { fds: [] }), { fds: [] });
  }
  // The child's own start path, run once on a sample so that V8 has compiled
  // it (a child would compile each function again, ~60 of them): reading the
  // instructions, and finding a target by reference.
  const { readInstructions } = require('./bootstrap') as typeof import('./bootstrap');
  const [readEnd, writeEnd] = binding.pipe();
  const head = Buffer.from(JSON.stringify({ name: 'warm-up', target: null }));
  const sample = Buffer.concat([Buffer.from([head.length, 0, 0, 0]), head, encode({ args: [] }, { fds: [] })]);
  binding.write(writeEnd, sample, 0, sample.length);
  binding.closeFd(writeEnd);
  decode(readInstructions(readEnd).body, { fds: [] });
  await importTarget({ url: pathToFileURL(path.join(__dirname, 'forked.js')).href, exportName: 'reportDeath' }, 'warm-up');
  // What every child's start touches, so that it finds it loaded: the clocks,
  // the environment, and the OS random source that reseeds Math.random (not
  // randomUUID()/randomInt(), whose caches children must not share).
  performance.now();
  process.uptime();
  Object.keys(process.env);
  require('node:crypto').randomFillSync(new Uint32Array(4));
}

let preloaded = false;

async function boot(): Promise<void> {
  const config = receive();
  if (config === null) process.exit(0); // the caller is gone already
  preloaded = config.preload.length > 0;
  // The server is no program's main process: a preload that starts
  // processes at top level (the program's own main module, unguarded) fails
  // as it would in a child, instead of booting servers without end.
  const ctx = context();
  ctx.isMain = false;
  ctx.bootstrapping = true;
  await warm();
  for (const spec of config.preload) await importModule(resolvePreload(spec));
  ctx.bootstrapping = false;
  // A small heap makes each fork cheaper, and children start with none of
  // the garbage of the boot.
  v8.setFlagsFromString('--expose-gc');
  (vm.runInNewContext('gc') as () => void)();
  // Single-threaded, V8 sweeps lazily after a collection: every child would
  // finish the server's sweep, copying the pages it touches. Walking the heap
  // (queryObjects, Node >= 20.13) makes V8 finish it here, once.
  const queryObjects = (v8 as { queryObjects?: (ctor: Function, options: object) => unknown }).queryObjects;
  if (typeof queryObjects === 'function') {
    // Without its "experimental" warning: the caller's stderr is not the place.
    const emitWarning = process.emitWarning;
    process.emitWarning = () => {};
    try {
      queryObjects(class Sweep {}, { format: 'count' });
    } finally {
      process.emitWarning = emitWarning;
    }
  }
}

function serve(): void {
  const request = binding.forkserverServe(CTRL);
  if (request === null) process.exit(0); // the caller hung up
  // From here on this is a child.
  const { becomeForked } = require('./forked') as typeof import('./forked');
  becomeForked(request.pid, preloaded);
  const { runChild } = require('./bootstrap') as typeof import('./bootstrap');
  runChild(request.instructions, request.fds);
}

boot().then(
  () => {
    send({ ok: true });
    // From a fresh turn of the loop: nothing of the boot is left in flight.
    setImmediate(serve);
  },
  (err: unknown) => {
    const e = err as { name?: string; message?: string; stack?: string; code?: unknown };
    send({ ok: false, error: { name: e?.name, message: e?.message ?? String(err), stack: e?.stack, code: e?.code } });
    fs.closeSync(CTRL);
    process.exit(1);
  },
);
