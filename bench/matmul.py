"""Matmul speed of iqkq per type against numpy float32 (its BLAS), measured in the same run,
and as a fraction of this machine's limits.

    python bench/matmul.py                      # all types, N in 1..512, 1 and 2 threads
    python bench/matmul.py --types q8_0 --ns 1 512 --json out.json

Hot: the same W every call (fits in cache). Cold (N=1): the call rotates over >= 256 MB of
weight copies so W comes from DRAM, as in token generation; reported as GB/s of weights and
as a fraction of the streaming read bandwidth at the same thread count. GFLOPS = 2*rows*K*N / t,
with iqkq's activation quantization (and, for N >= 32, its weight conversion) inside t; for
N >= 32 also as a fraction of the int8 dot-product peak of the active kernel set (GOPS, an
int8 multiply-add counted as 2 operations like a float one). The limits are measured first
(see bench/limits.py).
"""
import _quiet_blas  # noqa: F401  (before numpy: see the module)
import argparse
import sys

import iqkq
import iqkq.limits as L
from iqkq._bench import machine_summary, matmul_sweep, write_json


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", nargs="*", default=[t.name for t in iqkq.types()], help="types to time (default: all)")
    p.add_argument("--ns", nargs="*", type=int, default=[1, 2, 4, 8, 16, 32, 64, 128, 512],
                   help="batch sizes N (activation rows)")
    p.add_argument("--threads", nargs="*", type=int, default=[1, 2], help="thread counts")
    p.add_argument("--rows", type=int, default=4096, help="rows of W")
    p.add_argument("-K", type=int, default=4096, help="columns of W")
    p.add_argument("--no-cold", action="store_true", help="skip the N=1 cold (weights from DRAM) cells")
    p.add_argument("--no-limits", action="store_true", help="do not measure the machine limits (no fractions)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of timed runs per figure")
    p.add_argument("--torch", action="store_true",
                   help="also time PyTorch float32 linear and fbgemm dynamic int8 Linear, when torch is installed")
    p.add_argument("--json", help="write the results to this file")
    a = p.parse_args(argv)
    print(f"# {machine_summary()}; W = {a.rows} x {a.K}")
    lim = None
    if not a.no_limits:
        lim = L.measure(a.threads, repeats=5, fma=False, isas=[iqkq.isa()] if iqkq.isa() != "scalar" else [])
        for line in lim.lines():
            print(f"# {line}")
    res = matmul_sweep(a.types, a.ns, a.threads, a.rows, a.K, cold=not a.no_cold, min_time=a.min_time, torch=a.torch,
                       limits=lim)
    if lim is not None:
        res.append({"type": "limits", "mode": "limits", **lim.as_dict()})
    write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
