// The shared ring under every queue: variable-size records in a byte ring in
// shared memory, a word lock held only for a memcpy, and futex words to sleep on
// when the ring is empty or full. Nothing of a queue lives in one process's
// memory, so a producer that exits loses nothing and leaves nothing to flush.
//
// Crash safety: the lock word holds the holder's pid. Each operation commits with
// one store (tail for a put, head for a get) after its data is in place, so a
// holder killed at any point leaves the ring either before or after the
// operation; the next process that finds the holder dead takes the lock over and
// recounts the records. A consumer killed mid-get therefore cannot wedge the
// queue, and the message it had not committed stays queued.
//
// Messages larger than half the ring travel in a shared-memory segment of their
// own; the record holds its name, and the consumer unlinks it after reading.
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';

import { track, untrack } from './resource-tracker';
import { createSegment } from './segment';
import { JSON_TAG_BYTE } from './serialize';
import { binding, type Mapping } from './native';
import { type WaitWord, waitSync, wakeAll, wakeOne } from './wait-word';

// Header words (Int32 indices).
const LOCK = 0;
const HEAD = 1; // byte counter, wraps at 2^32
const TAIL = 2;
const ITEMS = 3;
export const PUT_SEQ = 4; // bumped after every put: consumers sleep on it
export const GET_SEQ = 5; // bumped after every get: producers sleep on it
export const GET_WAITERS = 6;
export const PUT_WAITERS = 7;
export const UNFINISHED = 8; // JoinableQueue's unfinished tasks; join() sleeps on it
const MAXSIZE = 9;
const CAPACITY = 10;
const MAGIC = 11;
const LOCK_WAITERS = 12; // processes sleeping on the lock word
const HEADER_BYTES = 64;
const MAGIC_VALUE = 0x706d7121; // 'pmq!'

const RECORD_HEADER = 8; // u32 length, u32 flags
const FLAG_SPILL = 1;

export const DEFAULT_CAPACITY = 4 * 1024 * 1024;

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

// One mapping per ring per process, however many handles decode it.
const mappings = new Map<string, WeakRef<Mapping>>();
let ringCounter = 0;

function mapSegment(name: string, fd: number, size: number): Mapping {
  const mapping = new binding.Mapping(fd, size);
  mappings.set(name, new WeakRef(mapping));
  return mapping;
}

export class Ring {
  readonly ref: RingRef;
  /** Keeps the mapping alive as long as a handle uses it. */
  readonly #mapping: Mapping;
  readonly i32: Int32Array;
  readonly #bytes: Buffer;
  readonly #view: DataView;
  readonly #mask: number;
  readonly #capacity: number;
  readonly #me = process.pid;

  private constructor(ref: RingRef, mapping: Mapping) {
    this.ref = ref;
    this.#mapping = mapping;
    const buffer = mapping.buffer;
    this.i32 = new Int32Array(buffer, 0, HEADER_BYTES / 4);
    this.#capacity = this.i32[CAPACITY];
    this.#mask = this.#capacity - 1;
    this.#bytes = Buffer.from(buffer, HEADER_BYTES, this.#capacity);
    this.#view = new DataView(buffer, HEADER_BYTES, this.#capacity);
  }

  /** A new ring in a segment of its own; its name goes at close() by the creator, or at exit. */
  static create(maxsize: number, capacity = DEFAULT_CAPACITY): Ring {
    const name = `/pmp-q-${process.pid}-${++ringCounter}-${randomBytes(4).toString('hex')}`;
    const mapping = createSegment(name, HEADER_BYTES + capacity);
    mappings.set(name, new WeakRef(mapping));
    track(name, 'shm', { lifetime: 'process' });
    const i32 = new Int32Array(mapping.buffer, 0, HEADER_BYTES / 4);
    i32[MAXSIZE] = maxsize;
    i32[CAPACITY] = capacity;
    Atomics.store(i32, MAGIC, MAGIC_VALUE);
    const ring = new Ring({ segment: name }, mapping);
    Ring.#trackForExit(ring);
    return ring;
  }

  static attach(ref: RingRef): Ring {
    if (typeof ref?.segment !== 'string') throw new TypeError('not a queue reference');
    let mapping = mappings.get(ref.segment)?.deref();
    if (!mapping || mapping.length === 0) {
      let fd: number;
      try {
        fd = binding.shmOpen(ref.segment, false, false, 0o600);
      } catch (err) {
        const e = err as Error;
        e.message = `cannot attach to the queue: ${e.message} (the process that created it has closed it or exited)`;
        throw e;
      }
      try {
        const size = binding.fstatSize(fd);
        if (size < HEADER_BYTES) throw new Error('the shared memory segment is not a queue');
        mapping = mapSegment(ref.segment, fd, size);
      } finally {
        binding.closeFd(fd);
      }
    }
    const i32 = new Int32Array(mapping.buffer, 0, HEADER_BYTES / 4);
    if (Atomics.load(i32, MAGIC) !== MAGIC_VALUE) throw new Error('the shared memory segment is not a queue');
    return new Ring(ref, mapping);
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
    return this.i32[MAXSIZE];
  }

