"""Interleaved A/B timing of two builds of iqkq's _core in one process.

    python bench/ab_builds.py OLD.so NEW.so [--types iq3_xxs iq3_xxs_r4] [--ns 1 2 4] [--threads 1 2] [--cold] [--convert] [--isa avx2]

Both extension modules are loaded side by side (copied to temporary files, imported under two
package names) and called alternately, so machine-speed drift affects both equally; each
figure is the minimum over --reps calls. Hot: the same W every call. Cold (N=1): every call
uses the next of >= 256 MB of weight copies, reported as GB/s of weights. Activation
quantization is inside the timed call, as in iqkq.matmul. The outputs of the two builds are
compared bit for bit ("same" / "DIFF"). --convert also times the large-batch weight conversion
alone (what iqkq.repack(q, "q8_k_r8") runs, output array allocation included) for the types
that have one, on one thread.

Multi-thread figures are less reliable than single-thread ones: each loaded module has its
own thread pool, whose workers spin briefly after a call while the other module runs.
"""
import _quiet_blas  # noqa: F401  (before numpy: see the module)
import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import iqkq  # noqa: E402  (the installed package: quantization and the type table only)


def load(path, tag, tmp):
    dst = os.path.join(tmp, f"{tag}_{os.path.basename(path)}")
    shutil.copy(path, dst)
    spec = importlib.util.spec_from_file_location(f"{tag}._core", dst)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--types", nargs="*", default=["iq3_xxs", "iq3_xxs_r4"])
    p.add_argument("--ns", nargs="*", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("-K", type=int, default=4096)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--cold", action="store_true")
    p.add_argument("--convert", action="store_true")
    p.add_argument("--isa", help="kernel set for both builds (default: the best the CPU has)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        mods = [("old", load(a.old, "ab_old", tmp)), ("new", load(a.new, "ab_new", tmp))]
        if a.isa:
            for _, m in mods:
                m.set_isa(a.isa)
        rows, K = a.rows, a.K
        rng = np.random.default_rng(0)
        wf = rng.standard_normal((rows, K), dtype=np.float32)
        index = {t.name: t.index for t in iqkq.types()}
        for tname in a.types:
            q = iqkq.quantize(wf, tname)
            ti = index[tname]
            if a.convert and iqkq.type_info(tname).name in ("iq3_xxs", "iq4_ks"):
                outs = [None, None]
                best = [1e9, 1e9]
                for _ in range(a.reps):
                    for k, (_, m) in enumerate(mods):
                        t0 = time.perf_counter()
                        outs[k] = m.convert_large_batch(ti, q.data, rows, K, 1)
                        best[k] = min(best[k], time.perf_counter() - t0)
                same = np.array_equal(outs[0], outs[1])
                print(f"{tname:>11} convert to q8_k_r8 t=1  old {best[0] * 1e3:7.2f}  new {best[1] * 1e3:7.2f} ms  "
                      f"x{best[0] / best[1]:5.2f}  {'same' if same else 'DIFF'}", flush=True)
            for th in a.threads:
                for N in a.ns:
                    x = rng.standard_normal((N, K), dtype=np.float32)
                    ys = [np.empty((N, rows), np.float32) for _ in mods]
                    best = [1e9, 1e9]
                    for _ in range(a.reps):
                        for k, (_, m) in enumerate(mods):
                            t0 = time.perf_counter()
                            m.matmul(ti, q.data, rows, K, x, N, ys[k], th, 0)
                            best[k] = min(best[k], time.perf_counter() - t0)
                    g = [2 * rows * K * N / t / 1e9 for t in best]
                    same = np.array_equal(ys[0].view(np.uint32), ys[1].view(np.uint32))
                    print(f"{tname:>11} hot  N={N:<3d} t={th}  old {g[0]:7.1f}  new {g[1]:7.1f} GFLOPS  "
                          f"x{g[1] / g[0]:5.2f}  {'same' if same else 'DIFF'}", flush=True)
                if a.cold:
                    copies = [np.array(q.data, copy=True) for _ in range(-(-(256 << 20) // q.nbytes) + 1)]
                    x = rng.standard_normal((1, K), dtype=np.float32)
                    y = np.empty((1, rows), np.float32)
                    best = [1e9, 1e9]
                    for _ in range(3):
                        for k, (_, m) in enumerate(mods):
                            t0 = time.perf_counter()
                            for c in copies:
                                m.matmul(ti, c, rows, K, x, 1, y, th, 0)
                            best[k] = min(best[k], (time.perf_counter() - t0) / len(copies))
                    print(f"{tname:>11} cold N=1   t={th}  old {q.nbytes / best[0] / 1e9:6.2f}  "
                          f"new {q.nbytes / best[1] / 1e9:6.2f} GB/s  x{best[0] / best[1]:5.2f}", flush=True)
                    del copies
    return 0


if __name__ == "__main__":
    sys.exit(main())
