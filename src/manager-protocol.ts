// The manager's wire protocol, shared by the server (manager-server.ts) and
// its clients (manager.ts): length-prefixed frames over a stream socket, an
// HMAC challenge-response in both directions before anything is decoded
// (Python's multiprocessing.connection deliver_challenge/answer_challenge,
// with SHA-256), then request and response frames carrying codec bytes.
import * as crypto from 'node:crypto';
import type * as net from 'node:net';

import { Connection } from './connection';
import { AuthenticationError, TimeoutError, stateError } from './errors';
import { binding } from './native';
import { invalidType, outOfRange } from './validate';

/** Where a manager listens: a Unix socket path (Manager.start) or a TCP address. */
export type ManagerAddress = { path: string } | { host: string; port: number };

export function addressKey(a: ManagerAddress): string {
  return 'path' in a ? `unix:${a.path}` : `tcp:${a.host}:${a.port}`;
}

export function describeAddress(a: ManagerAddress): string {
  return 'path' in a ? a.path : `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}

export function validateAuthkey(value: unknown, name = 'options.authkey'): Buffer {
  if (typeof value === 'string') {
    if (value.length === 0) throw outOfRange(name, 'a non-empty string or Buffer', value);
    return Buffer.from(value, 'utf8');
  }
  if (value instanceof Uint8Array) {
    if (value.length === 0) throw outOfRange(name, 'a non-empty string or Buffer', value);
    return Buffer.from(value);
  }
  throw invalidType(name, 'a non-empty string or Buffer', value);
}

// Before authentication a peer may be anyone: its frames are tiny and bounded.
const HANDSHAKE_FRAME_MAX = 256;
const HANDSHAKE_BUFFER_MAX = 64 * 1024;
/** The server gives up on a handshake that takes longer than this; a client's
 *  default for connecting and authenticating (Manager.connect's timeout). */
export const HANDSHAKE_TIMEOUT_S = 10;

const CHALLENGE = Buffer.from('#pmp-manager/1#CHALLENGE#');
const WELCOME = Buffer.from('#WELCOME#');
const FAILURE = Buffer.from('#FAILURE#');
/** The server's first frame after the handshake, sent on the Connection (see detach()). */
const SWITCH = Buffer.from('#SWITCH#');

/** Writes one handshake frame: a 4-byte big-endian length, then the message. */
function writeFrame(socket: net.Socket, message: Buffer): void {
  const frame = Buffer.allocUnsafe(4 + message.length);
  frame.writeUInt32BE(message.length, 0);
  message.copy(frame, 4);
  socket.write(frame);
}

/**
 * Cuts a socket's byte stream into the handshake's frames, parsed one at a
 * time on demand (next()), limited to HANDSHAKE_FRAME_MAX; at most
 * HANDSHAKE_BUFFER_MAX bytes are kept, so an unauthenticated peer cannot make
 * this process allocate much. After the handshake a Connection carries the
 * stream (detach()).
 */
export class FrameReader {
  #chunks: Buffer[] = [];
  #buffered = 0;
  #waiting: { resolve(b: Buffer): void; reject(e: unknown): void } | null = null;
  #error: unknown = null;

  constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => this.#push(chunk));
  }

  #push(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    if (this.#buffered > HANDSHAKE_BUFFER_MAX) {
      this.#protocolError(`${this.#buffered} bytes arrived before authentication`);
      return;
    }
    if (this.#waiting) {
      const frame = this.#parseOrFail(HANDSHAKE_FRAME_MAX);
      if (frame) {
        const w = this.#waiting;
        this.#waiting = null;
        w.resolve(frame);
      }
    }
  }

  #parseOrFail(max: number): Buffer | null {
    if (this.#buffered < 4) return null;
    const length = this.#peek(4).readUInt32BE(0);
    if (length > max) {
      this.#protocolError(`a frame of ${length} bytes (at most ${max} allowed here)`);
      return null;
    }
    if (this.#buffered < 4 + length) return null;
    this.#take(4);
    return this.#take(length);
  }

  #protocolError(what: string): void {
    this.fail(stateError(`manager protocol error: ${what}`, 'ERR_MP_PROTOCOL'));
    this.#chunks = [];
    this.#buffered = 0;
    this.socket.destroy();
  }

  #peek(n: number): Buffer {
    if (this.#chunks[0].length < n) this.#chunks = [Buffer.concat(this.#chunks)];
    return this.#chunks[0].subarray(0, n);
  }

  #take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    if (this.#chunks[0].length < n) this.#chunks = [Buffer.concat(this.#chunks)];
    const first = this.#chunks[0];
    const out = first.subarray(0, n);
    if (first.length === n) this.#chunks.shift();
    else this.#chunks[0] = first.subarray(n);
    this.#buffered -= n;
    return out;
  }

  /** The next handshake frame. */
  next(): Promise<Buffer> {
    if (this.#error) return Promise.reject(this.#error);
    const frame = this.#parseOrFail(HANDSHAKE_FRAME_MAX);
    if (frame) return Promise.resolve(frame);
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => (this.#waiting = { resolve, reject }));
  }

  /** Bytes received and not yet taken as frames. */
  get buffered(): number {
    return this.#buffered;
  }

  /** Fails a pending next() (the socket closed or errored). */
  fail(err: unknown): void {
    this.#error ??= err;
    const w = this.#waiting;
    this.#waiting = null;
    w?.reject(this.#error);
  }
}

function digest(authkey: Buffer, message: Buffer): Buffer {
  return crypto.createHmac('sha256', authkey).update(message).digest();
}

function sameBytes(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

// Sends a challenge and checks the peer's answer; tells the peer the verdict.
async function deliverChallenge(socket: net.Socket, reader: FrameReader, authkey: Buffer): Promise<boolean> {
  const message = Buffer.concat([CHALLENGE, crypto.randomBytes(32)]);
  writeFrame(socket, message);
  const answer = await reader.next();
  const ok = sameBytes(answer, digest(authkey, message));
  writeFrame(socket, ok ? WELCOME : FAILURE);
  return ok;
}

// Answers the peer's challenge; resolves with the peer's verdict.
async function answerChallenge(socket: net.Socket, reader: FrameReader, authkey: Buffer): Promise<boolean> {
  const message = await reader.next();
  if (message.length <= CHALLENGE.length || !sameBytes(message.subarray(0, CHALLENGE.length), CHALLENGE)) {
    throw stateError('manager protocol error: the peer is not a posix-multiprocessing manager', 'ERR_MP_PROTOCOL');
  }
  writeFrame(socket, digest(authkey, message));
  return sameBytes(await reader.next(), WELCOME);
}

function withTimeout<T>(work: Promise<T>, socket: net.Socket, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      socket.destroy();
      reject(new TimeoutError(`${what}: the authentication handshake took more than ${HANDSHAKE_TIMEOUT_S} s`));
    }, HANDSHAKE_TIMEOUT_S * 1000);
  });
  return Promise.race([work, expired]).finally(() => clearTimeout(timer));
}

