// The other half of locate.ts: loading a function by reference in the process
// that runs it (a child's target, a pool task, a barrier action).
import { fileURLToPath } from 'node:url';

import { stateError } from './errors';
import type { TargetRef } from './locate';

// tsc turns import() into require() in CommonJS output; a target may be an ES
// module, so keep a real dynamic import.
export const importModule = new Function('specifier', 'return import(specifier)') as (s: string) => Promise<any>;

// Codes that require() reports before it evaluates anything: the module is
// fine, but only import() can load it (top-level await, or a loader that hooks
// only import).
const importOnly = new Set(['ERR_REQUIRE_ASYNC_MODULE', 'ERR_REQUIRE_ESM', 'ERR_UNKNOWN_FILE_EXTENSION', 'ERR_REQUIRE_CYCLE_MODULE']);

// Loaders given with --import/--loader may hook only import() (module.register
// hooks do not see require), and would then transform what require() reads raw.
const loaderFlag = /(^|\s)--(import|loader|experimental-loader)\b/;
export const hasLoaders = process.execArgv.some((a) => loaderFlag.test(a)) || loaderFlag.test(process.env.NODE_OPTIONS ?? '');

/** require() of a module by URL or specifier (CommonJS, or a synchronous ES module on Node >= 20.19). */
export function requireModule(url: string): any {
  return require(url.startsWith('file:') ? fileURLToPath(url) : url);
}

// require() first: it loads CommonJS and synchronous ES modules without
// starting the asynchronous ESM loader, which is a good part of a child's
// startup. Everything else, and everything under loaders, goes through import().
export async function loadModule(url: string): Promise<any> {
  if (url.startsWith('file:') && !hasLoaders) {
    try {
      return requireModule(url);
    } catch (err) {
      if (!importOnly.has((err as { code?: string }).code ?? '')) throw err;
    }
  }
  return importModule(url);
}

/** The exported function `ref` names in a loaded module, or ERR_MP_TARGET_NOT_IMPORTABLE. */
export function pickExport(ns: any, ref: TargetRef, what: string): (...args: any[]) => unknown {
  let value = ns?.[ref.exportName];
  // A CommonJS module whose exports the ESM loader could not list, or one
  // whose module.exports is the function itself.
  if (value === undefined && ns?.default && typeof ns.default === 'object') value = ns.default[ref.exportName];
  if (value === undefined && ref.exportName === 'default' && typeof ns === 'function') value = ns;
  if (typeof value !== 'function') {
    throw stateError(
      `${what}: ${ref.url} has no exported function named '${ref.exportName}' in process ${process.pid}`,
      'ERR_MP_TARGET_NOT_IMPORTABLE',
    );
  }
  return value;
}

/** Loads the function `ref` names. */
export async function importTarget(ref: TargetRef, what: string): Promise<(...args: any[]) => unknown> {
  return pickExport(await loadModule(ref.url), ref, what);
}
