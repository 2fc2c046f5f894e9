// The private channel between a pool and one of its workers: a socketpair
// driven by libuv on both sides. Frames queued in one turn of the event loop
// leave in one write, so a stream of small tasks costs one syscall per batch,
// not per task. Two frame kinds: plain data as a line of JSON ('J' ... '\n':
// JSON text never holds a raw newline), anything else as the codec's bytes
// behind a length ('V', u32, bytes).
import * as net from 'node:net';

import { decodeFd, encodeFd, type FdRef } from './fd-share';
import { abandon, type CodecContext, decode, encode, encodeJson, registerTransferable } from './serialize';

const JSON_FRAME = 0x4a; // 'J'
const BINARY_FRAME = 0x56; // 'V'
const NEWLINE = 0x0a;
const LARGE = 16 * 1024;

/** An fd that a child inherits at start (it travels in Process args). */
export class InheritedFd {
  constructor(readonly fd: number) {}
}

registerTransferable('pmp.InheritedFd', InheritedFd, {
  encode(handle, ctx) {
    return encodeFd(handle.fd, ctx);
  },
  decode(ref: FdRef, ctx) {
    return new InheritedFd(decodeFd(ref, ctx, 'file descriptor'));
  },
});

export class Channel {
  readonly #socket: net.Socket;
  #text = ''; // JSON frames queued since the last binary one
  #parts: Buffer[] = [];
  #flushScheduled = false;
  // An incomplete frame: its pieces, joined only once it is complete (joining
  // on every read would copy a large frame over and over).
  #partial: Buffer[] = [];
  #partialBytes = 0;
  #closed = false;

  constructor(fd: number, onMessage: (msg: unknown) => void, onClose: () => void) {
    this.#socket = new net.Socket({ fd, readable: true, writable: true });
    this.#socket.setNoDelay?.(true);
    this.#socket.on('data', (chunk: Buffer) => this.#onData(chunk, onMessage));
    this.#socket.on('error', () => this.#socket.destroy());
    this.#socket.on('close', () => {
      this.#closed = true;
      onClose();
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Queues a message; it is written with the others queued in this turn.
   *  envelope: how many levels of arrays from the top are the protocol's own
   *  tuples and lists (never user arrays with extra properties to keep).
   *  root: how a clone error names the path of the part it could not send
   *  (serialize.ts CodecContext.root). */
  send(msg: unknown, envelope = 1, root?: CodecContext['root']): void {
    if (this.#closed) return;
    const json = encodeJson(msg, envelope);
    if (json !== null) {
      this.#text += 'J' + json + '\n';
    } else {
      // The pool's channel is a libuv stream, which cannot carry fds: a
      // Connection in a task or result travels through the fd sharer. An
      // offer whose message the peer never reads (it died) stays open in this
      // process until it exits, as in CPython.
      const ctx: CodecContext = { fds: [], carriesFds: false, root };
      let body: Buffer;
      try {
        body = encode(msg, ctx);
        if (ctx.fds.length > 0) {
          // Only a transferable that ignores ctx.carriesFds gets here.
          const e = new TypeError(
            'this object cannot travel to or from a pool task: its fds can only travel in Process args or over a duplex Pipe',
          ) as TypeError & { code: string };
          e.code = 'ERR_MP_DATA_CLONE';
          throw e;
        }
      } catch (err) {
        abandon(ctx);
        throw err;
      }
      const head = Buffer.allocUnsafe(5);
      head[0] = BINARY_FRAME;
      head.writeUInt32LE(body.length, 1);
      if (this.#text) this.#parts.push(Buffer.from(this.#text));
      this.#text = '';
      this.#parts.push(head, body);
    }
    // A large message leaves at once, so the peer starts on it while this
    // process encodes the next (a map's chunks); small ones wait for the turn
    // to end and leave together.
    if (this.#text.length + this.#parts.length * LARGE > LARGE) {
      this.#flush();
    } else if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      queueMicrotask(() => this.#flush());
    }
  }

  #flush(): void {
    this.#flushScheduled = false;
    if (this.#closed) return;
    if (this.#parts.length === 0) {
      if (this.#text) this.#socket.write(this.#text);
    } else {
      if (this.#text) this.#parts.push(Buffer.from(this.#text));
      this.#socket.write(this.#parts.length === 1 ? this.#parts[0] : Buffer.concat(this.#parts));
      this.#parts = [];
    }
    this.#text = '';
  }

  #onData(chunk: Buffer, onMessage: (msg: unknown) => void): void {
    let buf = chunk;
    if (this.#partial.length > 0) {
      this.#partial.push(chunk);
      this.#partialBytes += chunk.length;
      if (!this.#frameComplete(chunk)) return;
      buf = Buffer.concat(this.#partial, this.#partialBytes);
      this.#partial = [];
      this.#partialBytes = 0;
    }
    let offset = 0;
    while (offset < buf.length) {
      let msg: unknown;
      if (buf[offset] === JSON_FRAME) {
        const end = buf.indexOf(NEWLINE, offset + 1);
        if (end < 0) break;
        msg = JSON.parse(buf.toString('utf8', offset + 1, end));
        offset = end + 1;
      } else if (buf[offset] === BINARY_FRAME) {
        if (buf.length - offset < 5) break;
        const size = buf.readUInt32LE(offset + 1);
        if (buf.length - offset - 5 < size) break;
        try {
          msg = decode(buf.subarray(offset + 5, offset + 5 + size));
        } catch (err) {
          // A message this process cannot revive: the peer and this process
          // disagree on the protocol. Drop the channel rather than the process
          // (the pool then treats the worker as crashed).
          process.emitWarning(`posix-multiprocessing: closing a pool channel: ${(err as Error).message}`);
          this.destroy();
          return;
        }
        offset += 5 + size;
      } else {
        // Not our protocol: nothing after this can be trusted.
        this.destroy();
        return;
      }
      onMessage(msg);
    }
    if (offset < buf.length) {
      const rest = Buffer.from(buf.subarray(offset)); // the socket may reuse its buffer
      this.#partial = [rest];
      this.#partialBytes = rest.length;
    }
  }

  // Whether the pieces of the pending frame now hold all of it.
  #frameComplete(latest: Buffer): boolean {
    const first = this.#partial[0];
    if (first[0] === JSON_FRAME) return latest.includes(NEWLINE);
    if (this.#partialBytes < 5) return false;
    const head = first.length >= 5 ? first : Buffer.concat(this.#partial, 5);
    return this.#partialBytes >= 5 + head.readUInt32LE(1);
  }

  /** Whether an idle channel keeps the event loop alive. */
  ref(): void {
    this.#socket.ref();
  }

  unref(): void {
    this.#socket.unref();
  }

  /** Flushes what is queued, then half-closes: the peer sees EOF after it. */
  end(): void {
    this.#flush();
    if (!this.#closed) this.#socket.end();
  }

  destroy(): void {
    this.#text = '';
    this.#parts = [];
    this.#socket.destroy();
  }
}
