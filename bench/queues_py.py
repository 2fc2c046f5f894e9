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


def echo(conn, n):
    for _ in range(n):
        conn.send(conn.recv())


def main():
    scenario = sys.argv[1]
    n = int(sys.argv[2])
    if scenario == "small":
        q = mp.Queue()
        p = mp.Process(target=produce_small, args=(q, n))
        p.start()
        q.get()
        t = time.perf_counter()
        for _ in range(n - 1):
            q.get()
        value = (n - 1) / (time.perf_counter() - t)
        p.join()
    elif scenario == "big":
        size = int(sys.argv[3])
        q = mp.Queue()
        p = mp.Process(target=produce_big, args=(q, n, size))
        p.start()
        q.get()
        t = time.perf_counter()
        for _ in range(n - 1):
            q.get()
        value = (n - 1) * size / (time.perf_counter() - t) / 1e6
        p.join()
    elif scenario == "rtt":
        a, b = mp.Pipe()
        p = mp.Process(target=echo, args=(b, n + 100))
        p.start()
        for _ in range(100):
            a.send({"i": 1, "s": "ping"})
            a.recv()
        t = time.perf_counter()
        for i in range(n):
            a.send({"i": i, "s": "ping"})
            a.recv()
        value = (time.perf_counter() - t) / n * 1e6
        p.join()
    print(json.dumps({"scenario": scenario, "value": value}))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
