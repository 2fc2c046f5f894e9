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
} from './process';
export type { ProcessOptions, ModuleTarget, StartMethod } from './process';
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
export { registerTransferable } from './serialize';
export type { Transferable, CodecContext } from './serialize';
export { Pipe, Connection } from './connection';
export { Queue, SimpleQueue, JoinableQueue } from './queues';
export type { QueueWaitOptions } from './queues';
