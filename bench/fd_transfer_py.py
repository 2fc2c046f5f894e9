# CPython's side of bench/fd-transfer.bench.mjs: Connections pickled through a
# Queue, a one-way Pipe and a Pool task (multiprocessing.resource_sharer).
# Prints one JSON object: {"scenario": ..., "value": µs per transfer}.
import json
import multiprocessing as mp
import sys
import time


def put_connections(q, n, release):
    a, b = mp.Pipe()
    for _ in range(n):
        q.put(a)
    release.get()


def send_connections(w, n, release):
    a, b = mp.Pipe()
    for _ in range(n):
        w.send(a)
    release.get()


def close_it(conn):
    conn.close()
    return 1


def main():
    scenario = sys.argv[1]
    n = int(sys.argv[2])
    if scenario in ("queue", "pipe"):
        release = mp.SimpleQueue()
        if scenario == "queue":
            q = mp.Queue()
            p = mp.Process(target=put_connections, args=(q, n, release))
            take = q.get
        else:
            r, w = mp.Pipe(duplex=False)
            p = mp.Process(target=send_connections, args=(w, n, release))
            take = r.recv
        p.start()
        take().close()
        t = time.perf_counter()
        for _ in range(n - 1):
            take().close()
        value = (time.perf_counter() - t) / (n - 1) * 1e6
        release.put(1)
        p.join()
    else:
        a, b = mp.Pipe()
        with mp.Pool(1) as pool:
            pool.apply(close_it, (b,))
            t = time.perf_counter()
            for _ in range(n):
                pool.apply(close_it, (b,))
            value = (time.perf_counter() - t) / n * 1e6
    print(json.dumps({"scenario": scenario, "value": value}))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
