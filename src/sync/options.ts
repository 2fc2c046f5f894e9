// The options the waiting calls of the synchronisation primitives take, as
// validate.ts specs: an unknown key (a typo such as { timeot: 5 }) or a
// Python-style positional call (lock.acquire(false)) is refused with a
// TypeError that says what to write. Shared by synchronize.ts and
// posix-semaphore.ts.
import type { OptionsSpec } from '../validate';

export const ACQUIRE_SYNC: OptionsSpec = { call: 'acquireSync()', keys: ['blocking', 'timeout'], boolean: 'blocking', number: 'timeout' };
// Python's acquire(5) would block for ever (blocking=5 is truthy), so a
// positional acquire is refused, where wait(5) is Python's wait(timeout=5).
export const ACQUIRE: OptionsSpec = { call: 'acquire()', keys: ['blocking', 'timeout', 'signal'], boolean: 'blocking', number: 'timeout' };
export const WAIT: OptionsSpec = { call: 'wait()', keys: ['timeout', 'signal'] };
export const WAIT_SYNC: OptionsSpec = { call: 'waitSync()', keys: ['timeout'] };
const named = new Map<string, OptionsSpec>();
/** The options of `new Kind({ name, mode })`. */
export function namedOptions(kind: string): OptionsSpec {
  let spec = named.get(kind);
  if (!spec) named.set(kind, (spec = { call: `new ${kind}()`, keys: ['name', 'mode'] }));
  return spec;
}
export const SEMAPHORE: OptionsSpec = { call: 'new Semaphore()', keys: ['name', 'mode', 'posix'] };
