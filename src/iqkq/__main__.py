"""Command line: ``python -m iqkq bench`` prints a quick speed table for this CPU;
``python -m iqkq info`` prints the supported types and the kernel set in use."""
from __future__ import annotations

import argparse
import os
import sys

import iqkq


def _info(_args) -> int:
    from ._bench import machine_summary

    print(machine_summary())
    print(f"threads: {iqkq.get_num_threads()}")
    print(f"{'type':<11} {'ggml id':>7} {'block':>5} {'bytes':>5} {'meta':>4} {'rows':>4} {'bpw@4096':>8}  activations")
    for t in iqkq.types():
        print(f"{t.name:<11} {t.ggml_id:>7} {t.block_size:>5} {t.type_size:>5} {t.row_meta_size:>4} "
              f"{t.interleave:>4} {t.bpw(4096):>8.3f}  {t.act_format}")
    return 0


def _bench(args) -> int:
    from ._bench import machine_summary, matmul_sweep

    threads = args.threads or iqkq.get_num_threads()
    types = args.types or [t.name for t in iqkq.types()]
    print(f"# {machine_summary()}")
    print(f"# iqkq.matmul on W = {args.rows} x {args.K}, x = N x {args.K}, {threads} thread(s); "
          "numpy = float32 x @ W.T in the same run")
    res = matmul_sweep(types, args.ns, [threads], args.rows, args.K, cold=False, log=None, min_time=args.min_time)
    cols = args.ns
    head = f"{'type':<11}" + "".join(f"{'N=' + str(n) + ' GFLOPS':>16}" for n in cols) + f"{'bpw':>7}"
    print(head)
    npr = {r["N"]: r["numpy_gflops"] for r in res}
    print(f"{'numpy f32':<11}" + "".join(f"{npr[n]:>16.1f}" for n in cols) + f"{32.0:>7.2f}")
    for name in types:
        row = {r["N"]: r for r in res if r["type"] == name}
        cells = "".join(f"{row[n]['iqkq_gflops']:>8.1f} ({row[n]['ratio']:4.1f}x)" for n in cols)
        print(f"{name:<11}{cells}{iqkq.type_info(name).bpw(args.K):>7.2f}")
    print("(x) = speed relative to numpy float32 in this run")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m iqkq", description="iqkq command line")
    sub = p.add_subparsers(dest="cmd")
    b = sub.add_parser("bench", help="quick matmul speed table for this CPU")
    b.add_argument("--types", nargs="*")
    b.add_argument("--ns", nargs="*", type=int, default=[1, 32, 512])
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--rows", type=int, default=4096)
    b.add_argument("-K", type=int, default=4096)
    b.add_argument("--min-time", type=float, default=0.2)
    sub.add_parser("info", help="supported types and kernel set")
    args = p.parse_args(argv)
    if args.cmd == "bench":
        if argv is None and "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
            # OpenBLAS's workers busy-wait ~0.1 s (2^28 cycles) after every call and would
            # steal a core from the iqkq call timed next to it; the setting is read when numpy
            # loads OpenBLAS, which has happened already, so restart with it set.
            env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT="4")
            os.execve(sys.executable, [sys.executable, "-m", "iqkq", *sys.argv[1:]], env)
        return _bench(args)
    if args.cmd == "info":
        return _info(args)
    p.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
