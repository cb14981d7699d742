"""What this machine can do at most: streaming read bandwidth, int8 dot-product and f32 FMA peaks.

Kernel speeds mean little without the machine's limits next to them: a GEMV (token
generation, N = 1) reads every weight once and is bound by the memory's streaming read
bandwidth; a large-batch GEMM (prompt processing) is bound by the int8 dot-product rate of
the kernel set. The microkernels behind these functions are part of iqkq's C++ core
(``csrc/limits.cpp``, ``csrc/kernels/<set>/limits.cpp``), compiled with the same per-ISA flags
as the matmul kernels and only run after the same CPU check:

* **read**: a plain front-to-back sum over a large buffer (≥ 1 GiB when memory allows, so
  it comes from DRAM), with the AVX2 and, where present, the AVX-512 loop; the best of
  several passes, each split over the thread pool in contiguous chunks.
* **int8**: ``avx2``: four independent VPMADDUBSW → VPMADDWD → VPADDD chains on YMM (the
  dot product of the AVX2 kernels); ``avx512``: sixteen independent VPDPBUSD chains on ZMM.
  ``amx``: four independent TDPBSSD chains on tile registers (16 x 16 int32 += 16 x 64 by
  64 x 16 bytes each). One multiply-add of a byte pair counts as 2 operations, as GFLOPS count it.
* **fma**: independent VFMADD chains, YMM (``avx2``) or ZMM (``avx512``, also for ``amx``,
  whose float work is AVX-512); 2 FLOPs per lane.

The figures are upper bounds for code that does nothing else; on a machine shared with other
work (or a VM whose neighbours are busy) they move by 10-30 % between runs.

Example:
    >>> import iqkq.limits as L
    >>> L.read_bandwidth(threads=1, nbytes=16 << 20, repeats=1) > 0
    True
    >>> sets = L.kernel_sets()                     # e.g. ['avx2', 'avx512']
    >>> all(L.int8_peak(s, seconds=0.002) > 0 for s in sets)
    True
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import _core
from .ops import get_num_threads, isa as _active_isa

__all__ = ["Limits", "Int8Runner", "kernel_sets", "buffer_bytes", "read_bandwidth", "read_pass", "int8_peak",
           "fma_peak", "measure"]

#: What each kernel set's int8 / FMA microkernel runs (for labels).
INT8_KERNEL = {"avx2": "VPMADDUBSW+VPMADDWD ymm", "avx512": "VPDPBUSD zmm (VNNI)", "amx": "TDPBSSD tiles (AMX-INT8)"}
FMA_KERNEL = {"avx2": "VFMADD ymm", "avx512": "VFMADD zmm", "amx": "VFMADD zmm"}
_SIMD_SETS = ("avx2", "avx512", "amx")


def kernel_sets() -> List[str]:
    """The SIMD kernel sets this CPU supports (``"avx2"``, ``"avx512"``, ``"amx"``), the ones
    with int8 / FMA peak kernels. Empty on CPUs with none (the scalar set has none)."""
    return [s for s in _SIMD_SETS if _core.isa_supported(s)]


def _mem_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def buffer_bytes(max_bytes: int = 1 << 30) -> int:
    """Size of the bandwidth buffer: ``max_bytes`` (1 GiB) if at least four times that is
    available, else a quarter of the available memory, and never under 64 MiB (far beyond
    any cache this package will meet)."""
    avail = _mem_available()
    if avail is None or avail >= 4 * max_bytes:
        return int(max_bytes)
    return int(max(64 << 20, min(max_bytes, avail // 4 >> 20 << 20)))


def _check_threads(threads) -> int:
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return int(threads)


def _read_loops() -> List[str]:
    # Every SIMD read loop the CPU has: on some cores the narrower one streams faster.
    return kernel_sets() or ["scalar"]


def _read_passes(buf: np.ndarray, threads: int, repeats: int) -> List[float]:
    """GB/s of each pass (the best loop of each round)."""
    rates = []
    for _ in range(repeats):
        best = 0.0
        for loop in _read_loops():
            seconds, nbytes, _ = _core.limits_read(loop, buf, threads)
            best = max(best, nbytes / seconds / 1e9)
        rates.append(best)
    return rates


def _buffer(nbytes: Optional[int]) -> np.ndarray:
    n = buffer_bytes() if nbytes is None else int(nbytes)
    if n < 4096:
        raise ValueError(f"nbytes must be at least 4096, got {n}")
    return np.ones(n, np.uint8)  # written once, so every page is really there


def read_bandwidth(threads: int = 1, *, nbytes: Optional[int] = None, repeats: int = 7) -> float:
    """Streaming read bandwidth in GB/s (10^9 bytes/s): best of ``repeats`` passes over a
    buffer of ``nbytes`` (default :func:`buffer_bytes`) on ``threads`` threads."""
    threads = _check_threads(threads)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    return max(_read_passes(_buffer(nbytes), threads, repeats))


def _check_set(kind: str, isa: Optional[str]) -> str:
    name = _active_isa() if isa is None else str(isa)
    if name not in _SIMD_SETS:
        if name == "scalar":
            raise ValueError(f"the scalar kernel set has no {kind} peak kernel (it is portable C++)")
        raise ValueError(f"unknown kernel set {name!r}; expected 'avx2', 'avx512' or 'amx'")
    if not _core.isa_supported(name):
        raise ValueError(f"this CPU does not support the {name!r} kernel set")
    return name


def _calibrate(fn, name: str, threads: int, seconds: float) -> int:
    """Iterations for runs of about ``seconds`` (from short calibration runs)."""
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    iters = 20000
    s, _, _ = fn(name, iters, threads)
    while s < 2e-3 and iters < (1 << 40):
        iters *= 8
        s, _, _ = fn(name, iters, threads)
    return max(1, int(iters * seconds / s))


def _peak(fn, kind: str, isa: Optional[str], threads: int, seconds: float, repeats: int) -> float:
    name = _check_set(kind, isa)
    threads = _check_threads(threads)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    iters = _calibrate(fn, name, threads, seconds)
    best = 0.0
    for _ in range(repeats):
        s, ops, _ = fn(name, iters, threads)
        best = max(best, ops / s / 1e9)
    return best


class Int8Runner:
    """One run of the int8 peak kernel per call, for timing it alternately with other work
    (so that a limit and the figure divided by it come from the same moments of a shared
    machine). ``best`` is the highest GOPS seen so far.

    Example:
        >>> import iqkq.limits as L
        >>> if L.kernel_sets():
        ...     r = L.Int8Runner(L.kernel_sets()[0], seconds=0.002)
        ...     gops = [r() for _ in range(3)]
        ...     assert r.best == max(gops) > 0
    """

    def __init__(self, isa: Optional[str] = None, threads: int = 1, *, seconds: float = 0.03):
        self.isa = _check_set("int8", isa)
        self.threads = _check_threads(threads)
        self._iters = _calibrate(_core.limits_int8, self.isa, self.threads, seconds)
        self.best = 0.0

    def __call__(self) -> float:
        s, ops, _ = _core.limits_int8(self.isa, self._iters, self.threads)
        g = ops / s / 1e9
        self.best = max(self.best, g)
        return g


def read_pass(buf: np.ndarray, threads: int = 1) -> float:
    """GB/s of one pass over ``buf`` (a uint8 array) on ``threads`` threads, the better of
    the read loops the CPU has."""
    if not (isinstance(buf, np.ndarray) and buf.dtype == np.uint8 and buf.flags.c_contiguous):
        raise TypeError("buf must be a C-contiguous uint8 numpy array")
    return _read_passes(buf, _check_threads(threads), 1)[0]


def int8_peak(isa: Optional[str] = None, threads: int = 1, *, seconds: float = 0.05, repeats: int = 3) -> float:
    """int8 dot-product peak of a kernel set in GOPS (2 ops per byte-pair multiply-add),
    best of ``repeats`` runs of about ``seconds`` each on ``threads`` threads.

    ``isa``: ``"avx2"``, ``"avx512"`` or ``"amx"`` (default: the active kernel set). Raises ValueError
    for the scalar set or a set the CPU lacks."""
    return _peak(_core.limits_int8, "int8", isa, threads, seconds, repeats)


def fma_peak(isa: Optional[str] = None, threads: int = 1, *, seconds: float = 0.05, repeats: int = 3) -> float:
    """f32 FMA peak of a kernel set in GFLOPS (2 FLOPs per lane), like :func:`int8_peak`."""
    return _peak(_core.limits_fma, "FMA", isa, threads, seconds, repeats)


@dataclass
class Limits:
    """Measured limits. Dicts are keyed by thread count (and kernel set for the peaks).

    Attributes:
        read_gbps: best streaming read GB/s per thread count.
        read_gbps_median: median of the passes (how steady the machine was).
        int8_gops: ``{kernel set: {threads: GOPS}}``.
        fma_gflops: ``{kernel set: {threads: GFLOPS}}``.
        buffer_bytes: size of the bandwidth buffer; repeats: passes per figure.
    """

    read_gbps: Dict[int, float] = field(default_factory=dict)
    read_gbps_median: Dict[int, float] = field(default_factory=dict)
    int8_gops: Dict[str, Dict[int, float]] = field(default_factory=dict)
    fma_gflops: Dict[str, Dict[int, float]] = field(default_factory=dict)
    buffer_bytes: int = 0
    repeats: int = 0

    def read(self, threads: int) -> Optional[float]:
        """Best read GB/s measured at ``threads`` threads, or None."""
        return self.read_gbps.get(threads)

    def int8(self, isa: Optional[str] = None, threads: int = 1) -> Optional[float]:
        """int8 peak of ``isa`` (default: the active kernel set) at ``threads``, or None."""
        return self.int8_gops.get(_active_isa() if isa is None else isa, {}).get(threads)

    def as_dict(self) -> dict:
        """JSON-friendly form (keys as strings)."""
        d = asdict(self)
        for k in ("read_gbps", "read_gbps_median"):
            d[k] = {str(t): v for t, v in d[k].items()}
        for k in ("int8_gops", "fma_gflops"):
            d[k] = {s: {str(t): v for t, v in per.items()} for s, per in d[k].items()}
        return d

    def lines(self) -> List[str]:
        """Human-readable summary, one line per limit."""
        ths = sorted(self.read_gbps)
        th_s = " / ".join(str(t) for t in ths)
        out = [f"streaming read ({self.buffer_bytes / 2**30:.2f} GiB, best of {self.repeats}), threads {th_s}: "
               + " / ".join(f"{self.read_gbps[t]:.1f}" for t in ths) + " GB/s (median "
               + " / ".join(f"{self.read_gbps_median[t]:.1f}" for t in ths) + ")"]
        for s, per in self.int8_gops.items():
            out.append(f"int8 peak {s} ({INT8_KERNEL[s]}), threads {th_s}: "
                       + " / ".join(f"{per[t]:.0f}" for t in sorted(per)) + " GOPS")
        for s, per in self.fma_gflops.items():
            out.append(f"f32 FMA peak {s} ({FMA_KERNEL[s]}), threads {th_s}: "
                       + " / ".join(f"{per[t]:.0f}" for t in sorted(per)) + " GFLOPS")
        return out


def measure(threads: Optional[Sequence[int]] = None, *, nbytes: Optional[int] = None, repeats: int = 7,
            seconds: float = 0.05, peaks: bool = True, fma: bool = True, isas: Optional[Sequence[str]] = None) -> Limits:
    """Measure the limits at each thread count (default: 1 and :func:`iqkq.get_num_threads`).

    Args:
        threads: thread counts to measure.
        nbytes: bandwidth buffer size (default :func:`buffer_bytes`, 1 GiB when memory allows).
        repeats: passes per bandwidth figure (best reported, median kept).
        seconds: length of one peak run; peaks: measure the int8 peaks; fma: and the FMA peaks.
        isas: kernel sets for the peaks (default: all the CPU has).
    """
    ths = sorted({_check_threads(t) for t in (threads if threads is not None else (1, get_num_threads()))})
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    buf = _buffer(nbytes)
    lim = Limits(buffer_bytes=int(buf.nbytes), repeats=repeats)
    for t in ths:
        rates = _read_passes(buf, t, repeats)
        lim.read_gbps[t] = max(rates)
        lim.read_gbps_median[t] = statistics.median(rates)
    del buf
    sets = list(isas) if isas is not None else kernel_sets()
    if peaks:
        for s in sets:
            lim.int8_gops[s] = {t: int8_peak(s, t, seconds=seconds) for t in ths}
            if fma:
                lim.fma_gflops[s] = {t: fma_peak(s, t, seconds=seconds) for t in ths}
    return lim
