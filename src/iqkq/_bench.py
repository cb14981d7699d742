"""Timing helpers shared by ``python -m iqkq bench`` and the scripts in ``bench/``.

Every figure is a median of repeated runs after warm-up, and every iqkq figure is printed
next to a peer (numpy float32 matmul, i.e. the BLAS numpy links) measured in the same run.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import time
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np

import iqkq


# ----------------------------------------------------------------------------- BLAS threads
def _openblas_handles():
    """(set, get) functions of the OpenBLAS numpy was built with, if it can be found."""
    libs = []
    base = os.path.dirname(np.__file__)
    for d in (os.path.join(base, "..", "numpy.libs"), os.path.join(base, ".libs"), os.path.join(base, ".dylibs")):
        libs += glob.glob(os.path.join(d, "*openblas*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for s, g in (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                     ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
                     ("openblas_set_num_threads", "openblas_get_num_threads")):
            if hasattr(lib, s) and hasattr(lib, g):
                return getattr(lib, s), getattr(lib, g)
    return None


_BLAS = None


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[bool]:
    """Limit numpy's BLAS to n threads inside the block; yields whether it could."""
    try:
        from threadpoolctl import threadpool_limits  # type: ignore

        with threadpool_limits(limits=n, user_api="blas"):
            yield True
        return
    except ImportError:
        pass
    global _BLAS
    if _BLAS is None:
        _BLAS = _openblas_handles() or False
    if not _BLAS:
        yield False
        return
    set_n, get_n = _BLAS
    old = get_n()
    set_n(n)
    try:
        yield True
    finally:
        set_n(old)


# ----------------------------------------------------------------------------- timing
def median_time(fn: Callable[[], object], *, warmup: int = 2, min_runs: int = 5, min_time: float = 0.3,
                max_runs: int = 200) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < min_time and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def interleaved_times(fns: List[Callable[[], object]], *, warmup: int = 2, min_rounds: int = 5,
                      min_time: float = 0.3, max_rounds: int = 200) -> List[float]:
    """Fastest wall time of each fn, calling them in turn round after round.

    Alternating the contenders makes a comparison immune to the machine's speed drifting
    between them (shared machines drift by 10-20 % over minutes); the minimum is the
    estimate least disturbed by other work.
    """
    for _ in range(warmup):
        for f in fns:
            f()
    best = [float("inf")] * len(fns)
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - start < min_time * len(fns) and rounds < max_rounds):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            best[i] = min(best[i], time.perf_counter() - t0)
        rounds += 1
    return best


def cold_rotation_time(fns: List[Callable[[], object]], *, rounds: int = 3) -> float:
    """Median per-call time over full passes through fns (each touching different memory)."""
    for f in fns[:2]:
        f()
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for f in fns:
            f()
        per_call.append((time.perf_counter() - t0) / len(fns))
    return float(np.median(per_call))


def gflops(rows: int, K: int, N: int, seconds: float) -> float:
    return 2.0 * rows * K * N / seconds / 1e9


# ----------------------------------------------------------------------------- optional peers
def torch_peers(wf: np.ndarray):
    """PyTorch peers if torch is installed: float32 F.linear and the fbgemm dynamic int8
    Linear (per-tensor int8 weights, activations quantized per call). Returns
    {name: (set_threads, make_fn(x) -> callable)} or {}."""
    try:
        import torch  # type: ignore
    except Exception:
        return {}
    peers = {}
    W = torch.from_numpy(wf)
    lin = torch.nn.Linear(wf.shape[1], wf.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(W)
    peers["torch f32"] = (torch.set_num_threads, lambda x: (lambda xt=torch.from_numpy(x): torch.nn.functional.linear(xt, W)))
    try:
        torch.backends.quantized.engine = "fbgemm"
        import warnings

        with warnings.catch_warnings():  # torch >= 2.10 warns that its quantized tensors are deprecated
            warnings.simplefilter("ignore")
            qlin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                          dtype=torch.qint8)

        def make(x, qlin=qlin):
            xt = torch.from_numpy(x)

            def run():
                with torch.no_grad():
                    return qlin(xt)
            return run
        peers["torch int8 (fbgemm)"] = (torch.set_num_threads, make)
    except Exception:
        pass
    return peers


