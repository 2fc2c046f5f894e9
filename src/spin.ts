// How long a waiter busy-polls before it sleeps, adapted to how its recent
// waits went. Used by pipe receivers (src/connection.ts) and by the async
// waits of the synchronization primitives (src/sync/words.ts); and, at the
// end, which async waits may hold the event loop (src/connection.ts,
// src/synchronize.ts).
//
// Waking a sleeping process costs 10-20 µs on a VM, an async wait that slept
// on an addon thread two such wake-ups, and a request/response round trip
// has two waits. When the answer comes within a few tens of µs, polling for a
// while catches it a microsecond or so after it arrives. Spinning for about
// as long as sleeping would cost and then sleeping is never worse than twice
// the better of the two (the classic competitive bound), so the budget is
// the limit (100 µs by default) while answers come within it.
//
// The budget follows the waits: a wait answered within the limit, spun or
// slept, sets it back to the full limit (a peer that is quick again is
// spun for at once: a slept wait measures the answer plus the wake-up, still
// within the limit on an idle machine); a wait longer than the limit halves
// it, down to MIN_SPIN_US, so a slow peer (a worker that computes, a server
// idle between requests) costs a few µs of polling per wait. An earlier
// policy stopped spinning altogether after misses; two processes in a
// ping-pong then kept each other asleep, each one's sleep making the other's
// next wait long (handoffs of 20-50 µs instead of 5).
//
// Every spin is bounded by the limit, and a loaded machine (load average
// above CPUs + 1) does not spin at all: the peer may need the CPU we would burn.

import { availableParallelism, loadavg } from 'node:os';

const CPUS = availableParallelism();
/** The least a spin lasts (while the limit is not 0): a few polls, for slow peers. */
const MIN_SPIN_US = 5;

export interface SpinConfig {
  /** Upper bound of one spin, µs (0: never spin). */
  limitUs: number;
  /** Whether a loaded machine turns spinning off. */
  loadGuard: boolean;
}

/** Process-wide settings, read when a spin is planned (tests change them):
 *  receivers on a pipe (PMP_PIPE_SPIN_US)... */
export const spinConfig = configFromEnv(process.env.PMP_PIPE_SPIN_US);
/** ...and the async waits of the synchronization primitives (PMP_ASYNC_SPIN_US),
 *  which watch their word from the event loop (sync/words.ts waitAsync). */
export const asyncWaitSpinConfig = configFromEnv(process.env.PMP_ASYNC_SPIN_US);

// Each variable sets the upper bound of one spin in µs (default 100; 0
// disables spinning). Set explicitly, it also turns the load guard off: the
// user has chosen.
function configFromEnv(raw: string | undefined): SpinConfig {
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
function machineBusy(config: SpinConfig): boolean {
  if (!config.loadGuard) return false;
  const now = performance.now();
  if (now - busyCheckedAt >= 1000) {
    busyCheckedAt = now;
    busy = loadavg()[0] > CPUS + 1;
  }
  return busy;
}

export class SpinPolicy {
  readonly #config: SpinConfig;
  readonly #busy: () => boolean;
  /** The next spin's length, µs, before the limit is applied. Starts optimistic. */
  #budget = Infinity;

  /** busy: whether the machine is too loaded to spin (tests replace it). */
  constructor(busy?: () => boolean, config: SpinConfig = spinConfig) {
    this.#config = config;
    this.#busy = busy ?? (() => machineBusy(config));
  }

  /** How long to spin before sleeping for the next wait, µs (0: sleep at once). */
  budget(): number {
    const limit = this.#config.limitUs;
    if (limit === 0 || this.#busy()) return 0;
    return Math.min(limit, Math.max(MIN_SPIN_US, this.#budget));
  }

  /** Records how long a wait lasted until what it waited for came, µs. */
  record(waitUs: number): void {
    const limit = this.#config.limitUs;
    if (waitUs <= limit) this.#budget = limit;
    else this.#budget = Math.max(MIN_SPIN_US, Math.min(this.#budget, limit) / 2);
  }
}

// ---- holding the event loop ----------------------------------------------
//
// Two async waits may hold the event loop for a few µs when their answer is
// due within microseconds: an async recv() asks the kernel again (up to 30
// µs, src/connection.ts) and the async acquire of a Lock, RLock or Semaphore
// spins on its word (up to PMP_SPIN_US, src/synchronize.ts). Either does so
// only while it is this thread's only pending async wait of the two kinds: a
// process serving several would hold the loop on one while another's answer
// is ready, and many awaited at once would hold it in turn. Each registers
// here (a Connection once, whatever its number of receives) while it waits.
const loopHolders = new Set<object>();

export const pendingAsyncWaits = {
  add(wait: object): void {
    loopHolders.add(wait);
  },
  delete(wait: object): void {
    loopHolders.delete(wait);
  },
  /** Whether `wait` is the only one pending, so that it may hold the loop. */
  alone(wait: object): boolean {
    return loopHolders.size === 1 && loopHolders.has(wait);
  },
};
