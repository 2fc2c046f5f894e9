# Python's side of bench/process.bench.mjs: start -> exit -> join latency of a
# multiprocessing.Process with an empty target, for one start method (context).
# Usage: process_py.py <fork|forkserver|spawn> <trials>. Prints one JSON object:
#   cold_ms  the process's first start -> join (forkserver boots its server here)
#   times    the next <trials> start -> join latencies, after two untimed ones
#   faults   minor page faults of three children, counted at their target's entry
import json
import multiprocessing as mp
import resource
import sys
import time


def noop():
    pass


def count_faults(out):
    out.value = resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def start_join(ctx, target, args=()):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join()
    if p.exitcode != 0:
        raise SystemExit(f"child exited {p.exitcode}")


def timed(ctx):
    t0 = time.perf_counter()
    start_join(ctx, noop)
    return (time.perf_counter() - t0) * 1000


def main():
    method = sys.argv[1]
    trials = int(sys.argv[2])
    ctx = mp.get_context(method)
    cold = timed(ctx)
    # Untimed: the first spawns still pay for cold caches.
    for _ in range(2):
        start_join(ctx, noop)
    times = [timed(ctx) for _ in range(trials)]
    faults = []
    out = ctx.Value("q", 0, lock=False)
    for _ in range(3):
        start_join(ctx, count_faults, (out,))
        faults.append(out.value)
    print(json.dumps({"method": method, "cold_ms": cold, "times": times, "faults": faults}))


if __name__ == "__main__":
    main()
