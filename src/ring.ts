// The shared ring under every queue: variable-size records in a byte ring in
// shared memory, and futex words to sleep on when it is empty or full. Nothing
// of a queue lives in one process's memory, so a producer that exits loses
// nothing and leaves nothing to flush.
//
// Speed (small messages): producers and consumers each have their own lock word
// and their own cache line (TAIL and the put count / HEAD and the get count), so
// a producer and a consumer running on two cores do not take each other's lock
// or pull each other's line over per message. Each side also keeps, on its own
// line, the last value it read of the other side's position (KNOWN_HEAD,
// KNOWN_GETS / KNOWN_TAIL) and reads the other side's line only when that value
// says full / empty: positions only grow, so a stale value errs on the safe side
// (less room, fewer records), and a consumer behind a fast producer reads the
// producers' line once per many records. Wake-ups cost nothing while nobody
// sleeps: a sleeper counts itself in GET_WAITERS/PUT_WAITERS, looks again, then
// sleeps on PUT_SEQ/GET_SEQ; the other side commits, then reads the count and
// bumps and wakes only when it is non-zero. Both sides use sequentially
// consistent atomics, so either the sleeper's second look sees the commit or the
// committer sees the sleeper: no lost wake-up.
//
// Crash safety: a lock word holds its holder's pid; the next process that finds
// the holder dead takes the lock over and repairs. A put writes its record
// (header: length and put number), commits it with one store of TAIL, then
// stores PUTS; a get stores GETS, then commits with one store of HEAD. A holder
// killed at any point thus leaves the ring before or after its operation, and the
// count it had to store at most one off, which the repair reads off the records
// (#repairPuts, #repairGets). A consumer killed mid-get therefore cannot wedge
// the queue, and the message it had not committed stays queued.
//
// Messages larger than half the ring travel in a shared-memory segment of their
// own; the record holds its name and length, and the consumer unlinks it after
// reading.
//
// Memory: a page of /dev/shm is allocated at its first touch, and when tmpfs is
// full that fault is SIGBUS. So no page is written before it is allocated:
// spills are created whole (segment.ts), and a ring starts with its first
// 64 KiB allocated; a producer about to write past BACKED allocates up to
// twice as much (Mapping.populate) under PLOCK, or throws ENOSPC and leaves the
// queue as it was. A queue that carries little costs little, and a busy one has
// allocated its whole ring after a few steps. Each process maps a ring once,
// and the last of its handles to close unmaps it at once (no waiting for GC).
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';

import { atExit, ExitPhase } from './at-exit';
import { stateError } from './errors';
import { track, untrack } from './resource-tracker';
import { createSegment, openSegment, reserveError } from './segment';
import { JSON_TAG_BYTE } from './serialize';
import { decodeFast, NOT_FAST } from './fast-json';
import { binding, type Mapping } from './native';
import { type WaitWord, waitSync, wakeAll, wakeOne } from './wait-word';

// Header words (Int32 indices), one 64-byte cache line per group, so that a
// producer and a consumer on two cores each write only their own line per message.
// Line 0: set at creation, or written only by processes going to sleep.
const MAGIC = 0;
const CAPACITY = 1;
const MAXSIZE = 2;
export const PUT_SEQ = 4; // bumped by a put or get that wakes consumers: they sleep on it
export const GET_SEQ = 5; // bumped by a get that wakes producers: they sleep on it
export const GET_WAITERS = 6;
export const PUT_WAITERS = 7;
// Line 1: the producers'.
const PLOCK = 16; // pid of the producer inside; PLOCK + 1 counts processes sleeping on it
const TAIL = 18; // byte counter, wraps at 2^32
const PUTS = 19; // puts committed, wraps at 2^32
const KNOWN_HEAD = 20; // HEAD as last read by a producer (<= HEAD)
const KNOWN_GETS = 21; // GETS as last read by a producer (<= GETS)
const BACKED = 22; // bytes of the segment, from its start, whose pages are allocated (only grows)
// Line 2: the consumers'.
const GLOCK = 32; // pid of the consumer inside; GLOCK + 1 counts sleepers
const HEAD = 34;
const GETS = 35; // gets committed: the put number of the record at HEAD
const KNOWN_TAIL = 36; // TAIL as last read by a consumer (HEAD <= KNOWN_TAIL <= TAIL)
// Line 3: JoinableQueue's taskDone() calls; join() sleeps on it.
export const DONE = 48;
const HEADER_BYTES = 256;
const MAGIC_VALUE = 0x706d7133; // 'pmq3': this layout

