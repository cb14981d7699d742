"""Quantize / dequantize throughput of iqkq per type, 1 and 2 threads.

    python bench/quantize.py [--types q8_0 ...] [--rows 4096 -K 4096] [--json out.json]

MB/s counts float32 megabytes (input of quantize, output of dequantize), the unit of the
ik_llama.cpp figures in ../shared/anchors. When the `gguf` package is installed its numpy
quantizer/dequantizer is timed as a peer for the types it knows.
"""
import _quiet_blas  # noqa: F401  (before numpy: see the module)
import argparse
import sys

import numpy as np

import iqkq
from iqkq._bench import machine_summary, median_time, write_json


def gguf_peer(name):
    try:
        import gguf  # type: ignore
        from gguf import quants  # type: ignore
    except Exception:
        return None
    qt = getattr(gguf.GGMLQuantizationType, name.upper(), None)
    if qt is None:
        return None
    return (lambda w: quants.quantize(w, qt)), (lambda b: quants.dequantize(b, qt))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", nargs="*", default=[t.name for t in iqkq.types()])
    p.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("-K", type=int, default=4096)
    p.add_argument("--json")
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((a.rows, a.K), dtype=np.float32)
    imat = np.exp(rng.standard_normal(a.K)).astype(np.float32)
    mb = w.nbytes / 1e6
    print(f"# {machine_summary()}; W = {a.rows} x {a.K} float32 ({mb:.1f} MB)")
    res = []
    for name in a.types:
        for th in a.threads:
            tq = median_time(lambda: iqkq.quantize(w, name, threads=th), min_runs=3, min_time=0.5, warmup=1)
            tqi = median_time(lambda: iqkq.quantize(w, name, imatrix=imat, threads=th), min_runs=3, min_time=0.5,
                              warmup=1)
            q = iqkq.quantize(w, name)
            td = median_time(lambda: iqkq.dequantize(q, threads=th), min_runs=5, min_time=0.3)
            r = dict(type=name, threads=th, quantize_mbs=mb / tq, quantize_imatrix_mbs=mb / tqi, dequantize_mbs=mb / td)
            res.append(r)
            print(f"{name:>10} t={th}  quantize {r['quantize_mbs']:9.1f} MB/s  with imatrix "
                  f"{r['quantize_imatrix_mbs']:9.1f} MB/s  dequantize {r['dequantize_mbs']:9.1f} MB/s")
        peer = gguf_peer(name)
        if peer:
            qf, df = peer
            try:
                qf(w[:8])
                tq = median_time(lambda: qf(w), min_runs=3, min_time=0.5, warmup=1)
            except NotImplementedError:  # gguf-py can dequantize some types it cannot quantize
                tq = None
            b = iqkq.quantize(w, name).rows_view()
            td = median_time(lambda: df(b), min_runs=3, min_time=0.5, warmup=1)
            qs = f"{mb / tq:9.1f} MB/s" if tq else "      n/a    "
            print(f"{'':>10} gguf-py (numpy) quantize {qs}  dequantize {mb / td:9.1f} MB/s")
            res.append(dict(type=name, peer="gguf-py", quantize_mbs=mb / tq if tq else None, dequantize_mbs=mb / td))
    write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
