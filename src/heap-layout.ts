// The header at the start of every shared-heap segment (heap.ts). The resource
// tracker (tracker-main.ts) reads it too: it decides from these words when the
// segment of a process that is gone may be unlinked.

export const SEGMENT_MAGIC = 0x504d4850; // 'PMHP'
export const SEGMENT_VERSION = 1;
/** Bytes reserved for the header; blocks start after it. */
export const SEGMENT_HEADER_BYTES = 64;

// Int32 word indexes in the header.
export const W_MAGIC = 0;
export const W_VERSION = 1;
/**
 * References to the segment's blocks that the creating process does not hold
 * itself: handles in other processes (or other threads' heaps) and encoded
 * messages not yet received. Once the creator is gone, 0 means nobody can
 * reach the segment any more.
 */
export const W_FOREIGN = 2;
/** 1 once the creator ran its exit hook (it ended normally, not by a crash). */
export const W_DONE = 3;
