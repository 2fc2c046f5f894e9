# The CPython side of bench/shm.bench.mjs. Usage: python3 shm.py cycle N | increments PROCS TIMES
# Prints one number: microseconds per cycle, or seconds for the whole run.
import os
import sys
import time
from multiprocessing import Process, Value, shared_memory


def tracker_settled():
    # As in shm.bench.mjs: wait until our children (the resource tracker) have
    # used no CPU for 200 ms, at most 10 s, so that its startup is not timed.
    def ticks():
        try:
            with open(f'/proc/{os.getpid()}/task/{os.getpid()}/children') as f:
                pids = f.read().split()
        except OSError:
            return 0
        total = 0
        for pid in pids:
            try:
                with open(f'/proc/{pid}/stat') as f:
                    fields = f.read().split(') ')[1].split(' ')
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError):
                pass
        return total
    deadline = time.monotonic() + 10
    last = ticks()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = ticks()
        if now == last:
            return
        last = now


CYCLE_WARM_S = 0.3  # bench/shm.bench.mjs: CYCLE_WARM_MS


def cycle(n):
    def one():
        a = shared_memory.SharedMemory(create=True, size=4096)
        b = shared_memory.SharedMemory(name=a.name)
        b.close()
        a.close()
        a.unlink()
    warm_end = time.perf_counter() + CYCLE_WARM_S  # as the Node side does
    while time.perf_counter() < warm_end:
        one()
    tracker_settled()
    t = time.perf_counter()
    for _ in range(n):
        one()
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
