#!/usr/bin/env python3
"""Quantization throughput in MB of float32 input per second (rows x K, standard normal).

    PYTHONPATH=src python3 bench/bench_quantize.py iq3_xxs iq3_xxs_r4 --rows 256 --threads 1 2 [--isa scalar]

Reports the best of several runs (the machines are shared and noisy) and the median.
"""
import argparse
import statistics
import time

import numpy as np

import iqkq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("types", nargs="+")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--K", type=int, default=4096)
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--isa", default=None)
    a = ap.parse_args()
    if a.isa:
        iqkq.set_isa(a.isa)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((a.rows, a.K)).astype(np.float32)
    im = np.exp(rng.standard_normal(a.K)).astype(np.float32)
    for t in a.types:
        for th in a.threads:
            for imat in (None, im):
                ts = []
                for _ in range(a.reps):
                    t0 = time.perf_counter()
                    iqkq.quantize(w, t, imatrix=imat, threads=th)
                    ts.append(time.perf_counter() - t0)
                mb = w.nbytes / 1e6
                print(f"{t:12s} {iqkq.isa():6s} threads={th} {'imatrix' if imat is not None else 'no imat'}: "
                      f"best {mb / min(ts):7.1f} MB/s, median {mb / statistics.median(ts):7.1f} MB/s")


if __name__ == "__main__":
    main()