// A record: u32 length (top bit: spilled), u32 put number, the data padded to 8.
const RECORD_HEADER = 8;
const FLAG_SPILL = 0x80000000;
const FLAG_ASCII = 0x40000000; // JSON text, all ASCII: read back as latin1, no UTF-8 decoding
const LENGTH_MASK = 0x3fffffff;

export const DEFAULT_CAPACITY = 4 * 1024 * 1024;
/** Segment bytes allocated when a ring is created; then it doubles as producers reach the end. */
const FIRST_BACKED = 64 * 1024;
/** #backedTo once the whole ring is allocated: above any record's end. */
const FULLY_BACKED = 0x7fffffff;

const pad8 = (n: number) => (n + 7) & ~7;

// A zombie counts as dead: its parent may be the very process spinning here,
// unable to reap it until the lock is free.
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  if (process.platform !== 'linux') return true;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return !/^\d+ \(.*\) [ZX]/s.test(stat);
  } catch {
    return false;
  }
}

let spillCounter = 0;
const spillsCreated = new Set<string>();

/** What another process needs to map the same ring. */
export interface RingRef {
  segment: string;
}

// One mapping per ring per process, however many handles use it. The handles
// are counted, so that the last one's close() unmaps it at once; a handle
// dropped without close() gives its count back when it is collected.
interface Shared {
  readonly name: string;
  readonly mapping: Mapping;
  handles: number;
}
const shared = new Map<string, Shared>();
const dropped = new FinalizationRegistry<Shared>(releaseShared);
let ringCounter = 0;

function releaseShared(s: Shared): void {
  if (--s.handles > 0) return;
  if (shared.get(s.name) === s) shared.delete(s.name);
  s.mapping.unmap();
}

// Buffer's own UTF-8 coders, without write()/toString()'s argument parsing
// (public since Node's first releases, left out of @types/node).
interface RawBuffer extends Buffer {
  utf8Write(text: string, offset: number, length?: number): number;
  utf8Slice(start: number, end: number): string;
  latin1Write(text: string, offset: number, length?: number): number;
  latin1Slice(start: number, end: number): string;
}
const allocRaw = (n: number) => Buffer.allocUnsafe(n) as RawBuffer;

// Short JSON text is written with a loop: cheaper than a call into C++ for
// the tens of bytes a typical message has.
const SHORT_TEXT = 64;

/** A message the ring decoded itself (the fast JSON decoder, fast-json.ts). */
export class Decoded {
  constructor(readonly value: unknown) {}
}

export class Ring {
  readonly ref: RingRef;
  readonly #shared: Shared;
  readonly i32: Int32Array;
  readonly #bytes: RawBuffer;
  readonly #view: DataView;
  readonly #mask: number;
  readonly #capacity: number;
  readonly #maxsize: number;
  readonly #me = process.pid;
  readonly #putSeq: WaitWord;
  readonly #getSeq: WaitWord;
  // Ring offset below which every page is allocated: BACKED as last read (it
  // only grows, so a stale value only sends a put to #back needlessly).
  #backedTo: number;
  // Async waits of this handle still on its memory; the mapping outlives them.
  #pins = 0;
  #closed = false;

  private constructor(ref: RingRef, s: Shared) {
    this.ref = ref;
    this.#shared = s;
    const buffer = s.mapping.buffer;
    this.i32 = new Int32Array(buffer, 0, HEADER_BYTES / 4);
    this.#capacity = this.i32[CAPACITY];
    this.#maxsize = this.i32[MAXSIZE];
    this.#mask = this.#capacity - 1;
    this.#bytes = Buffer.from(buffer, HEADER_BYTES, this.#capacity) as RawBuffer;
    this.#view = new DataView(buffer, HEADER_BYTES, this.#capacity);
    this.#putSeq = this.word(PUT_SEQ);
    this.#getSeq = this.word(GET_SEQ);
    this.#backedTo = this.#backedFrom(Atomics.load(this.i32, BACKED));
  }

