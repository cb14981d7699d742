"""How much the large-batch weight conversion changes matmul results, per type and input kind.

For every type whose large-batch path converts the weights to another type (ik_llama.cpp's
lossy requantization; exact repacks such as q8_0 -> q8_0_r8 print 0), prints the relative
change ||y_repack - y_direct|| / ||y_direct|| of ``matmul(w, x)`` on a few weight and activation
distributions, next to the error of the direct path itself against float64 ``x @ deq(w).T``.

    python bench/conversion_error.py [--types iq4_ks,iq3_xxs] [--rows 256] [--k 2048] [--n 64]
"""
import argparse

import numpy as np

import iqkq


def inputs(rng, R, K, N):
    def nx():
        return rng.standard_normal((N, K))

    yield "normal w, normal x", rng.standard_normal((R, K)), nx()
    yield "student-t3 w, normal x", rng.standard_t(3, (R, K)), nx()
    yield "uniform w, relu x", rng.uniform(-1, 1, (R, K)), np.maximum(nx(), 0)
    x = nx()
    x[:, rng.choice(K, 16, replace=False)] *= 50
    yield "normal w, 16 x columns x50", rng.standard_normal((R, K)), x
    for f, nc in [(10, 16), (50, 4), (200, 4)]:
        w = rng.standard_normal((R, K))
        w[:, rng.choice(K, nc, replace=False)] *= f
        yield f"{nc} w columns x{f}, normal x", w, nx()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=None, help="comma-separated (default: every type with a large-batch conversion)")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    names = a.types.split(",") if a.types else [t.name for t in iqkq.types() if t.large_batch]
    print(f"rows={a.rows} K={a.k} N={a.n}; relative L2 change of y (repack vs direct), and direct vs float64 exact")
    lo, hi = np.inf, 0.0
    for t in names:
        info = iqkq.type_info(t)
        rng = np.random.default_rng(a.seed)
        for label, w, x in inputs(rng, a.rows, a.k, a.n):
            q = iqkq.quantize(w.astype(np.float32), t, imatrix=np.ones(a.k, np.float32) if info.needs_imatrix else None)
            x = x.astype(np.float32)
            yd = iqkq.matmul(q, x, path="direct")
            yr = iqkq.matmul(q, x, path="repack")
            ref = x.astype(np.float64) @ iqkq.dequantize(q).astype(np.float64).T
            rel = np.linalg.norm(yr - yd) / np.linalg.norm(yd)
            e_d = np.linalg.norm(yd - ref) / np.linalg.norm(ref)
            print(f"{t:10s} -> {info.large_batch:8s} {label:30s} change {100 * rel:5.2f} %   (direct vs exact {100 * e_d:5.2f} %)")
            if info.large_batch != info.interleaved:  # a requantization, not a repack
                lo, hi = min(lo, rel), max(hi, rel)
    if hi > 0:
        print(f"range of the change over lossy conversions: {100 * lo:.2f} - {100 * hi:.2f} %")


if __name__ == "__main__":
    main()
