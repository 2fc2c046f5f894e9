// The one place that loads and types the native binding. node-gyp-build picks a
// prebuilt binary from prebuilds/ when there is one, else build/Release.
import * as path from 'node:path';

export interface ExitWatcher {
  /** Keep the event loop alive while the child runs. */
  ref(): void;
  /** Let the event loop end even though the child runs. */
  unref(): void;
  /** Block up to timeoutMs (negative: no limit); the exit code, or null on timeout. */
  waitSync(timeoutMs: number): number | null;
  /** Stop watching without reaping. */
  close(): void;
  /** How exits are watched: 'pidfd', 'kqueue' or 'timer'. */
  readonly kind: string;
}

export interface Mapping {
  /** The mapped memory; detached (length 0) after unmap(). */
  readonly buffer: ArrayBuffer;
  readonly length: number;
  unmap(): void;
}

export interface Binding {
  spawn(file: string, argv: string[], envp: string[], keepFds: number[], deathSignal: number): number;
  watchParent(ppid: number, signal: number): boolean;
  /** close(2) of an fd the addon handed out (no fs bookkeeping, so no warning in workers). */
  closeFd(fd: number): void;
  ExitWatcher: new (pid: number, onExit: (exitCode: number) => void) => ExitWatcher;
  pipe(): [number, number];
  socketpair(): [number, number];
  shmOpen(name: string, create: boolean, exclusive: boolean, mode: number): number;
  shmUnlink(name: string): void;
  ftruncate(fd: number, size: number): void;
  fstatSize(fd: number): number;
  Mapping: new (fd: number, size: number) => Mapping;
}

function load(): Binding {
  const root = path.resolve(__dirname, '..', '..');
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