  word(index: number): WaitWord {
    return { i32: this.i32, index };
  }

  items(): number {
    return Atomics.load(this.i32, ITEMS);
  }

  // ---- the lock ---------------------------------------------------------------

  #lock(): void {
    const i32 = this.i32;
    if (Atomics.compareExchange(i32, LOCK, 0, this.#me) === 0) return;
    for (let spin = 1; ; spin++) {
      const owner = Atomics.load(i32, LOCK);
      if (owner === 0) {
        if (Atomics.compareExchange(i32, LOCK, 0, this.#me) === 0) return;
        continue;
      }
      if (spin < 32) continue;
      // The holder only copies memory: if it has not let go by now it was
      // preempted (sleep until it unlocks) or it died (take over). The sleep
      // is bounded so that a holder's death is noticed.
      if (owner !== this.#me && spin % 16 === 0 && !alive(owner)) {
        if (Atomics.compareExchange(i32, LOCK, owner, this.#me) === owner) {
          this.#recover();
          return;
        }
        continue;
      }
      Atomics.add(i32, LOCK_WAITERS, 1);
      waitSync(this.word(LOCK), owner, 2);
      Atomics.sub(i32, LOCK_WAITERS, 1);
    }
  }

  #unlock(): void {
    Atomics.store(this.i32, LOCK, 0);
    if (Atomics.load(this.i32, LOCK_WAITERS) > 0) wakeOne(this.word(LOCK));
  }

  // The previous holder died inside the lock: head and tail are consistent (each
  // moves with one store), the item count may be one off. Recount.
  #recover(): void {
    const i32 = this.i32;
    let pos = Atomics.load(i32, HEAD) >>> 0;
    const tail = Atomics.load(i32, TAIL) >>> 0;
    let count = 0;
    while (pos !== tail) {
      const len = this.#view.getUint32(pos & this.#mask, true);
      pos = (pos + RECORD_HEADER + pad8(len)) >>> 0;
      count++;
      if (count > this.#capacity / RECORD_HEADER) break; // corrupt: stop rather than loop
    }
    Atomics.store(i32, ITEMS, count);
    Atomics.add(i32, PUT_SEQ, 1);
    Atomics.add(i32, GET_SEQ, 1);
    wakeAll(this.word(PUT_SEQ));
    wakeAll(this.word(GET_SEQ));
  }

  // ---- put / get ----------------------------------------------------------------

  /** Appends one encoded message; false when the queue is full (maxsize items, or no room in the ring). */
  tryPut(data: Uint8Array, joinable: boolean): boolean {
    let payload = data;
    let flags = 0;
    let spill: string | null = null;
    if (RECORD_HEADER + pad8(data.length) > this.#capacity / 2) {
      spill = writeSpill(data);
      payload = Buffer.from(spill);
      flags = FLAG_SPILL;
    }
    const ok = this.#append(payload.length, flags, joinable, (at) => this.#copyIn(payload, at));
    if (spill) {
      if (ok) spillsCreated.delete(spill); // the queue owns it now
      else unlinkSpill(spill);
    }
    return ok;
  }

  /** The JSON fast path: tag byte and text written straight into the ring. */
  tryPutJson(text: string, joinable: boolean): boolean {
    const length = 1 + Buffer.byteLength(text);
    if (RECORD_HEADER + pad8(length) > this.#capacity / 2) {
      const bytes = Buffer.allocUnsafe(length);
      bytes[0] = JSON_TAG_BYTE;
      bytes.write(text, 1);
      return this.tryPut(bytes, joinable);
    }
    return this.#append(length, 0, joinable, (at) => {
      if (at + length <= this.#capacity) {
        this.#bytes[at] = JSON_TAG_BYTE;
        this.#bytes.write(text, at + 1, length - 1);
      } else {
        const bytes = Buffer.allocUnsafe(length);
        bytes[0] = JSON_TAG_BYTE;
        bytes.write(text, 1);
        this.#copyIn(bytes, at);
      }
    });
  }

  // Reserves a record of `length` bytes under the lock, lets `fill` write the
  // data at its ring offset, then commits it with the store of tail.
  #append(length: number, flags: number, joinable: boolean, fill: (at: number) => void): boolean {
    const size = RECORD_HEADER + pad8(length);
    const i32 = this.i32;
    const maxsize = i32[MAXSIZE];
    this.#lock();
    const head = Atomics.load(i32, HEAD) >>> 0;
    const tail = Atomics.load(i32, TAIL) >>> 0;
    const used = (tail - head) >>> 0;
    if ((maxsize > 0 && Atomics.load(i32, ITEMS) >= maxsize) || this.#capacity - used < size) {
      this.#unlock();
      return false;
    }
    const at = tail & this.#mask;
    this.#view.setUint32(at, length, true);
    this.#view.setUint32(at + 4, flags, true);
    fill((at + RECORD_HEADER) & this.#mask);
    Atomics.store(i32, TAIL, (tail + size) | 0); // commit
    const before = Atomics.add(i32, ITEMS, 1);
    // Still under the lock, so no consumer can take the item and call
    // taskDone() before it is counted.
    if (joinable) Atomics.add(i32, UNFINISHED, 1);
    this.#unlock();
    Atomics.add(i32, PUT_SEQ, 1);
    // Consumers sleep only after seeing the queue empty, so only the put that
    // makes it non-empty wakes one; that consumer passes the baton on (see
    // tryGet) while items and sleepers remain. A stream of puts thus costs one
    // wake per empty->non-empty edge, not one per message.
    if (before === 0 && Atomics.load(i32, GET_WAITERS) > 0) wakeOne(this.word(PUT_SEQ));
    return true;
  }

  /** Takes the oldest message: its encoded bytes, or (JSON fast path) the JSON
   *  text after the tag byte; null when the queue is empty. */
  tryGet(): Uint8Array | string | null {
    const i32 = this.i32;
    if (Atomics.load(i32, ITEMS) === 0 && Atomics.load(i32, HEAD) === Atomics.load(i32, TAIL)) return null;
    this.#lock();
    const head = Atomics.load(i32, HEAD) >>> 0;
    const tail = Atomics.load(i32, TAIL) >>> 0;
    if (head === tail) {
      this.#unlock();
      return null;
    }
    const at = head & this.#mask;
    const len = this.#view.getUint32(at, true);
    const flags = this.#view.getUint32(at + 4, true);
    const start = (at + RECORD_HEADER) & this.#mask;
    let out: Buffer | string;
    if (flags === 0 && len > 0 && this.#bytes[start] === JSON_TAG_BYTE && start + len <= this.#capacity) {
      out = this.#bytes.toString('utf8', start + 1, start + len);
    } else {
      out = Buffer.allocUnsafe(len);
      this.#copyOut(out, start);
    }
    Atomics.store(i32, HEAD, (head + RECORD_HEADER + pad8(len)) | 0); // commit
    const left = Atomics.sub(i32, ITEMS, 1) - 1;
    this.#unlock();
    Atomics.add(i32, GET_SEQ, 1);
    if (Atomics.load(i32, PUT_WAITERS) > 0) wakeOne(this.word(GET_SEQ));
    // The baton: items remain and consumers sleep, so wake the next one.
    if (left > 0 && Atomics.load(i32, GET_WAITERS) > 0) wakeOne(this.word(PUT_SEQ));
    if (typeof out === 'string') return out;
    return flags & FLAG_SPILL ? readSpill(out.toString()) : out;
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
    this.#lock();
    try {
      let pos = Atomics.load(this.i32, HEAD) >>> 0;
      const tail = Atomics.load(this.i32, TAIL) >>> 0;
      let guard = 0;
      while (pos !== tail && guard++ < this.#capacity / RECORD_HEADER) {
        const at = pos & this.#mask;
        const len = this.#view.getUint32(at, true);
        if (this.#view.getUint32(at + 4, true) & FLAG_SPILL) {
          const name = Buffer.allocUnsafe(len);
          this.#copyOut(name, (at + RECORD_HEADER) & this.#mask);
          names.push(name.toString());
        }
        pos = (pos + RECORD_HEADER + pad8(len)) >>> 0;
      }
    } finally {
      this.#unlock();
    }
    return names;
  }

  // The ring's name goes when its creator exits, after Node has waited for
  // non-daemon children; large messages nobody took go with it.
  static #created: WeakRef<Ring>[] = [];
  static #owned = new Set<string>();
  static #hooked = false;
  static #trackForExit(ring: Ring): void {
    Ring.#created.push(new WeakRef(ring));
    Ring.#owned.add(ring.ref.segment);
    if (Ring.#hooked) return;
    Ring.#hooked = true;
    process.on('exit', () => {
      for (const ref of Ring.#created) {
        const r = ref.deref();
        if (!r || r.#mapping.length === 0) continue;
        for (const name of r.#spillNames()) unlinkSpill(name);
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

function writeSpill(data: Uint8Array): string {
  const name = `/pmp-q-${process.pid}-${++spillCounter}-${randomBytes(4).toString('hex')}`;
  const fd = binding.shmOpen(name, true, true, 0o600);
  spillsCreated.add(name);
  // Another process takes (and unlinks) it; if nobody does, the tracker
  // removes it when the program tree is gone.
  track(name, 'shm');
  try {
    binding.ftruncate(fd, data.length);
    if (data.length > 0) {
      const mapping = new binding.Mapping(fd, data.length);
      new Uint8Array(mapping.buffer).set(data);
      mapping.unmap();
    }
  } catch (err) {
    unlinkSpill(name);
    throw err;
  } finally {
    binding.closeFd(fd);
  }
  return name;
}

function readSpill(name: string): Buffer {
  const fd = binding.shmOpen(name, false, false, 0o600);
  try {
    const size = binding.fstatSize(fd);
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
