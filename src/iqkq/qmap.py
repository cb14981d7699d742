"""The quant map: for every type, its size, its accuracy and its speed on this CPU, side by side.

:func:`quant_map` (behind ``python -m iqkq map``) answers "which type is fast *and*
accurate on my CPU?". For each type in :func:`iqkq.types` (or a chosen subset) it measures:

* **size**: bits per weight for the shapes used, per-row metadata included;
* **accuracy**: the relative RMS error of ``dequantize(quantize(w))`` against ``w``
  (importance-weighted per column when an imatrix is given), and the relative error of
  ``matmul(quantize(w), x)`` against float32 ``x @ w.T`` on sample activations, for a small
  batch (N = 8, the direct kernels) and a large one (N = 64: the large-batch conversion,
  where the type has one); both include the activation quantization;
* **speed** at ``threads`` threads, timed as ``bench/matmul.py`` times it (``iqkq._bench``):
  token generation (TG) = N = 1 with the weights read from DRAM (rotation over >= 256 MB of
  copies), as GB/s of weights, as tokens/s of a model of ``model_gb`` GB (default: an
  8B-parameter model at the type's bpw) and as a fraction of the streaming read bandwidth;
  prompt processing (PP) = N = 512 from cache, as GFLOPS, as tokens/s of a 1B-parameter model
  (``GFLOPS / 2``; divide by the model's size in billions) and as a fraction of the int8 peak
  of the kernel set. numpy's float32 matmul is timed alternately with each figure as a peer.

A type is **Pareto-optimal** (for TG or PP) when no other type is at most as large, at most as
inaccurate and at least as fast, and strictly better in one of the three (error = the weight
RMS error). Types are measured in order of size, so each row of the table is final when it is
printed.

**Synthetic weights** (the default; :func:`synthetic_weights`) imitate what makes real LLM
weights hard to quantize, which Gaussian noise does not: heavy tails (Student-t, 5 degrees of
freedom: the occasional large weight sets a block's scale), a spread of scales between rows
(log-normal, sigma 0.35: per-row and per-block scales must both adapt) and between columns
(sigma 0.2), and a few outlier columns (one in 512, 8x larger: the input channels that carry
large activations in real models, which push up the scale of every block they fall in). The
sample activations (:func:`synthetic_activations`) have the same outlier channels, 10x larger.
Real tensors come from a GGUF file (:func:`gguf_weights`).

Example:
    >>> m = iqkq.quant_map(["q8_0", "iq4_ks"], iqkq.qmap.synthetic_weights(64, 512),
    ...                    speed=False, limits=False)
    >>> [r["type"] for r in m.records]            # smallest first
    ['iq4_ks', 'q8_0']
    >>> m.records[1]["rms_rel"] < m.records[0]["rms_rel"]
    True
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _bench
from ._types import TypeInfo, type_info, types as _all_types
from .ops import dequantize, get_num_threads, isa as _active_isa, matmul, quantize
from .tensor import QuantizedTensor

__all__ = ["quant_map", "QuantMap", "synthetic_weights", "synthetic_activations", "gguf_weights", "load_imatrix",
           "machine_info", "pareto"]

#: Parameters of the model the default TG tokens/s refers to (an 8B model, e.g. Llama-3-8B).
DEFAULT_MODEL_PARAMS = 8.0e9
#: ISA flags (names as in /proc/cpuinfo) that decide which kernels can run.
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni", "avx512vbmi",
             "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")
#: Flags each iqkq kernel set needs.
SET_FLAGS = {"avx2": ("avx2", "fma", "f16c"),
             "avx512": ("avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni", "avx512vbmi"),
             "amx": ("avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni", "avx512vbmi",
                     "amx_tile", "amx_int8")}

_ACC_ROWS_TG = 8   # small batch: direct kernels
_ACC_ROWS_PP = 64  # large batch: the large-batch conversion where the type has one


# ----------------------------------------------------------------------------- weights
_SYNTH_CACHE: Dict[Tuple[int, int, int], np.ndarray] = {}


def _outlier_columns(K: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, K, 7])
    return np.sort(rng.choice(K, max(1, K // 512), replace=False))


def synthetic_weights(rows: int = 4096, K: int = 4096, *, seed: int = 0) -> np.ndarray:
    """LLM-like float32 weights of shape ``(rows, K)`` (see the module docstring for what
    and why): Student-t(5) values, log-normal row (sigma 0.35) and column (sigma 0.2) scales,
    ``K // 512`` outlier columns 8x larger, overall standard deviation about 0.02.

    Example:
        >>> w = synthetic_weights(256, 1024)
        >>> w.shape, w.dtype
        ((256, 1024), dtype('float32'))
    """
    rows, K = int(rows), int(K)
    if rows < 1 or K < 1:
        raise ValueError(f"synthetic weights need rows >= 1 and K >= 1, got {rows} x {K}")
    key = (rows, K, int(seed))
    if key not in _SYNTH_CACHE:
        rng = np.random.default_rng([seed, rows, K])
        w = rng.standard_t(5, size=(rows, K)).astype(np.float32)
        row_scale = np.exp(rng.normal(0.0, 0.35, rows)).astype(np.float32)
        col_scale = np.exp(rng.normal(0.0, 0.2, K)).astype(np.float32)
        col_scale[_outlier_columns(K, seed)] *= 8.0
        w *= 0.02 * row_scale[:, None]
        w *= col_scale[None, :]
        if len(_SYNTH_CACHE) > 4:
            _SYNTH_CACHE.clear()
        _SYNTH_CACHE[key] = w
    return _SYNTH_CACHE[key]


def synthetic_label(rows: int, K: int, seed: int = 0) -> str:
    """How :func:`synthetic_weights` of this shape are described in headers and JSON."""
    return (f"synthetic LLM-like {rows} x {K} (Student-t(5), row/column scale spread, "
            f"{len(_outlier_columns(K, seed))} outlier columns, seed {seed})")


def synthetic_activations(N: int, K: int, *, seed: int = 0) -> np.ndarray:
    """Sample activations ``(N, K)`` float32: normal values with log-normal channel scales
    (sigma 0.5) and the outlier columns of :func:`synthetic_weights` 10x larger."""
    rng = np.random.default_rng([seed, N, K, 1])
    x = rng.standard_normal((N, K), dtype=np.float32)
    scale = np.exp(rng.normal(0.0, 0.5, K)).astype(np.float32)
    scale[_outlier_columns(K, seed)] *= 10.0
    return x * scale[None, :]


def gguf_weights(path: str, tensor: Optional[str] = None, *, max_tensors: int = 4,
                 max_rows: int = 4096) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Float32 matrices from a GGUF file for the map, and notes on what was left out.

    Tensors are read with :func:`iqkq.gguf.load`: iqkq's quantized types are dequantized,
    float arrays (f32 / f16) converted; anything else (types iqkq cannot dequantize, raw
    bits) is skipped with a note. Only matrices (2-D, or 3-D expert stacks, flattened) whose
    name matches the regular expression ``tensor`` (``re.search``; default: every matrix) are
    used; of those, ``max_tensors`` spread evenly over the file, each cut to ``max_rows``
    evenly spaced rows (quantization is row by row, so the error of a row sample is the error
    of those rows).

    Returns ``({name: (rows, K) float32}, notes)``. Raises ValueError (bad regex, nothing
    usable) or OSError (the file).
    """
    from . import gguf

    rx = None
    if tensor is not None:
        try:
            rx = re.compile(tensor)
        except re.error as e:
            raise ValueError(f"--tensor: invalid regular expression {tensor!r}: {e}") from None
    if max_tensors < 1 or max_rows < 1:
        raise ValueError("max_tensors and max_rows must be >= 1")
    tensors, _meta = gguf.load(path)
    notes: List[str] = []
    names, skipped_other, small = [], [], 0
    for name, t in tensors.items():
        if rx is not None and not rx.search(name):
            continue
        shape = t.shape if isinstance(t, (QuantizedTensor, np.ndarray)) else None
        if shape is None:
            skipped_other.append(f"{name} ({type(t).__name__})")
            continue
        if isinstance(t, np.ndarray) and t.dtype.kind != "f" and t.dtype.name != "bfloat16":
            # e.g. the raw bytes of a type iqkq has no kernels for, or bf16 bits
            skipped_other.append(f"{name} (dtype {t.dtype}: not a float or iqkq type)")
            continue
        if len(shape) < 2:
            small += 1
            continue
        names.append(name)
    if small:
        notes.append(f"{small} 1-D tensor(s) (norms, biases) left out")
    if skipped_other:
        notes.append(f"skipped {len(skipped_other)} tensor(s) iqkq cannot read as floats: "
                     + ", ".join(skipped_other[:4]) + (" ..." if len(skipped_other) > 4 else ""))
    if not names:
        some = ", ".join(list(tensors)[:6])
        raise ValueError(f"{path}: no usable weight matrix" + (f" matches {tensor!r}" if tensor else "")
                         + (f" (tensors: {some}{' ...' if len(tensors) > 6 else ''})" if tensors else " (no tensors)"))
    if len(names) > max_tensors:
        pick = np.unique(np.linspace(0, len(names) - 1, max_tensors).round().astype(int))
        notes.append(f"{len(names)} matching matrices; using {len(pick)} spread over the file (max_tensors)")
        names = [names[i] for i in pick]
    out: Dict[str, np.ndarray] = {}
    for name in names:
        t = tensors[name]
        rows_total = int(np.prod(t.shape[:-1]))
        K = int(t.shape[-1])
        if isinstance(t, QuantizedTensor):
            w = dequantize(t).reshape(rows_total, K)
        else:
            w = np.asarray(t).reshape(rows_total, K)
        if rows_total > max_rows:
            idx = np.linspace(0, rows_total - 1, max_rows).round().astype(np.int64)
            w = w[idx]
            notes.append(f"{name}: {max_rows} of {rows_total} rows (max_rows)")
        out[name] = np.ascontiguousarray(w, dtype=np.float32)
    return out, notes


