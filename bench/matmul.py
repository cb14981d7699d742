"""Matmul speed of iqkq per type against numpy float32 (its BLAS), measured in the same run.

    python bench/matmul.py                      # all types, N in 1..512, 1 and 2 threads
    python bench/matmul.py --types q8_0 --ns 1 512 --json out.json

Hot: the same W every call (fits in cache). Cold (N=1): the call rotates over >= 256 MB of
weight copies so W comes from DRAM, as in token generation; reported as GB/s of weights.
GFLOPS = 2*rows*K*N / t, with iqkq's activation quantization (and, for N >= 32, its weight
conversion) inside t.
"""
import _quiet_blas  # noqa: F401  (before numpy: see the module)
import argparse
import sys

import iqkq
from iqkq._bench import machine_summary, matmul_sweep, write_json


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", nargs="*", default=[t.name for t in iqkq.types()])
    p.add_argument("--ns", nargs="*", type=int, default=[1, 2, 4, 8, 16, 32, 64, 128, 512])
    p.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("-K", type=int, default=4096)
    p.add_argument("--no-cold", action="store_true")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of timed runs per figure")
    p.add_argument("--torch", action="store_true",
                   help="also time PyTorch float32 linear and fbgemm dynamic int8 Linear, when torch is installed")
    p.add_argument("--json", help="write the results to this file")
    a = p.parse_args(argv)
    print(f"# {machine_summary()}; W = {a.rows} x {a.K}")
    res = matmul_sweep(a.types, a.ns, a.threads, a.rows, a.K, cold=not a.no_cold, min_time=a.min_time, torch=a.torch)
    write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
