# The CPython side of bench/sync.bench.mjs: prints one JSON object for the scenario
# named in argv[1], using multiprocessing's Lock / Value / Semaphore / Barrier.
import json, multiprocessing as mp, sys, time

def pair(n):
    lock = mp.Lock()
    for _ in range(1000):
        lock.acquire(); lock.release()
    t0 = time.perf_counter()
    for _ in range(n):
        lock.acquire(); lock.release()
    return (time.perf_counter() - t0) * 1e9 / n

def try_pair(n):
    lock = mp.Lock()
    t0 = time.perf_counter()
    for _ in range(n):
        lock.acquire(False); lock.release()
    return (time.perf_counter() - t0) * 1e9 / n

def sem_pair(n):
    # mp.Semaphore is a POSIX semaphore (sem_open, unlinked at once) on Linux and macOS.
    sem = mp.Semaphore(1)
    for _ in range(1000):
        sem.acquire(); sem.release()
    t0 = time.perf_counter()
    for _ in range(n):
        sem.acquire(); sem.release()
    return (time.perf_counter() - t0) * 1e9 / n

WARM_S = 0.3  # as bench/sync.bench.mjs: both sides warm up first

def increment_many(lock, value, n):
    for _ in range(n):
        with lock:
            value.value += 1

def inc_child(lock, value, barrier, n, out, slot):
    # As bench/sync-targets.mjs: both children increment together, untimed,
    # for WARM_S, meet, then make n timed increments.
    barrier.wait()
    warm_end = time.perf_counter() + WARM_S
    warm = 0
    while time.perf_counter() < warm_end:
        increment_many(lock, value, 1000)
        warm += 1000
    out[2 + slot] = warm
    barrier.wait()
    t0 = time.perf_counter()
    increment_many(lock, value, n)
    out[slot] = time.perf_counter() - t0

def increments(n):
    lock = mp.Lock(); value = mp.Value('i', 0, lock=False); barrier = mp.Barrier(2)
    out = mp.Array('d', 4, lock=False)
    ps = [mp.Process(target=inc_child, args=(lock, value, barrier, n, out, i)) for i in range(2)]
    for p in ps: p.start()
    for p in ps: p.join()
    assert value.value == 2 * n + out[2] + out[3], value.value
    return max(out[0], out[1]) * 1000

def noop():
    pass


def inc_value(value, n):
    for _ in range(n):
        with value.get_lock():
            value.value += 1


def increments_wall(n, warm):
    # As bench/sync.bench.mjs's increments-wall(-cold): the 'fork' context, a
    # Value with its own lock (an RLock), timed from creating the children to
    # both joined; warm: after one untimed start, as ours waits for its server.
    ctx = mp.get_context('fork')
    if warm:
        p = ctx.Process(target=noop); p.start(); p.join()
    value = ctx.Value('i', 0)
    t0 = time.perf_counter()
    ps = [ctx.Process(target=inc_value, args=(value, n)) for _ in range(2)]
    for p in ps: p.start()
    for p in ps: p.join()
    ms = (time.perf_counter() - t0) * 1000
    assert value.value == 2 * n, value.value
    return ms

def pong(ping, pong_sem, stop):
    while True:
        ping.acquire()
        if stop.is_set():
            return
        pong_sem.release()


def handoff(n):
    ping = mp.Semaphore(0); pong_sem = mp.Semaphore(0); stop = mp.Event()
    p = mp.Process(target=pong, args=(ping, pong_sem, stop)); p.start()
    warm_end = time.perf_counter() + WARM_S
    while time.perf_counter() < warm_end:
        ping.release(); pong_sem.acquire()
    t0 = time.perf_counter()
    for _ in range(n):
        ping.release(); pong_sem.acquire()
    dt = time.perf_counter() - t0
    stop.set(); ping.release()
    p.join()
    return dt * 1e6 / n / 2

if __name__ == '__main__':
    name, n = sys.argv[1], int(sys.argv[2])
    print(json.dumps({'value': {'pair': pair, 'try': try_pair, 'sem-pair': sem_pair, 'increments': increments, 'handoff': handoff,
        'increments-wall': lambda n: increments_wall(n, True), 'increments-wall-cold': lambda n: increments_wall(n, False)}[name](n)}))