  /** A new handle over s, counted until close() (or collection). */
  static #open(ref: RingRef, s: Shared): Ring {
    const ring = new Ring(ref, s);
    s.handles++;
    dropped.register(ring, s, ring);
    return ring;
  }

  /** A new ring in a segment of its own; its name goes at close() by the creator, or at exit. */
  static create(maxsize: number, capacity = DEFAULT_CAPACITY): Ring {
    if (capacity < 64 || (capacity & (capacity - 1)) !== 0) throw new RangeError('capacity must be a power of two >= 64');
    const name = `/pmp-q-${process.pid}-${++ringCounter}-${randomBytes(4).toString('hex')}`;
    const size = HEADER_BYTES + capacity;
    let backed = Math.min(size, FIRST_BACKED);
    const fd = openSegment(name, size, 0o600, backed);
    let mapping: Mapping | undefined;
    try {
      mapping = new binding.Mapping(fd, size);
      // Without MADV_POPULATE_WRITE (Linux before 5.14; macOS, which has no
      // tmpfs to run out of) pages cannot be allocated later through the
      // mapping: allocate them all now.
      if (backed < size && !mapping.populate(0, 1)) {
        try {
          binding.fallocate(fd, backed, size - backed);
        } catch (err) {
          throw reserveError(err, name, size - backed);
        }
        backed = size;
      }
    } catch (err) {
      mapping?.unmap();
      binding.shmUnlink(name);
      throw err;
    } finally {
      binding.closeFd(fd);
    }
    track(name, 'shm', { lifetime: 'process' });
    const i32 = new Int32Array(mapping.buffer, 0, HEADER_BYTES / 4);
    i32[MAXSIZE] = maxsize;
    i32[CAPACITY] = capacity;
    i32[BACKED] = backed;
    Atomics.store(i32, MAGIC, MAGIC_VALUE);
    const s: Shared = { name, mapping, handles: 0 };
    shared.set(name, s);
    Ring.#ownUntilExit(name);
    return Ring.#open({ segment: name }, s);
  }

  static attach(ref: RingRef): Ring {
    if (typeof ref?.segment !== 'string') throw new TypeError('not a queue reference');
    let s = shared.get(ref.segment);
    if (!s) {
      let fd: number;
      try {
        fd = binding.shmOpen(ref.segment, false, false, 0o600);
      } catch (err) {
        const e = err as Error;
        e.message = `cannot attach to the queue: ${e.message} (the process that created it has closed it or exited)`;
        throw e;
      }
      let mapping: Mapping;
      try {
        const size = binding.fstatSize(fd);
        if (size < HEADER_BYTES) throw new Error('the shared memory segment is not a queue');
        mapping = new binding.Mapping(fd, size);
      } finally {
        binding.closeFd(fd);
      }
      const i32 = new Int32Array(mapping.buffer, 0, HEADER_BYTES / 4);
      if (Atomics.load(i32, MAGIC) !== MAGIC_VALUE) {
        mapping.unmap();
        throw new Error('the shared memory segment is not a queue');
      }
      s = { name: ref.segment, mapping, handles: 0 };
      shared.set(ref.segment, s);
    }
    return Ring.#open(ref, s);
  }

  /**
   * Ends this handle. The ring's mapping goes with the last handle of it in this
   * process: at once, or, while async waits of this handle are still on its
   * memory (the caller has cancelled them), as soon as the last has ended.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#pins === 0) this.#release();
  }

  /** Keeps the mapping while an async wait uses this handle's memory, even past close(). */
  pin(): void {
    this.#pins++;
  }

  unpin(): void {
    if (--this.#pins === 0 && this.#closed) this.#release();
  }

  #release(): void {
    dropped.unregister(this);
    releaseShared(this.#shared);
  }

  /** Removes the ring's name (the creator's close): handles already open keep working. */
  unlinkName(): void {
    if (!Ring.#owned.delete(this.ref.segment)) return;
    try {
      binding.shmUnlink(this.ref.segment);
    } catch {
      // already gone
    }
    untrack(this.ref.segment, 'shm');
  }

  get maxsize(): number {
    return this.#maxsize;
  }

  word(index: number): WaitWord {
    return { i32: this.i32, index };
  }

  /** Messages queued. Exact when nothing is in flight; never negative. */
  items(): number {
    // GETS first: PUTS only grows, so the difference is not below the truth
    // by more than the gets committed in between. A get stores GETS a moment
    // before the put it takes has stored PUTS, hence the clamp.
    const gets = Atomics.load(this.i32, GETS);
    const n = (Atomics.load(this.i32, PUTS) - gets) | 0;
    return n > 0 ? n : 0;
  }

  /** No committed record between head and tail. */
  isEmpty(): boolean {
    return Atomics.load(this.i32, HEAD) === Atomics.load(this.i32, TAIL);
  }

  /** True when an eighth of the ring (and of maxsize) is free: a producer
   *  that found the queue full waits a moment for this much room rather than
   *  putting each message into a slot just freed, which would pull the
   *  consumers' cache line over once per message on both sides. */
  roomy(): boolean {
    const i32 = this.i32;
    if (this.#maxsize > 0 && this.items() > this.#maxsize - Math.ceil(this.#maxsize / 8)) return false;
    return this.#capacity - ((Atomics.load(i32, TAIL) - Atomics.load(i32, HEAD)) >>> 0) >= this.#capacity / 8;
  }

  // ---- JoinableQueue's count ---------------------------------------------------

  /** Items put and not yet marked done. */
  unfinished(): number {
    const done = Atomics.load(this.i32, DONE);
    const n = (this.#placed() - done) | 0;
    return n > 0 ? n : 0;
  }

  // Puts placed: PUTS, or GETS while the put a consumer already took has not
  // stored PUTS yet.
  #placed(): number {
    const gets = Atomics.load(this.i32, GETS);
    const puts = Atomics.load(this.i32, PUTS);
    return ((gets - puts) | 0) > 0 ? gets : puts;
  }

  /** Counts one task done; false when every item placed is done already. */
  taskDone(): boolean {
    const i32 = this.i32;
    for (;;) {
      const done = Atomics.load(i32, DONE);
      if (((this.#placed() - done) | 0) <= 0) return false;
      if (Atomics.compareExchange(i32, DONE, done, (done + 1) | 0) === done) {
        if (((this.#placed() - done - 1) | 0) <= 0) wakeAll(this.word(DONE));
        return true;
      }
    }
  }

  // ---- the locks ----------------------------------------------------------------

  // Held for a memcpy; contended only among producers (PLOCK) or among
  // consumers (GLOCK), never between the two sides.
  #lock(word: number): void {
    if (Atomics.compareExchange(this.i32, word, 0, this.#me) !== 0) this.#lockSlow(word);
  }

  #lockSlow(word: number): void {
    const i32 = this.i32;
    for (let spin = 1; ; spin++) {
      const owner = Atomics.load(i32, word);
      if (owner === 0) {
        if (Atomics.compareExchange(i32, word, 0, this.#me) === 0) return;
        continue;
      }
      if (spin < 32) continue;
      // The holder only copies memory: if it has not let go by now it was
      // preempted (sleep until it unlocks) or it died (take over). The sleep
      // is bounded so that a holder's death is noticed.
      if (owner !== this.#me && spin % 16 === 0 && !alive(owner)) {
        if (Atomics.compareExchange(i32, word, owner, this.#me) === owner) {
          if (word === PLOCK) this.#repairPuts();
          else this.#repairGets();
          return;
        }
        continue;
      }
      Atomics.add(i32, word + 1, 1);
      waitSync(this.word(word), owner, 2);
      Atomics.sub(i32, word + 1, 1);
    }
  }

  #unlock(word: number): void {
    Atomics.store(this.i32, word, 0); // a full barrier: the load below is not hoisted over it
    if (this.i32[word + 1] > 0) wakeOne(this.word(word));
  }

  // A producer died holding PLOCK: TAIL is either before or after its record
  // (one store moves it), but PUTS, stored after TAIL, may be one behind. The
  // last committed record says: its put number + 1. Records from KNOWN_HEAD on
  // are intact, since producers write only past TAIL and below KNOWN_HEAD +
  // capacity.
  #repairPuts(): void {
    const i32 = this.i32;
    let pos = Atomics.load(i32, KNOWN_HEAD) >>> 0;
    const tail = Atomics.load(i32, TAIL) >>> 0;
    let last = -1;
    for (let guard = 0; pos !== tail && guard <= this.#capacity / RECORD_HEADER; guard++) {
      last = pos;
      pos = (pos + RECORD_HEADER + pad8(this.#view.getUint32(pos & this.#mask, true) & LENGTH_MASK)) >>> 0;
    }
    if (last >= 0) Atomics.store(i32, PUTS, (this.#view.getUint32((last & this.#mask) + 4, true) + 1) | 0);
    this.#wakeEveryone();
  }

  // A consumer died holding GLOCK: HEAD is before or after its record, GETS
  // (stored just before HEAD) may be one ahead. The record at HEAD, if any,
  // says what GETS is: its put number.
  #repairGets(): void {
    const i32 = this.i32;
    const head = Atomics.load(i32, HEAD);
    if (head !== Atomics.load(i32, TAIL)) {
      Atomics.store(i32, GETS, this.#view.getInt32(((head >>> 0) & this.#mask) + 4, true));
    }
    this.#wakeEveryone();
  }

  #wakeEveryone(): void {
    Atomics.add(this.i32, PUT_SEQ, 1);
    Atomics.add(this.i32, GET_SEQ, 1);
    wakeAll(this.#putSeq);
    wakeAll(this.#getSeq);
  }

  // ---- put / get ----------------------------------------------------------------

  /** Appends one encoded message; false when the queue is full (maxsize items, or no room in the ring). */
  tryPut(data: Uint8Array): boolean {
    let payload = data;
    let flags = 0;
    let spill: string | null = null;
    if (RECORD_HEADER + pad8(data.length) > this.#capacity / 2) {
      spill = writeSpill(data);
      payload = Buffer.from(`${spill}${SPILL_SIZE_SEP}${data.length}`);
      flags = FLAG_SPILL;
    }
    let ok = false;
    const at = this.#reserve(payload.length, flags);
    if (at >= 0) {
      this.#copyIn(payload, at);
      this.#commit(payload.length);
      ok = true;
    }
    if (spill) {
      if (ok) spillsCreated.delete(spill); // the queue owns it now
      else unlinkSpill(spill);
    }
    return ok;
  }

  /** The fastest path: JSON text already written as ASCII bytes, src[0, n)
   *  (fast-json.ts encodeFast), copied in behind the tag byte. */
  tryPutAscii(src: Uint8Array, n: number): boolean {
    const length = 1 + n;
    if (RECORD_HEADER + pad8(length) > this.#capacity / 2) {
      return this.tryPutJson(Buffer.from(src.buffer, src.byteOffset, n).toString('latin1'));
    }
    const at = this.#reserve(length, FLAG_ASCII);
    if (at < 0) return false;
    const bytes = this.#bytes;
    bytes[at] = JSON_TAG_BYTE;
    if (at + length > this.#capacity) this.#copyIn(src.subarray(0, n), (at + 1) & this.#mask);
    else if (n > SHORT_TEXT) bytes.set(src.subarray(0, n), at + 1);
    else for (let k = 0, o = at + 1; k < n; k++, o++) bytes[o] = src[k];
    this.#commit(length);
    return true;
  }

  /** The JSON fast path: tag byte and text written straight into the ring. */
  tryPutJson(text: string): boolean {
    const chars = text.length;
    // Only ASCII text has as many UTF-8 bytes as UTF-16 units (any other
    // character, a lone surrogate too, takes more bytes than units).
    const length = 1 + Buffer.byteLength(text);
    if (RECORD_HEADER + pad8(length) > this.#capacity / 2) {
      const bytes = allocRaw(length);
      bytes[0] = JSON_TAG_BYTE;
      bytes.utf8Write(text, 1);
      return this.tryPut(bytes);
    }
    const ascii = length - 1 === chars;
    const at = this.#reserve(length, ascii ? FLAG_ASCII : 0);
    if (at < 0) return false;
    const bytes = this.#bytes;
    if (at + length <= this.#capacity) {
      bytes[at] = JSON_TAG_BYTE;
      if (!ascii) bytes.utf8Write(text, at + 1, length - 1);
      else if (chars > SHORT_TEXT) bytes.latin1Write(text, at + 1, chars);
      else for (let k = 0, o = at + 1; k < chars; k++, o++) bytes[o] = text.charCodeAt(k);
    } else {
      const tmp = allocRaw(length);
      tmp[0] = JSON_TAG_BYTE;
      tmp.utf8Write(text, 1);
      this.#copyIn(tmp, at);
    }
    this.#commit(length);
    return true;
  }

  // Atomics here: V8 does not inline Atomics.* (each is a builtin call, ~15 ns),
  // so the hot paths use them only where an order between memory operations
  // is needed, and plain typed-array accesses elsewhere. Plain 32-bit aligned
  // accesses are single instructions (no tearing). A plain load that follows an
  // Atomics call reads memory (the call is a compiler barrier and, on x86, a
  // CPU one for the RMWs and stores), and plain stores stay in program order
  // (x86-TSO; V8 does not reorder stores). So: words on our own side's line are
  // read plainly once the lock (a CAS) is ours; commits, unlocks and the stores
  // before a sleeper check (Dekker: store, then load the other side's count)
  // are Atomics.store, i.e. xchg, a full barrier; loops that poll are Atomics
  // loads, so that no compiler hoists the load out of the loop.

  // Takes PLOCK and writes a record header for `length` bytes at TAIL; returns
  // the ring offset for the data, or -1 (lock released) when there is no room.
  // The caller fills the data and calls #commit. Nothing in between can throw.
  #reserve(length: number, flags: number): number {
    const size = RECORD_HEADER + pad8(length);
    const i32 = this.i32;
    this.#lock(PLOCK);
    const tail = i32[TAIL] >>> 0;
    const puts = i32[PUTS];
    if (this.#maxsize > 0 && ((puts - i32[KNOWN_GETS]) | 0) >= this.#maxsize) {
      // KNOWN_GETS is stale only in the direction of fewer gets: refresh it
      // only when it says full.
      const gets = Atomics.load(i32, GETS);
      i32[KNOWN_GETS] = gets;
      if (((puts - gets) | 0) >= this.#maxsize) {
        this.#unlock(PLOCK);
        return -1;
      }
    }
    if (this.#capacity - ((tail - i32[KNOWN_HEAD]) >>> 0) < size) {
      const head = Atomics.load(i32, HEAD);
      i32[KNOWN_HEAD] = head;
      if (this.#capacity - ((tail - head) >>> 0) < size) {
        this.#unlock(PLOCK);
        return -1;
      }
    }
    const at = tail & this.#mask;
    // The record's pages (a record that wraps needs the ring's last page; its
    // start's are allocated already).
    if (at + size > this.#backedTo) this.#back(at + size);
    this.#view.setUint32(at, (length | flags) >>> 0, true);
    this.#view.setInt32(at + 4, puts, true);
    return (at + RECORD_HEADER) & this.#mask;
  }

  // Allocates the ring's pages up to ring offset `end` (PLOCK held), doubling
  // what is allocated, before anything is written there. When /dev/shm is full
  // it releases PLOCK and throws ENOSPC, the ring untouched.
  #back(end: number): void {
    const i32 = this.i32;
    const size = HEADER_BYTES + this.#capacity;
    let backed = Atomics.load(i32, BACKED);
    const need = Math.min(HEADER_BYTES + end, size);
    if (backed < need) {
      const to = Math.min(size, Math.max(need, backed * 2));
      let ok: boolean;
      try {
        ok = this.#shared.mapping.populate(backed, to - backed);
      } catch (err) {
        this.#unlock(PLOCK);
        throw reserveError(err, this.ref.segment, to - backed);
      }
      if (!ok) {
        // The creator found MADV_POPULATE_WRITE working on this very kernel.
        this.#unlock(PLOCK);
        throw stateError('this kernel cannot allocate the pages of a queue in advance', 'ERR_MP_UNSUPPORTED');
      }
      Atomics.store(i32, BACKED, to);
      backed = to;
    }
    this.#backedTo = this.#backedFrom(backed);
  }

  #backedFrom(backed: number): number {
    return backed >= HEADER_BYTES + this.#capacity ? FULLY_BACKED : backed - HEADER_BYTES;
  }

  // Commits the record #reserve wrote: one store of TAIL makes it visible,
  // then PUTS counts it (a repair recomputes PUTS if we die in between).
  #commit(length: number): void {
    const i32 = this.i32;
    const tail = i32[TAIL];
    const next = (tail + RECORD_HEADER + pad8(length)) | 0;
    Atomics.store(i32, TAIL, next);
    i32[PUTS] = (i32[PUTS] + 1) | 0;
    this.#unlock(PLOCK);
    // Consumers sleep only after finding the ring empty, so only a put into
    // an empty ring wakes one (HEAD still at this record); that consumer
    // passes the wake on while records and sleepers remain (see tryGet). The
    // store of TAIL above and a sleeper's count-then-look-again are both
    // sequentially consistent: either it sees this record or we see it.
    if (i32[GET_WAITERS] > 0 && Atomics.load(i32, HEAD) === tail) {
      Atomics.add(i32, PUT_SEQ, 1);
      wakeOne(this.#putSeq);
    }
  }

  /** Takes the oldest message: its encoded bytes, or (JSON fast path) the JSON
   *  text after the tag byte, or the value itself when the fast decoder could
   *  read it; null when the queue is empty. */
  tryGet(): Uint8Array | string | Decoded | null {
    const i32 = this.i32;
    // Empty, seen without the lock and mostly without reading the producers' line.
    const seen = Atomics.load(i32, HEAD);
    if (seen === i32[KNOWN_TAIL] && seen === i32[TAIL]) return null;
    this.#lock(GLOCK);
    const head = i32[HEAD] >>> 0;
    let tail = i32[KNOWN_TAIL] >>> 0;
    if (head === tail) {
      // Read the producers' line only when the records we knew of are gone.
      tail = i32[TAIL] >>> 0;
      if (head === tail) {
        this.#unlock(GLOCK);
        return null;
      }
      i32[KNOWN_TAIL] = tail | 0;
    }
    const at = head & this.#mask;
    const word = this.#view.getUint32(at, true);
    const len = word & LENGTH_MASK;
    const putNumber = this.#view.getInt32(at + 4, true);
    const start = (at + RECORD_HEADER) & this.#mask;
    let out: Buffer | string | Decoded;
    if ((word & FLAG_SPILL) === 0 && len > 0 && this.#bytes[start] === JSON_TAG_BYTE && start + len <= this.#capacity) {
      // Decoded in place, before HEAD moves on and producers may reuse the
      // bytes. decodeFast runs no user code and never throws, so the lock is
      // always released; it declines (NOT_FAST) anything it cannot decode
      // exactly as JSON.parse would, and then the text goes to JSON.parse.
      const fast = word & FLAG_ASCII ? decodeFast(this.#bytes, start + 1, start + len) : NOT_FAST;
      if (fast !== NOT_FAST) out = new Decoded(fast);
      else out = word & FLAG_ASCII ? this.#bytes.latin1Slice(start + 1, start + len) : this.#bytes.utf8Slice(start + 1, start + len);
    } else {
      out = Buffer.allocUnsafe(len);
      this.#copyOut(out, start);
    }
    const next = (head + RECORD_HEADER + pad8(len)) | 0;
    // GETS before HEAD: a repair reads the true GETS off the record at HEAD.
    i32[GETS] = (putNumber + 1) | 0;
    Atomics.store(i32, HEAD, next); // commit
    this.#unlock(GLOCK);
    if (i32[PUT_WAITERS] > 0) {
      Atomics.add(i32, GET_SEQ, 1);
      wakeOne(this.#getSeq);
    }
    // The baton: records remain and consumers sleep, so wake the next one.
    if (i32[GET_WAITERS] > 0 && next !== Atomics.load(i32, TAIL)) {
      Atomics.add(i32, PUT_SEQ, 1);
      wakeOne(this.#putSeq);
    }
    if (typeof out === 'string' || out instanceof Decoded) return out;
    return word & FLAG_SPILL ? readSpill(out.toString()) : out;
  }

  #copyIn(src: Uint8Array, at: number): void {
    const first = Math.min(src.length, this.#capacity - at);
    this.#bytes.set(first === src.length ? src : src.subarray(0, first), at);
    if (first < src.length) this.#bytes.set(src.subarray(first), 0);
  }

  #copyOut(dst: Uint8Array, at: number): void {
    const first = Math.min(dst.length, this.#capacity - at);
    dst.set(this.#bytes.subarray(at, at + first), 0);
    if (first < dst.length) dst.set(this.#bytes.subarray(0, dst.length - first), first);
  }

  /** Names of spill segments still queued (unlinked when the creating process exits). */
  #spillNames(): string[] {
    const names: string[] = [];
    // Under GLOCK no record between HEAD and TAIL moves or is overwritten.
    this.#lock(GLOCK);
    try {
      let pos = Atomics.load(this.i32, HEAD) >>> 0;
      const tail = Atomics.load(this.i32, TAIL) >>> 0;
      let guard = 0;
      while (pos !== tail && guard++ < this.#capacity / RECORD_HEADER) {
        const at = pos & this.#mask;
        const word = this.#view.getUint32(at, true);
        const len = word & LENGTH_MASK;
        if (word & FLAG_SPILL) {
          const name = Buffer.allocUnsafe(len);
          this.#copyOut(name, (at + RECORD_HEADER) & this.#mask);
          names.push(spillName(name.toString()));
        }
        pos = (pos + RECORD_HEADER + pad8(len)) >>> 0;
      }
    } finally {
      this.#unlock(GLOCK);
    }
    return names;
  }

  // The ring's name goes when its creator exits, after Node has waited for
  // non-daemon children; large messages nobody took go with it (from rings
  // this process still maps).
  static #owned = new Set<string>();
  static #hooked = false;
  static #ownUntilExit(name: string): void {
    Ring.#owned.add(name);
    if (Ring.#hooked) return;
    Ring.#hooked = true;
    atExit(ExitPhase.Release, () => {
      for (const name of Ring.#owned) {
        const s = shared.get(name);
        if (!s) continue;
        for (const spill of new Ring({ segment: name }, s).#spillNames()) unlinkSpill(spill);
      }
      for (const name of spillsCreated) unlinkSpill(name);
      for (const name of Ring.#owned) {
        try {
          binding.shmUnlink(name);
        } catch {
          // already gone
        }
        untrack(name, 'shm');
      }
      Ring.#owned.clear();
    });
  }
}

// Spills are only ever large (over half a ring), so never empty.
function writeSpill(data: Uint8Array): string {
  const name = `/pmp-q-${process.pid}-${++spillCounter}-${randomBytes(4).toString('hex')}`;
  // Another process takes (and unlinks) it; if nobody does, the tracker
  // removes it when the program tree is gone. Tracked first, so that no
  // moment exists when it is in /dev/shm and unknown to the tracker.
  spillsCreated.add(name);
  track(name, 'shm');
  let mapping: Mapping;
  try {
    // Allocated whole: a full /dev/shm is ENOSPC here, not SIGBUS in the copy.
    mapping = createSegment(name, data.length);
  } catch (err) {
    unlinkSpill(name);
    throw err;
  }
  try {
    new Uint8Array(mapping.buffer).set(data);
  } finally {
    mapping.unmap();
  }
  return name;
}

// A spilled record holds "<segment name>:<message length>". The length
// travels with the name because the segment's own size may be larger: macOS
// reports a shared-memory object's size rounded up to whole pages.
const SPILL_SIZE_SEP = ':';

function spillName(ref: string): string {
  const sep = ref.lastIndexOf(SPILL_SIZE_SEP);
  return sep < 0 ? ref : ref.slice(0, sep);
}

function readSpill(ref: string): Buffer {
  const name = spillName(ref);
  const size = Number(ref.slice(name.length + 1));
  const fd = binding.shmOpen(name, false, false, 0o600);
  try {
    if (!Number.isSafeInteger(size) || size < 0 || size > binding.fstatSize(fd)) {
      throw stateError(`a spilled queue message (${name}) is shorter than its record says`, 'ERR_MP_QUEUE_CORRUPT');
    }
    const out = Buffer.allocUnsafe(size);
    if (size > 0) {
      const mapping = new binding.Mapping(fd, size);
      out.set(new Uint8Array(mapping.buffer, 0, size));
      mapping.unmap();
    }
    return out;
  } finally {
    binding.closeFd(fd);
    unlinkSpill(name);
  }
}

function unlinkSpill(name: string): void {
  spillsCreated.delete(name);
  try {
    binding.shmUnlink(name);
  } catch {
    // already taken
  }
  untrack(name, 'shm');
}
