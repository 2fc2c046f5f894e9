// Finds functions by reference, the way pickle finds them by qualified name: a
// function (or class) travels to a child as "export E of module M", and the
// child imports it. This runs in the parent at start(), so that a target the
// child could never import fails there, with a message that says how to fix it.
//
// Where a function was defined comes from V8 itself ([[FunctionLocation]] via a
// same-thread inspector session, whose calls complete synchronously); which
// export it is comes from the module's exports: require.cache for CommonJS,
// require(esm) for ES modules (Node >= 20.19). An ES module still being
// evaluated (the main module calling start() at top level) or one with
// top-level await cannot be required; for those the module's source is checked
// for an export of that name, and the child verifies the export when it imports.
// A module that a loader handed to Node under another URL (a data: URL) is
// named by its real file, which the child imports through the same loaders.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { stateError } from './errors';
import { hasLoaders } from './import-target';

export interface TargetRef {
  /** A file: URL (or a bare specifier, for { module } targets). */
  url: string;
  exportName: string;
}

type InspectorSession = {
  connect(): void;
  post(method: string, params: object | undefined, cb: (err: Error | null, res: any) => void): void;
  on(event: string, listener: (msg: any) => void): void;
};

interface Script {
  url: string;
  sourceMapURL?: string;
}

let session: InspectorSession | null | undefined;
const scripts = new Map<string, Script>();
const located = new WeakMap<Function, TargetRef>();

// node:module loads lazily: children load this file but never locate.
function createRequire(filename: string): NodeRequire {
  return (require('node:module') as typeof import('node:module')).createRequire(filename);
}

let cache: NodeJS.Dict<NodeJS.Module> | undefined;

// The CommonJS loader's module cache. When Node's ESM loader evaluates this
// package as CommonJS (tsx hands a CommonJS entry to the ESM loader), the
// require() it passes in has no .cache; one made by createRequire always has.
function cjsCache(): NodeJS.Dict<NodeJS.Module> {
  return (cache ??= createRequire(__filename).cache);
}

function post(method: string, params?: object): any {
  let error: Error | null = null;
  let result: any;
  session!.post(method, params, (err, res) => {
    error = err;
    result = res;
  });
  if (error) throw error;
  return result;
}

function getSession(): InspectorSession | null {
  if (session !== undefined) return session;
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const inspector = require('node:inspector');
    const s: InspectorSession = new inspector.Session();
    s.connect();
    s.on('Debugger.scriptParsed', (msg) => {
      const { scriptId, url, sourceMapURL } = msg.params;
      if (url) scripts.set(scriptId, { url, sourceMapURL: sourceMapURL || undefined });
    });
    session = s;
  } catch {
    session = null; // a Node built without the inspector: only CommonJS lookup
  }
  return session;
}

/** The script that defines fn, or undefined when V8 cannot say. */
function definingScript(fn: Function): Script | undefined {
  const s = getSession();
  if (!s) return undefined;
  const key = '__pmpLocate';
  (globalThis as any)[key] = fn;
  let objectId: string | undefined;
  try {
    objectId = post('Runtime.evaluate', { expression: `globalThis.${key}` }).result.objectId;
  } finally {
    delete (globalThis as any)[key];
  }
  try {
    const props = post('Runtime.getProperties', { objectId, ownProperties: true });
    const loc = props.internalProperties?.find((p: any) => p.name === '[[FunctionLocation]]');
    const scriptId: string | undefined = loc?.value?.value?.scriptId;
    if (scriptId === undefined) return undefined;
    if (!scripts.has(scriptId)) {
      // Enabling the debugger replays scriptParsed for every loaded script.
      post('Debugger.enable');
      post('Debugger.disable');
    }
    return scripts.get(scriptId);
  } finally {
    post('Runtime.releaseObject', { objectId });
  }
}

function toFilename(url: string): string | undefined {
  if (url.startsWith('file:')) return fileURLToPath(url);
  if (path.isAbsolute(url)) return url;
  return undefined;
}

function findExport(exports: unknown, fn: Function): string | undefined {
  if (exports === fn) return 'default';
  if (exports === null || (typeof exports !== 'object' && typeof exports !== 'function')) return undefined;
  const ns = exports as Record<string, unknown>;
  if (fn.name && ns[fn.name] === fn) return fn.name;
  for (const key of Object.keys(ns)) if (ns[key] === fn) return key;
  // The module was also evaluated by another loader (a test runner's or a
  // bundler's transform), so this copy of the function is not the one Node
  // holds and its source text may differ: an export of the same name from the
  // same file is what the child will import.
  const candidate = fn.name ? ns[fn.name] : undefined;
  if (typeof candidate === 'function') return fn.name;
  const fallback = ns.default;
  if (typeof fallback === 'function' && fn.name && fallback.name === fn.name) return 'default';
  return undefined;
}