function protocolError(what: string): Error {
  return stateError(`manager protocol error: ${what}`, 'ERR_MP_PROTOCOL');
}

/**
 * After the handshake, the byte stream is carried on by a Connection (one
 * message per manager frame: its framing is the same 4-byte length prefix as
 * writeFrame's) on a dup of the socket's fd, and the net.Socket is destroyed
 * (the dup keeps the connection open). A round trip over a Connection costs a
 * third of one over a net.Socket (docs/manager.md, Performance).
 *
 * The switch point is clean because nothing crosses it unread: the server
 * stops reading and detaches right after the handshake, then sends SWITCH on
 * its Connection; the client sends nothing after its last handshake frame
 * until it has read SWITCH (readSwitch()), then detaches. Neither side's
 * FrameReader can hold bytes that belong to the Connection; that is checked.
 */
export async function detach(socket: net.Socket, reader: FrameReader): Promise<Connection> {
  const handle = streamHandle(socket);
  const stopped = handle.readStop();
  if (stopped !== 0) throw protocolError(`could not stop reading the socket before the switch (libuv error ${stopped})`);
  if (reader.buffered > 0 || socket.readableLength > 0) {
    throw protocolError('the peer sent data before the connection switched to its message transport');
  }
  // Our handshake frames must be out before the socket goes.
  if (socket.writableLength > 0) {
    await new Promise<void>((resolve, reject) => {
      socket.once('drain', resolve);
      socket.once('close', () => reject(protocolError('the connection closed during the switch')));
    });
  }
  if (socket.destroyed || handle.fd < 0) throw protocolError('the connection closed during the switch');
  const dup = binding.dup(handle.fd);
  for (const event of ['data', 'end', 'error', 'close']) socket.removeAllListeners(event);
  socket.on('error', () => undefined);
  socket.destroy();
  return new Connection(dup, true, true, true);
}

