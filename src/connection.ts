// Pipe() and Connection: message passing over a socketpair (duplex) or a pipe
// (one-way). Each message is a frame: a 4-byte big-endian length (or -1 and an
// 8-byte length beyond 2 GiB, as CPython does) and the body, so messages are
// never merged or split whatever the kernel does with the stream.
//
// The fds are non-blocking. Async reads wait on the event loop (a uv_poll on the
// fd), sync reads in poll(); both feed one input buffer and one frame parser,
// and async receivers are served first, so mixing them keeps order and framing.
// send() never blocks: what the kernel does not take now is queued and written
// when the fd is writable (and, at process exit, synchronously, so a child that
// sends and returns does not lose its last message).

import { atExit, ExitPhase } from './at-exit';
import { binding, type FdWatcher } from './native';
import { decodeFd, encodeFd, type FdRef } from './fd-share';
import { type LongTimeout, setLongTimeout } from './long-timeout';
import { closedError, EOFError, stateError } from './errors';
import { abandon, decode, encode, encodeJsonText, JSON_TAG_BYTE, registerTransferable, type CodecContext } from './serialize';
import { decodeFast, ENCODE_LIMIT, ENCODE_SLACK, encodeFast, NOT_FAST } from './fast-json';
import { pendingAsyncWaits, SpinPolicy, spinConfig } from './spin';
import { invalidType, outOfRange, validateTimeout } from './validate';

const READABLE = 1;
const WRITABLE = 2;
const HANGUP = 4;

// send()'s fast path writes a small plain-JSON message here, frame header
// and tag byte first, and hands it to the kernel from here (one per process:
// the bytes are sent, or copied out, before send() returns).
const TEXT_AT = 5;
const sendScratch = Buffer.allocUnsafe(TEXT_AT + ENCODE_LIMIT + ENCODE_SLACK);
const NO_FDS: number[] = [];
/** How long an async receive may hold the event loop asking for a quick answer, µs (see #service). */
const HOLD_US = 30;

/** Body tag of a send() message that carries fds: [FD_TAG, count, ...codec bytes]. */
const FD_TAG = 0x46;
const MIN_READ = 64 * 1024;
/** Below this, header and body are copied into one buffer (one syscall). */
const COALESCE = 64 * 1024;

interface Waiter {
  bytes: boolean;
  resolve(value: unknown): void;
  reject(err: unknown): void;
}

interface Poller {
  resolve(ready: boolean): void;
  reject(err: unknown): void;
  timer?: LongTimeout;
}

interface Chunk {
  buf: Uint8Array;
  fds: number[];
  /** On a message's last chunk: what its encoding took, given back if it is never written whole. */
  ctx?: CodecContext;
}

interface Frame {
  /** A view into the input buffer, valid until the next read. */
  body: Buffer;
  /** True when body is a fresh buffer nobody else refers to. */
  owned: boolean;
}

function frameHeader(length: number): Buffer {
  if (length <= 0x7fffffff) {
    const h = Buffer.allocUnsafe(4);
    h.writeInt32BE(length, 0);
    return h;
  }
  const h = Buffer.allocUnsafe(12);
  h.writeInt32BE(-1, 0);
  h.writeBigUInt64BE(BigInt(length), 4);
  return h;
}

function eofError(): EOFError {
  return new EOFError('the other end of the connection is closed');
}

/** A queued chunk that will never be written: its fds are closed, its message abandoned. */
function dropChunk(chunk: Chunk): void {
  closeFds(chunk.fds);
  abandon(chunk.ctx);
}

function closeFds(fds: number[]): void {
  for (const fd of fds) {
    try {
      binding.closeFd(fd);
    } catch {
      // already closed
    }
  }
}

const pendingAtExit = new Set<Connection>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Before the children are joined: one of them may be waiting for the rest.
  atExit(ExitPhase.Flush, () => {
    for (const conn of pendingAtExit) conn._flushAtExit();
  });
}

// A connection dropped without close() still gives its fd back.
const finalizer = new FinalizationRegistry<number>((fd) => {
  try {
    binding.closeFd(fd);
  } catch {
    // already closed
  }
});

export class Connection {
  #fd: number;
  readonly #readable: boolean;
  readonly #writable: boolean;
  readonly #socket: boolean;
  #closed = false;
  #watcher: FdWatcher | null = null;
  #watching = 0;
  #reffed = false;
  /** Whether pending receives keep the event loop alive (see _setReadsRef). */
  #readsRef = true;