def load_imatrix(path: str) -> Union[np.ndarray, Mapping[str, np.ndarray]]:
    """Importance weights for ``--imatrix``: a llama.cpp / ik_llama.cpp imatrix file (the legacy
    ``imatrix.dat`` or the GGUF format, read by :func:`iqkq.imatrix.read`; entries are found by
    tensor name with llama-quantize's fallbacks), a ``.npy`` file (one vector ``(K,)`` for every
    tensor with K columns) or a ``.npz`` file (one vector per tensor name).

    Raises:
        ValueError: the file cannot be read or is not one of these, naming it.
    """
    low = str(path).lower()
    if not (low.endswith(".npy") or low.endswith(".npz")):
        from . import imatrix as _imatrix

        try:
            return _imatrix.read(path)
        except OSError as e:
            raise ValueError(f"imatrix {path!r}: cannot read it ({e.strerror or e})") from None
    try:
        obj = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"imatrix {path!r}: cannot read it ({e})") from None
    if isinstance(obj, np.ndarray):
        return _check_imatrix_vec(obj, path)
    with obj:
        return {k: _check_imatrix_vec(obj[k], f"{path}[{k}]") for k in obj.files}


def _check_imatrix_vec(v: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim != 1 or v.dtype.kind not in "fiu":
        raise ValueError(f"imatrix {what}: expected a 1-D numeric vector (one weight per column), got shape {v.shape} "
                         f"dtype {v.dtype}")
    v = v.astype(np.float32)
    if not np.isfinite(v).all() or (v < 0).any():
        raise ValueError(f"imatrix {what}: entries must be finite and >= 0")
    return v


# ----------------------------------------------------------------------------- machine
def _cpuinfo() -> Dict[str, str]:
    info: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break  # the first processor is enough
                    continue
                k, _, v = line.partition(":")
                info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return info


def machine_info(limits=None, threads: Optional[int] = None) -> Dict[str, Any]:
    """CPU model (``/proc/cpuinfo``), kernel set, ISA flags, threads and, when ``limits``
    (:class:`iqkq.limits.Limits`) is given, the measured limits."""
    import iqkq

    ci = _cpuinfo()
    flags = set(ci.get("flags", "").split())
    model = ci.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    fam = ci.get("cpu family")
    if fam is not None:
        model += f" (family {fam}, model {ci.get('model', '?')}, stepping {ci.get('stepping', '?')})"
    active = _active_isa()
    from . import _core

    d: Dict[str, Any] = {
        "cpu": model,
        "cpus": _core.available_cpus(),
        "threads": int(threads or get_num_threads()),
        "kernel_set": active,
        "kernel_sets_supported": [s for s in _core.constants()["isas"] if _core.isa_supported(s)],
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "isa_flags_missing": [f for f in ISA_FLAGS if flags and f not in flags],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "iqkq": iqkq.__version__,
    }
    if limits is not None:
        d["limits"] = limits.as_dict()
    return d


def _header_lines(info: Dict[str, Any], limits, settings: Dict[str, Any]) -> List[str]:
    th = info["threads"]
    lines = [f"CPU: {info['cpu']}, {info['cpus']} usable CPU(s); iqkq {info['iqkq']}, numpy {info['numpy']}",
             f"kernel set: {info['kernel_set']} (supported: {', '.join(info['kernel_sets_supported'])}); "
             f"ISA flags: {' '.join(info['isa_flags']) or '(none found)'}"
             + (f"; absent: {' '.join(info['isa_flags_missing'])}" if info["isa_flags_missing"] else "")]
    if limits is not None:
        ths = sorted(limits.read_gbps)
        bw = ", ".join(f"{limits.read_gbps[t]:.1f} GB/s at {t} thread{'s' if t > 1 else ''}"
                       + (f" (median {limits.read_gbps_median[t]:.1f})" if t in limits.read_gbps_median else "")
                       for t in ths)
        line = f"threads: {th}; streaming read {bw} ({limits.buffer_bytes / 2**30:.2f} GiB, best of {limits.repeats})"
        peak = limits.int8(info["kernel_set"], th)
        if peak:
            line += f"; int8 peak ({info['kernel_set']}) {peak:.0f} GOPS at {th} thread{'s' if th > 1 else ''}"
        lines.append(line)
    else:
        lines.append(f"threads: {th}; limits not measured")
    lines.append(f"weights: {settings['weights']}; imatrix: {settings['imatrix'] or 'none'}")
    return lines


# ----------------------------------------------------------------------------- pareto
def pareto(records: Sequence[Mapping[str, Any]], speed_key: Optional[str], err_key: Optional[str] = "rms_rel",
           size_key: str = "bpw") -> List[Optional[bool]]:
    """Pareto marks: True where no other record is at most as large, at most as inaccurate
    and at least as fast, and strictly better in one. Criteria whose key is None (or whose
    value is None in a record) are left out; a record missing a used value gets None.

    Example:
        >>> pareto([{"bpw": 4, "rms_rel": .1, "s": 5}, {"bpw": 8, "rms_rel": .2, "s": 4},
        ...         {"bpw": 8, "rms_rel": .01, "s": 4}], "s")
        [True, False, True]
    """
    keys = [(size_key, 1.0)] + ([(err_key, 1.0)] if err_key else []) + ([(speed_key, -1.0)] if speed_key else [])
    vals = []
    for r in records:
        v = [r.get(k) for k, _ in keys]
        vals.append(None if any(x is None for x in v) else [x * sgn for x, (_, sgn) in zip(v, keys)])
    out: List[Optional[bool]] = []
    for i, a in enumerate(vals):
        if a is None:
            out.append(None)
            continue
        dominated = any(b is not None and j != i and all(bb <= aa for aa, bb in zip(a, b)) and
                        any(bb < aa for aa, bb in zip(a, b)) for j, b in enumerate(vals))
        out.append(not dominated)
    return out


# ----------------------------------------------------------------------------- the map
@dataclass
class QuantMap:
    """Result of :func:`quant_map`.

    Attributes:
        records: one dict per measured type, smallest bpw first (keys: see :data:`FIELDS`).
        skipped: ``[{"type": name, "reason": text}]`` for types that could not take the shapes.
        numpy: the numpy float32 peer: every paired figure and their median, per metric.
        machine: :func:`machine_info` (limits included when measured).
        settings: what was measured how (shapes, threads, weights, model size...).
        notes: remarks on the weights (tensors left out, imatrix use).
    """

    records: List[Dict[str, Any]] = field(default_factory=list)
    skipped: List[Dict[str, str]] = field(default_factory=list)
    numpy: Dict[str, Any] = field(default_factory=dict)
    machine: Dict[str, Any] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return {"machine": self.machine, "settings": self.settings, "numpy": self.numpy, "records": self.records,
                "skipped": self.skipped, "notes": self.notes}

    def table(self) -> str:
        """The table as printed by ``python -m iqkq map`` (header, rows, numpy row, legend)."""
        cols = _columns(self.settings)
        out = [_fmt_head(cols)] + [_fmt_row(cols, r) for r in self.records]
        out += _numpy_lines(self.numpy, self.settings) + _legend(self.settings)
        return "\n".join(out)

    def to_json(self, path: str) -> None:
        """Write everything (machine, settings, records, skipped types) as JSON (atomically)."""
        text = json.dumps(self.as_dict(), indent=1, allow_nan=False, default=_json_default)
        _atomic_write(path, text.encode())

    def to_csv(self, path: str) -> None:
        """Write one row per record (hot-N figures as ``hot_N<n>_gflops`` columns) as CSV."""
        rows = [_flat(r) for r in self.records]
        names: List[str] = []
        for r in rows:
            names += [k for k in r if k not in names]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in names})
        _atomic_write(path, buf.getvalue().encode())

    def plot(self, path: str) -> None:
        """A PNG at ``path``: accuracy against bpw, and accuracy against TG and PP speed (one
        panel each), labelled points coloured by bpw, each panel's Pareto front drawn. Needs matplotlib
        (``pip install "iqkq[plot]"``); raises ImportError naming that otherwise."""
        _plot(self, path)