// net.Socket has no public way to hand over its connection: no fd accessor,
// and pause() stops 'data' events, not libuv's reads, which go on filling the
// stream's buffer with bytes that belong after the switch point. Its
// private _handle (the libuv stream wrap: .fd, .readStop()) has both, and has
// kept that shape for many major versions; it is checked here, so that a Node
// that changes it fails every connection with this error instead of
// misbehaving.
// (The public alternative, a socket made and connected by our own native
// code, would duplicate what net does for DNS, IPv6 and connect errors.)
export function streamHandle(socket: net.Socket): { fd: number; readStop(): number } {
  const handle = (socket as unknown as { _handle?: { fd?: unknown; readStop?: unknown } | null })._handle;
  if (handle == null) throw protocolError('the connection closed during the switch');
  if (typeof handle.fd !== 'number' || typeof handle.readStop !== 'function') {
    throw stateError(
      `the manager cannot take over its connection: net.Socket's internal handle in Node ${process.version} ` +
        'has no numeric fd or no readStop() (posix-multiprocessing needs updating for this Node)',
      'ERR_MP_UNSUPPORTED',
    );
  }
  return handle as { fd: number; readStop(): number };
}

/** The server: the first message on the new Connection. */
export function sendSwitch(conn: Connection): void {
  conn.sendBytes(SWITCH);
}

/** The server's half: challenge the client first, then answer its challenge.
 *  Resolves true when both sides proved they hold the key. */
export function serverHandshake(socket: net.Socket, reader: FrameReader, authkey: Buffer): Promise<boolean> {
  return withTimeout(
    (async () => (await deliverChallenge(socket, reader, authkey)) && (await answerChallenge(socket, reader, authkey)))(),
    socket,
    'manager server',
  );
}

/** The client's half; rejects with AuthenticationError when either proof fails.
 *  Not bounded in time here: the caller's deadline covers connect and handshake. */
export async function clientHandshake(socket: net.Socket, reader: FrameReader, authkey: Buffer, where: string): Promise<void> {
  if (!(await answerChallenge(socket, reader, authkey))) {
    throw new AuthenticationError(`authentication failed: the manager at ${where} rejected this authkey`);
  }
  if (!(await deliverChallenge(socket, reader, authkey))) {
    throw new AuthenticationError(`authentication failed: the manager at ${where} did not prove it holds the authkey`);
  }
  // Then nothing is sent until the server has switched (detach()).
  if (!sameBytes(await reader.next(), SWITCH)) throw protocolError('expected the switch to the message transport');
}

// ---- messages after authentication -------------------------------------------
// Request frame:  u32 request id, u8 op, codec bytes of the op's arguments.
// Response frame: u32 request id, u8 status, codec bytes of the value or error.
// The id sits outside the codec bytes so that a body that fails to decode can
// still be answered.

export const enum Op {
  New = 1, // [kind, args] -> object id
  Call = 2, // [object id, method, args] -> result
  Cancel = 3, // [request id]: end that request's wait (it is answered Aborted)
  Shutdown = 4, // [] -> null, then the server stops
}

export const enum Status {
  Ok = 0,
  Error = 1,
  Aborted = 2,
}

export function frameHead(id: number, code: number): Buffer {
  const h = Buffer.allocUnsafe(5);
  h.writeUInt32BE(id >>> 0, 0);
  h[4] = code;
  return h;
}

export type ObjectKind = 'dict' | 'list' | 'Namespace' | 'Value' | 'Queue' | 'Lock';
