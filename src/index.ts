// posix-multiprocessing: Python's multiprocessing for Node.js, over real OS
// primitives. Everything public is exported from here.
export {
  Process,
  activeChildren,
  cpuCount,
  currentProcess,
  parentProcess,
  isMainProcess,
  setStartMethod,
  getStartMethod,
  getAllStartMethods,
  setForkserverPreload,
} from './process';
export { getContext } from './get-context';
export { logToStderr } from './trace';
export type { MultiprocessingContext } from './get-context';
export type { ProcessOptions, ModuleTarget, StartMethod } from './process';
export { Pool, AsyncResult } from './pool';
export type { PoolOptions, TaskOptions, ApplyAsyncOptions, ChunkOptions } from './pool';
export { ProcessPoolExecutor } from './executor';
export { Manager, ManagerServer } from './manager';
export type { DictProxy, ListProxy, NamespaceProxy, ValueProxy, QueueProxy, LockProxy, ManagerConnectOptions, ManagerServeOptions } from './manager';
export type { ManagerAddress } from './manager-protocol';
export type { ExecutorOptions } from './executor';
export {
  MultiprocessingError,
  BrokenBarrierError,
  QueueEmptyError,
  QueueFullError,
  EOFError,
  WorkerCrashedError,
  OwnerDiedError,
  TimeoutError,
  AuthenticationError,
} from './errors';
export { Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition, Barrier } from './synchronize';
export type { NamedOptions, AcquireOptions, AcquireSyncOptions, WaitOptions, BarrierOptions } from './synchronize';
export type { SemaphoreOptions } from './posix-semaphore';
export { registerTransferable } from './serialize';
export type { Transferable, CodecContext } from './serialize';
export { SharedMemory } from './shared-memory';
export type { SharedMemoryOptions } from './shared-memory';
export { Value, RawValue, SharedArray, RawArray } from './sharedctypes';
export type { TypeCode, TypeName, LockLike } from './sharedctypes';
export { Pipe, Connection } from './connection';
export { Queue, SimpleQueue, JoinableQueue } from './queues';
export type { QueueWaitOptions } from './queues';
