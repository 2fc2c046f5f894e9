// The shared heap: small shared objects (a lock's words, a Value) are carved out
// of a few large shared-memory segments instead of costing one mapping each, as
// CPython's multiprocessing/heap.py does. A block is named by (segment, offset),
// which is all another process needs to map the same bytes. Every block counts
// the handles and in-flight messages that refer to it, in shared memory, so it
// is reused, and its segment unlinked, only when none is left in any process.
import { constants as bufferConstants } from 'node:buffer';
import { randomBytes } from 'node:crypto';

import { atExit, ExitPhase } from './at-exit';
import { closedError } from './errors';
import {
  SEGMENT_HEADER_BYTES,
  SEGMENT_MAGIC,
  SEGMENT_VERSION,
  W_DONE,
  W_FOREIGN,
  W_MAGIC,
  W_VERSION,
} from './heap-layout';
import { binding, type Mapping } from './native';
import { createSegment } from './segment';
import { track, untrack } from './resource-tracker';
import type { CodecContext } from './serialize';
import { invalidType, outOfRange } from './validate';

/** A block of shared memory: `buffer` is the whole segment's mapping. */
export interface Block {
  readonly segment: string;
  readonly offset: number;
  readonly size: number;
  readonly buffer: ArrayBuffer;
}

/** A block and the reference this process's handle holds on it. */
export interface HeldBlock extends Block {
  readonly hold: Hold;
}

/** What travels to another process so it can attach to the same block. */
export interface BlockRef {
  segment: string;
  offset: number;
  size: number;
}

const SEGMENT_SIZE = 64 * 1024;
// N-API aborts on an external ArrayBuffer longer than this (4 GiB on Node 20).
const MAX_MAPPING = bufferConstants.MAX_LENGTH - 4096;
const MAX_ALIGN = 4096;
const MAX_BLOCK = MAX_MAPPING - 2 * MAX_ALIGN;
// Each block is preceded by [count, capacity] (two Int32 words); data is at
// least 8-aligned so that the count is a naturally aligned word.
const BLOCK_HEADER = 8;
const MIN_ALIGN = 8;

const roundUp = (n: number, a: number): number => Math.ceil(n / a) * a;

// A small block's capacity: its size rounded up to a size class (8-byte steps
// up to 64, then four steps per power of two), so that a freed block serves
// any request of its class and churn with many different sizes still reuses
// memory; at most a quarter of such a block is slack. Larger blocks are
// exact (those beyond a segment get one of their own, unlinked when freed).
const SMALL_MAX = SEGMENT_SIZE / 4;
function capacityFor(size: number): number {
  if (size <= 64) return roundUp(size, 8);
  if (size > SMALL_MAX) return size;
  return roundUp(size, 2 ** (Math.floor(Math.log2(size)) - 2));
}
// Segments of other processes that no local handle uses any more stay mapped,
// up to this many small ones, so that a loop receiving and closing handles
// does not map and unmap a segment for each; large ones are unmapped at once.
const IDLE_MAPPINGS = 16;
// Handles whose registration for garbage collection may wait (see #watch).
const WATCH_BATCH = 64;

/** One segment as this process sees it. */
export interface Segment {
  readonly name: string;
  mapping: Mapping | null;
  i32: Int32Array;
  /** Owned: the whole segment, to clear reused blocks. */
  u8: Uint8Array;
  readonly size: number;
  /** Created by this heap: only the creator allocates in it. */
  readonly owned: boolean;
  /** Owned and created for a single large block: unlinked when that block is free. */
  readonly dedicated: boolean;
  /** Has the heap header (false for a named object's segment mapped by attach()). */
  readonly counted: boolean;
  /** Owned: unlinked early by unlinkOwned(); its blocks are no longer handed out. */
  gone: boolean;
  /** Bump pointer (owned). */
  used: number;
  /** Owned: offsets of blocks that went into messages, whose counts other processes may bring to 0. */
  given: Set<number> | null;
  /** Foreign: live local handles per block offset (given back at exit). */
  holds: Map<number, number> | null;
  /** Foreign: live local handles (and uses) in all; unmapped when none is left. */
  handles: number;
  /** Mapped by attach(), which counts nothing: kept for the life of the process. */
  pinned: boolean;
}