  #in: Buffer = Buffer.allocUnsafe(MIN_READ);
  #start = 0;
  #end = 0;
  #inFds: number[] = [];
  #eof = false;
  #readError: unknown = null;
  #waiters: Waiter[] = [];
  #pollers: Poller[] = [];
  /** How long receivers spin before sleeping (src/spin.ts). */
  #spin = new SpinPolicy();
  /** When the first async receiver started waiting for input (performance.now()), 0 if none does. */
  #waitStart = 0;

  #out: Chunk[] = [];
  #outOffset = 0;
  #writeError: unknown = null;
  /** close() was called while output was still queued: close the fd once it drains. */
  #closeWhenDrained = false;

  /** @internal Use Pipe(); a Connection also arrives through Process args, a pipe or a queue. */
  constructor(fd: number, readable: boolean, writable: boolean, socket: boolean) {
    if (!Number.isInteger(fd) || fd < 0) throw invalidType('fd', 'a file descriptor', fd);
    this.#fd = fd;
    this.#readable = readable;
    this.#writable = writable;
    this.#socket = socket;
    // A socket stays in blocking mode so recvSync can wait inside recvmsg;
    // every other call on it passes MSG_DONTWAIT (pipe.cc).
    binding.setNonblocking(fd, !socket);
    finalizer.register(this, fd, this);
  }

  get closed(): boolean {
    return this.#closed;
  }
  get readable(): boolean {
    return this.#readable;
  }
  get writable(): boolean {
    return this.#writable;
  }
  /** The underlying file descriptor (like Python's fileno()). */
  fileno(): number {
    this.#checkOpen();
    return this.#fd;
  }

  // ---- sending ---------------------------------------------------------------