// For a module that cannot be required right now: does its source export `name`?
function sourceExports(filename: string, name: string): boolean {
  let source: string;
  try {
    source = fs.readFileSync(filename, 'utf8');
  } catch {
    return false;
  }
  const id = name.replace(/[$]/g, '\\$');
  const patterns = [
    new RegExp(`export\\s+(?:default\\s+)?(?:async\\s+)?function\\s*\\*?\\s*${id}\\b`),
    new RegExp(`export\\s+(?:default\\s+)?(?:abstract\\s+)?class\\s+${id}\\b`),
    new RegExp(`export\\s+(?:const|let|var)\\s+${id}\\b`),
    new RegExp(`export\\s*\\{[^}]*\\b${id}\\b[^}]*\\}`),
  ];
  return patterns.some((re) => re.test(source));
}

function notImportable(what: string, fn: Function, detail: string): Error {
  const label = fn.name ? `${what} ${fn.name}` : `this anonymous ${what}`;
  return stateError(
    `${label} cannot be sent to a child process: ${detail}. A child is a fresh Node ` +
      `that imports its target, so the target must be an exported top-level function ` +
      `(or class) of a module: export it, or pass { module, export } as the target.`,
    'ERR_MP_TARGET_NOT_IMPORTABLE',
  );
}

/** Locates fn as an export of a module file, or throws ERR_MP_TARGET_NOT_IMPORTABLE. */
export function locate(fn: Function, what = 'function'): TargetRef {
  const cached = located.get(fn);
  if (cached) return cached;
  const script = definingScript(fn);
  let ref: TargetRef | undefined;
  if (script !== undefined) {
    const filename = toFilename(script.url);
    if (filename !== undefined) {
      ref = lookIn(filename, fn, what);
      if (!ref) throw notImportable(what, fn, `${filename} does not export it`);
    } else {
      ref = lookInDelivered(script, fn, what);
    }
  } else {
    // No inspector, or a native/bound function: search loaded CommonJS modules.
    for (const [filename, mod] of Object.entries(cjsCache())) {
      const name = findExport(mod?.exports, fn);
      if (name) {
        ref = { url: pathToFileURL(filename).href, exportName: name };
        break;
      }
    }
    if (!ref) throw notImportable(what, fn, 'no loaded module exports it (bound and built-in functions cannot be sent)');
  }
  located.set(fn, ref);
  return ref;
}

// A loader's load hook may return a module's code under a responseURL that is
// not its file, and Node then names the script (and, for CommonJS, the
// require.cache entry) by that URL. tsx (4.x) does so for a .ts file of a package
// without "type": "module" imported from an ES module: it compiles the file to
// CommonJS and answers `data:text/javascript,<code>?filePath=<file>`. Importing
// the file itself through the same loaders gives a child the same module, so
// the reference names the file: from tsx's filePath parameter, or else from a
// source map with a single source (how transpiling loaders say where code came
// from). The export is found by identity in the CommonJS exports Node holds
// under the delivered URL, or, for an ES module, in the file's source.
function lookInDelivered(script: Script, fn: Function, what: string): TargetRef {
  const { url } = script;
  const shown = url.length > 80 ? `${url.slice(0, 80)}...` : url;
  const file = fileOf(script);
  if (file === undefined) throw notImportable(what, fn, `it was defined in ${shown}, which is not a module file`);
  if (!hasLoaders) {
    // Only a loader delivers code that way, and one registered from code (not
    // by --import/--loader in execArgv or NODE_OPTIONS) is not in the child.
    throw notImportable(
      what,
      fn,
      `${file.path} was loaded through ${url.slice(0, url.indexOf(':') + 1)} by a loader that child processes will not have ` +
        `(register loaders with --import in execArgv or NODE_OPTIONS so children inherit them)`,
    );
  }
  const cjs = cjsCache()[url];
  let name = cjs ? findExport(cjs.exports, fn) : undefined;
  if (!cjs && fn.name && sourceExports(file.path, fn.name)) name = fn.name;
  if (!name) throw notImportable(what, fn, `${file.path} does not export it`);
  return { url: file.url, exportName: name };
}

