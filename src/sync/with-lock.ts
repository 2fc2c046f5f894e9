// withLock/withLockSync for every primitive that acquires and releases (Lock,
// RLock, Semaphore, the POSIX-backed Semaphore): acquire, run fn, always release.
import { invalidType } from '../validate';

interface Acquirable {
  acquire(): Promise<unknown>;
  acquireSync(): unknown;
  release(): void;
}

export async function withAcquired<T>(o: Acquirable, fn: () => T | Promise<T>): Promise<T> {
  if (typeof fn !== 'function') throw invalidType('fn', 'a function', fn);
  await o.acquire();
  try {
    return await fn();
  } finally {
    o.release();
  }
}

export function withAcquiredSync<T>(o: Acquirable, fn: () => T): T {
  if (typeof fn !== 'function') throw invalidType('fn', 'a function', fn);
  o.acquireSync();
  try {
    return fn();
  } finally {
    o.release();
  }
}
