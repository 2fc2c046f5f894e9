# CPython's side of bench/queues.bench.mjs: the same scenarios with multiprocessing.
# Prints one JSON object: {"scenario": ..., "value": ...}.
import json
import multiprocessing as mp
import sys
import time


def produce_small(q, n):
    for i in range(n):
        q.put({"i": i, "s": "hello"})


def produce_big(q, n, size):
    payload = b"x" * size
    for _ in range(n):
        q.put(payload)


def echo(conn):
    while True:
        m = conn.recv()
        if m is None:
            return
        conn.send(m)


def drain(q, n, warm_s):
    """Gets n items: untimed for warm_s (at most half), then timed.
    Returns (items timed, seconds)."""
    q.get()
    i = 1
    warm_end = time.perf_counter() + warm_s
    while i < n / 2 and time.perf_counter() < warm_end:
        q.get()
        i += 1
    timed = n - i
    t = time.perf_counter()
    for _ in range(timed):
        q.get()
    return timed, time.perf_counter() - t


def main():
    scenario = sys.argv[1]
    n = int(sys.argv[2])
    warm_s = float(sys.argv[3]) / 1000
    if scenario == "small":
        q = mp.Queue()
        p = mp.Process(target=produce_small, args=(q, n))
        p.start()
        timed, s = drain(q, n, warm_s)
        value = timed / s
        p.join()
    elif scenario == "big":
        size = int(sys.argv[4])
        q = mp.Queue()
        p = mp.Process(target=produce_big, args=(q, n, size))
        p.start()
        timed, s = drain(q, n, warm_s)
        value = timed * size / s / 1e6
        p.join()
    elif scenario == "rtt":
        a, b = mp.Pipe()
        p = mp.Process(target=echo, args=(b,))
        p.start()
        a.send({"i": 0, "s": "ping"})  # the warm-up starts once the child answers
        a.recv()
        i = 1
        warm_end = time.perf_counter() + warm_s
        while time.perf_counter() < warm_end:
            a.send({"i": i, "s": "ping"})
            a.recv()
            i += 1
        t = time.perf_counter()
        for i in range(n):
            a.send({"i": i, "s": "ping"})
            a.recv()
        value = (time.perf_counter() - t) / n * 1e6
        a.send(None)
        p.join()
    print(json.dumps({"scenario": scenario, "value": value}))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