function fileOf(script: Script): { path: string; url: string } | undefined {
  let query = '';
  let filename: string | undefined;
  const filePath = searchParam(script.url, 'filePath');
  if (filePath !== undefined) {
    // tsx appends the importer's own query (and its namespace, which only a
    // tsx API call in this process has) to the path.
    const q = filePath.indexOf('?');
    filename = q < 0 ? filePath : filePath.slice(0, q);
    if (q >= 0) {
      const params = new URLSearchParams(filePath.slice(q + 1));
      params.delete('namespace');
      query = params.size > 0 ? `?${params}` : '';
    }
  } else if (script.sourceMapURL !== undefined) {
    filename = soleSource(script.sourceMapURL);
  }
  if (filename === undefined || !path.isAbsolute(filename) || !isFile(filename)) return undefined;
  return { path: filename, url: pathToFileURL(filename).href + query };
}

function searchParam(url: string, name: string): string | undefined {
  try {
    return new URL(url).searchParams.get(name) ?? undefined;
  } catch {
    return undefined;
  }
}

// The one file a source map (inline data: or a file: URL) was made from.
function soleSource(mapUrl: string): string | undefined {
  try {
    let text: string;
    let base: string | undefined;
    if (mapUrl.startsWith('data:')) {
      const comma = mapUrl.indexOf(',');
      const body = mapUrl.slice(comma + 1);
      text = /;base64$/i.test(mapUrl.slice(0, comma)) ? Buffer.from(body, 'base64').toString('utf8') : decodeURIComponent(body);
    } else if (mapUrl.startsWith('file:')) {
      text = fs.readFileSync(fileURLToPath(mapUrl), 'utf8');
      base = mapUrl;
    } else {
      return undefined;
    }
    const map = JSON.parse(text) as { sources?: unknown; sourceRoot?: unknown };
    if (!Array.isArray(map.sources) || map.sources.length !== 1 || typeof map.sources[0] !== 'string') return undefined;
    const root = typeof map.sourceRoot === 'string' && map.sourceRoot ? map.sourceRoot.replace(/\/?$/, '/') : '';
    const source = root + map.sources[0];
    if (source.startsWith('file:')) return fileURLToPath(source);
    if (path.isAbsolute(source)) return source;
    return base ? fileURLToPath(new URL(source, base)) : undefined;
  } catch {
    return undefined;
  }
}

function isFile(filename: string): boolean {
  try {
    return fs.statSync(filename).isFile();
  } catch {
    return false;
  }
}

function lookIn(filename: string, fn: Function, what: string): TargetRef | undefined {
  const url = pathToFileURL(filename).href;
  const cjs = cjsCache()[filename];
  if (cjs) {
    const name = findExport(cjs.exports, fn);
    return name ? { url, exportName: name } : undefined;
  }
  try {
    const ns = createRequire(filename)(filename);
    const name = findExport(ns, fn);
    return name ? { url, exportName: name } : undefined;
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code !== 'ERR_REQUIRE_CYCLE_MODULE' && code !== 'ERR_REQUIRE_ASYNC_MODULE' && code !== 'ERR_REQUIRE_ESM') {
      // Node itself cannot load the file (TypeScript without a loader, a file
      // some tool transformed in memory): neither could the child.
      const e = notImportable(what, fn, `${filename} cannot be loaded by Node here (${(err as Error).name}: ${(err as Error).message})`);
      (e as { cause?: unknown }).cause = err;
      throw e;
    }
  }
  if (!fn.name) throw notImportable(what, fn, 'anonymous functions have no export name');
  return sourceExports(filename, fn.name) ? { url, exportName: fn.name } : undefined;
}

/** Resolves a { module, export } target given by the user. */
export function resolveModuleTarget(module: unknown, exportName: unknown, argName: string): TargetRef {
  let url: string;
  if (module instanceof URL) url = module.href;
  else if (typeof module === 'string' && module.startsWith('file:')) url = new URL(module).href;
  else if (typeof module === 'string' && module.length > 0) {
    if (module.startsWith('.') || path.isAbsolute(module)) url = pathToFileURL(path.resolve(module)).href;
    else url = module; // a package specifier, resolved by the child from the cwd
  } else {
    const e = new TypeError(`${argName}.module must be a path, a file: URL string or a URL`) as TypeError & { code: string };
    e.code = 'ERR_INVALID_ARG_TYPE';
    throw e;
  }
  if (typeof exportName !== 'string' || exportName.length === 0) {
    const e = new TypeError(`${argName}.export must be a non-empty string`) as TypeError & { code: string };
    e.code = 'ERR_INVALID_ARG_TYPE';
    throw e;
  }
  if (url.startsWith('file:') && !fs.existsSync(fileURLToPath(url))) {
    const e = stateError(`${argName}.module does not exist: ${fileURLToPath(url)}`, 'ENOENT');
    throw e;
  }
  return { url, exportName };
}
