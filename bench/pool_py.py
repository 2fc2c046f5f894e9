# CPython's side of bench/pool.bench.mjs, in one multiprocessing context.
#   pool_py.py pools <ctx> <count> <n_map> <repeat>
#       <count> fresh Pool(2)s in this process, one after another; each: construction
#       -> first result, its first map of n_map trivial tasks, then <repeat> more maps.
#       Prints {"startup_ms": [...], "first_map_ms": [...], "map_ms": [...]}.
#   pool_py.py cold <ctx> <n_map>
#       This fresh process's first Pool(2): prints "ready" at its first result (the
#       caller times that line from the process's start), then {"first_map_ms"}.
#   pool_py.py apply <ctx> <n_apply>
#       apply_async one by one (chunksize 1), after 2000 untimed: {"apply": tasks/s}.
import json
import multiprocessing as mp
import sys
import time


def identity(x):
    return x


def ms_since(t):
    return (time.perf_counter() - t) * 1000


def pools(ctx, count, n_map, repeat):
    out = {"startup_ms": [], "first_map_ms": [], "map_ms": []}
    for _ in range(count):
        t = time.perf_counter()
        pool = ctx.Pool(2)
        pool.apply(identity, (1,))
        out["startup_ms"].append(ms_since(t))
        for k in range(repeat + 1):
            t = time.perf_counter()
            pool.map(identity, range(n_map))
            out["first_map_ms" if k == 0 else "map_ms"].append(ms_since(t))
        pool.terminate()
        pool.join()
    return out


def cold(ctx, n_map):
    pool = ctx.Pool(2)
    pool.apply(identity, (1,))
    print("ready", flush=True)
    t = time.perf_counter()
    pool.map(identity, range(n_map))
    first = ms_since(t)
    pool.terminate()
    pool.join()
    return {"first_map_ms": first}


def apply(ctx, n_apply):
    pool = ctx.Pool(2)
    for r in [pool.apply_async(identity, (i,)) for i in range(2000)]:
        r.get()
    t = time.perf_counter()
    results = [pool.apply_async(identity, (i,)) for i in range(n_apply)]
    for r in results:
        r.get()
    rate = n_apply / (time.perf_counter() - t)
    pool.terminate()
    pool.join()
    return {"apply": rate}


def main():
    mode, ctx = sys.argv[1], mp.get_context(sys.argv[2])
    args = [int(a) for a in sys.argv[3:]]
    print(json.dumps({"pools": pools, "cold": cold, "apply": apply}[mode](ctx, *args)))


if __name__ == "__main__":
    main()