/** One handle's reference to a block; given back exactly once (release(), or GC of its owner). */
export class Hold {
  released = false;
  constructor(
    /** @internal */ readonly seg: Segment,
    readonly offset: number,
    readonly size: number,
  ) {}

  get segment(): string {
    return this.seg.name;
  }
}

const countIndex = (offset: number): number => (offset - BLOCK_HEADER) >> 2;

/** Subtracts n from a count without taking it below 0; returns what is left (-1: it was 0 already). */
function subtract(i32: Int32Array, i: number, n: number): number {
  for (;;) {
    const c = Atomics.load(i32, i);
    if (c <= 0) return -1;
    const next = Math.max(0, c - n);
    if (Atomics.compareExchange(i32, i, c, next) === c) return next;
  }
}

class SharedHeap {
  readonly #segments = new Map<string, Segment>();
  // capacity -> free blocks of owned segments
  readonly #free = new Map<number, { seg: Segment; offset: number }[]>();
  #owned: Segment[] = [];
  #current: Segment | null = null;
  readonly #idle = new Set<Segment>();
  #counter = 0;
  #exitHook = false;
  // A handle whose object is collected gives its reference back. Registering
  // costs far more than the rest of creating a Lock (V8 keeps registered
  // objects alive through minor GCs, so they reach the old generation), so
  // it is put off until the end of the current job or WATCH_BATCH more
  // handles, whichever comes first: a handle closed by then (create, use,
  // close) is never registered. No unregister token either (it doubles the
  // cost): release() marks the hold, and the callback then does nothing.
  readonly #reaper = new FinalizationRegistry<Hold>((hold) => this.release(hold));
  #unwatched: (object | Hold)[] = [];

  #watch(target: object, hold: Hold): void {
    const n = this.#unwatched.push(target, hold);
    if (n === 2) queueMicrotask(() => this.#registerWatched());
    else if (n >= 2 * WATCH_BATCH) this.#registerWatched();
  }

