// How long a receiver busy-polls before it sleeps, adapted to how long its
// recent waits took.
//
// Waking a sleeping process costs 10-20 µs on a VM, and a request/response
// round trip has two such wake-ups. When the answer usually comes within a few
// tens of µs, polling without sleeping for a little longer than that catches it
// about a microsecond after it arrives. When the other side is slow (a worker
// that computes, a server idle between requests), spinning only burns CPU, so
// the budget goes to zero: a receiver spins only while its recent waits were
// short.
//
// Every spin is bounded (spinConfig.limitUs), whatever this estimate says, and the
// waits themselves are measured whether or not they spun, so a connection
// whose answers become fast again starts spinning again: a slept wait measures
// the answer time plus one wake-up, which is still well under the limit.

import { availableParallelism, loadavg } from 'node:os';

const CPUS = availableParallelism();
/** A spin lasts this many times the recent average wait, so ordinary jitter is still caught. */
const HEADROOM = 3;
const MIN_SPIN_US = 10;

/** Process-wide settings, read when a spin is planned (tests change them). */
export const spinConfig = configFromEnv(process.env.PMP_PIPE_SPIN_US);

// PMP_PIPE_SPIN_US sets the upper bound of one spin in µs (default 100; 0
// disables spinning). Set explicitly, it also turns the load guard off: the
// user has chosen.
function configFromEnv(raw: string | undefined): { limitUs: number; loadGuard: boolean } {
  const env = raw === undefined || raw.trim() === '' ? NaN : Number(raw);
  if (Number.isFinite(env) && env >= 0) return { limitUs: env, loadGuard: false };
  // With one CPU the peer can not run while we spin: spinning only delays it.
  return { limitUs: CPUS < 2 ? 0 : 100, loadGuard: true };
}

let busyCheckedAt = -Infinity;
let busy = false;

// Spinning pays only when the peer has a CPU of its own; on an oversubscribed
// machine it takes time from the process we wait for. The load average (read
// at most once a second: one sysinfo() call) is the signal. Our own two
// spinning processes count in it for up to 2, so the bar is CPUS + 1.
function machineBusy(): boolean {
  if (!spinConfig.loadGuard) return false;
  const now = performance.now();
  if (now - busyCheckedAt >= 1000) {
    busyCheckedAt = now;
    busy = loadavg()[0] > CPUS + 1;
  }
  return busy;
}

export class SpinPolicy {
  readonly #busy: () => boolean;
  /** Exponentially weighted average of recent waits, µs. Starts optimistic. */
  #average = 0;
  /** The budget budget() last gave, µs. */
  #last = 0;
  /** Spins in a row that ended without input. */
  #misses = 0;
  /** Waits left that sleep at once after a miss. */
  #skip = 0;

  /** busy: whether the machine is too loaded to spin (tests replace it). */
  constructor(busy: () => boolean = machineBusy) {
    this.#busy = busy;
  }

  /** How long to spin before sleeping for the next wait, µs (0: sleep at once). */
  budget(): number {
    this.#last = 0;
    const limit = spinConfig.limitUs;
    if (limit === 0 || this.#average >= limit || this.#busy()) return 0;
    if (this.#skip > 0) {
      this.#skip--;
      return 0;
    }
    this.#last = Math.min(limit, Math.max(MIN_SPIN_US, this.#average * HEADROOM));
    return this.#last;
  }

  /** Records how long a wait lasted until input arrived, µs. */
  record(waitUs: number): void {
    // A spin that ran out is pure loss, and on an oversubscribed machine it
    // also keeps the peer from running: after each miss in a row, sleep at
    // once for twice as many waits (up to 256) before trying again.
    if (this.#last > 0) {
      if (waitUs > this.#last) {
        this.#misses = Math.min(this.#misses + 1, 8);
        this.#skip = 2 ** this.#misses;
      } else {
        this.#misses = 0;
      }
      this.#last = 0;
    }
    // A wait of seconds says "slow peer" as well as one of 4× the limit does;
    // capping it lets the average come back within a few messages when the
    // peer speeds up again.
    const w = Math.min(Math.max(waitUs, 0), 4 * Math.max(spinConfig.limitUs, MIN_SPIN_US));
    this.#average += (w - this.#average) / 4;
  }
}
