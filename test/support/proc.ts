// Reading the process table of this process from /proc (Linux).
import * as fs from 'node:fs';

export function childPids(pid = process.pid): number[] {
  const out: number[] = [];
  let tasks: string[] = [];
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tasks) {
    try {
      const text = fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
      if (text) out.push(...text.split(/\s+/).map(Number));
    } catch {
      // the thread ended while we read
    }
  }
  return out;
}

/** The process state letter from /proc/<pid>/stat ('R', 'S', 'Z', ...), or null if gone. */
export function processState(pid: number): string | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return null;
  }
}

export function zombieChildren(pid = process.pid): number[] {
  return childPids(pid).filter((c) => processState(c) === 'Z');
}

export function isRunning(pid: number): boolean {
  const state = processState(pid);
  return state !== null && state !== 'Z' && state !== 'X';
}

export function fdTable(): Map<string, string> {
  const out = new Map<string, string>();
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      out.set(fd, fs.readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      // the fd used by readdir itself
    }
  }
  return out;
}

export function shmEntries(): Set<string> {
  try {
    return new Set(fs.readdirSync('/dev/shm'));
  } catch {
    return new Set();
  }
}

export function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return '';
  }
}

/** The OS parent of pid (from /proc/<pid>/stat), or null if it is gone. */
export function osParent(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return null;
  }
}

/** The forkservers among pid's children (any of its threads): `node --single-threaded ... forkserver-main.js`. */
export function forkservers(pid = process.pid): number[] {
  return childPids(pid).filter((c) => cmdline(c).includes('forkserver-main'));
}

/** The pid a pidfd open in this process refers to (its fdinfo), or null. */
export function pidfdTarget(fd: number | string): number | null {
  try {
    const m = /^Pid:\s*(-?\d+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** How many fds pid has open (those whose target matches `kind`, if given). */
export function fdCount(pid: number | 'self' = 'self', kind?: RegExp): number {
  let n = 0;
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    if (!kind) n++;
    else {
      try {
        if (kind.test(fs.readlinkSync(`/proc/${pid}/fd/${fd}`))) n++;
      } catch {
        // closed meanwhile (or the fd readdir used)
      }
    }
  }
  return n;
}
