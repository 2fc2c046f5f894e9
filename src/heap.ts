// The shared heap: small shared objects (a lock's words, a Value) are carved out
// of a few large shared-memory segments instead of costing one mapping each, as
// CPython's multiprocessing/heap.py does. A block is named by (segment, offset),
// which is all another process needs to map the same bytes.
import { constants as bufferConstants } from 'node:buffer';
import { randomBytes } from 'node:crypto';

import { binding, type Mapping } from './native';
import { createSegment } from './segment';
import { track, untrack } from './resource-tracker';
import { outOfRange } from './validate';

/** A block of shared memory: `buffer` is the whole segment's mapping. */
export interface Block {
  readonly segment: string;
  readonly offset: number;
  readonly size: number;
  readonly buffer: ArrayBuffer;
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

interface Segment {
  name: string;
  mapping: Mapping;
  size: number;
  used: number; // bump pointer
  owned: boolean; // created by this process
}

class SharedHeap {
  readonly #segments = new Map<string, Segment>();
  readonly #free = new Map<number, BlockRef[]>(); // size -> freed blocks (owned segments)
  #owned: Segment[] = [];
  #counter = 0;
  #exitHook = false;

  allocate(size: number, align = 8): Block {
    if (!Number.isInteger(size) || size <= 0 || size > MAX_MAPPING) {
      throw outOfRange('size', `a positive integer up to ${MAX_MAPPING}`, size);
    }
    if (!Number.isInteger(align) || align <= 0 || align > MAX_ALIGN || (align & (align - 1)) !== 0) {
      throw outOfRange('align', `a power of two up to ${MAX_ALIGN}`, align);
    }
    const reuse = this.#free.get(size)?.find((b) => b.offset % align === 0);
    if (reuse) {
      const list = this.#free.get(size)!;
      list.splice(list.indexOf(reuse), 1);
      const seg = this.#segments.get(reuse.segment)!;
      new Uint8Array(seg.mapping.buffer, reuse.offset, size).fill(0);
      return { ...reuse, buffer: seg.mapping.buffer };
    }
    for (const seg of this.#owned) {
      const offset = Math.ceil(seg.used / align) * align;
      if (offset + size <= seg.size) {
        seg.used = offset + size;
        return { segment: seg.name, offset, size, buffer: seg.mapping.buffer };
      }
    }
    const seg = this.#create(Math.max(SEGMENT_SIZE, Math.ceil(size / 4096) * 4096));
    seg.used = size;
    return { segment: seg.name, offset: 0, size, buffer: seg.mapping.buffer };
  }

  /** Maps the block another process allocated (segments are mapped once per process). */
  attach(ref: BlockRef): Block {
    let seg = this.#segments.get(ref.segment);
    if (!seg) {
      const fd = binding.shmOpen(ref.segment, false, false, 0o600);
      try {
        const size = binding.fstatSize(fd);
        if (size > MAX_MAPPING) throw outOfRange('segment', `at most ${MAX_MAPPING} bytes`, size);
        if (ref.offset + ref.size > size) {
          throw outOfRange('block', `inside its segment of ${size} bytes`, `${ref.offset}+${ref.size}`);
        }
        seg = { name: ref.segment, mapping: new binding.Mapping(fd, size), size, used: size, owned: false };
      } finally {
        binding.closeFd(fd);
      }
      this.#segments.set(seg.name, seg);
    }
    return { segment: seg.name, offset: ref.offset, size: ref.size, buffer: seg.mapping.buffer };
  }

  /** Returns a block to the heap; blocks of segments this process did not create are left alone. */
  free(block: BlockRef): void {
    const seg = this.#segments.get(block.segment);
    if (!seg || !seg.owned) return;
    let list = this.#free.get(block.size);
    if (!list) this.#free.set(block.size, (list = []));
    list.push({ segment: block.segment, offset: block.offset, size: block.size });
  }

  #create(size: number): Segment {
    const name = `/pmp-${process.pid}-${++this.#counter}-${randomBytes(4).toString('hex')}`;
    const seg: Segment = { name, mapping: createSegment(name, size), size, used: 0, owned: true };
    // Registered with the tracker, so a crash of this process does not leave it
    // behind: it goes when this process is gone, as at a normal exit.
    track(name, 'shm', { lifetime: 'process' });
    this.#segments.set(name, seg);
    this.#owned.push(seg);
    this.#installExitHook();
    return seg;
  }

  // The names of segments this process created go when it exits normally;
  // processes that mapped them keep their mappings. (After a crash, the
  // resource tracker unlinks them.) Their names follow /pmp-<pid>-..., which
  // is how the test suite's leak check knows they are process-lifetime.
  #installExitHook(): void {
    if (this.#exitHook) return;
    this.#exitHook = true;
    process.on('exit', () => this.unlinkOwned());
  }

  unlinkOwned(): void {
    for (const seg of this.#owned) {
      try {
        binding.shmUnlink(seg.name);
      } catch {
        // already gone
      }
      untrack(seg.name, 'shm');
    }
    this.#owned = [];
  }
}

const kHeap = Symbol.for('posix-multiprocessing.heap');

/** The process's shared heap (one per process, shared by every copy of the package). */
export function heap(): SharedHeap {
  const g = globalThis as unknown as Record<symbol, SharedHeap | undefined>;
  return (g[kHeap] ??= new SharedHeap());
}
