"""Command line.

``python -m iqkq map``    which type is fast *and* accurate on this CPU: size, accuracy and
                          speed of every type, with the Pareto-optimal ones marked
                          (``--json`` / ``--csv`` / ``--plot`` to save it);
``python -m iqkq bench``  the speed columns only (``map --speed-only --ns 1 32``);
``python -m iqkq info``   the supported types and the kernel set in use.
``python -m iqkq quantize IN.gguf OUT.gguf``  cook a model from a recipe (and an imatrix), streaming,
                          in this process or on a Dask cluster (docs/cook.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import iqkq

PROG = "python -m iqkq"


def _info(_args) -> int:
    from ._bench import machine_summary

    print(machine_summary())
    print(f"threads: {iqkq.get_num_threads()}")
    print(f"{'type':<11} {'ggml id':>7} {'block':>5} {'bytes':>5} {'meta':>4} {'rows':>4} {'bpw@4096':>8}  activations")
    for t in iqkq.types():
        print(f"{t.name:<11} {t.ggml_id:>7} {t.block_size:>5} {t.type_size:>5} {t.row_meta_size:>4} "
              f"{t.interleave:>4} {t.bpw(4096):>8.3f}  {t.act_format}")
    return 0


# ----------------------------------------------------------------------------- argument types
def _positive_int(what):
    def conv(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {v}")
        return v
    return conv


def _nonneg_float(what, positive=False):
    def conv(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {s!r}") from None
        if not (v > 0 if positive else v >= 0) or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number {'> 0' if positive else '>= 0'}, got {s}")
        return v
    return conv


def _type_name(s):
    try:
        return iqkq.type_info(s).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_map_options(p: argparse.ArgumentParser, *, bench: bool) -> None:
    g = p.add_argument_group("what to measure")
    g.add_argument("--types", nargs="+", type=_type_name, metavar="TYPE",
                   help="types to map, by ggml name (default: every type iqkq has; see `python -m iqkq info`)")
    g.add_argument("--threads", type=_positive_int("--threads"), default=None,
                   help="threads for the speed figures (default: all usable CPUs, or IQKQ_NUM_THREADS)")
    if not bench:
        g.add_argument("--speed-only", action="store_true", help="skip the accuracy columns (this is `bench`)")
        g.add_argument("--accuracy-only", action="store_true", help="skip the speed columns (no timing at all)")
    g.add_argument("--ns", nargs="+", type=_positive_int("--ns"), default=[1, 32] if bench else [], metavar="N",
                   help="extra batch sizes to time hot, W from cache (GFLOPS columns)"
                        + (" (default: 1 32)" if bench else " (default: none)"))
    g.add_argument("--pp-n", type=_positive_int("--pp-n"), default=512, metavar="N",
                   help="batch size of the prompt-processing column (default 512)")
    g.add_argument("--quick", action="store_true",
                   help="shorter timing, 2048 x 4096 synthetic weights, 256 MiB bandwidth buffer (well under a minute)")
    w = p.add_argument_group("weights")
    w.add_argument("--rows", type=_positive_int("--rows"), default=None,
                   help="rows of the synthetic weight matrix (default 4096; 2048 with --quick)")
    w.add_argument("-K", type=_positive_int("-K"), default=None,
                   help="columns of the synthetic weight matrix (default 4096)")
    w.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights and activations")
    if not bench:
        w.add_argument("--gguf", metavar="FILE",
                       help="use real tensors from this GGUF file (any type iqkq can dequantize, or f32 / f16)")
        w.add_argument("--tensor", metavar="REGEX",
                       help="with --gguf: use the tensors whose name matches this regular expression")
        w.add_argument("--max-tensors", type=_positive_int("--max-tensors"), default=4,
                       help="with --gguf: at most this many tensors, spread over the file (default 4)")
        w.add_argument("--max-rows", type=_positive_int("--max-rows"), default=4096,
                       help="with --gguf: at most this many rows of each tensor, evenly spaced (default 4096)")
        w.add_argument("--imatrix", metavar="FILE",
                       help="importance weights: a llama.cpp imatrix file (legacy imatrix.dat or GGUF), .npy (one "
                            "vector per column count K) or .npz (a vector per tensor name); used to quantize and to "
                            "weight the error")
    s = p.add_argument_group("speed details")
    s.add_argument("--model-gb", type=_nonneg_float("--model-gb", positive=True), default=None, metavar="GB",
                   help="model size for the TG tokens/s column (default: an 8B-parameter model at each type's bpw)")
    s.add_argument("--min-time", type=_nonneg_float("--min-time"), default=None, metavar="S",
                   help="seconds of timed runs per contender of a hot figure (default 1.0; 0.1 with --quick)")
    s.add_argument("--cold-mib", type=_positive_int("--cold-mib"), default=None, metavar="MIB",
                   help="size of the rotation that keeps N=1 weights out of cache (default 256; 128 with --quick)")
    s.add_argument("--limits-mib", type=_positive_int("--limits-mib"), default=None, metavar="MIB",
                   help="buffer of the bandwidth measurement (default 1024, 256 with --quick, less if memory is short)")
    s.add_argument("--no-limits", action="store_true",
                   help="do not measure the machine limits (no %%BW / %%peak columns)")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="PATH", help="write machine, settings and records as JSON")
    o.add_argument("--csv", metavar="PATH", help="write one row per type as CSV")
    o.add_argument("--plot", metavar="PATH.png",
                   help="write a PNG: accuracy vs bpw, one panel for TG and one for PP speed, Pareto front drawn "
                        '(needs matplotlib: pip install "iqkq[plot]")')
    o.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _check_out_path(p, opt, path):
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        p.error(f"{opt}: folder {d!r} does not exist")


def _map(p: argparse.ArgumentParser, args, *, bench: bool) -> int:
    from . import limits as L
    from . import qmap

    speed_only = bench or args.speed_only
    accuracy_only = not bench and args.accuracy_only
    if speed_only and accuracy_only:
        p.error("--speed-only and --accuracy-only exclude each other")
    for opt in ("json", "csv", "plot"):
        if getattr(args, opt):
            _check_out_path(p, f"--{opt}", getattr(args, opt))
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error('--plot needs matplotlib, which is not installed: pip install "iqkq[plot]" (or pip install matplotlib)')
    gguf_path = getattr(args, "gguf", None)
    if gguf_path is None and getattr(args, "tensor", None):
        p.error("--tensor needs --gguf")
    if gguf_path is not None and (args.rows or args.K):
        p.error("--rows / -K set the synthetic weights; with --gguf the tensors' own shapes are used")
    if gguf_path is not None and not os.path.isfile(gguf_path):
        p.error(f"--gguf: no such file: {gguf_path}")
    if getattr(args, "imatrix", None) and not os.path.isfile(args.imatrix):
        p.error(f"--imatrix: no such file: {args.imatrix}")
    threads = args.threads or iqkq.get_num_threads()
    notes = []
    label = None
    weights = None
    t_start = time.perf_counter()
    try:
        if gguf_path is not None:
            weights, notes = qmap.gguf_weights(gguf_path, args.tensor, max_tensors=args.max_tensors,
                                               max_rows=args.max_rows)
            label = f"{os.path.basename(gguf_path)}: " + ", ".join(f"{n} {w.shape[0]}x{w.shape[1]}"
                                                                    for n, w in weights.items())
        else:
            rows = args.rows or (2048 if args.quick else 4096)
            K = args.K or 4096
            weights = {"synthetic": qmap.synthetic_weights(rows, K, seed=args.seed)}
            label = qmap.synthetic_label(rows, K, args.seed)
        imatrix = None
        if getattr(args, "imatrix", None):
            imatrix = qmap.load_imatrix(args.imatrix)
        lim = False
        if not args.no_limits and not accuracy_only:
            mib = args.limits_mib or (256 if args.quick else 1024)
            lim = L.measure(sorted({1, threads}), nbytes=L.buffer_bytes(mib << 20), repeats=3 if args.quick else 5,
                            seconds=0.02 if args.quick else 0.05, fma=False,
                            isas=[iqkq.isa()] if iqkq.isa() != "scalar" else [])
        settings_preview = {"weights": label, "imatrix": getattr(args, "imatrix", None)}
        info = qmap.machine_info(lim or None, threads)
        for line in qmap._header_lines(info, lim or None, settings_preview):
            print(f"# {line}")
        for n in notes:
            print(f"# note: {n}")
        sys.stdout.flush()

        from tqdm.auto import tqdm

        settings = {"accuracy": not speed_only, "speed": not accuracy_only, "hot_ns": args.ns, "pp_n": args.pp_n,
                    "model_gb": args.model_gb}
        cols = qmap._columns(settings)

        def out(line):
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()

        out(qmap._fmt_head(cols))
        m = qmap.quant_map(args.types, weights, imatrix=imatrix, threads=threads, accuracy=not speed_only,
                           speed=not accuracy_only, pp_n=args.pp_n, hot_ns=args.ns, model_gb=args.model_gb,
                           quick=args.quick, min_time=args.min_time,
                           cold_bytes=None if args.cold_mib is None else args.cold_mib << 20,
                           limits=lim, weights_label=label, notes=notes, seed=args.seed,
                           progress=not args.no_progress,
                           on_row=lambda r: out(qmap._fmt_row(cols, r)),
                           on_skip=lambda name, why: out(f"{name:<11} skipped: {why}"))
    except (ValueError, TypeError, OSError) as e:
        print(f"{PROG} {'bench' if bench else 'map'}: error: {e}", file=sys.stderr)
        return 2
    for line in qmap._numpy_lines(m.numpy, m.settings):
        print(line)
    for r in m.records:
        for n in r["notes"]:
            print(f"# {r['type']}: {n}")
    for n in m.notes[len(notes):]:
        print(f"# note: {n}")
    for line in qmap._legend(m.settings):
        print(f"# {line}")
    if not m.records:
        print("# no type could take these shapes", file=sys.stderr)
    try:
        if args.json:
            m.to_json(args.json)
            print(f"# wrote {args.json}")
        if args.csv:
            m.to_csv(args.csv)
            print(f"# wrote {args.csv}")
        if args.plot:
            m.plot(args.plot)
            print(f"# wrote {args.plot}")
    except (OSError, ImportError) as e:
        print(f"{PROG} map: error: {e}", file=sys.stderr)
        return 2
    print(f"# {time.perf_counter() - t_start:.0f} s")
    return 0 if m.records else 1


def _add_quantize_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="IN.gguf", help="model to quantize (F32 / F16 / BF16 tensors; iqkq's types are re-quantized)")
    p.add_argument("dst", metavar="OUT.gguf", help="output (written to a temporary file, renamed when complete)")
    p.add_argument("--recipe", metavar="FILE",
                   help="rules, one regex=type per line (# comments, blank lines); applied before --custom-q")
    p.add_argument("--custom-q", metavar="RULES", dest="custom_q",
                   help='ik_llama.cpp\'s --custom-q: "regex=type,regex=type", first match (re.search) wins')
    p.add_argument("--default", metavar="TYPE",
                   help="type of the tensors no rule matches (default: leave them as they are); sets general.file_type")
    p.add_argument("--imatrix", metavar="FILE", help="importance matrix: legacy imatrix.dat or GGUF imatrix")
    p.add_argument("--threads", type=_positive_int("--threads"), default=None, metavar="N",
                   help="iqkq threads per tensor (default: all usable CPUs; with --dask, per worker)")
    p.add_argument("--dask", metavar="local[:N]|ADDRESS",
                   help="run the per-tensor work on Dask: a LocalCluster of N worker processes, or the scheduler "
                        'at ADDRESS (tcp://host:8786); needs pip install "iqkq[dask]"')
    p.add_argument("--max-in-flight", type=_positive_int("--max-in-flight"), default=None, metavar="N",
                   help="tensors quantized or waiting to be written at once (default 2, or 2 per Dask worker)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (tensor, shape, source type -> target type, bytes) and the output size")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-tensor lines, no progress bar")


def _quantize(args) -> int:
    import warnings

    from . import cook

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{PROG} quantize: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    try:
        rules = []
        if args.recipe:
            rules += cook.load_recipe(args.recipe)
        if args.custom_q:
            rules += cook.parse_rules(args.custom_q)
        if not rules and args.default is None:
            raise cook.CookError("nothing to do: give --default TYPE and / or rules (--custom-q, --recipe)")
        iqkq.quantize_model(args.src, args.dst, rules, imatrix=args.imatrix, default=args.default,
                            threads=args.threads, scheduler=args.dask, progress=not args.quiet or args.dry_run,
                            dry_run=args.dry_run, max_in_flight=args.max_in_flight,
                            file=sys.stdout if args.dry_run else sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG} quantize: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the plan piped into `head`: stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 1
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as e:
        msg = " ".join(str(e).split())
        if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
            msg = f"{e.filename}: {msg}"
        print(f"{PROG} quantize: error: {msg}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="iqkq command line")
    sub = p.add_subparsers(dest="cmd", metavar="{map,bench,info,quantize}")
    mp = sub.add_parser("map", help="which type is fast and accurate on this CPU: size, accuracy, speed, Pareto front",
                        description=__import__("iqkq.qmap").qmap.__doc__.split("\n\n")[0] + " See `pydoc iqkq.qmap`.")
    _add_map_options(mp, bench=False)
    bp = sub.add_parser("bench", help="matmul speed of every type on this CPU (map --speed-only --ns 1 32)",
                        description="Speed columns of the map: N=1 with weights from DRAM (TG), N=512 (PP) and "
                                    "extra hot batch sizes (--ns), each beside numpy float32 timed alternately.")
    _add_map_options(bp, bench=True)
    sub.add_parser("info", help="supported types and kernel set", description="Supported types and the kernel set.")
    qp = sub.add_parser("quantize", help="cook a GGUF model from rules (ik_llama.cpp's --custom-q) and an imatrix",
                        description="Quantize a GGUF model tensor by tensor, as ik_llama.cpp's llama-quantize "
                                    "with --custom-q does (same tensors, rules, fallbacks, metadata; bytes of "
                                    "iqkq.quantize), streaming from the memory-mapped input. See docs/cook.md.")
    _add_quantize_options(qp)
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.cmd in ("bench", "map"):
        if argv is None and "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
            # OpenBLAS's workers busy-wait ~0.1 s (2^28 cycles) after every call and would
            # steal a core from the iqkq call timed next to it; the setting is read when numpy
            # loads OpenBLAS, which has happened already, so restart with it set.
            env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT="4")
            os.execve(sys.executable, [sys.executable, "-m", "iqkq", *sys.argv[1:]], env)
        sub = p._subparsers._group_actions[0].choices[args.cmd]
        try:
            return _map(sub, args, bench=args.cmd == "bench")
        except KeyboardInterrupt:
            print(f"{PROG} {args.cmd}: interrupted", file=sys.stderr)
            return 130
    if args.cmd == "info":
        return _info(args)
    if args.cmd == "quantize":
        return _quantize(args)
    p.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