  #registerWatched(): void {
    const list = this.#unwatched;
    this.#unwatched = [];
    for (let i = 0; i < list.length; i += 2) {
      const hold = list[i + 1] as Hold;
      if (!hold.released) this.#reaper.register(list[i], hold);
    }
  }

  /**
   * A new block of `size` zeroed bytes with a count of 1: the reference of the
   * handle that asked for it. With `owner`, that reference is given back when
   * owner is garbage collected (unless release() gave it back first).
   */
  allocate(size: number, align = 8, owner?: object): HeldBlock {
    if (!Number.isInteger(size) || size <= 0 || size > MAX_BLOCK) {
      throw outOfRange('size', `a positive integer up to ${MAX_BLOCK}`, size);
    }
    if (!Number.isInteger(align) || align <= 0 || align > MAX_ALIGN || (align & (align - 1)) !== 0) {
      throw outOfRange('align', `a power of two up to ${MAX_ALIGN}`, align);
    }
    const a = Math.max(align, MIN_ALIGN);
    const capacity = capacityFor(size);
    let spot = this.#takeFree(capacity, a) ?? this.#bump(capacity, a);
    // Before a new segment: blocks given to other processes may have come back.
    if (!spot && this.#sweepGiven()) spot = this.#takeFree(capacity, a);
    spot ??= this.#fresh(capacity, a);
    const { seg, offset } = spot;
    const h = countIndex(offset);
    seg.i32[h + 1] = capacity;
    Atomics.store(seg.i32, h, 1);
    const hold = new Hold(seg, offset, size);
    if (owner) this.#watch(owner, hold);
    return { segment: seg.name, offset, size, buffer: seg.mapping!.buffer, hold };
  }

  /**
   * Takes over the reference a received message carried for the block `ref`
   * (the sender added it when encoding), mapping its segment if needed.
   */
  adopt(ref: unknown, owner?: object): HeldBlock {
    const r = checkRef(ref);
    let seg = this.#segments.get(r.segment);
    const mappedNow = seg === undefined;
    seg ??= this.#map(r.segment);
    try {
      if (!seg.counted) throw invalidType('handle', 'a reference to a shared-heap block', ref);
      if (r.offset < SEGMENT_HEADER_BYTES + BLOCK_HEADER || r.offset + r.size > seg.size) {
        throw outOfRange('block', `inside its segment of ${seg.size} bytes`, `${r.offset}+${r.size}`);
      }
      const h = countIndex(r.offset);
      if (r.size > seg.i32[h + 1] || Atomics.load(seg.i32, h) <= 0) {
        throw invalidType('handle', 'a reference to a live shared-heap block', ref);
      }
    } catch (err) {
      if (mappedNow) this.#maybeUnmap(seg);
      throw err;
    }
    if (seg.owned) {
      // Back with its creator: the message's reference becomes one of ours.
      subtract(seg.i32, W_FOREIGN, 1);
    } else {
      this.#addHandle(seg, r.offset);
    }
    const hold = new Hold(seg, r.offset, r.size);
    if (owner) this.#watch(owner, hold);
    return { segment: seg.name, offset: r.offset, size: r.size, buffer: seg.mapping!.buffer, hold };
  }

  /** Gives hold's reference back when target is garbage collected (unless release() did first). */
  releaseWith(target: object, hold: Hold): void {
    if (!hold.released) this.#watch(target, hold);
  }

  /** Gives a handle's reference back (idempotent). */
  release(hold: Hold): void {
    if (hold.released) return;
    hold.released = true;
    // After #atExit gave back every hold at once (a close() in a later 'exit'
    // listener): this one is among them.
    if (this.#exited) return;
    const seg = hold.seg;
    if (seg.mapping === null) return;
    if (!seg.owned) subtract(seg.i32, W_FOREIGN, 1);
    const left = subtract(seg.i32, countIndex(hold.offset), 1);
    if (left === 0 && seg.owned) this.#reclaim(seg, hold.offset);
    if (!seg.owned) this.#dropHandle(seg, hold.offset);
  }

  /**
   * The reference a message carries to another process: the block's count
   * goes up by one for it now, and comes down when the receiver's handle is
   * done with it, or when the transport abandons the message (ctx.onAbandon).
   */
  share(hold: Hold, ctx: CodecContext): BlockRef {
    if (hold.released) throw closedError('the shared object');
    const seg = hold.seg;
    Atomics.add(seg.i32, countIndex(hold.offset), 1);
    Atomics.add(seg.i32, W_FOREIGN, 1);
    if (seg.owned) (seg.given ??= new Set()).add(hold.offset);
    const ref: BlockRef = { segment: seg.name, offset: hold.offset, size: hold.size };
    (ctx.onAbandon ??= []).push(() => this.#dropMessageRef(ref));
    return ref;
  }

  /**
   * Maps the block without taking a reference (the caller keeps it alive some
   * other way: named objects, tests). The segment stays mapped for the life of
   * the process.
   */
  attach(ref: BlockRef): Block {
    let seg = this.#segments.get(ref.segment);
    if (!seg) seg = this.#map(ref.segment);
    seg.pinned = true;
    this.#idle.delete(seg);
    if (ref.offset + ref.size > seg.size) {
      throw outOfRange('block', `inside its segment of ${seg.size} bytes`, `${ref.offset}+${ref.size}`);
    }
    return { segment: seg.name, offset: ref.offset, size: ref.size, buffer: seg.mapping!.buffer };
  }

  /** Unlinks every segment this heap created now, whatever still refers to them (tests' leak checks). */
  unlinkOwned(): void {
    for (const seg of this.#owned) {
      seg.gone = true;
      seg.given = null;
      binding.disownSegment(seg.name);
      unlinkQuietly(seg.name);
    }
    this.#owned = [];
    this.#current = null;
    this.#free.clear();
  }

  // ---- allocation -------------------------------------------------------------

  #takeFree(capacity: number, align: number): { seg: Segment; offset: number } | null {
    const list = this.#free.get(capacity);
    if (!list) return null;
    for (let i = list.length - 1; i >= 0; i--) {
      const spot = list[i];
      if (spot.offset % align !== 0) continue;
      list[i] = list[list.length - 1];
      list.pop();
      spot.seg.u8.fill(0, spot.offset, spot.offset + capacity);
      return spot;
    }
    return null;
  }

  #bump(size: number, align: number): { seg: Segment; offset: number } | null {
    const seg = this.#current;
    if (!seg) return null;
    const offset = roundUp(seg.used + BLOCK_HEADER, align);
    if (offset + size > seg.size) return null;
    seg.used = offset + size;
    return { seg, offset };
  }

  #fresh(size: number, align: number): { seg: Segment; offset: number } {
    const offset = roundUp(SEGMENT_HEADER_BYTES + BLOCK_HEADER, align);
    const total = roundUp(offset + size, 4096);
    const dedicated = total > SEGMENT_SIZE;
    const seg = this.#create(dedicated ? total : SEGMENT_SIZE, dedicated);
    seg.used = offset + size;
    if (!dedicated) this.#current = seg;
    return { seg, offset };
  }

  // Blocks other processes were given are found free lazily, here, when the
  // heap would otherwise need a new segment: at most one sweep per segment's
  // worth of allocations.
  #sweepGiven(): boolean {
    let found = false;
    for (const seg of [...this.#owned]) {
      if (!seg.given) continue;
      for (const offset of seg.given) {
        if (Atomics.load(seg.i32, countIndex(offset)) === 0) {
          this.#reclaim(seg, offset);
          found = true;
        }
      }
    }
    return found;
  }

  // The block's count reached 0 in an owned segment: nobody can reach it.
  #reclaim(seg: Segment, offset: number): void {
    if (seg.gone) return;
    seg.given?.delete(offset);
    if (seg.dedicated) {
      seg.gone = true;
      this.#owned = this.#owned.filter((s) => s !== seg);
      binding.disownSegment(seg.name);
      unlinkQuietly(seg.name);
      this.#unmap(seg);
      return;
    }
    const capacity = seg.i32[countIndex(offset) + 1];
    let list = this.#free.get(capacity);
    if (!list) this.#free.set(capacity, (list = []));
    list.push({ seg, offset });
  }

  #create(size: number, dedicated: boolean): Segment {
    const name = `/pmp-${process.pid}-${++this.#counter}-${randomBytes(4).toString('hex')}`;
    const mapping = createSegment(name, size);
    const i32 = new Int32Array(mapping.buffer);
    const u8 = new Uint8Array(mapping.buffer);
    i32[W_MAGIC] = SEGMENT_MAGIC;
    i32[W_VERSION] = SEGMENT_VERSION;
    // Registered with the tracker, so a crash of this process does not leave
    // it behind: once this process is gone the tracker unlinks it as soon as
    // no other process and no message refers to it (tracker-main.ts).
    track(name, 'heap', { lifetime: 'process' });
    // Given up when this environment ends, 'exit' hook or not (a terminated
    // worker thread runs none): native/shm.cc.
    binding.ownSegment(name, W_FOREIGN, W_DONE);
    const seg: Segment = {
      name,
      mapping,
      i32,
      u8,
      size,
      owned: true,
      dedicated,
      counted: true,
      gone: false,
      used: SEGMENT_HEADER_BYTES,
      given: null,
      holds: null,
      handles: 0,
      pinned: false,
    };
    this.#segments.set(name, seg);
    this.#owned.push(seg);
    this.#installExitHook();
    return seg;
  }

  // ---- other processes' segments ------------------------------------------------

  #map(name: string): Segment {
    const fd = binding.shmOpen(name, false, false, 0o600);
    let mapping: Mapping;
    let size: number;
    try {
      size = binding.fstatSize(fd);
      if (size > MAX_MAPPING) throw outOfRange('segment', `at most ${MAX_MAPPING} bytes`, size);
      if (size === 0) throw outOfRange('segment', 'a non-empty segment', size);
      mapping = new binding.Mapping(fd, size);
    } finally {
      binding.closeFd(fd);
    }
    const i32 = new Int32Array(mapping.buffer, 0, size >> 2);
    const counted =
      size >= SEGMENT_HEADER_BYTES && i32[W_MAGIC] === SEGMENT_MAGIC && i32[W_VERSION] === SEGMENT_VERSION;
    const seg: Segment = {
      name,
      mapping,
      i32,
      u8: new Uint8Array(0),
      size,
      owned: false,
      dedicated: false,
      counted,
      gone: false,
      used: size,
      given: null,
      holds: null,
      handles: 0,
      pinned: false,
    };
    this.#segments.set(name, seg);
    this.#installExitHook();
    return seg;
  }

  #addHandle(seg: Segment, offset: number): void {
    const holds = (seg.holds ??= new Map());
    holds.set(offset, (holds.get(offset) ?? 0) + 1);
    seg.handles++;
    this.#idle.delete(seg);
  }

  #dropHandle(seg: Segment, offset: number): void {
    const holds = seg.holds!;
    const n = holds.get(offset) ?? 0;
    if (n <= 1) holds.delete(offset);
    else holds.set(offset, n - 1);
    seg.handles--;
    this.#maybeUnmap(seg);
  }

  // A segment of another process that no local handle uses is unmapped, so
  // that its memory goes once its name does (a mapping keeps the pages).
  #maybeUnmap(seg: Segment): void {
    if (seg.owned || seg.pinned || seg.handles > 0 || seg.mapping === null) return;
    if (seg.size > SEGMENT_SIZE) {
      this.#unmap(seg);
      return;
    }
    this.#idle.add(seg);
    if (this.#idle.size > IDLE_MAPPINGS) {
      const oldest = this.#idle.values().next().value as Segment;
      this.#unmap(oldest);
    }
  }

  #unmap(seg: Segment): void {
    this.#idle.delete(seg);
    this.#segments.delete(seg.name);
    const mapping = seg.mapping;
    seg.mapping = null;
    mapping?.unmap();
  }

  // A message that carried a reference will never be received.
  #dropMessageRef(ref: BlockRef): void {
    if (this.#exited) return;
    let seg = this.#segments.get(ref.segment);
    if (!seg) {
      try {
        seg = this.#map(ref.segment);
      } catch {
        return; // gone: the tree is ending
      }
    }
    subtract(seg.i32, W_FOREIGN, 1);
    const left = subtract(seg.i32, countIndex(ref.offset), 1);
    if (left === 0 && seg.owned) this.#reclaim(seg, ref.offset);
    this.#maybeUnmap(seg);
  }

  // ---- exit ----------------------------------------------------------------------

  // At a normal exit this process gives back the references its live handles
  // hold on other processes' blocks, and unlinks each segment it created that
  // nothing outside it refers to. A segment still referenced (a handle in
  // another process, a message not yet received) keeps its name; the resource
  // tracker unlinks it once the count is 0, or when the program tree ends.
  // Set by #atExit: every hold has been given back, later releases are no-ops.
  #exited = false;

  #installExitHook(): void {
    if (this.#exitHook) return;
    this.#exitHook = true;
    atExit(ExitPhase.Release, () => this.#atExit());
  }

  #atExit(): void {
    this.#exited = true;
    for (const seg of this.#segments.values()) {
      if (seg.owned || !seg.holds || seg.mapping === null) continue;
      for (const [offset, n] of seg.holds) {
        subtract(seg.i32, W_FOREIGN, n);
        subtract(seg.i32, countIndex(offset), n);
      }
      seg.holds.clear();
    }
    // Each segment this heap created: its owner is done; unlinked now if
    // nothing refers to it, else handed to the tracker (native/shm.cc, which
    // does the same when a worker thread is torn down without this hook).
    binding.releaseOwnedSegments();
    this.#owned = [];
  }
}

function unlinkQuietly(name: string): void {
  try {
    binding.shmUnlink(name);
  } catch {
    // already gone
  }
  untrack(name, 'heap');
}

function checkRef(ref: unknown): BlockRef {
  const r = ref as BlockRef;
  if (
    r === null ||
    typeof r !== 'object' ||
    typeof r.segment !== 'string' ||
    !Number.isInteger(r.offset) ||
    r.offset % MIN_ALIGN !== 0 ||
    !Number.isInteger(r.size) ||
    r.size <= 0
  ) {
    throw invalidType('handle', 'a reference to a shared-heap block', ref);
  }
  return r;
}

const kHeap = Symbol.for('posix-multiprocessing.heap');

/** The process's shared heap (one per thread, shared by every copy of the package). */
export function heap(): SharedHeap {
  const g = globalThis as unknown as Record<symbol, SharedHeap | undefined>;
  return (g[kHeap] ??= new SharedHeap());
}
