"""quantize / dequantize / matmul / repack: argument validation, then the native core.

All validation that produces user-facing errors happens here; ``_core`` trusts its
arguments (it re-checks sizes only to guard its raw pointers).
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from . import _core
from ._types import TypeInfo, _LARGE_BATCH, type_info
from .tensor import QuantizedTensor

__all__ = [
    "quantize",
    "dequantize",
    "matmul",
    "repack",
    "set_num_threads",
    "get_num_threads",
    "isa",
    "set_isa",
]

_PATHS = {"auto": 0, "direct": 1, "repack": 2}


# ----------------------------------------------------------------------------- threads / ISA
def _default_threads() -> int:
    env = os.environ.get("IQKQ_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"IQKQ_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"IQKQ_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    return max(1, _core.available_cpus())


_num_threads = _default_threads()


def set_num_threads(n: int) -> None:
    """Set the default number of threads used when a call passes ``threads=None``."""
    global _num_threads
    _num_threads = _check_threads(n)


def get_num_threads() -> int:
    """The default thread count: ``IQKQ_NUM_THREADS`` if set, else the usable CPUs."""
    return _num_threads


def _check_threads(n) -> int:
    if n is None:
        return _num_threads
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"threads must be a positive int or None, not {type(n).__name__}")
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    return min(int(n), 256)


def isa() -> str:
    """The kernel set in use: ``"avx2"`` or ``"scalar"``."""
    return _core.isa()


def set_isa(name: str) -> None:
    """Switch the kernel set (``"avx2"`` or ``"scalar"``) for this process.

    Raises ValueError if the name is unknown or the CPU does not support it. Results of the
    two sets are identical (the scalar set is the reference the SIMD set is tested against).
    """
    try:
        _core.set_isa(name)
    except ValueError as e:  # pybind11 maps std::invalid_argument to ValueError
        raise ValueError(str(e)) from None


# ----------------------------------------------------------------------------- helpers
_NUMERIC_KINDS = "fiu"


def _as_float32(a, what: str) -> np.ndarray:
    if isinstance(a, np.ndarray) and a.dtype == np.float32:
        arr = a
    else:
        arr = np.asarray(a)
        if arr.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"{what} must be a real numeric array (float or int), got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def _check_weight_shape(t: TypeInfo, shape) -> None:
    K, rows = shape[-1], shape[-2]
    if K == 0 or K % t.block_size:
        raise ValueError(
            f"{t.name}: K (the last dimension) must be a positive multiple of the block size "
            f"{t.block_size}, got K={K}"
        )
    if rows % t.interleave:
        raise ValueError(
            f"{t.name}: the number of rows must be a multiple of {t.interleave} "
            f"(rows are stored {t.interleave} at a time), got rows={rows}"
        )


def _check_imatrix(imatrix, K: int, t: TypeInfo) -> Optional[np.ndarray]:
    if imatrix is None:
        return None
    im = _as_float32(imatrix, "imatrix")
    if im.ndim != 1 or im.shape[0] != K:
        raise ValueError(f"{t.name}: imatrix must have shape ({K},) (one weight per column), got {im.shape}")
    if not np.isfinite(im).all():
        raise ValueError(f"{t.name}: imatrix contains NaN or infinite values")
    if (im < 0).any():
        raise ValueError(f"{t.name}: imatrix entries must be >= 0 (importance weights), found negative values")
    return im


def _require_qt(q, what: str) -> QuantizedTensor:
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"{what} must be an iqkq.QuantizedTensor, not {type(q).__name__}")
    return q


# ----------------------------------------------------------------------------- quantize
def quantize(w, qtype: Union[str, int, TypeInfo], *, imatrix=None, threads: Optional[int] = None) -> QuantizedTensor:
    """Quantize float weights to ``qtype``, byte-identical to ik_llama.cpp.

    Args:
        w: float array of shape ``(rows, K)`` (or ``(n_expert, rows, K)`` for stacked
            experts). float32 is used as is; other real dtypes are converted.
        qtype: type name (case-insensitive) or ggml id, e.g. ``"q8_0"`` or ``8``.
        imatrix: optional importance weights, shape ``(K,)``, finite and >= 0. Types that do
            not use one (q8_0, q8_0_r8, q8_k_r8) accept and ignore it, as ggml does.
        threads: threads to use (default ``get_num_threads()``).

    Returns:
        A :class:`QuantizedTensor` holding the ggml bytes.

    Raises:
        TypeError: non-numeric ``w``. ValueError: wrong ndim, K not a multiple of the block
        size, rows not a multiple of the interleave, NaN/Inf weights, bad imatrix.

    Example:
        >>> w = np.random.default_rng(0).standard_normal((64, 256), dtype=np.float32)
        >>> q = iqkq.quantize(w, "q8_0")
        >>> q.shape, q.nbytes
        ((64, 256), 17408)
    """
    t = type_info(qtype)
    arr = _as_float32(w, "w")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{t.name}: w must be 2-D (rows, K) or 3-D (n_expert, rows, K), got shape {arr.shape}")
    _check_weight_shape(t, arr.shape)
    K = arr.shape[-1]
    rows_total = int(np.prod(arr.shape[:-1]))
    im = _check_imatrix(imatrix, K, t)
    out = np.empty(rows_total * t.row_bytes(K), dtype=np.uint8)
    if rows_total:
        bad = _core.quantize(t.index, arr, out, rows_total, K, im, _check_threads(threads))
        if bad >= 0:
            where = bad if arr.ndim == 2 else divmod(bad, arr.shape[1])
            raise ValueError(
                f"{t.name}: w contains NaN or infinite values (first in row {where}); only finite weights can be quantized"
            )
    return QuantizedTensor(out, t, arr.shape)


def dequantize(q: QuantizedTensor, *, threads: Optional[int] = None) -> np.ndarray:
    """Dequantize to float32 of shape ``q.shape``, bit-identical to ggml's ``to_float``.

    Example:
        >>> iqkq.dequantize(iqkq.quantize(np.ones((8, 32)), "q8_0"))[0, :3]
        array([1., 1., 1.], dtype=float32)
    """
    q = _require_qt(q, "q")
    t = q.type_info
    K = q.shape[-1]
    rows_total = int(np.prod(q.shape[:-1]))
    out = np.empty(q.shape, dtype=np.float32)
    if rows_total:
        _core.dequantize(t.index, q.data, out, rows_total, K, _check_threads(threads))
    return out


def repack(q: QuantizedTensor, qtype: Union[str, int, TypeInfo], *, threads: Optional[int] = None) -> QuantizedTensor:
    """Convert between a type and its row-interleaved twin (e.g. ``q8_0`` <-> ``q8_0_r8``).

    The conversion is an exact byte permutation both ways; the values are unchanged.
    Repacking to the tensor's own type returns it unchanged.

    Raises:
        ValueError: the two types are not twins, or the row count is not a multiple of the
        interleave of the target type.

    Example:
        >>> q = iqkq.quantize(np.ones((8, 64)), "q8_0")
        >>> iqkq.repack(iqkq.repack(q, "q8_0_r8"), "q8_0") == q
        True
    """
    q = _require_qt(q, "q")
    src = q.type_info
    dst = type_info(qtype)
    if src.name == dst.name:
        return q
    if not (dst.base == src.name or src.base == dst.name):
        twins = [n for n in (src.base, src.interleaved) if n]
        hint = f"; {src.name} can be repacked to {', '.join(twins)}" if twins else f"; {src.name} has no repack twin"
        raise ValueError(f"cannot repack {src.name} to {dst.name}: they are not row-interleaved twins{hint}")
    _check_weight_shape(dst, q.shape)
    K = q.shape[-1]
    rows_total = int(np.prod(q.shape[:-1]))
    if q.ndim == 3 and q.shape[1] % max(src.interleave, dst.interleave):
        raise ValueError(f"cannot repack: rows per expert ({q.shape[1]}) must be a multiple of the interleave")
    out = np.empty(q.nbytes, dtype=np.uint8)
    if rows_total:
        _core.repack(src.index, dst.index, q.data, out, rows_total, K, _check_threads(threads))
    return QuantizedTensor(out, dst, q.shape)


# ----------------------------------------------------------------------------- matmul
def matmul(w: QuantizedTensor, x, *, threads: Optional[int] = None, path: str = "auto") -> np.ndarray:
    """``x @ dequantize(w).T`` computed as ik_llama.cpp's CPU ``ggml_mul_mat(W, X)`` does.

    ``x`` is quantized to the weight type's activation format (q8_2_x4 for q8_0 / q8_0_r8,
    q8_K or q8_K32 for the K-quant-like types), products are integer dot products and the
    scales are applied in float in ik_llama.cpp's order.

    Args:
        w: QuantizedTensor of shape ``(rows, K)``.
        x: activations, shape ``(K,)`` or ``(N, K)``; float32 is used as is, other real
            dtypes are converted. NaN/Inf activations do not fail (outputs may be non-finite).
        threads: threads to use (default ``get_num_threads()``); results do not depend on it.
        path: ``"auto"`` (default), ``"direct"`` or ``"repack"``. For large batches
            (N >= 32, rows >= 32, rows % 8 == 0) ``"auto"`` converts the weights tile by tile
            to an 8-row interleaved type (q8_0 -> q8_0_r8), as ik_llama.cpp does; the
            conversion of q8_0 is exact, only the float summation order differs (last-bit
            differences). ``"direct"`` / ``"repack"`` force one path.

    Returns:
        float32 array of shape ``(rows,)`` for 1-D ``x``, else ``(N, rows)``.

    Example:
        >>> w = np.random.default_rng(0).standard_normal((64, 256), dtype=np.float32)
        >>> x = np.ones(256, np.float32)
        >>> y = iqkq.matmul(iqkq.quantize(w, "q8_0"), x)
        >>> y.shape
        (64,)
    """
    if type(w) is not QuantizedTensor:
        _require_qt(w, "w")
    t = w._info
    shape = w._shape
    if len(shape) != 2:
        raise ValueError(f"matmul needs a 2-D weight tensor (rows, K), got shape {shape}")
    rows, K = shape
    if type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous:
        xa = x
    else:
        xa = _as_float32(x, "x")
    nd = xa.ndim
    if nd == 1:
        N = 1
    elif nd == 2:
        N = xa.shape[0]
    else:
        raise ValueError(f"x must be 1-D (K,) or 2-D (N, K), got shape {xa.shape}")
    if xa.shape[-1] != K:
        raise ValueError(f"{t.name}: x has {xa.shape[-1]} columns but w has K={K} (w.shape={shape}, x.shape={xa.shape})")
    p = _PATHS.get(path) if isinstance(path, str) else None
    if p is None:
        raise ValueError(f"path must be one of 'auto', 'direct', 'repack', got {path!r}")
    if p == 2 and (_LARGE_BATCH[t.name] is None or rows % 8):
        raise ValueError(
            f"{t.name}: path='repack' needs a type with a large-batch form and rows % 8 == 0 (rows={rows})"
        )
    y = np.empty((N, rows), dtype=np.float32)
    _core.matmul(t.index, w._data, rows, K, xa, N, y, _num_threads if threads is None else _check_threads(threads), p)
    return y[0] if nd == 1 else y
