// The private channel between a pool and one of its workers: a socketpair
// driven by libuv on both sides, carrying length-prefixed codec frames. Frames
// queued in one turn of the event loop leave in one write, so a stream of small
// tasks costs one syscall per batch, not per task.
import * as net from 'node:net';

import { decode, encode, registerTransferable } from './serialize';

/** An fd that a child inherits at start (it travels in Process args). */
export class InheritedFd {
  constructor(readonly fd: number) {}
}

registerTransferable('pmp.InheritedFd', InheritedFd, {
  encode(handle, ctx) {
    ctx.fds.push(handle.fd);
    return ctx.fds.length - 1;
  },
  decode(index: number, ctx) {
    return new InheritedFd(ctx.fds[index]);
  },
});

export class Channel {
  readonly #socket: net.Socket;
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #flushScheduled = false;
  #input: Buffer | null = null;
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

  /** Queues a message; it is written with the others queued in this turn. */
  send(msg: unknown): void {
    if (this.#closed) return;
    const body = encode(msg);
    const head = Buffer.allocUnsafe(4);
    head.writeUInt32LE(body.length, 0);
    this.#pending.push(head, body);
    this.#pendingBytes += 4 + body.length;
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      queueMicrotask(() => this.#flush());
    }
  }

  #flush(): void {
    this.#flushScheduled = false;
    if (this.#closed || this.#pending.length === 0) return;
    const data = this.#pending.length === 1 ? this.#pending[0] : Buffer.concat(this.#pending, this.#pendingBytes);
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#socket.write(data);
  }

  #onData(chunk: Buffer, onMessage: (msg: unknown) => void): void {
    const buf = this.#input ? Buffer.concat([this.#input, chunk]) : chunk;
    let offset = 0;
    while (buf.length - offset >= 4) {
      const size = buf.readUInt32LE(offset);
      if (buf.length - offset - 4 < size) break;
      const msg = decode(buf.subarray(offset + 4, offset + 4 + size));
      offset += 4 + size;
      onMessage(msg);
    }
    this.#input = offset === buf.length ? null : Buffer.from(buf.subarray(offset));
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
    this.#pending = [];
    this.#socket.destroy();
  }
}
