#!/usr/bin/env python3
"""Matmul throughput of one type on a rows x K weight (default 4096 x 4096, standard normal).

GFLOPS = 2*rows*K*N / t, t = median of several iqkq.matmul calls (activation quantization
included). "cold" rotates over enough weight copies (>= 256 MB) that every call reads W from
DRAM and reports GB/s of weight bytes as well.

    PYTHONPATH=src python3 bench/bench_matmul.py iq3_xxs --n 1 2 4 8 16 512 --threads 1 2 [--cold]
"""
import argparse
import statistics
import time

import numpy as np

import iqkq


def timeit(fn, reps, warm=2):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("type")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--K", type=int, default=4096)
    ap.add_argument("--n", type=int, nargs="+", default=[1])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--isa", default=None)
    a = ap.parse_args()
    if a.isa:
        iqkq.set_isa(a.isa)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((a.rows, a.K)).astype(np.float32)
    q = iqkq.quantize(w, a.type)
    copies = [q]
    if a.cold:
        ncopy = max(2, int(np.ceil(256e6 / q.nbytes)))
        copies = [iqkq.QuantizedTensor(q.data.copy(), a.type, q.shape) for _ in range(ncopy)]
    for t in a.threads:
        for n in a.n:
            x = rng.standard_normal((n, a.K)).astype(np.float32)
            state = {"i": 0}

            def run():
                qq = copies[state["i"] % len(copies)]
                state["i"] += 1
                iqkq.matmul(qq, x, threads=t)

            reps = a.reps if n < 256 else max(3, a.reps // 2)
            dt = timeit(run, reps * (3 if a.cold else 1))
            gf = 2.0 * a.rows * a.K * n / dt / 1e9
            extra = f"  {q.nbytes / dt / 1e9:6.2f} GB/s" if a.cold else ""
            print(f"{a.type:12s} {'cold' if a.cold else 'hot ':4s} threads={t} N={n:4d}  {dt * 1e3:8.3f} ms  {gf:7.1f} GFLOPS{extra}")


if __name__ == "__main__":
    main()
