// Creating a new shared-memory segment, the one sequence every owner of
// segments repeats: exclusive shm_open, reserve (size it with its pages
// allocated), mmap, and no name left behind when any step fails.
import { binding, type Mapping } from './native';

/**
 * Gives the new segment behind fd its size, `size` bytes, with the pages of its
 * first `committed` bytes allocated now. A page of /dev/shm that does not exist
 * yet is allocated at its first touch, and when tmpfs is full that page fault
 * is SIGBUS, which kills the process: reserving here turns a full /dev/shm into
 * an ENOSPC error from this call instead. Bytes past `committed` stay sparse;
 * whoever maps them must allocate them before touching them (Ring does,
 * through Mapping.populate). On macOS nothing can be allocated ahead (nor is
 * there a tmpfs to run out of): the segment is only sized.
 */
export function reserve(fd: number, name: string, size: number, committed = size): void {
  try {
    // posix_fallocate sizes the segment too, and only once every page exists.
    const allocated = committed > 0 && binding.fallocate(fd, 0, committed);
    if (!allocated || committed < size) binding.ftruncate(fd, size);
  } catch (err) {
    throw reserveError(err, name, committed);
  }
}

/** The error of a failed allocation, naming the segment and what it asked for. */
export function reserveError(err: unknown, name: string, bytes: number): unknown {
  const e = err as NodeJS.ErrnoException;
  if (typeof e?.code !== 'string') return err;
  const full = e.code === 'ENOSPC' ? ': /dev/shm is full' : '';
  e.message = `${e.message} '${name}' (allocating ${bytes} bytes of shared memory${full})`;
  e.path = name;
  return e;
}

/** Creates the segment `name` of `size` bytes (O_EXCL), reserved as reserve() says; the caller closes the fd. */
export function openSegment(name: string, size: number, mode = 0o600, committed = size): number {
  const fd = binding.shmOpen(name, true, true, mode);
  try {
    reserve(fd, name, size, committed);
    return fd;
  } catch (err) {
    binding.closeFd(fd);
    unlinkQuietly(name);
    throw err;
  }
}

/** Creates the segment `name` of `size` bytes (O_EXCL), every page allocated, and maps it. */
export function createSegment(name: string, size: number, mode = 0o600): Mapping {
  const fd = openSegment(name, size, mode);
  try {
    return new binding.Mapping(fd, size);
  } catch (err) {
    unlinkQuietly(name);
    throw err;
  } finally {
    binding.closeFd(fd);
  }
}

function unlinkQuietly(name: string): void {
  try {
    binding.shmUnlink(name);
  } catch {
    // already gone
  }
}