  /** Sends a value (structured clone; shared objects travel as handles). Never blocks. */
  send(obj: unknown): void {
    this.#checkWritable();
    // Small plain JSON data, nothing queued before it: written in one walk
    // (fast-json.ts encodeFast, the same text JSON.stringify gives) and sent
    // straight from the scratch frame.
    if (this.#out.length === 0) {
      const n = encodeFast(obj, sendScratch, TEXT_AT);
      if (n >= 0) {
        this.#sendScratch(TEXT_AT + n);
        return;
      }
    }
    const text = encodeJsonText(obj);
    if (text !== undefined) {
      // The JSON fast path: header, tag and text in one buffer, one copy.
      const length = 1 + Buffer.byteLength(text);
      if (length < COALESCE) {
        const frame = Buffer.allocUnsafe(4 + length);
        frame.writeInt32BE(length, 0);
        frame[4] = JSON_TAG_BYTE;
        frame.write(text, 5);
        this.#out.push({ buf: frame, fds: [] });
        this.#flush(true);
        return;
      }
    }
    // A pipe cannot pass fds: a Connection in the message goes through the fd sharer.
    const ctx: CodecContext = { fds: [], carriesFds: this.#socket };
    let body: Buffer;
    try {
      body = encode(obj, ctx);
      if (ctx.fds.length > 64) throw new RangeError('at most 64 fd-carrying objects per message');
      if (ctx.fds.length > 0 && !this.#socket) {
        // Only a transferable that ignores ctx.carriesFds gets here.
        throw new TypeError('this object can only be sent over a duplex Pipe (a socket): its fds cannot travel through a pipe');
      }
    } catch (err) {
      abandon(ctx);
      throw err;
    }
    if (ctx.fds.length > 0) {
      const tagged = Buffer.allocUnsafe(body.length + 2);
      tagged[0] = FD_TAG;
      tagged[1] = ctx.fds.length;
      body.copy(tagged, 2);
      body = tagged;
    }
    // Duplicates travel, so closing a sent Connection right after send() is
    // safe even when the message waits in our queue; they are closed once sent.
    try {
      this.#sendFrame(body, ctx.fds.map((fd) => binding.dup(fd)), true, ctx.offers || ctx.onAbandon ? ctx : undefined);
    } catch (err) {
      abandon(ctx);
      throw err;
    }
  }

  /** Sends bytes as one message; offset and size select a part of buf. */
  sendBytes(buf: ArrayBufferView | ArrayBuffer, offset = 0, size?: number): void {
    this.#checkWritable();
    let view: Uint8Array;
    if (buf instanceof ArrayBuffer) view = new Uint8Array(buf);
    else if (ArrayBuffer.isView(buf)) view = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    else throw invalidType('buf', 'a Buffer, TypedArray, DataView or ArrayBuffer', buf);
    if (typeof offset !== 'number' || !Number.isInteger(offset)) throw invalidType('offset', 'an integer', offset);
    if (offset < 0 || offset > view.length) throw outOfRange('offset', `between 0 and ${view.length}`, offset);
    if (size === undefined) size = view.length - offset;
    if (typeof size !== 'number' || !Number.isInteger(size)) throw invalidType('size', 'an integer', size);
    if (size < 0 || offset + size > view.length) {
      throw outOfRange('size', `between 0 and ${view.length - offset} (the bytes after offset)`, size);
    }
    this.#sendFrame(view.subarray(offset, offset + size), [], false);
  }

  #sendScratch(total: number): void {
    const frame = sendScratch;
    frame.writeInt32BE(total - 4, 0);
    frame[4] = JSON_TAG_BYTE;
    let sent: number;
    try {
      sent = this.#socket
        ? binding.sendmsg(this.#fd, frame, 0, total, NO_FDS)
        : binding.write(this.#fd, frame, 0, total);
    } catch (err) {
      this.#afterDrain();
      throw err;
    }
    if (sent === total) return;
    // The kernel took part of it, or none: the rest waits in #out, in a copy.
    this.#out.push({ buf: Buffer.from(frame.subarray(Math.max(sent, 0), total)), fds: [] });
    this.#afterDrain();
  }

  #sendFrame(body: Uint8Array, fds: number[], bodyIsOurs: boolean, ctx?: CodecContext): void {
    const header = frameHeader(body.length);
    if (body.length < COALESCE) {
      const frame = Buffer.allocUnsafe(header.length + body.length);
      header.copy(frame, 0);
      frame.set(body, header.length);
      this.#out.push({ buf: frame, fds, ctx });
    } else {
      this.#out.push({ buf: header, fds });
      this.#out.push({ buf: body, fds: [], ctx });
    }
    this.#flush(true);
    // Bytes the caller may change later are copied if they have to wait.
    if (!bodyIsOurs && body.length >= COALESCE) {
      const i = this.#out.findIndex((c) => c.buf === body);
      if (i >= 0) {
        this.#out[i] = { buf: Buffer.from(body.subarray(i === 0 ? this.#outOffset : 0)), fds: [], ctx: this.#out[i].ctx };
        if (i === 0) this.#outOffset = 0;
      }
    }
  }

  // Writes what the kernel takes now; arms the watcher for the rest. Errors
  // surface from send() when it is the caller, else at the next send().
  #flush(fromSend: boolean): void {
    try {
      while (this.#out.length > 0) {
        const chunk = this.#out[0];
        const left = chunk.buf.length - this.#outOffset;
        // On a socket always sendmsg: it never waits (MSG_DONTWAIT), whatever the fd's mode.
        const n = this.#socket
          ? binding.sendmsg(this.#fd, chunk.buf, this.#outOffset, left, this.#outOffset === 0 ? chunk.fds : [])
          : binding.write(this.#fd, chunk.buf, this.#outOffset, left);
        if (n < 0) break;
        if (chunk.fds.length > 0) closeFds(chunk.fds.splice(0)); // the kernel holds its own references now
        this.#outOffset += n;
        if (this.#outOffset === chunk.buf.length) {
          this.#out.shift();
          this.#outOffset = 0;
        }
      }
    } catch (err) {
      for (const chunk of this.#out) dropChunk(chunk);
      this.#out = [];
      this.#outOffset = 0;
      if (fromSend) {
        this.#afterDrain();
        throw err;
      }
      this.#writeError = err;
    }
    this.#afterDrain();
  }

  #afterDrain(): void {
    if (this.#out.length > 0) {
      pendingAtExit.add(this);
      installExitHook();
    } else {
      pendingAtExit.delete(this);
      if (this.#closeWhenDrained) {
        this.#closeWhenDrained = false;
        this.#release();
        return;
      }
    }
    this.#arm();
  }

  /** @internal Blocks until queued output is written (process exit only). */
  _flushAtExit(): void {
    while (this.#out.length > 0 && this.#fd >= 0) {
      try {
        this.#flush(true);
      } catch {
        return;
      }
      if (this.#out.length > 0 && binding.poll(this.#fd, WRITABLE, -1) & HANGUP) {
        if (!(binding.poll(this.#fd, WRITABLE, 0) & WRITABLE)) return;
      }
    }
  }

  // ---- receiving -------------------------------------------------------------

  /** Resolves with the next message; rejects with ERR_MP_EOF once the other end is closed. */
  recv(): Promise<unknown> {
    return this.#enqueue(false);
  }

  /** Resolves with the next message's bytes. */
  recvBytes(): Promise<Buffer> {
    return this.#enqueue(true) as Promise<Buffer>;
  }

  recvSync(): unknown {
    this.#checkReadable();
    return this.#decodeFrame(this.#frameSync());
  }

  recvBytesSync(): Buffer {
    this.#checkReadable();
    return this.#bytesOf(this.#frameSync());
  }

  /** Whether there is something to read (or the end of stream), waiting up to timeout seconds
   *  (null: no limit). */
  poll(timeout: number | null = 0): Promise<boolean> {
    this.#checkReadable();
    const seconds = timeout === null ? undefined : validateTimeout(timeout);
    if (this.#hasInput()) return Promise.resolve(true);
    if (seconds === 0) return Promise.resolve(false);
    return new Promise((resolve, reject) => {
      const poller: Poller = { resolve, reject };
      if (seconds !== undefined) {
        poller.timer = setLongTimeout(() => {
          this.#pollers.splice(this.#pollers.indexOf(poller), 1);
          this.#arm();
          resolve(false);
        }, seconds * 1000);
      }
      this.#pollers.push(poller);
      this.#arm();
    });
  }

  pollSync(timeout: number | null = 0): boolean {
    this.#checkReadable();
    const seconds = timeout === null ? undefined : validateTimeout(timeout);
    const deadline = seconds === undefined ? Infinity : performance.now() + seconds * 1000;
    let started = 0;
    for (;;) {
      if (this.#hasInput()) {
        if (started !== 0) this.#spin.record((performance.now() - started) * 1000);
        return true;
      }
      const now = performance.now();
      const left = deadline - now;
      if (left <= 0) return false;
      // The spin is bounded by the timeout too (native poll()).
      if (started === 0) started = now;
      this.#blockOnce(left === Infinity ? -1 : left, this.#spin.budget());
    }
  }

  #enqueue(bytes: boolean): Promise<unknown> {
    try {
      this.#checkReadable();
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      const waiter = { bytes, resolve, reject };
      this.#waiters.push(waiter);
      if (this.#readsRef) pendingAsyncWaits.add(this);
      try {
        this.#service();
      } catch (err) {
        // Arming the watch failed (an OS error): this receive ends with it,
        // and must not stay behind as a waiter, nor keep the Connection
        // counted as pending (which would stop every loop-holding spin).
        const at = this.#waiters.indexOf(waiter);
        if (at >= 0) this.#waiters.splice(at, 1);
        if (this.#waiters.length === 0) pendingAsyncWaits.delete(this);
        reject(err);
      }
    });
  }

  // Serves async waiters from buffered frames, reads what is there without
  // blocking, and watches the fd for the rest.
  #service(): void {
    this.#deliver();
    // With the read watch still registered, the loop reports input anyway:
    // reading now would mostly cost an EAGAIN per message.
    if (this.#waiters.length > 0 && !this.#eof && this.#readError === null && !(this.#watching & READABLE)) {
      this.#fill();
      this.#deliver();
    }
    this.#arm();
    // Still waiting: keep the loop from sleeping for a short, bounded while,
    // so input that comes soon is seen at once (FdWatcher.spin in pipe.cc;
    // the loop keeps running everything else meanwhile).
    if (this.#waiters.length > 0 && this.#waitStart === 0 && this.#watching & READABLE && this.#readsRef) {
      this.#waitStart = performance.now();
      const budget = this.#spin.budget();
      // While answers come within the full budget (a request/response loop
      // with a quick peer), first ask the kernel again for up to HOLD_US with
      // the loop held, as the async acquire of a Lock does: the loop's own
      // spin notices input a turn of the loop late, and its callback path
      // costs a syscall and a hop more. A slow peer (budget below the limit)
      // is never waited for this way, nor is anyone while other async waits
      // are pending (spin.ts pendingAsyncWaits).
      if (budget > 0 && budget >= spinConfig.limitUs && pendingAsyncWaits.alone(this)) {
        if (this.#fill(Math.min(budget, HOLD_US)) !== -1) {
          this.#deliver();
          this.#arm();
          if (this.#waiters.length === 0) return;
        }
      }
      if (budget > 0) this.#watcher!.spin(budget);
    }
  }

  /**
   * @internal Whether pending receives keep the event loop alive and are
   * waited for eagerly (spin, hold; the default), or are idle listeners that
   * do neither: a manager link keeps a receive pending at all times, to see
   * its server go, but wants a reply only while a request is (manager.ts).
   */
  _setReadsRef(on: boolean): void {
    if (on === this.#readsRef || this.#closed) return;
    this.#readsRef = on;
    if (!on) {
      pendingAsyncWaits.delete(this);
      this.#waitStart = 0;
      this.#arm();
    } else if (this.#waiters.length > 0) {
      pendingAsyncWaits.add(this);
      this.#service();
    }
  }

  #deliver(): void {
    while (this.#waiters.length > 0) {
      const frame = this.#takeFrame();
      if (frame === null) break;
      const waiter = this.#waiters.shift()!;
      if (this.#waitStart !== 0) {
        this.#spin.record((performance.now() - this.#waitStart) * 1000);
        this.#waitStart = 0;
      }
      try {
        waiter.resolve(waiter.bytes ? this.#bytesOf(frame) : this.#decodeFrame(frame));
      } catch (err) {
        waiter.reject(err);
      }
    }
    if (this.#waiters.length > 0 && (this.#eof || this.#readError !== null)) {
      this.#waitStart = 0;
      const err = this.#readError ?? eofError();
      for (const w of this.#waiters.splice(0)) w.reject(err);
    }
    if (this.#waiters.length === 0) pendingAsyncWaits.delete(this);
    if (this.#pollers.length > 0 && this.#hasBuffered()) {
      for (const p of this.#pollers.splice(0)) {
        p.timer?.clear();
        p.resolve(true);
      }
    }
  }

  #frameSync(): Frame {
    let started = 0;
    let recorded = false;
    for (;;) {
      this.#deliver(); // earlier async receivers come first
      if (this.#waiters.length === 0) {
        const frame = this.#takeFrame();
        if (frame) {
          this.#arm();
          return frame;
        }
      }
      if (this.#readError !== null) throw this.#readError;
      if (this.#eof) throw eofError();
      // When recent answers came quickly (src/spin.ts), keep asking for a
      // short while: one read returns the answer as soon as it is there.
      // Otherwise (or if it does not come) wait first, then read: the
      // answer is rarely there yet, and poll() returns at once when it is.
      // With output queued, poll() must also watch for writability.
      if (started === 0) started = performance.now();
      // On a socket with nothing to send, the sleep can be recvmsg itself
      // (one syscall where poll() and recvmsg() are two).
      const spin = recorded || this.#out.length > 0 ? 0 : this.#spin.budget();
      let n = spin > 0 ? this.#fill(spin) : -1;
      if (n < 0 && this.#socket && this.#out.length === 0) n = this.#fill(-1);
      if (n < 0) {
        this.#blockOnce(-1, 0);
        n = this.#fill();
      }
      if (n > 0 && !recorded) {
        // Only the wait for the first bytes says how quickly the peer answers;
        // the rest of a large frame is transfer time.
        this.#spin.record((performance.now() - started) * 1000);
        recorded = true;
      }
    }
  }

  // Sleeps in poll() until the fd is readable, also writing queued output when
  // it is writable: a sync receive must not starve our own half-sent message,
  // which the peer may need before it answers.
  #blockOnce(timeoutMs: number, spinUs: number): void {
    const want = READABLE | (this.#out.length > 0 ? WRITABLE : 0);
    const events = binding.poll(this.#fd, want, timeoutMs, spinUs);
    if (this.#out.length > 0 && events & (WRITABLE | HANGUP)) this.#flush(false);
  }

  #hasBuffered(): boolean {
    return this.#end > this.#start || this.#eof || this.#readError !== null;
  }

  #hasInput(): boolean {
    if (this.#hasBuffered()) return true;
    this.#fill();
    return this.#hasBuffered();
  }

  // Reads until the kernel has no more: >0 bytes read, 0 at end of stream, -1 nothing yet.
  // spinUs: the first read keeps trying for up to that long (bounded; sync
  // paths only); -1: on a socket, the first read waits for data.
  #fill(spinUs = 0): number {
    let total = 0;
    for (;;) {
      this.#makeRoom();
      let n: number;
      try {
        n = this.#socket
          ? binding.recvmsg(this.#fd, this.#in, this.#end, this.#in.length - this.#end, this.#inFds, spinUs)
          : binding.read(this.#fd, this.#in, this.#end, this.#in.length - this.#end, spinUs);
        spinUs = 0;
      } catch (err) {
        this.#readError = err;
        return total > 0 ? total : 0;
      }
      if (n === 0) {
        this.#eof = true;
        return total > 0 ? total : 0;
      }
      if (n < 0) return total > 0 ? total : -1;
      const asked = this.#in.length - this.#end;
      this.#end += n;
      total += n;
      // A short read means the kernel had no more: save the EAGAIN round trip.
      if (n < asked) return total;
    }
  }

  // Room for at least the rest of the frame being received (one allocation for
  // a large message), or MIN_READ bytes.
  #makeRoom(): void {
    const have = this.#end - this.#start;
    let want = MIN_READ;
    const total = this.#frameTotal();
    if (total > have) want = Math.max(total - have, 1);
    if (this.#in.length - this.#end >= want) return;
    if (have === 0) {
      this.#start = this.#end = 0;
      if (this.#in.length >= want && total <= this.#in.length) return;
    }
    const size = Math.max(MIN_READ, have + want, total);
    if (size <= this.#in.length && this.#start > 0) {
      this.#in.copy(this.#in, 0, this.#start, this.#end);
    } else {
      const next = Buffer.allocUnsafe(size);
      this.#in.copy(next, 0, this.#start, this.#end);
      this.#in = next;
    }
    this.#end = have;
    this.#start = 0;
  }

  /** Bytes of the frame at the start of the buffer (header included), 0 if unknown yet. */
  #frameTotal(): number {
    const have = this.#end - this.#start;
    if (have < 4) return 0;
    const len = this.#in.readInt32BE(this.#start);
    if (len >= 0) return 4 + len;
    if (have < 12) return 0;
    return 12 + Number(this.#in.readBigUInt64BE(this.#start + 4));
  }

  #takeFrame(): Frame | null {
    const total = this.#frameTotal();
    if (total === 0 || this.#end - this.#start < total) return null;
    const headerLength = this.#in.readInt32BE(this.#start) >= 0 ? 4 : 12;
    const from = this.#start + headerLength;
    const to = this.#start + total;
    // A frame that filled a buffer of its own is handed over without a copy.
    if (this.#start === 0 && to === this.#end && total > MIN_READ) {
      const body = this.#in.subarray(from, to);
      this.#in = Buffer.allocUnsafe(MIN_READ);
      this.#start = this.#end = 0;
      return { body, owned: true };
    }
    this.#start = to;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return { body: this.#in.subarray(from, to), owned: false };
  }

  #bytesOf(frame: Frame): Buffer {
    return frame.owned ? frame.body : Buffer.from(frame.body);
  }

  #decodeFrame(frame: Frame): unknown {
    let body = frame.body;
    // JSON of the common shapes is read straight from the bytes (fast-json.ts);
    // it declines anything it cannot give exactly as JSON.parse would.
    if (body.length > 1 && body[0] === JSON_TAG_BYTE) {
      const v = decodeFast(body, 1, body.length);
      if (v !== NOT_FAST) return v;
    }
    const fds: number[] = [];
    if (body.length > 0 && body[0] === FD_TAG) {
      const count = body[1];
      if (this.#inFds.length < count) throw stateError('a message arrived without the fds it refers to', 'ERR_MP_PROTOCOL');
      fds.push(...this.#inFds.splice(0, count));
      body = body.subarray(2);
    }
    return decode(body, { fds });
  }

  // ---- the event loop side -----------------------------------------------------

  // Watches for what is needed: readable while someone waits for input,
  // writable while output is queued. A read watch nobody needs any more is left
  // registered but unref'd (it ends at the next event), which saves two
  // epoll_ctl calls per message in a request/response loop.
  #arm(): void {
    if (this.#fd < 0) return;
    let want = 0;
    if ((this.#waiters.length > 0 || this.#pollers.length > 0) && !this.#eof && this.#readError === null) want |= READABLE;
    if (this.#out.length > 0) want |= WRITABLE;
    const needed = (want & WRITABLE) !== 0 || (want !== 0 && this.#readsRef);
    if (want === 0 && this.#watching === READABLE) {
      if (this.#reffed) {
        this.#watcher!.unref();
        this.#reffed = false;
      }
      return;
    }
    if (want !== this.#watching) {
      if (want === 0) {
        this.#watcher?.stop();
      } else {
        this.#watcher ??= new binding.FdWatcher(this.#fd, (events) => this.#onEvents(events));
        this.#watcher.start(want);
      }
      this.#watching = want;
    }
    if (needed !== this.#reffed && this.#watcher) {
      if (needed) this.#watcher.ref();
      else this.#watcher.unref();
      this.#reffed = needed;
    }
  }

  #onEvents(events: number): void {
    if (this.#fd < 0) return;
    if (this.#out.length > 0 && events & (WRITABLE | HANGUP)) this.#flush(false);
    if (this.#fd < 0) return;
    if (events & (READABLE | HANGUP)) {
      if (this.#waiters.length > 0 || this.#pollers.length > 0) {
        this.#fill();
        this.#deliver();
      } else if (this.#watching & READABLE) {
        // Input nobody asked for yet: stay out of the way until someone does.
        const want = this.#out.length > 0 ? WRITABLE : 0;
        if (want === 0) this.#watcher!.stop();
        else this.#watcher!.start(want);
        this.#watching = want;
      }
    }
    this.#arm();
  }

  // ---- closing -----------------------------------------------------------------

  /** Closes this end. Idempotent. Output still queued is written first. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const err = closedError('Connection');
    for (const w of this.#waiters.splice(0)) w.reject(err);
    pendingAsyncWaits.delete(this);
    for (const p of this.#pollers.splice(0)) {
      p.timer?.clear();
      p.reject(err);
    }
    if (this.#out.length > 0) {
      this.#closeWhenDrained = true;
      this.#arm();
      return;
    }
    this.#release();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #release(): void {
    this.#watcher?.close();
    this.#watcher = null;
    this.#watching = 0;
    this.#reffed = false;
    pendingAtExit.delete(this);
    finalizer.unregister(this);
    closeFds(this.#inFds.splice(0));
    for (const chunk of this.#out.splice(0)) dropChunk(chunk);
    if (this.#fd >= 0) {
      try {
        binding.closeFd(this.#fd);
      } catch {
        // already closed
      }
      this.#fd = -1;
    }
  }

  #checkOpen(): void {
    if (this.#closed) throw closedError('Connection');
  }

  #checkReadable(): void {
    this.#checkOpen();
    if (!this.#readable) throw stateError('this end of the pipe is write-only', 'ERR_MP_NOT_READABLE');
  }

  #checkWritable(): void {
    this.#checkOpen();
    if (!this.#writable) throw stateError('this end of the pipe is read-only', 'ERR_MP_NOT_WRITABLE');
    // A write that failed after send() returned (the peer went away) is reported here.
    if (this.#writeError) {
      const err = this.#writeError;
      this.#writeError = null;
      throw err;
    }
  }

  static {
    // A Connection travels as its fd (placed in a child, passed with
    // SCM_RIGHTS, or through the fd sharer where the channel cannot carry
    // fds); the receiver owns its copy.
    registerTransferable('Connection', Connection, {
      encode(conn, ctx) {
        if (conn.#closed) throw closedError('Connection');
        return { ...encodeFd(conn.#fd, ctx), r: conn.#readable, w: conn.#writable, s: conn.#socket };
      },
      decode(data: FdRef & { r: boolean; w: boolean; s: boolean }, ctx) {
        return new Connection(decodeFd(data, ctx, 'Connection'), data.r, data.w, data.s);
      },
    });
  }
}

/** A pair of connected Connections: duplex (a socketpair), or [readable end, writable end]. */
export function Pipe(duplex = true): [Connection, Connection] {
  if (typeof duplex !== 'boolean') throw invalidType('duplex', 'a boolean', duplex);
  if (duplex) {
    const [a, b] = binding.socketpair();
    return [new Connection(a, true, true, true), new Connection(b, true, true, true)];
  }
  const [r, w] = binding.pipe();
  return [new Connection(r, true, false, false), new Connection(w, false, true, false)];
}
