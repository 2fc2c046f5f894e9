// Running a program with a small /dev/shm of its own, as in a container (Docker
// and Kubernetes give 64 MB): a tmpfs mounted in a private mount namespace, so
// nothing else on the machine sees it or is affected when it fills up.
import { spawn, spawnSync } from 'node:child_process';

/** Why a private mount namespace with its own /dev/shm cannot be had here, or null. */
export function noSmallShm(): string | null {
  const r = spawnSync('unshare', ['-m', 'sh', '-c', 'mount -t tmpfs -o size=1m tmpfs /dev/shm'], { encoding: 'utf8' });
  if (r.error) return `unshare: ${r.error.message}`;
  return r.status === 0 ? null : `unshare -m and mount need root (CAP_SYS_ADMIN): ${r.stderr.trim()}`;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end, collecting its output. */
export function run(file: string, args: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** Runs `node script ...args` with a fresh tmpfs of `size` (mount's syntax: 64m) over /dev/shm. */
export function inSmallShm(script: string, args: string[], size = '64m'): Promise<RunResult> {
  // util-linux's unshare makes the new namespace's mounts private: the tmpfs
  // never shows outside it.
  const command = `mount -t tmpfs -o size=${size} tmpfs /dev/shm && exec "$0" "$@"`;
  return run('unshare', ['-m', 'sh', '-c', command, process.execPath, script, ...args]);
}

/** The last line of a program's stdout as JSON, or undefined. */
export function lastJson(stdout: string): any {
  try {
    return JSON.parse(stdout.trim().split('\n').pop()!);
  } catch {
    return undefined;
  }
}
