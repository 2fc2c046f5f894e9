// The one place that loads and types the native binding. node-gyp-build picks a
// prebuilt binary from prebuilds/ when there is one, else build/Release.
import * as path from 'node:path';
import { packageRoot } from './paths';

export interface ExitWatcher {
  /** Keep the event loop alive while the child runs. */
  ref(): void;
  /** Let the event loop end even though the child runs. */
  unref(): void;
  /** Block up to timeoutMs (negative: no limit); the exit code, or null on timeout. */
  waitSync(timeoutMs: number): number | null;
  /** Sends signo to the child (through its pidfd for a forkserver's child); nothing once it has ended. */
  signal(signo: number): void;
  /** fd is the watcher's: closed once the child has ended (or this environment goes). */
  adopt(fd: number): void;
}

/** What forkserverServe() returns in a forked child. */
export interface ForkedRequest {
  pid: number;
  /** The pipe the child's instructions come on. */
  instructions: number;
  /** The fds that travel with its arguments, in order. */
  fds: number[];
}

export interface Mapping {
  /** The mapped memory; detached (length 0) after unmap(). */
  readonly buffer: ArrayBuffer;
  readonly length: number;
  unmap(): void;
  /** Allocates the pages of [offset, offset + length) (MADV_POPULATE_WRITE); false where the kernel cannot. */
  populate(offset: number, length: number): boolean;
}

export interface FdWatcher {
  /** Watch for events: 1 readable, 2 writable (bits); replaces what was watched. */
  start(events: number): void;
  stop(): void;
  /** Whether the watch keeps the event loop alive. */
  ref(): void;
  unref(): void;
  /** For up to us microseconds (0 stops), keep the loop polling without sleeping; ends at the first readable event. */
  spin(us: number): void;
  /** Stop for good (the fd itself is not closed). */
  close(): void;
}

export interface FutexWaitHandle {
  /** Ends the wait early: the callback receives 'cancelled' (no other waiter on the word is disturbed). */
  cancel(): void;
}

/** An open POSIX named semaphore (semaphore.cc); opaque. */
export interface SemHandle {
  readonly __semHandle: never;
}

export interface SemWaitHandle {
  /** Ends the wait: the callback receives 'cancelled'; a unit taken meanwhile is posted back. */
  cancel(): void;
}