# ----------------------------------------------------------------------------- matmul cells
# The one timing core: bench/matmul.py and `python -m iqkq map` / `bench` measure every
# matmul figure with these functions.
def cold_copies(q: "iqkq.QuantizedTensor", cold_bytes: int = 256 << 20) -> List["iqkq.QuantizedTensor"]:
    """Copies of q that together exceed ``cold_bytes`` (at least 2): rotating over them makes
    every call read its weights from DRAM, as token generation does."""
    ncopy = max(2, -(-int(cold_bytes) // max(1, q.nbytes)) + 1)
    return [iqkq.QuantizedTensor(q.data.copy(), q.qtype, q.shape) for _ in range(ncopy)]


def numpy_cold_copies(wT: np.ndarray, cold_bytes: int = 256 << 20) -> List[np.ndarray]:
    """Independent copies of the float32 matrix wT that together exceed ``cold_bytes`` (at
    least 2), for the numpy peer of a cold figure. (``np.ascontiguousarray`` of a contiguous
    array is the array itself, not a copy: a rotation over such "copies" is a hot loop.)"""
    ncopy = max(2, -(-int(cold_bytes) // max(1, wT.nbytes)) + 1)
    return [wT.copy(order="C") for _ in range(ncopy)]


def time_cold(q: "iqkq.QuantizedTensor", x1: np.ndarray, threads: int, *, cold_bytes: int = 256 << 20,
              rounds: int = 3, copies: Optional[List] = None) -> float:
    """Seconds per N=1 call of iqkq.matmul with W from DRAM (rotation over cold copies)."""
    cs = copies if copies is not None else cold_copies(q, cold_bytes)
    return cold_rotation_time([(lambda c=c: iqkq.matmul(c, x1, threads=threads)) for c in cs], rounds=rounds)


def time_numpy_cold(wT_copies: List[np.ndarray], x1: np.ndarray, threads: int, *, rounds: int = 3) -> float:
    """Seconds per N=1 numpy float32 x @ W.T with W from DRAM (rotation over the copies)."""
    with blas_threads(threads):
        return cold_rotation_time([(lambda c=c: x1 @ c) for c in wT_copies], rounds=rounds)


def time_hot_pair(q: "iqkq.QuantizedTensor", x: np.ndarray, wT: np.ndarray, threads: int, *,
                  min_time: float = 0.3, min_rounds: int = 5,
                  also: Optional[Callable[[], object]] = None) -> "tuple[float, float, bool]":
    """(iqkq seconds, numpy seconds, numpy threads limited?) of one hot matmul cell: the
    same W every call, iqkq.matmul and numpy float32 ``x @ W.T`` timed alternately.
    ``also`` is called in each round too (e.g. an :class:`iqkq.limits.Int8Runner`, so the
    limit is measured at the same moments)."""
    fns = [lambda: iqkq.matmul(q, x, threads=threads), lambda: x @ wT] + ([also] if also is not None else [])
    with blas_threads(threads) as ok:
        times = interleaved_times(fns, min_time=min_time, min_rounds=min_rounds)
    return times[0], times[1], ok


def frac(value: Optional[float], limit: Optional[float]) -> Optional[float]:
    """value / limit, or None when either is unknown."""
    return None if value is None or not limit else value / limit


# ----------------------------------------------------------------------------- matmul sweep
def matmul_sweep(type_names: List[str], Ns: List[int], threads_list: List[int], rows: int, K: int, *,
                 cold: bool = True, cold_bytes: int = 256 << 20, seed: int = 0,
                 log: Optional[Callable[[str], None]] = print, min_time: float = 0.3, torch: bool = False,
                 limits=None) -> List[Dict]:
    """Time iqkq.matmul for each type / N / thread count beside numpy float32 x @ W.T.

    ``limits`` (an :class:`iqkq.limits.Limits`) adds each cell's fraction of the machine
    limit: N=1 cold GB/s of weights / streaming read bandwidth, N >= 32 GOPS / int8 peak of
    the active kernel set (same thread count)."""
    rng = np.random.default_rng(seed)
    wf = rng.standard_normal((rows, K), dtype=np.float32)
    xs = {N: rng.standard_normal((N, K), dtype=np.float32) for N in Ns}
    results: List[Dict] = []
    # The numpy peer is timed right next to each iqkq figure (not once up front): these
    # machines drift by 10-20 % over minutes, and a ratio is only meaningful from one moment.
    wT = np.ascontiguousarray(wf.T)
    np_cold_copies: List[np.ndarray] = []
    ok_all = True
    active = iqkq.isa()

    def np_hot(N, th):
        nonlocal ok_all
        with blas_threads(th) as ok:
            ok_all &= ok
            return median_time(lambda: xs[N] @ wT, min_time=min_time)

    def np_cold(th):
        if not np_cold_copies:
            np_cold_copies.extend(numpy_cold_copies(wT, cold_bytes))
        return time_numpy_cold(np_cold_copies, xs[1][0], th)

    for name in type_names:
        q = iqkq.quantize(wf, name)
        for th in threads_list:
            for N in Ns:
                t, tn, ok = time_hot_pair(q, xs[N], wT, th, min_time=min_time)
                ok_all &= ok
                r = dict(type=name, mode="hot", N=N, threads=th, rows=rows, K=K,
                         iqkq_gflops=gflops(rows, K, N, t), numpy_gflops=gflops(rows, K, N, tn),
                         iqkq_s=t, numpy_s=tn)
                r["ratio"] = r["iqkq_gflops"] / r["numpy_gflops"]
                lim = limits.int8(active, th) if (limits is not None and N >= 32) else None
                r["frac_of_limit"] = frac(r["iqkq_gflops"], lim)
                r["limit"] = f"int8 peak {active}" if lim else None
                results.append(r)
                if log:
                    fl = f"   {100 * r['frac_of_limit']:5.1f} % of int8 peak" if lim else ""
                    log(f"{name:>10} hot  N={N:<4d} t={th}  iqkq {r['iqkq_gflops']:8.1f} GFLOPS   "
                        f"numpy f32 {r['numpy_gflops']:7.1f}   ratio {r['ratio']:6.2f}{fl}")
            if cold and 1 in Ns:
                t = time_cold(q, xs[1][0], th, cold_bytes=cold_bytes)
                tn = np_cold(th)
                r = dict(type=name, mode="cold", N=1, threads=th, rows=rows, K=K, iqkq_s=t, numpy_s=tn,
                         iqkq_gbps=q.nbytes / t / 1e9, numpy_gbps=wf.nbytes / tn / 1e9,
                         iqkq_gflops=gflops(rows, K, 1, t), numpy_gflops=gflops(rows, K, 1, tn))
                r["ratio"] = r["iqkq_gflops"] / r["numpy_gflops"]
                lim = limits.read(th) if limits is not None else None
                r["frac_of_limit"] = frac(r["iqkq_gbps"], lim)
                r["limit"] = "streaming read" if lim else None
                results.append(r)
                if log:
                    fl = f"   {100 * r['frac_of_limit']:5.1f} % of read bandwidth" if lim else ""
                    log(f"{name:>10} cold N=1    t={th}  iqkq {r['iqkq_gbps']:6.2f} GB/s of weights "
                        f"({r['iqkq_gflops']:5.1f} GFLOPS)   numpy f32 {r['numpy_gbps']:6.2f} GB/s "
                        f"({r['numpy_gflops']:5.1f} GFLOPS)   weights/s ratio {r['ratio']:5.2f}{fl}")
    # Torch last: its OpenMP workers keep spinning after its calls and would slow the next
    # figures (measured: q8_0 N=1..8 one thread 30 % low right after the torch peers).
    if torch:
        for pname, (set_threads, make) in torch_peers(wf).items():
            for th in threads_list:
                set_threads(th)
                for N in Ns:
                    t = median_time(make(xs[N]), min_time=min_time)
                    r = dict(type=pname, mode="peer", N=N, threads=th, rows=rows, K=K, peer_gflops=gflops(rows, K, N, t),
                             numpy_gflops=gflops(rows, K, N, np_hot(N, th)), peer_s=t)
                    r["ratio"] = r["peer_gflops"] / r["numpy_gflops"]
                    results.append(r)
                    if log:
                        log(f"{pname:>22} N={N:<4d} t={th}  {r['peer_gflops']:8.1f} GFLOPS   "
                            f"numpy f32 {r['numpy_gflops']:7.1f}   ratio {r['ratio']:6.2f}")
    if not ok_all and log:
        log("note: could not limit numpy's BLAS threads; numpy used its default thread count")
    return results


def write_json(path: Optional[str], results: List[Dict]) -> None:
    """Write bench results (with the machine summary) to path, if one is given."""
    if path:
        import json

        with open(path, "w") as f:
            json.dump({"machine": machine_summary(), "results": results}, f, indent=1)


def machine_summary() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, iqkq {iqkq.__version__} kernels={iqkq.isa()}, numpy {np.__version__}"
