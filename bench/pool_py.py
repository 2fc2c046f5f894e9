# CPython's side of bench/pool.bench.mjs: Pool.map of trivial tasks with default
# chunking, apply_async one by one (chunksize 1), and startup to first result.
import json
import multiprocessing as mp
import sys
import time


def identity(x):
    return x


def main():
    n_map, n_apply = int(sys.argv[1]), int(sys.argv[2])
    mp.set_start_method('spawn')
    t = time.perf_counter()
    pool = mp.Pool(2)
    pool.apply(identity, (1,))
    startup = time.perf_counter() - t
    pool.map(identity, range(1000))
    map_s = float('inf')
    for _ in range(10):  # best of ten, as for ours
        t = time.perf_counter()
        pool.map(identity, range(n_map))
        map_s = min(map_s, time.perf_counter() - t)
    t = time.perf_counter()
    results = [pool.apply_async(identity, (i,)) for i in range(n_apply)]
    for r in results:
        r.get()
    apply_s = time.perf_counter() - t
    pool.terminate()
    pool.join()
    print(json.dumps({'map': n_map / map_s, 'apply': n_apply / apply_s, 'startup_ms': startup * 1000}))


if __name__ == '__main__':
    main()