export interface Binding {
  spawn(file: string, argv: string[], envp: string[], keepFds: number[], deathSignal: number): number;
  watchParent(ppid: number, signal: number): boolean;
  /** close(2) of an fd the addon handed out (no fs bookkeeping, so no warning in workers). */
  closeFd(fd: number): void;
  /** deathSignal: sent to the child if this environment goes away first (a worker thread ending); it is then reaped by the process-wide reaper. */
  /** statusFd, pidfd: a forkserver's child, whose code the server writes on statusFd (both fds become the watcher's). */
  ExitWatcher: new (pid: number, onExit: (exitCode: number) => void, deathSignal?: number, statusFd?: number, pidfd?: number) => ExitWatcher;
  /** Linux with pidfds, and the addon built for this Node: a forkserver can run here. */
  forkserverSupported(): boolean;
  /** The NODE_MODULE_VERSION the addon was built for (0 where there is no forkserver). */
  readonly builtForModules: number;
  /** The server's loop (forkserver.cc): null when the caller hung up; in a forked child, what it was asked to be. */
  forkserverServe(ctrlFd: number): ForkedRequest | null;
  /** _exit(code): the only safe way out of a forked Node. */
  forkserverExit(code: number): never;
  /** Keeps a forked child's event loop from running dry; onEmpty() runs when nothing but the guard is left. */
  forkedGuardLoop(onEmpty: (exit: boolean) => void): void;
  pipe(): [number, number];
  /** seqpacket: SOCK_SEQPACKET (message boundaries kept) instead of SOCK_STREAM. */
  socketpair(seqpacket?: boolean): [number, number];
  setNonblocking(fd: number, on?: boolean): void;
  /** A close-on-exec duplicate of fd. */
  dup(fd: number): number;
  /** Bytes read, 0 at end of stream, -1 when it would block. */
  /** spinUs: a read that would block is tried again for up to that long first. */
  read(fd: number, buf: Uint8Array, offset: number, length: number, spinUs?: number): number;
  /** As read(); fds that came along (SCM_RIGHTS) are pushed on fdsOut. spinUs -1: wait for data (blocking fd). */
  recvmsg(fd: number, buf: Uint8Array, offset: number, length: number, fdsOut: number[], spinUs?: number): number;
  /** Bytes written, -1 when it would block. */
  write(fd: number, buf: Uint8Array, offset: number, length: number): number;
  sendmsg(fd: number, buf: Uint8Array, offset: number, length: number, fds: number[]): number;
  /** Blocks up to timeoutMs (negative: no limit); revents bits: 1 readable, 2 writable, 4 hang-up/error. */
  /** spinUs: poll without sleeping for up to that long first (bounded by timeoutMs too). */
  poll(fd: number, events: number, timeoutMs: number, spinUs?: number): number;
  FdWatcher: new (fd: number, onEvents: (events: number) => void) => FdWatcher;
  shmOpen(name: string, create: boolean, exclusive: boolean, mode: number): number;
  shmUnlink(name: string): void;
  /** A shared-heap segment of this environment, given up when the environment ends (heap.ts, shm.cc). */
  ownSegment(name: string, foreignWord: number, doneWord: number): void;
  /** No longer this environment's to give up (it was unlinked). */
  disownSegment(name: string): void;
  /** Gives up every owned segment now: marked done, unlinked if nothing refers to it, else handed to the tracker. */
  releaseOwnedSegments(): void;
  ftruncate(fd: number, size: number): void;
  /** posix_fallocate: the pages of [offset, offset + length) exist afterwards; false where they cannot be allocated ahead (macOS). */
  fallocate(fd: number, offset: number, length: number): boolean;
  fstatSize(fd: number): number;
  Mapping: new (fd: number, size: number) => Mapping;
  /**
   * The fd's first `size` bytes, MAP_SHARED. With ownFd the fd is closed when
   * the memory is unmapped: by unmap(), or by GC if the buffer is dropped.
   */
  mmap(fd: number, size: number, ownFd: boolean): ArrayBuffer;
  /** Detaches a buffer from mmap() (every view becomes length 0) and unmaps it. Idempotent. */
  unmap(buffer: ArrayBuffer): void;
  /**
   * Blocks while the word at byteOffset equals expected (timeoutMs < 0: no limit).
   * In a worker thread it also returns as soon as the worker is being terminated.
   */
  futexWait(buffer: ArrayBuffer, byteOffset: number, expected: number, timeoutMs: number): 'ok' | 'timed-out' | 'not-equal';
  futexWake(buffer: ArrayBuffer, byteOffset: number, count: number): number;
  /**
   * The same wait, served by the addon's bounded set of threads; callback runs on
   * this thread. 'fault': the word's memory went away; 'error': no thread could
   * serve this wait (error is a system error, syscall 'pthread_create').
   */
  futexWaitAsync(
    buffer: ArrayBuffer,
    byteOffset: number,
    expected: number,
    timeoutMs: number,
    callback: (result: 'ok' | 'timed-out' | 'not-equal' | 'cancelled' | 'fault' | 'error', error?: Error) => void,
  ): FutexWaitHandle;
  /** sem_open; create+exclusive is O_CREAT|O_EXCL. Handles are closed by semClose (then every call with them throws ERR_MP_CLOSED). */
  semOpen(name: string, create: boolean, exclusive: boolean, mode: number, value: number): SemHandle;
  semClose(handle: SemHandle): void;
  /** false when the value is 0. */
  semTryWait(handle: SemHandle): boolean;
  /** Blocks this thread up to timeoutMs (negative: no limit); false on timeout (and when a worker is being terminated). */
  semTimedWait(handle: SemHandle, timeoutMs: number): boolean;
  semPost(handle: SemHandle, n: number): void;
  /** macOS: throws ERR_MP_UNSUPPORTED. */
  semGetValue(handle: SemHandle): number;
  semUnlink(name: string): void;
  /** The wait, served by the addon's bounded set of threads; callback runs on this thread ('fault' and 'error' come with a system error). */
  semWaitAsync(
    handle: SemHandle,
    timeoutMs: number,
    callback: (result: 'ok' | 'timed-out' | 'cancelled' | 'fault' | 'error', error?: Error) => void,
  ): SemWaitHandle;
  /** SEM_VALUE_MAX. */
  readonly semValueMax: number;
  /** Whether finite waits poll with sem_trywait (macOS, which has no sem_timedwait; PMP_SEM_POLL_WAIT=1 elsewhere). */
  readonly semWaitsPoll: boolean;
  /** Keeps a duplicate of fd for one receiver: [address, key] (fdshare.cc). */
  fdShareOffer(fd: number): [string, number];
  /** Closes an offer nobody claimed; false if it was claimed already. */
  fdShareWithdraw(key: number): boolean;
  /** Fetches an offered fd from the process at address (each step bounded by timeoutMs). */
  fdShareFetch(address: string, key: number, timeoutMs: number): number;
  /** The sharer's own fds (listening socket, wake pipe); empty until first used. */
  fdShareOwnFds(): number[];
  /** Offers not yet claimed. */
  fdShareHeld(): number;
  /** The resource tracker's pipe, shared by every thread of the process: [fd, ino, pid] (pid 0: a parent's tracker). */
  trackerPipe(): [number, number, number] | null;
  /**
   * Records fd as that pipe unless one is recorded, and returns the recorded one (close fd if it is not it).
   * With ino, fd was inherited and must be a FIFO with that inode (else null). The fd becomes close-on-exec and non-blocking.
   */
  trackerSetPipe(fd: number, pid: number, ino?: number): [number, number, number] | null;
  /** PIPE_BUF: a write of at most this many bytes enters a pipe whole. */
  readonly pipeBuf: number;
}

function load(): Binding {
  const root = packageRoot;
  // A local build is what node-gyp-build would pick first anyway; requiring it
  // directly skips its directory scans, which every child pays at startup.
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return require(path.join(root, 'build', 'Release', 'posix_multiprocessing.node')) as Binding;
  } catch {
    // not built locally: a prebuilt binary, or an error listing what was tried
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return require('node-gyp-build')(root) as Binding;
  } catch (err) {
    const tried = [
      path.join(root, 'prebuilds', `${process.platform}-${process.arch}`),
      path.join(root, 'build', 'Release', 'posix_multiprocessing.node'),
      path.join(root, 'build', 'Debug', 'posix_multiprocessing.node'),
    ];
    const e = new Error(
      `posix-multiprocessing: could not load the native addon (run \`npm install\` or ` +
        `\`npm run build:native\`). Tried:\n  ${tried.join('\n  ')}\n${(err as Error).message}`,
    );
    (e as { cause?: unknown }).cause = err;
    throw e;
  }
}

export const binding: Binding = load();
