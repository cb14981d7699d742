"""Bounded, seeded fuzz run over iqkq's public functions (CI runs it, also under ASan/UBSan).

    python tools/fuzz.py [--examples N] [--only NAME ...]

For arbitrary arguments (shapes, dtypes, values including NaN / Inf / denormals / huge, raw
weight bytes, thread counts, paths, corrupt GGUF files) every call must either return or raise
one of the documented exceptions (TypeError, ValueError; MemoryError for absurd sizes), and
every result must be bit-identical across the kernel sets this CPU has and across thread counts.
Hypothesis runs derandomized (a fixed example sequence) with a fixed example budget per target,
so a run is repeatable and bounded in time. Exit status 1 on the first violation.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

import iqkq
from iqkq import _core

ISAS = [n for n in _core.constants()["isas"] if _core.isa_supported(n)]
TYPES = [t.name for t in iqkq.types()]
OK = (TypeError, ValueError)

floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)
special = st.sampled_from([0.0, -0.0, 1e-45, 1e-38, 1e-30, 3e38, -3e38, np.inf, -np.inf, np.nan, 65504.0, 8.5e6])


def on_isas(fn):
    out = []
    prev = iqkq.isa()
    try:
        for name in ISAS:
            iqkq.set_isa(name)
            out.append(fn())
    finally:
        iqkq.set_isa(prev)
    return out


def same(a, b):
    if isinstance(a, iqkq.QuantizedTensor):
        return a == b
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def check_consistent(fn):
    """fn() on every kernel set and with 1 / 3 threads: same result, or the same exception type."""
    results = []
    for threads in (1, 3):
        def call():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    return ("ok", fn(threads))
            except OK as e:
                return ("err", type(e))
        results += on_isas(call)
    kind, ref = results[0]
    for k, r in results[1:]:
        assert k == kind, f"one kernel set / thread count raised, another did not: {results}"
        assert (r is ref) if kind == "err" else same(r, ref), "results differ between kernel sets or thread counts"


@st.composite
def float_arrays(draw, max_rows=12, block=None):
    qt = draw(st.sampled_from(TYPES))
    t = iqkq.type_info(qt)
    rows = draw(st.integers(0, max_rows)) * t.interleave if draw(st.booleans()) else draw(st.integers(0, 40))
    K = draw(st.integers(1, 3)) * t.block_size if draw(st.integers(0, 9)) else draw(st.integers(0, 600))
    kind = draw(st.sampled_from(["normal", "special", "mixed", "big", "tiny"]))
    r = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    w = r.standard_normal((rows, K)).astype(np.float32)
    if kind == "special":
        w = np.full((rows, K), draw(special), np.float32)
    elif kind == "mixed" and w.size:
        idx = r.integers(0, w.size, max(1, w.size // 50))
        w.reshape(-1)[idx] = draw(special)
    elif kind == "big":
        w *= np.float32(draw(st.sampled_from([1e4, 1e8, 1e20, 1e37])))
    elif kind == "tiny":
        w *= np.float32(draw(st.sampled_from([1e-20, 1e-38, 1e-44])))
    return qt, w


@st.composite
def weights_and_x(draw):
    qt = draw(st.sampled_from(TYPES))
    t = iqkq.type_info(qt)
    rows = draw(st.integers(1, 6)) * t.interleave * draw(st.sampled_from([1, 8]))
    K = draw(st.integers(1, 3)) * t.block_size
    r = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    if draw(st.booleans()):
        q = iqkq.QuantizedTensor(r.integers(0, 256, rows * t.row_bytes(K), dtype=np.uint8), qt, (rows, K))
    else:
        q = iqkq.quantize(r.standard_normal((rows, K)).astype(np.float32), qt)
    N = draw(st.sampled_from([1, 2, 3, 7, 31, 32, 33, 64, 65]))
    x = r.standard_normal((N, K)).astype(np.float32) * np.float32(draw(st.sampled_from([1, 1e-38, 1e20])))
    if draw(st.booleans()) and x.size:
        x.reshape(-1)[r.integers(0, x.size, 3)] = draw(special)
    return q, x


def target_quantize(examples):
    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(float_arrays(), st.booleans(), st.integers(0, 2 ** 31 - 1))
    def run(case, use_im, seed):
        qt, w = case
        im = None
        if use_im and w.ndim == 2:
            r = np.random.default_rng(seed)
            im = np.abs(r.standard_normal(w.shape[1])).astype(np.float32) * np.float32(r.choice([1, 0, 1e30]))

        def f(th):
            q = iqkq.quantize(w, qt, imatrix=im, threads=th)
            return [q.data.copy(), iqkq.dequantize(q, threads=th)]

        check_consistent(lambda th: np.concatenate([a.reshape(-1).view(np.uint8) for a in f(th)]))

    run()


def target_matmul(examples):
    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(weights_and_x(), st.sampled_from(["auto", "direct", "repack", "bogus"]))
    def run(case, path):
        q, x = case
        check_consistent(lambda th: iqkq.matmul(q, x, threads=th, path=path))
        check_consistent(lambda th: iqkq.fused_up_gate(q, q, x, threads=th, act="gelu"))
        t = q.type_info
        for other in filter(None, (t.base, t.interleaved, t.large_batch)):
            check_consistent(lambda th: iqkq.repack(q, other, threads=th))

    run()


def target_moe(examples):
    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(TYPES), st.integers(0, 4), st.integers(0, 40), st.integers(0, 3), st.integers(0, 2 ** 31))
    def run(qt, E, T, n_used, seed):
        t = iqkq.type_info(qt)
        r = np.random.default_rng(seed)
        rows, K = 8 * t.interleave, t.block_size
        w = iqkq.quantize(r.standard_normal((E, rows, K)).astype(np.float32), qt)
        ids = r.integers(-2, E + 2, (T, n_used))
        x = r.standard_normal((T, K)).astype(np.float32)
        check_consistent(lambda th: iqkq.moe_up_gate(w, w, x, ids, threads=th))

    run()


def target_arguments(examples):
    """Wrong types and shapes for every argument: documented exceptions only."""
    junk = st.one_of(st.none(), st.integers(-3, 3), st.floats(), st.text(max_size=4), st.binary(max_size=8),
                     st.lists(st.integers(), max_size=3), st.just(np.zeros((2, 3), np.int64)),
                     st.just(np.zeros(0, np.float32)), st.just(np.array([object()])))

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(junk, junk, junk, st.sampled_from(TYPES))
    def run(a, b, c, qt):
        t = iqkq.type_info(qt)
        q = iqkq.quantize(np.ones((t.interleave, t.block_size), np.float32), qt)
        calls = [lambda: iqkq.quantize(a, qt, imatrix=b, threads=c), lambda: iqkq.quantize(a, b),
                 lambda: iqkq.matmul(q, a, threads=b, path=c), lambda: iqkq.matmul(a, b),
                 lambda: iqkq.dequantize(a), lambda: iqkq.repack(q, a, threads=b),
                 lambda: iqkq.QuantizedTensor(a, qt, b), lambda: iqkq.QuantizedTensor(q.data, a, b),
                 lambda: iqkq.fused_up_gate(q, q, a, act=b, limit=c), lambda: iqkq.moe_up_gate(q, q, a, b),
                 lambda: iqkq.set_num_threads(a), lambda: iqkq.type_info(a)]
        for call in calls:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    call()
            except OK:
                pass
        iqkq.set_num_threads(2)

    run()


def target_gguf(examples):
    """Mutated GGUF files: load either succeeds or raises ValueError."""
    base = io.BytesIO()
    d = tempfile.mkdtemp()
    path = os.path.join(d, "seed.gguf")
    tensors = {"a": iqkq.quantize(np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32), "q8_0"),
               "b": np.arange(16, dtype=np.float32)}
    iqkq.gguf.save(path, tensors, {"general.architecture": "llama", "n": 3, "names": ["x", "y"]})
    data = open(path, "rb").read()
    del base

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), min_size=1, max_size=6),
           st.integers(0, len(data)))
    def run(edits, cut):
        buf = bytearray(data[:max(cut, 24)] if cut < len(data) // 2 else data)
        for pos, val in edits:
            if pos < len(buf):
                buf[pos] = val
        p = os.path.join(d, "m.gguf")
        with open(p, "wb") as f:
            f.write(buf)
        try:
            tensors, _ = iqkq.gguf.load(p)
            for v in tensors.values():
                if isinstance(v, iqkq.QuantizedTensor):
                    iqkq.dequantize(v)
                else:
                    np.asarray(v).sum()
        except ValueError:
            pass

    run()


TARGETS = {"quantize": target_quantize, "matmul": target_matmul, "moe": target_moe,
           "arguments": target_arguments, "gguf": target_gguf}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=300, help="examples per target (default 300)")
    p.add_argument("--only", nargs="*", choices=sorted(TARGETS), help="run only these targets")
    args = p.parse_args(argv)
    print(f"iqkq fuzz: kernel sets {ISAS}, {len(TYPES)} types, {args.examples} examples per target", flush=True)
    for name in args.only or TARGETS:
        t0 = time.perf_counter()
        try:
            TARGETS[name](args.examples)
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            return 1
        print(f"ok   {name} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
