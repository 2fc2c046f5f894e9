# Python's side of bench/manager.bench.mjs, with multiprocessing.Manager().
# Usage: manager_py.py <scenario> <n> [context, default fork]; prints one JSON object {"value"}.
#   start      Manager() start -> first dict answer -> shutdown, ms
#   dict       one d[k] = v plus one d[k], us per pair
#   queue      one q.put() plus one q.get() on a manager Queue, us per pair
#   appends    4 processes x n appends to one manager list, from the go, ms
#   appends-wall  the same from creating the 4 processes to all joined, ms
import json
import multiprocessing as mp
import sys
import time

WARM_S = 1.0


def append_many(lst, n, ready, go, done):
    ready.put(1)
    go.get()
    for i in range(n):
        lst.append(i)
    done.put(1)


def append_all(lst, n):
    for i in range(n):
        lst.append(i)


def timed_pairs(step, n):
    end = time.perf_counter() + WARM_S
    while time.perf_counter() < end:
        step(0)
    t0 = time.perf_counter()
    for i in range(n):
        step(i)
    return (time.perf_counter() - t0) * 1e6 / n


def main():
    scenario, n = sys.argv[1], int(sys.argv[2])
    ctx = mp.get_context(sys.argv[3] if len(sys.argv) > 3 else "fork")
    if scenario == "start":
        t0 = time.perf_counter()
        m = ctx.Manager()
        d = m.dict()
        d["k"] = 1
        assert d["k"] == 1
        m.shutdown()
        value = (time.perf_counter() - t0) * 1000
    else:
        with ctx.Manager() as m:
            if scenario == "dict":
                d = m.dict()

                def step(i):
                    d["k"] = i
                    if d["k"] != i:
                        raise SystemExit("dict lost a write")

                value = timed_pairs(step, n)
            elif scenario == "queue":
                q = m.Queue()

                def step(i):
                    q.put(i)
                    if q.get() != i:
                        raise SystemExit("queue lost an item")

                value = timed_pairs(step, n)
            elif scenario == "appends":
                lst = m.list()
                ready, go, done = m.Queue(), m.Queue(), m.Queue()
                ps = [ctx.Process(target=append_many, args=(lst, n, ready, go, done)) for _ in range(4)]
                for p in ps:
                    p.start()
                for _ in ps:
                    ready.get()
                # Timed from the go to the last append, the children booted.
                t0 = time.perf_counter()
                for _ in ps:
                    go.put(1)
                for _ in ps:
                    done.get()
                value = (time.perf_counter() - t0) * 1000
                for p in ps:
                    p.join()
                if len(lst) != 4 * n:
                    raise SystemExit(f"list has {len(lst)} items, not {4 * n}")
            elif scenario == "appends-wall":
                lst = m.list()
                t0 = time.perf_counter()
                ps = [ctx.Process(target=append_all, args=(lst, n)) for _ in range(4)]
                for p in ps:
                    p.start()
                for p in ps:
                    p.join()
                value = (time.perf_counter() - t0) * 1000
                if len(lst) != 4 * n:
                    raise SystemExit(f"list has {len(lst)} items, not {4 * n}")
            else:
                raise SystemExit(f"unknown scenario {scenario}")
    print(json.dumps({"value": value}))


if __name__ == "__main__":
    main()
