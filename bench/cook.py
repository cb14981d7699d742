"""Throughput of the model cook against the sum of iqkq.quantize times of its tensors.

    python bench/cook.py [--type iq4_ks] [--tensors 8] [--rows 4096] [-K 4096] [--threads 2] [--dask local:2]

Writes a synthetic BF16 model (``--tensors`` tensors of rows x K) to a temporary folder, then,
alternately (``--repeats`` rounds): (a) iqkq.quantize of every tensor read from the
memory-mapped file, as the cook calls it (same threads), summed; (b) iqkq.quantize_model end
to end (plan, read, quantize, write, fsync, rename). Prints MB/s of source per thread and the
ratio (b) / (a). ``--dask`` adds a run on that scheduler.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

import iqkq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--type", default="iq4_ks")
    ap.add_argument("--tensors", type=int, default=8)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("-K", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=iqkq.get_num_threads())
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dask", default=None)
    ap.add_argument("--dir", default=None, help="folder for the model (default: a temporary one)")
    a = ap.parse_args()
    d = a.dir or tempfile.mkdtemp(prefix="iqkq-cook-bench-")
    src = os.path.join(d, "model-bf16.gguf")
    dst = os.path.join(d, "model-out.gguf")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((a.rows, a.K), dtype=np.float32)
    bits = (w.view(np.uint32) >> 16).astype(np.uint16)
    decl = [(f"blk.{i}.ffn_up.weight", (a.rows, a.K), "bf16") for i in range(a.tensors)]
    with iqkq.gguf.GGUFStreamWriter(src, {"general.architecture": "llama"}, decl) as wr:
        for i in range(a.tensors):
            wr.write(decl[i][0], np.roll(bits, i, axis=1).view(np.uint8))
    mb = a.tensors * a.rows * a.K * 2 / 1e6
    print(f"# {a.tensors} x {a.rows}x{a.K} bf16 = {mb:.0f} MB -> {a.type}, {a.threads} threads, isa {iqkq.isa()}")
    sums, e2e = [], []
    for r in range(a.repeats):
        with iqkq.gguf.read(src) as f:
            t = 0.0
            for ti in f.tensors:
                x = f.tensor(ti)
                t0 = time.perf_counter()
                iqkq.quantize(x, a.type, threads=a.threads)
                t += time.perf_counter() - t0
        sums.append(t)
        rep = iqkq.quantize_model(src, dst, default=a.type, threads=a.threads, progress=False)
        e2e.append(rep.seconds)
        print(f"round {r}: sum of quantize {t:.3f} s ({mb / t / a.threads:.1f} MB/s/thread), "
              f"cook {rep.seconds:.3f} s ({mb / rep.seconds / a.threads:.1f} MB/s/thread; in-cook quantize "
              f"{rep.quantize_seconds:.3f} s), ratio {rep.seconds / t:.3f}")
        sys.stdout.flush()
    print(f"best: sum {min(sums):.3f} s, cook {min(e2e):.3f} s, ratio {min(e2e) / min(sums):.3f}; "
          f"{mb / min(e2e):.1f} MB/s of source ({mb / min(e2e) / a.threads:.1f} per thread)")
    if a.dask:
        t0 = time.perf_counter()
        rep = iqkq.quantize_model(src, dst + ".dask", default=a.type, scheduler=a.dask, progress=False)
        total = time.perf_counter() - t0
        same = open(dst, "rb").read() == open(dst + ".dask", "rb").read()
        print(f"dask {rep.scheduler}: cook {rep.seconds:.3f} s ({mb / rep.seconds:.1f} MB/s), with cluster start/stop "
              f"{total:.3f} s, identical bytes: {same}")
    for p in (src, dst, dst + ".dask"):
        if os.path.exists(p):
            os.unlink(p)


if __name__ == "__main__":
    main()
