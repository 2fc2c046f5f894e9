// Creating a new shared-memory segment, the one sequence every owner of
// segments repeats: exclusive shm_open, ftruncate, mmap, and no name left
// behind when any step fails.
import { binding, type Mapping } from './native';

/** Creates the segment `name` of `size` bytes (O_EXCL) and maps it. */
export function createSegment(name: string, size: number, mode = 0o600): Mapping {
  const fd = binding.shmOpen(name, true, true, mode);
  try {
    binding.ftruncate(fd, size);
    return new binding.Mapping(fd, size);
  } catch (err) {
    binding.shmUnlink(name);
    throw err;
  } finally {
    binding.closeFd(fd);
  }
}
