# The CPython side of bench/shm.bench.mjs. Usage: python3 shm.py cycle N | increments PROCS TIMES
# Prints one number: microseconds per cycle, or seconds for the whole run.
import sys
import time
from multiprocessing import Process, Value, shared_memory


def cycle(n):
    t = time.perf_counter()
    for _ in range(n):
        a = shared_memory.SharedMemory(create=True, size=4096)
        b = shared_memory.SharedMemory(name=a.name)
        b.close()
        a.close()
        a.unlink()
    return (time.perf_counter() - t) / n * 1e6


def increment(v, times):
    for _ in range(times):
        with v.get_lock():
            v.value += 1


def increments(procs, times):
    v = Value('i', 0)
    t = time.perf_counter()
    ps = [Process(target=increment, args=(v, times)) for _ in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    elapsed = time.perf_counter() - t
    assert v.value == procs * times, v.value
    return elapsed


if __name__ == '__main__':
    what = sys.argv[1]
    if what == 'cycle':
        print(cycle(int(sys.argv[2])))
    else:
        print(increments(int(sys.argv[2]), int(sys.argv[3])))
