// How an fd-carrying object (a Connection) travels through a channel that
// cannot carry fds: a queue (shared memory), the pool's channel (a libuv
// stream), a one-way pipe. The sender offers a duplicate to this process's fd
// sharer (native/fdshare.cc, a dedicated thread serving a Unix socket) and the
// message carries { a: address, k: key }; the receiver fetches the fd from
// there while decoding. CPython's resource_sharer does the same.
//
// So the sending process must still be alive when the message is decoded. A
// receiver whose sender has exited gets ERR_MP_FD_UNAVAILABLE (at once: the
// socket went with the process), and a sender that is alive but stopped makes
// it fail after FETCH_TIMEOUT_MS, never hang. Each encoding makes its own
// duplicate, claimed once; one nobody claims stays open in the sender until it
// exits, or until the transport withdraws it (a put that failed).
import { binding } from './native';
import type { CodecContext } from './serialize';
import { stateError } from './errors';

/** Each step of a fetch (connect, reply) waits at most this long. */
const FETCH_TIMEOUT_MS = 2000;

/** Where an fd is in a message: an index into the fds that came along, or an offer. */
export type FdRef = { i: number } | { a: string; k: number };

// The sharer's own fds live as long as the process, like the resource
// tracker's pipe; the leak checks in test/support/leaks.ts ask for them here
// (and tests for the number of offers not yet claimed).
const kSharer = Symbol.for('posix-multiprocessing.fd-sharer');
(globalThis as Record<symbol, unknown>)[kSharer] ??= {
  ownFds: (): number[] => binding.fdShareOwnFds(),
  held: (): number => binding.fdShareHeld(),
};

/** Encodes fd for ctx's channel: passed along when it carries fds, else offered to the sharer. */
export function encodeFd(fd: number, ctx: CodecContext): FdRef {
  if (ctx.carriesFds !== false) {
    ctx.fds.push(fd);
    return { i: ctx.fds.length - 1 };
  }
  const [a, k] = binding.fdShareOffer(fd);
  (ctx.offers ??= []).push(k);
  return { a, k };
}

/** The fd an FdRef stands for; the caller owns it. */
export function decodeFd(ref: FdRef, ctx: CodecContext, what: string): number {
  if ('a' in ref) return fetchFd(ref.a, ref.k, what);
  const fd = ctx.fds[ref.i];
  if (fd === undefined) throw stateError(`a ${what} arrived without its fd`, 'ERR_MP_PROTOCOL');
  return fd;
}

function fetchFd(address: string, key: number, what: string): number {
  try {
    return binding.fdShareFetch(address, key, FETCH_TIMEOUT_MS);
  } catch (err) {
    const pid = /^@?.*pmp-fds-(\d+)-/.exec(address)?.[1];
    const from = pid ? `the process that sent it (pid ${pid})` : 'the process that sent it';
    const code = (err as { code?: string }).code;
    const reason =
      code === 'ECONNREFUSED' || (code === 'ENOENT' && (err as { syscall?: string }).syscall === 'connect')
        ? `${from} has exited`
        : code === 'ENOENT'
          ? `${from} no longer offers it (already received, or withdrawn)`
          : code === 'ETIMEDOUT'
            ? `${from} did not answer within ${FETCH_TIMEOUT_MS} ms`
            : `${from} could not hand it over (${(err as Error).message})`;
    const e = stateError(
      `a ${what} in this message could not be received: ${reason}; the sender must stay alive until the receiver has it`,
      'ERR_MP_FD_UNAVAILABLE',
    );
    (e as { cause?: unknown }).cause = err;
    throw e;
  }
}

/** Closes the duplicates offered while encoding a message that will never be delivered. */
export function withdrawOffers(keys: readonly number[] | undefined): void {
  if (!keys) return;
  for (const k of keys) binding.fdShareWithdraw(k);
}