#: Record fields (JSON / CSV); None where a figure was not measured.
FIELDS = {
    "type": "type name", "ggml_id": "ggml type id", "bpw": "bits per weight over the tensors used",
    "bytes": "quantized bytes of the tensors used", "tensors": "number of tensors used",
    "rms_rel": "relative RMS error of dequantize(quantize(w)) (imatrix-weighted if given)",
    "matmul_err_tg": "relative error of matmul vs float32 x @ w.T, N=8 (direct kernels)",
    "matmul_err_pp": "same for N=64 (large-batch path where the type has one)",
    "tg_gbps": "N=1 cold: GB/s of weights", "tg_tok_s": "N=1 cold: tokens/s of a model of tg_model_gb GB",
    "tg_model_gb": "model size the tokens/s refer to", "tg_frac_bw": "tg_gbps / tg_read_gbps",
    "tg_read_gbps": "streaming read GB/s at `threads`: best of the measurement at start and of passes run "
                    "just before and after this figure",
    "tg_numpy_gbps": "numpy float32 N=1 cold, paired (GB/s of float32 weights)",
    "tg_vs_numpy": "weights per second relative to numpy float32, paired",
    "pp_gflops": "N=pp_n hot GFLOPS", "pp_tok_s_per_bparam": "pp_gflops / 2: tokens/s of a 1B-parameter model",
    "pp_frac_peak": "pp_gflops / pp_peak_gops",
    "pp_peak_gops": "int8 peak of the kernel set at `threads`: best of the measurement at start and of runs "
                    "alternated with this figure",
    "pp_numpy_gflops": "numpy float32, paired",
    "pp_vs_numpy": "pp_gflops / pp_numpy_gflops", "hot": "{N: GFLOPS} of extra hot batch sizes",
    "hot_numpy": "{N: numpy GFLOPS}, paired", "pareto_tg": "Pareto-optimal in (bpw, rms_rel, tg_tok_s)",
    "pareto_pp": "Pareto-optimal in (bpw, rms_rel, pp_gflops)", "pareto_size": "Pareto-optimal in (bpw, rms_rel)",
    "notes": "remarks (tensors skipped, imatrix use)",
}


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _flat(r: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for k, v in r.items():
        if k in ("hot", "hot_numpy"):
            for n, g in (v or {}).items():
                out[f"{k}_N{n}_gflops"] = g
        elif k == "notes":
            out[k] = "; ".join(v)
        else:
            out[k] = v
    return out


def _atomic_write(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise OSError(f"cannot write {path!r}: folder {d!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def _shape_problem(t: TypeInfo, rows: int, K: int) -> Optional[str]:
    if K % t.block_size:
        return f"K={K} is not a multiple of its block size {t.block_size}"
    if rows % t.interleave:
        return f"rows={rows} is not a multiple of its {t.interleave}-row interleave"
    return None


def _rel(err2: float, ref2: float) -> Optional[float]:
    return math.sqrt(err2 / ref2) if ref2 > 0 else None


def quant_map(types: Optional[Sequence[Union[str, int, TypeInfo]]] = None,
              weights: Union[None, np.ndarray, Mapping[str, np.ndarray]] = None, *,
              imatrix: Union[None, np.ndarray, Mapping[str, np.ndarray]] = None,
              threads: Optional[int] = None, accuracy: bool = True, speed: bool = True,
              pp_n: int = 512, hot_ns: Sequence[int] = (), model_gb: Optional[float] = None,
              model_params: float = DEFAULT_MODEL_PARAMS, quick: bool = False,
              min_time: Optional[float] = None, cold_bytes: Optional[int] = None, cold_rounds: Optional[int] = None,
              limits: Any = True, weights_label: Optional[str] = None, notes: Sequence[str] = (),
              seed: int = 0, progress: bool = False,
              on_row: Optional[Callable[[Dict[str, Any]], None]] = None,
              on_skip: Optional[Callable[[str, str], None]] = None) -> QuantMap:
    """Measure size, accuracy and speed of each type (see the module docstring).

    Args:
        types: type names / ids (default: every type of :func:`iqkq.types`).
        weights: a float matrix ``(rows, K)``, or ``{name: matrix}`` (e.g. from
            :func:`gguf_weights`); default :func:`synthetic_weights` (4096 x 4096; 2048 x 4096
            with ``quick``). Speed is measured on the first matrix.
        imatrix: importance weights: a ``(K,)`` vector for every matrix with K columns, or
            ``{name: (K,) vector}``. Used to quantize and to weight the RMS error.
        threads: threads for the speed figures (default :func:`iqkq.get_num_threads`).
        accuracy, speed: what to measure.
        pp_n: the prompt-processing batch size. hot_ns: extra hot batch sizes to time.
        model_gb: model size for TG tokens/s (default: ``model_params`` at each type's bpw).
        quick: shorter timing, smaller default weights and bandwidth buffer.
        min_time: seconds of timed runs per contender of a hot figure.
        cold_bytes: size of the cold rotation (default 256 MB; 128 MB with quick).
        limits: True (measure), False (don't), or an :class:`iqkq.limits.Limits`.
        on_row: called with each record as soon as it is final (rows come smallest first).
        on_skip: called with ``(type name, reason)`` for each type that is skipped.
        progress: show a tqdm progress bar on stderr.

    Returns:
        :class:`QuantMap`. Raises ValueError / TypeError for bad arguments (unknown type,
        batch sizes < 1, an imatrix that fits no matrix...).
    """
    from . import limits as _limits_mod

    tinfos = [type_info(t) for t in (types if types is not None else [t.name for t in _all_types()])]
    seen = set()
    tinfos = [t for t in tinfos if not (t.name in seen or seen.add(t.name))]
    if not tinfos:
        raise ValueError("no types to map")
    if not (accuracy or speed):
        raise ValueError("nothing to measure: accuracy and speed are both off")
    for name, v in (("pp_n", pp_n),) + tuple((f"hot N", n) for n in hot_ns):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    threads = int(threads) if threads is not None else get_num_threads()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if model_gb is not None and not model_gb > 0:
        raise ValueError(f"model_gb must be > 0, got {model_gb}")
    if min_time is None:
        min_time = 0.1 if quick else 1.0
    if min_time < 0:
        raise ValueError(f"min_time must be >= 0, got {min_time}")
    cold_bytes = int(cold_bytes if cold_bytes is not None else (128 << 20 if quick else 256 << 20))
    cold_rounds = int(cold_rounds if cold_rounds is not None else (3 if quick else 7))

    # ---- weights
    if weights is None:
        rows0, K0 = (2048, 4096) if quick else (4096, 4096)
        mats = {"synthetic": synthetic_weights(rows0, K0, seed=seed)}
        label = weights_label or synthetic_label(rows0, K0, seed)
    elif isinstance(weights, Mapping):
        mats = dict(weights)
        label = weights_label or f"{len(mats)} matrices"
    else:
        mats = {"w": weights}
        label = weights_label
    for name, w in list(mats.items()):
        a = np.asarray(w)
        if a.ndim != 2 or a.dtype.kind not in "fiu" or a.size == 0:
            raise ValueError(f"weights {name!r}: expected a non-empty 2-D float matrix (rows, K), got shape {a.shape} "
                             f"dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(f"weights {name!r}: contains NaN or infinite values")
        mats[name] = np.ascontiguousarray(a, dtype=np.float32)
    if label is None:
        r0, k0 = next(iter(mats.values())).shape
        label = f"given matrix {r0} x {k0}"
    first = next(iter(mats))
    all_notes = list(notes)

    # ---- imatrix per matrix
    ims: Dict[str, Optional[np.ndarray]] = {n: None for n in mats}
    if imatrix is not None:
        if isinstance(imatrix, Mapping):
            lookup = getattr(imatrix, "lookup", None)  # an iqkq.imatrix.IMatrix: llama-quantize's name fallbacks
            for n in mats:
                key = lookup(n) if lookup is not None else n
                v = imatrix.get(key) if key is not None else None
                if v is not None and lookup is not None and v.size != mats[n].shape[1]:
                    # per-expert entries (n_expert x K) of a merged 3-D tensor: the sampled rows
                    # may come from several experts, so no single vector applies
                    all_notes.append(f"{n}: imatrix entry {key!r} has {v.size} values (per expert); unweighted")
                    v = None
                if v is not None:
                    v = _check_imatrix_vec(v, n)
                    if v.shape[0] != mats[n].shape[1]:
                        raise ValueError(f"imatrix for {n!r} has {v.shape[0]} entries, the matrix has K={mats[n].shape[1]}")
                ims[n] = v
            missing = [n for n in mats if ims[n] is None]
            if len(missing) == len(mats):
                raise ValueError("the imatrix has no entry for any of the matrices: " + ", ".join(list(mats)[:4]))
            if missing:
                all_notes.append(f"imatrix has no entry for {len(missing)} matrix(es) ({', '.join(missing[:3])}): unweighted")
        else:
            v = _check_imatrix_vec(imatrix, "imatrix")
            fits = [n for n in mats if mats[n].shape[1] == v.shape[0]]
            if not fits:
                raise ValueError(f"imatrix has {v.shape[0]} entries but no matrix has K={v.shape[0]} columns "
                                 f"(K: {sorted({m.shape[1] for m in mats.values()})})")
            for n in fits:
                ims[n] = v
            if len(fits) < len(mats):
                all_notes.append(f"imatrix (K={v.shape[0]}) fits {len(fits)} of {len(mats)} matrices; the others unweighted")

    # ---- limits
    if limits is True:
        lim = _limits_mod.measure(sorted({1, threads}), nbytes=_limits_mod.buffer_bytes(256 << 20 if quick else 1 << 30),
                                  repeats=3 if quick else 5, seconds=0.02 if quick else 0.05, fma=False,
                                  isas=[_active_isa()] if _active_isa() != "scalar" else [])
    elif limits is False or limits is None:
        lim = None
    else:
        lim = limits
    active = _active_isa()
    info = machine_info(lim, threads)
    settings: Dict[str, Any] = {
        "weights": label, "matrices": {n: list(m.shape) for n, m in mats.items()}, "speed_matrix": first,
        "imatrix": None, "threads": threads, "accuracy": accuracy, "speed": speed, "pp_n": int(pp_n),
        "hot_ns": [int(n) for n in hot_ns], "model_gb": model_gb, "model_params": model_params, "quick": quick,
        "min_time": min_time, "cold_bytes": cold_bytes, "cold_rounds": cold_rounds, "seed": seed,
        "acc_rows": [_ACC_ROWS_TG, _ACC_ROWS_PP],
        "timing": "hot: iqkq and numpy float32 alternately, fastest of >= 5 rounds each after warm-up; "
                  "cold: median over rounds of a rotation through copies of W exceeding cold_bytes",
    }
    if imatrix is not None:
        settings["imatrix"] = "per-tensor vectors" if isinstance(imatrix, Mapping) else f"vector of {len(imatrix)}"
    result = QuantMap(machine=info, settings=settings, notes=all_notes)

    # ---- plan: usable matrices and bpw of each type; measured smallest first
    plan = []
    for t in tinfos:
        use = [n for n in mats if _shape_problem(t, *mats[n].shape) is None]
        if speed and first not in use:
            use = []
        if not use:
            r, k = mats[first].shape if speed else next(iter(mats.values())).shape
            reason = _shape_problem(t, r, k) or "no matrix fits"
            result.skipped.append({"type": t.name, "reason": f"cannot take {r} x {k}: {reason}"})
            if on_skip:
                on_skip(t.name, result.skipped[-1]["reason"])
            continue
        nbytes = sum(t.row_bytes(mats[n].shape[1]) * mats[n].shape[0] for n in use)
        nel = sum(mats[n].size for n in use)
        plan.append((nbytes * 8.0 / nel, t, use, nbytes))
    plan.sort(key=lambda p: p[0])  # stable: equal sizes keep table order

    stages = (1 if accuracy else 0) + ((2 + len(hot_ns)) if speed else 0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan) * stages, file=sys.stderr, unit="step", leave=False, dynamic_ncols=True)

    # reference products and activations per matrix, computed once
    acts: Dict[int, np.ndarray] = {}
    refs: Dict[str, Tuple[np.ndarray, float, float]] = {}
    synth_im: Dict[int, np.ndarray] = {}

    def act(K):
        if K not in acts:
            acts[K] = synthetic_activations(max(_ACC_ROWS_PP, 1), K, seed=seed)
        return acts[K]

    def ref(n):
        if n not in refs:
            y = act(mats[n].shape[1]) @ mats[n].T
            refs[n] = (y, float(np.sum(y[:_ACC_ROWS_TG].astype(np.float64) ** 2)), float(np.sum(y.astype(np.float64) ** 2)))
        return refs[n]

    speed_w = mats[first]
    rows_s, K_s = speed_w.shape
    xs = {}
    np_cold: List[np.ndarray] = []
    wT = None
    if speed:
        rng = np.random.default_rng([seed, 99])
        for N in sorted({1, int(pp_n), *[int(n) for n in hot_ns]}):
            xs[N] = rng.standard_normal((N, K_s), dtype=np.float32)
        wT = np.ascontiguousarray(speed_w.T)
    numpy_pairs: Dict[str, List[float]] = {"tg_gbps": [], "pp_gflops": [], **{f"hot_{n}": [] for n in hot_ns}}

    def stage(desc):
        if bar is not None:
            bar.set_description(desc, refresh=True)

    def step():
        if bar is not None:
            bar.update(1)

    # The limits are measured again next to each figure (a read pass before and after each
    # TG figure, an int8 run in each round of each PP figure) and the best of those and of the
    # start figure is the limit a fraction refers to: on a shared machine a limit measured in
    # a busy moment would otherwise make fractions exceed 100 %.
    read_buf = runner = None
    if speed and lim is not None:
        read_buf = np.ones(max(4096, int(lim.buffer_bytes)), np.uint8)
        if active != "scalar":
            runner = _limits_mod.Int8Runner(active, threads, seconds=0.01 if quick else 0.03)
    pending: List[Dict[str, Any]] = []
    try:
        for gi, (bpw, t, use, nbytes) in enumerate(plan):
            rec: Dict[str, Any] = {k: None for k in FIELDS}
            rec.update(type=t.name, ggml_id=t.ggml_id, bpw=bpw, bytes=int(nbytes), tensors=len(use), notes=[],
                       hot={}, hot_numpy={})
            if len(use) < len(mats):
                rec["notes"].append(f"{len(use)} of {len(mats)} matrices fit its shape rules")
            q_speed = None
            # ---- accuracy (and the quantized speed matrix)
            if accuracy:
                stage(f"{t.name}: quantize + accuracy")
                e2 = w2 = m_tg = r_tg = m_pp = r_pp = 0.0
                for n in use:
                    w = mats[n]
                    im = ims[n]
                    if im is None and t.needs_imatrix:
                        K = w.shape[1]
                        if K not in synth_im:
                            synth_im[K] = np.mean(act(K).astype(np.float64) ** 2, axis=0).astype(np.float32)
                        im = synth_im[K]
                        if "imatrix from the sample activations (the type needs one)" not in rec["notes"]:
                            rec["notes"].append("imatrix from the sample activations (the type needs one)")
                    q = quantize(w, t, imatrix=im)
                    if n == first:
                        q_speed = q
                    d = dequantize(q)
                    diff2 = (d.astype(np.float64) - w) ** 2
                    ww = w.astype(np.float64) ** 2
                    if ims[n] is not None:  # weighted by the given importance only
                        e2 += float(diff2.sum(axis=0) @ ims[n])
                        w2 += float(ww.sum(axis=0) @ ims[n])
                    else:
                        e2 += float(diff2.sum())
                        w2 += float(ww.sum())
                    del d, diff2, ww
                    y, ref_tg, ref_pp = ref(n)
                    x = act(w.shape[1])
                    y_tg = matmul(q, x[:_ACC_ROWS_TG])
                    y_pp = matmul(q, x)
                    m_tg += float(np.sum((y_tg.astype(np.float64) - y[:_ACC_ROWS_TG]) ** 2))
                    r_tg += ref_tg
                    m_pp += float(np.sum((y_pp.astype(np.float64) - y) ** 2))
                    r_pp += ref_pp
                rec["rms_rel"] = _rel(e2, w2)
                rec["matmul_err_tg"] = _rel(m_tg, r_tg)
                rec["matmul_err_pp"] = _rel(m_pp, r_pp)
                step()
            # ---- speed
            if speed:
                if q_speed is None:
                    stage(f"{t.name}: quantize")
                    q_speed = quantize(speed_w, t, imatrix=ims[first])
                stage(f"{t.name}: TG (N=1, weights from DRAM)")
                copies = _bench.cold_copies(q_speed, cold_bytes)
                bw = [_limits_mod.read_pass(read_buf, threads)] if read_buf is not None else []
                ts = _bench.time_cold(q_speed, xs[1][0], threads, copies=copies, rounds=cold_rounds)
                del copies
                if read_buf is not None:
                    bw += [_limits_mod.read_pass(read_buf, threads), lim.read(threads) or 0.0]
                    rec["tg_read_gbps"] = max(bw)
                if not np_cold:
                    np_cold.extend(_bench.numpy_cold_copies(wT, cold_bytes))
                tn = _bench.time_numpy_cold(np_cold, xs[1][0], threads, rounds=cold_rounds)
                rec["tg_gbps"] = q_speed.nbytes / ts / 1e9
                rec["tg_model_gb"] = model_gb if model_gb is not None else model_params * bpw / 8 / 1e9
                rec["tg_tok_s"] = rec["tg_gbps"] / rec["tg_model_gb"]
                rec["tg_frac_bw"] = _bench.frac(rec["tg_gbps"], rec["tg_read_gbps"])
                rec["tg_numpy_gbps"] = speed_w.nbytes / tn / 1e9
                rec["tg_vs_numpy"] = tn / ts  # weights per second, same matrix
                numpy_pairs["tg_gbps"].append(rec["tg_numpy_gbps"])
                step()
                stage(f"{t.name}: PP (N={pp_n})")
                if runner is not None:
                    runner.best = 0.0
                t1, t2, ok = _bench.time_hot_pair(q_speed, xs[int(pp_n)], wT, threads, min_time=min_time, also=runner)
                rec["pp_gflops"] = _bench.gflops(rows_s, K_s, int(pp_n), t1)
                rec["pp_tok_s_per_bparam"] = rec["pp_gflops"] / 2.0
                if runner is not None:
                    rec["pp_peak_gops"] = max(runner.best, lim.int8(active, threads) or 0.0)
                rec["pp_frac_peak"] = _bench.frac(rec["pp_gflops"], rec["pp_peak_gops"])
                rec["pp_numpy_gflops"] = _bench.gflops(rows_s, K_s, int(pp_n), t2)
                rec["pp_vs_numpy"] = t2 / t1
                numpy_pairs["pp_gflops"].append(rec["pp_numpy_gflops"])
                if not ok and "numpy's BLAS threads could not be limited" not in all_notes:
                    all_notes.append("numpy's BLAS threads could not be limited")
                step()
                for N in hot_ns:
                    stage(f"{t.name}: hot N={N}")
                    t1, t2, _ = _bench.time_hot_pair(q_speed, xs[int(N)], wT, threads, min_time=min_time)
                    rec["hot"][str(N)] = _bench.gflops(rows_s, K_s, int(N), t1)
                    rec["hot_numpy"][str(N)] = _bench.gflops(rows_s, K_s, int(N), t2)
                    numpy_pairs[f"hot_{N}"].append(rec["hot_numpy"][str(N)])
                    step()
            pending.append(rec)
            # A row is final once every type of its size is measured (a type can only be
            # dominated by one that is at most as large, and those come first).
            nxt = plan[gi + 1][0] if gi + 1 < len(plan) else None
            if nxt is None or nxt > bpw + 1e-9:
                result.records.extend(pending)
                _mark_pareto(result.records)
                if on_row:
                    for r in pending:
                        on_row(r)
                pending = []
    finally:
        if bar is not None:
            bar.close()
    _mark_pareto(result.records)
    result.numpy = {k: {"paired": v, "median": statistics.median(v) if v else None,
                        "min": min(v) if v else None, "max": max(v) if v else None}
                    for k, v in numpy_pairs.items() if speed}
    return result


def _mark_pareto(recs: List[Dict[str, Any]]) -> None:
    err = "rms_rel" if any(r.get("rms_rel") is not None for r in recs) else None
    for key, speed_key in (("pareto_tg", "tg_tok_s"), ("pareto_pp", "pp_gflops")):
        if any(r.get(speed_key) is not None for r in recs):
            for r, m in zip(recs, pareto(recs, speed_key, err)):
                r[key] = m
    if err:
        for r, m in zip(recs, pareto(recs, None, err)):
            r["pareto_size"] = m


# ----------------------------------------------------------------------------- table
def _pct(v, digits=3):
    """A fraction as a percentage with ``digits`` significant digits (trailing zeros kept)."""
    if v is None:
        return "-"
    p = 100.0 * v
    dec = max(0, digits - 1 - int(math.floor(math.log10(abs(p))))) if p != 0 else digits - 1
    return f"{p:.{dec}f}%"


def _num(v, fmt):
    return "-" if v is None else format(v, fmt)


def _columns(settings: Dict[str, Any]) -> List[Tuple[str, int, Callable[[Dict[str, Any]], str]]]:
    cols: List[Tuple[str, int, Callable]] = [("type", 11, lambda r: r["type"]), ("bpw", 6, lambda r: f"{r['bpw']:.2f}")]
    if settings.get("accuracy"):
        cols += [("rms err", 8, lambda r: _pct(r["rms_rel"])),
                 ("mm err", 8, lambda r: _pct(r["matmul_err_pp"]))]
    if settings.get("speed"):
        cols += [("TG GB/s", 8, lambda r: _num(r["tg_gbps"], ".1f")),
                 ("%BW", 5, lambda r: _pct(r["tg_frac_bw"], 2)),
                 ("tok/s", 6, lambda r: _num(r["tg_tok_s"], ".1f")),
                 (f"PP GFLOPS", 10, lambda r: _num(r["pp_gflops"], ".0f")),
                 ("%peak", 6, lambda r: _pct(r["pp_frac_peak"], 2)),
                 ("xnumpy", 7, lambda r: _num(r["pp_vs_numpy"], ".2f"))]
        for n in settings.get("hot_ns", []):
            cols.append((f"N={n}", 8, lambda r, n=n: _num(r["hot"].get(str(n)), ".0f")))
    cols.append(("Pareto", 8, _pareto_cell))
    return cols


def _pareto_cell(r):
    marks = [m for m, k in (("tg", "pareto_tg"), ("pp", "pareto_pp")) if r.get(k)]
    if r.get("pareto_tg") is None and r.get("pareto_pp") is None and r.get("pareto_size"):
        marks = ["*"]
    return " ".join(marks)


def _fmt_head(cols) -> str:
    return " ".join(f"{name:<{w}}" if i == 0 else f"{name:>{w}}" for i, (name, w, _) in enumerate(cols)).rstrip()


def _fmt_row(cols, r) -> str:
    cells = []
    for i, (name, w, fn) in enumerate(cols):
        s = fn(r)
        cells.append(f"{s:<{w}}" if i == 0 else f"{s:>{w}}")
    line = " ".join(cells).rstrip()
    return line


def _numpy_lines(npd: Dict[str, Any], settings: Dict[str, Any]) -> List[str]:
    if not settings.get("speed") or not npd:
        return []
    parts = []
    tg, pp = npd.get("tg_gbps", {}), npd.get("pp_gflops", {})
    if tg.get("median") is not None:
        parts.append(f"TG {tg['median']:.1f} GB/s of float32 weights")
    if pp.get("median") is not None:
        parts.append(f"PP {pp['median']:.0f} GFLOPS")
    for n in settings.get("hot_ns", []):
        h = npd.get(f"hot_{n}", {})
        if h.get("median") is not None:
            parts.append(f"N={n} {h['median']:.0f} GFLOPS")
    if not parts:
        return []
    count = len(pp.get("paired") or [])
    line = f"{'numpy f32':<11} {32.0:>6.2f}  " + ", ".join(parts)
    line += f"  (median of its {count} pairing{'s' if count != 1 else ''}"
    if pp.get("min") is not None and count > 1:
        line += f"; PP ranged {pp['min']:.0f}-{pp['max']:.0f}"
    return [line + ")"]


def _legend(settings: Dict[str, Any]) -> List[str]:
    out = []
    if settings.get("accuracy"):
        out.append("rms err: relative RMS error of dequantize(quantize(w))"
                   + (" (imatrix-weighted)" if settings.get("imatrix") else "")
                   + f"; mm err: of matmul vs float32 x @ w.T at N={_ACC_ROWS_PP} (activation quantization "
                   "and large-batch conversion included)")
    if settings.get("speed"):
        mg = settings.get("model_gb")
        model = (f"a {mg:g} GB model" if mg else
                 f"a model of {settings.get('model_params', DEFAULT_MODEL_PARAMS) / 1e9:g}B parameters at that bpw")
        out.append(f"TG: N=1, weights from DRAM, GB/s of weights; %BW of the streaming read bandwidth; tok/s for {model}")
        out.append(f"PP: N={settings.get('pp_n')} GFLOPS (tokens/s of a 1B-parameter model = GFLOPS / 2); "
                   "%peak of the kernel set's int8 peak; xnumpy: vs numpy float32 timed alternately with it")
    out.append("Pareto: tg / pp = no other type is at most as large, at most as inaccurate and at least as fast "
               "(TG tok/s / PP GFLOPS), and better in one")
    return out


# ----------------------------------------------------------------------------- plot
def _plot(m: QuantMap, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('--plot needs matplotlib: pip install "iqkq[plot]" (or pip install matplotlib)') from None
    recs = m.records
    have_acc = any(r.get("rms_rel") is not None for r in recs)
    model = (f"{m.settings['model_gb']:g} GB model" if m.settings.get("model_gb") else
             f"{m.settings.get('model_params', DEFAULT_MODEL_PARAMS) / 1e9:g}B-parameter model")
    # (x key, y key, Pareto key, title, x label, y label); error on a log scale, speed linear
    err_lab = "relative RMS error of the weights (%)"
    panels = []
    if have_acc:
        panels.append(("bpw", "rms_rel", "pareto_size", "size vs accuracy", "bits per weight", err_lab))
    if m.settings.get("speed"):
        y_key, y_lab = ("rms_rel", err_lab) if have_acc else ("bpw", "bits per weight")
        panels.append(("tg_tok_s", y_key, "pareto_tg", "token generation (N=1, weights from DRAM)",
                       f"tokens/s, {model}", y_lab))
        panels.append(("pp_gflops", y_key, "pareto_pp", f"prompt processing (N={m.settings.get('pp_n')})",
                       "GFLOPS", y_lab))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.2), squeeze=False)
    cmap = plt.get_cmap("viridis")
    bpws = [r["bpw"] for r in recs] or [0.0]
    lo, hi = min(bpws), max(bpws)
    for ax, (xk, yk, pk, title, xl, yl) in zip(axes[0], panels):
        pts = [r for r in recs if r.get(xk) is not None and r.get(yk) is not None]
        if not pts:
            ax.set_title(f"{title}: nothing measured", fontsize=9)
            continue
        scale = 100.0 if yk == "rms_rel" else 1.0
        groups: Dict[Tuple[float, float], List[Dict[str, Any]]] = {}
        for r in pts:  # twins (q8_0 / q8_0_r8) can coincide: one point, both names
            groups.setdefault((float(f"{r[xk]:.4g}"), float(f"{r[yk] * scale:.4g}")), []).append(r)
        xs_all = [p[0] for p in groups]
        span = (max(xs_all) - min(xs_all)) or 1.0
        placed: List[Tuple[float, float, int]] = []
        for (x, y), rs in sorted(groups.items()):
            # label above the point, or below it when a label nearby already sits above
            near = [dy for px, py, dy in placed if abs(px - x) < 0.25 * span and 0.5 < (py / y if y else 1) < 2]
            dy = -11 if 4 in near else 4
            placed.append((x, y, dy))
            front = any(r.get(pk) for r in rs)
            col = cmap(0.5 if hi == lo else (rs[0]["bpw"] - lo) / (hi - lo))
            ax.scatter([x], [y], s=70, color=col, zorder=3, edgecolors="black" if front else "none", linewidths=1.6)
            ax.annotate(", ".join(r["type"] for r in rs) + (f" ({rs[0]['bpw']:.2f})" if xk != "bpw" else ""),
                        (x, y), textcoords="offset points", xytext=(5, dy), fontsize=7,
                        fontweight="bold" if front else "normal")
        # The front of this panel's two axes (better = further left on size, further right on
        # speed, lower on error): monotone, so a plain line through it. The black-edged, bold
        # points are the table's Pareto marks (size, accuracy and that speed together).
        sign = 1.0 if xk == "bpw" else -1.0
        cand = sorted(groups, key=lambda p: (sign * p[0], p[1]))
        fr, best = [], float("inf")
        for p in cand:
            if p[1] < best:
                fr.append(p)
                best = p[1]
        if len(fr) > 1:
            fr.sort()
            ax.plot([p[0] for p in fr], [p[1] for p in fr], "--", color="black", lw=1, zorder=2,
                    label="front of these two axes" if xk != "bpw" else "Pareto front")
            ax.legend(loc="best", fontsize=7)
        if yk == "rms_rel":
            ax.set_yscale("log")
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel(yl, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.18, y=0.12)
    mach = m.machine
    fig.suptitle(f"iqkq quant map: {mach.get('cpu', '?')}, kernels {mach.get('kernel_set')}, "
                 f"{m.settings.get('threads')} thread(s); colour = bits per weight; bold, black edge = Pareto-optimal in size, "
                 "accuracy and that panel's speed", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    _atomic_write(path, buf.getvalue())

