# Python's side of bench/process.bench.mjs: start -> exit -> join latency of a
# multiprocessing.Process with an empty target, median of N trials, for one
# start method. Prints one JSON object: {"method", "median_ms", "trials"}.
import json
import multiprocessing as mp
import statistics
import sys
import time


def noop():
    pass


def main():
    method = sys.argv[1]
    trials = int(sys.argv[2])
    ctx = mp.get_context(method)
    # Warm up: forkserver boots its server on first use, and the first spawn
    # pays for cold caches; neither is what a steady program sees.
    for _ in range(3):
        p = ctx.Process(target=noop)
        p.start()
        p.join()
    times = []
    for _ in range(trials):
        t0 = time.perf_counter()
        p = ctx.Process(target=noop)
        p.start()
        p.join()
        times.append((time.perf_counter() - t0) * 1000)
        if p.exitcode != 0:
            raise SystemExit(f"child exited {p.exitcode}")
    print(json.dumps({"method": method, "median_ms": statistics.median(times), "trials": trials}))


if __name__ == "__main__":
    main()
