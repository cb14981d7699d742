"""This machine's limits: streaming read bandwidth, int8 dot-product peak and f32 FMA peak.

    python bench/limits.py                    # 1 and all threads, 1 GiB buffer, best of 7
    python bench/limits.py --threads 1 2 --mib 2048 --repeats 9 --json limits.json

The microkernels are in iqkq's C++ core (see iqkq.limits): a plain front-to-back read with
the AVX2 and AVX-512 loops (the better one counts), int8 chains of each kernel set (AVX2:
VPMADDUBSW + VPMADDWD on YMM; AVX-512: VPDPBUSD on ZMM), and independent FMA chains.
bench/matmul.py divides its figures by these.
"""
import _quiet_blas  # noqa: F401  (before numpy: see the module)
import argparse
import sys

import iqkq
import iqkq.limits as L
from iqkq._bench import machine_summary, write_json


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", nargs="+", type=int, default=None,
                   help="thread counts to measure (default: 1 and all usable CPUs)")
    p.add_argument("--mib", type=int, default=None,
                   help="bandwidth buffer in MiB (default 1024, less when memory is short)")
    p.add_argument("--repeats", type=int, default=7, help="bandwidth passes per figure; the best is the limit")
    p.add_argument("--seconds", type=float, default=0.1, help="length of one peak run")
    p.add_argument("--json", help="write the limits to this file")
    a = p.parse_args(argv)
    if a.threads is not None and min(a.threads) < 1:
        p.error("--threads: thread counts must be >= 1")
    print(f"# {machine_summary()}")
    lim = L.measure(a.threads, nbytes=None if a.mib is None else a.mib << 20, repeats=a.repeats, seconds=a.seconds)
    for line in lim.lines():
        print(line)
    write_json(a.json, [lim.as_dict()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
