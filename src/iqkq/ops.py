"""quantize / dequantize / matmul / repack: argument validation, then the native core.

All validation that produces user-facing errors happens here; ``_core`` trusts its
arguments (it re-checks sizes only to guard its raw pointers).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Union

import numpy as np

from . import _core
from ._types import TypeInfo, _LARGE_BATCH, _RAW_BY_NAME, type_info
from .tensor import QuantizedTensor, RawTensor

__all__ = [
    "quantize",
    "dequantize",
    "matmul",
    "repack",
    "set_num_threads",
    "get_num_threads",
    "isa",
    "set_isa",
    "fused_up_gate",
    "moe_up_gate",
]

_CONST = _core.constants()
_PATHS = dict(_CONST["paths"])


# ----------------------------------------------------------------------------- threads / ISA
# More threads than this never help (the kernels are compute or bandwidth bound on the usable
# CPUs) and each costs a pool thread for the life of the process: larger requests are capped.
_MAX_THREADS = max(16, _core.available_cpus())


def _default_threads() -> int:
    env = os.environ.get("IQKQ_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"IQKQ_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"IQKQ_NUM_THREADS must be a positive integer, got {env!r}")
        return min(n, _MAX_THREADS)
    return max(1, _core.available_cpus())


_num_threads = _default_threads()


def set_num_threads(n: int) -> None:
    """Set the default number of threads used when a call passes ``threads=None``.

    Requests above ``max(16, usable CPUs)`` are capped to that number."""
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
    return min(int(n), _MAX_THREADS)


def isa() -> str:
    """The kernel set in use: ``"amx"`` (the AVX-512 set with the large-batch int8 products
    on AMX-INT8 tiles, picked when the CPU has AMX-TILE + AMX-INT8 and the OS grants the tile
    state), ``"avx512"`` (the AVX2 kernels with AVX-512 VNNI/VBMI versions of some of them,
    picked when the CPU has AVX-512 F/VL/BW/DQ/VNNI/VBMI), ``"avx2"`` (AVX2 + FMA + F16C) or
    ``"scalar"`` (portable C++). All give bit-identical results. ``IQKQ_ISA`` chooses at import."""
    return _core.isa()


def set_isa(name: str) -> None:
    """Switch the kernel set (``"amx"``, ``"avx512"``, ``"avx2"`` or ``"scalar"``) for this process.

    Raises ValueError if the name is unknown or the CPU does not support it. Results of the
    two sets are identical (the scalar set is the reference the SIMD set is tested against).
    """
    if not isinstance(name, str):
        raise TypeError(f"set_isa: the kernel set name must be a str ('scalar', 'avx2', 'avx512' or 'amx'), "
                        f"not {type(name).__name__}")
    try:
        _core.set_isa(name)
    except ValueError as e:  # pybind11 maps std::invalid_argument to ValueError
        raise ValueError(str(e)) from None


# ----------------------------------------------------------------------------- helpers
def _is_bfloat16(dt: np.dtype) -> bool:
    # ml_dtypes.bfloat16 (and look-alikes): numpy has no bf16 of its own; such a dtype is a
    # user dtype of kind 'V' with an exact cast to float32.
    return dt.itemsize == 2 and dt.name == "bfloat16"


def _as_float32(a, what: str, allow_int: bool = True) -> np.ndarray:
    """``a`` as a C-contiguous, aligned, native float32 array (no copy when it already is one).

    float16 / bfloat16 (ml_dtypes) / RawTensor f16 / bf16 / f32 convert exactly, float64 is
    rounded, arrays of the other byte order are converted. Integer arrays are converted only
    when ``allow_int`` (quantize refuses them: integer weights are almost always raw bits).
    """
    if isinstance(a, np.ndarray) and a.dtype == np.float32:  # == : any equal dtype object, native order
        arr = a
    elif isinstance(a, RawTensor):
        arr = a._float32()
        if arr is None:
            raise a.unsupported(what)
    elif isinstance(a, QuantizedTensor):
        raise TypeError(f"{what} is a QuantizedTensor ({a.qtype}); pass float values (iqkq.dequantize(...) gives them)")
    else:
        if isinstance(a, memoryview) and not a.c_contiguous:
            a = np.array(a)  # numpy copies any strided buffer
        arr = np.asarray(a)
        kind = arr.dtype.kind
        if kind == "f" or _is_bfloat16(arr.dtype) or (allow_int and kind in "iu"):
            arr = arr.astype(np.float32)
        elif kind in "iu":
            raise TypeError(
                f"{what} must be a float array (float32, float16, bfloat16 or float64), got integer dtype {arr.dtype}; "
                f"if these integers are raw bits (e.g. bf16 read as uint16) wrap them as iqkq.RawTensor, "
                f"if they are the values convert them first (w.astype(np.float32))"
            )
        elif allow_int:
            raise TypeError(f"{what} must be a real numeric array (float or int), got dtype {arr.dtype}")
        else:
            raise TypeError(f"{what} must be a float array (float32, float16, bfloat16 or float64), got dtype {arr.dtype}")
    if not (arr.flags.c_contiguous and arr.flags.aligned):
        arr = np.array(arr, dtype=np.float32, order="C")
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


# Importance weights are only compared with each other, so scaling them by a power of two
# changes nothing in exact arithmetic -- but ik_llama.cpp's quantizers overflow with huge ones
# (measured: from about 2^40 on results degrade, above about 2^90 iq4_ks gives all-zero or NaN
# rows and iq3_xxs relative errors near 1). Larger importance matrices are therefore rescaled,
# exactly, by a power of two so that their largest entry is at most 2^30; below that they are
# used as given, so iqkq's bytes stay those of ik_llama.cpp for every sane imatrix.
_IMATRIX_MAX = 2.0 ** 30


def _check_imatrix(imatrix, K: int, t: TypeInfo, n_expert: Optional[int] = None) -> Optional[np.ndarray]:
    if imatrix is None:
        return None
    im = _as_float32(imatrix, "imatrix")
    if n_expert is not None and im.ndim == 2:
        if im.shape != (n_expert, K):
            raise ValueError(f"{t.name}: a per-expert imatrix must have shape (n_expert, K) = ({n_expert}, {K}), "
                             f"got {im.shape}")
    elif im.ndim != 1 or im.shape[0] != K:
        extra = f" or ({n_expert}, {K}) (one row per expert)" if n_expert is not None else ""
        raise ValueError(f"{t.name}: imatrix must have shape ({K},){extra} (one weight per column), got {im.shape}")
    if not np.isfinite(im).all():
        raise ValueError(f"{t.name}: imatrix contains NaN or infinite values")
    if (im < 0).any():
        raise ValueError(f"{t.name}: imatrix entries must be >= 0 (importance weights), found negative values")
    if im.size and t.name in ("q4_K", "q5_K") and K % 256 == 0:
        # quantize_row_q{4,5}_K_impl weighs each 256-column super-block by the imatrix alone; an
        # all-zero super-block makes its 6-bit scale quantization 0/0 and ik_llama.cpp aborts
        # (GGML_ABORT on a NaN d_block). iqkq refuses it up front (the _r4 twins replace such
        # blocks by 1e-9 weights, as ik does, and accept it).
        zero = (im.reshape(-1, K // 256, 256) == 0).all(axis=-1)
        if zero.any():
            b = int(np.argwhere(zero)[0][-1])
            raise ValueError(f"{t.name}: the imatrix is zero over the whole super-block of columns "
                             f"[{256 * b}, {256 * b + 256}); ik_llama.cpp cannot quantize that (it aborts)")
    if im.size:
        rows = im.reshape(-1, K)
        top = rows.max(axis=1)
        if (top > _IMATRIX_MAX).any():
            shift = np.where(top > _IMATRIX_MAX, np.ceil(np.log2(top.astype(np.float64))) - 30, 0).astype(np.int32)
            im = np.ascontiguousarray(np.ldexp(rows, -shift[:, None]).astype(np.float32).reshape(im.shape))
    return im


def _require_qt(q, what: str) -> QuantizedTensor:
    if isinstance(q, RawTensor):
        raise q.unsupported(what)
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"{what} must be an iqkq.QuantizedTensor, not {type(q).__name__}")
    return q


# ----------------------------------------------------------------------------- quantize
def quantize(w, qtype: Union[str, int, TypeInfo], *, imatrix=None, threads: Optional[int] = None) -> QuantizedTensor:
    """Quantize float weights to ``qtype``, byte-identical to ik_llama.cpp.

    Args:
        w: float array of shape ``(rows, K)`` (or ``(n_expert, rows, K)`` for stacked
            experts). float32 is used as is; float16, bfloat16 (``ml_dtypes``, or a bf16
            :class:`RawTensor` from a GGUF) convert exactly, float64 is rounded to float32.
        qtype: type name (case-insensitive) or ggml id, e.g. ``"q8_0"`` or ``8``.
        imatrix: optional importance weights, shape ``(K,)`` (for stacked experts also
            ``(n_expert, K)``: one row per expert), finite and >= 0. Types that do not use one
            (q8_0, q8_0_r8, q8_k_r8) accept and ignore it, as ggml does. An imatrix whose largest
            entry exceeds 2^30 is rescaled by a power of two (exact) to at most 2^30, where
            ik_llama.cpp's quantizers would lose precision or overflow.
        threads: threads to use (default ``get_num_threads()``).

    Returns:
        A :class:`QuantizedTensor` holding the ggml bytes.

    Raises:
        TypeError: ``w`` is not a float array (integer arrays are refused: they are usually
        raw bits such as bf16 read as uint16). ValueError: wrong ndim, K not a multiple of the block
        size, rows not a multiple of the interleave, NaN/Inf weights, bad imatrix.

    Warns:
        RuntimeWarning: weights too large for the type's fp16 block scales (e.g. |w| > ~8.3e6
        for q8_0): those rows dequantize to inf/NaN, as in ggml.

    Example:
        >>> w = np.random.default_rng(0).standard_normal((64, 256), dtype=np.float32)
        >>> q = iqkq.quantize(w, "q8_0")
        >>> q.shape, q.nbytes
        ((64, 256), 17408)
    """
    t = type_info(qtype)
    nthreads = _check_threads(threads)
    arr = _as_float32(w, "w", allow_int=False)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{t.name}: w must be 2-D (rows, K) or 3-D (n_expert, rows, K), got shape {arr.shape}")
    _check_weight_shape(t, arr.shape)
    K = arr.shape[-1]
    rows_total = int(np.prod(arr.shape[:-1]))
    im = _check_imatrix(imatrix, K, t, arr.shape[0] if arr.ndim == 3 else None)
    out = np.empty(rows_total * t.row_bytes(K), dtype=np.uint8)
    if rows_total:
        if im is not None and im.ndim == 2:  # one importance row per expert
            E, rows = arr.shape[0], arr.shape[1]
            nb = rows * t.row_bytes(K)
            bad = -1
            for e in range(E):
                b = _core.quantize(t.index, arr[e], out[e * nb:(e + 1) * nb], rows, K, im[e], nthreads)
                if b >= 0:
                    bad = e * rows + b
                    break
        else:
            bad = _core.quantize(t.index, arr, out, rows_total, K, im, nthreads)
        if bad >= 0:
            where = bad if arr.ndim == 2 else divmod(bad, arr.shape[1])
            raise ValueError(
                f"{t.name}: w contains NaN or infinite values (first in row {where}); only finite weights can be quantized"
            )
    q = QuantizedTensor(out, t, arr.shape)
    if arr.size and max(float(arr.max()), -float(arr.min())) > 65504.0:  # no |arr| temporary
        _warn_if_overflowed(q)
    return q


def _warn_if_overflowed(q: QuantizedTensor) -> None:
    # Most types store block scales as fp16 (max 65504): weights far beyond that -- e.g. |w| >
    # 65504 * 127 ~ 8.3e6 for q8_0 -- give an infinite scale and dequantize to inf / NaN, in
    # ggml as here. Only checked when some |w| exceeds the fp16 range, so normal weights pay
    # nothing.
    d = dequantize(q)
    if not np.isfinite(d).all():
        rows = int((~np.isfinite(d.reshape(-1, q.shape[-1]))).any(axis=1).sum())
        warnings.warn(f"{q.qtype}: {rows} row(s) hold weights too large for the type's fp16 block scales; "
                      f"they dequantize to inf/NaN (as in ggml). Scale the tensor down or use a type "
                      f"with float32 scales.", RuntimeWarning, stacklevel=3)


def dequantize(q, *, threads: Optional[int] = None) -> np.ndarray:
    """Dequantize to float32 of shape ``q.shape``, bit-identical to ggml's ``to_float``.

    ``q`` may be any tensor a GGUF file holds that has float values: a QuantizedTensor, a
    :class:`RawTensor` of type f32 / f16 / bf16 (exact) or f64 (rounded), or of one of
    iqkq's types with 1 or 4 dimensions, or a numpy float array (float32 arrays are returned
    as they are, others converted). So ``dequantize(tensors[name])`` gives float32 values
    for every such tensor of ``iqkq.gguf.load``.

    Raises:
        TypeError: a RawTensor of a type iqkq has no kernels for (the message names it), an
        integer array, or anything that is not a tensor.

    Example:
        >>> w = np.linspace(-1, 1, 8 * 32, dtype=np.float32).reshape(8, 32)
        >>> w2 = iqkq.dequantize(iqkq.quantize(w, "q8_0"))
        >>> w2.shape, w2.dtype
        ((8, 32), dtype('float32'))
        >>> bool(np.abs(w2 - w).max() < 0.01)
        True
    """
    if isinstance(q, RawTensor):
        f = q._float32()
        if f is not None:
            return f
        kv = q._kernel_view()
        if kv is None:
            raise q.unsupported("q")
        return dequantize(kv, threads=threads).reshape(q.shape)
    if not isinstance(q, QuantizedTensor) and (isinstance(q, np.ndarray) or np.isscalar(q)):
        a = np.asarray(q)
        if a.dtype.kind != "f" and not _is_bfloat16(a.dtype):
            raise TypeError(f"q must be a QuantizedTensor, a RawTensor or a float array, got an array of dtype {a.dtype}")
        return _as_float32(a, "q")
    q = _require_qt(q, "q")
    nthreads = _check_threads(threads)
    t = q.type_info
    K = q.shape[-1]
    rows_total = int(np.prod(q.shape[:-1]))
    out = np.empty(q.shape, dtype=np.float32)
    if rows_total:
        _core.dequantize(t.index, q.data, out, rows_total, K, nthreads)
    return out


def repack(q: QuantizedTensor, qtype: Union[str, int, TypeInfo], *, threads: Optional[int] = None) -> QuantizedTensor:
    """Convert between a type and its row-interleaved twin (e.g. ``q8_0`` <-> ``q8_0_r8``), or
    to the type's large-batch form (``iq4_ks`` / ``iq3_xxs`` / ``iq4_xs`` -> ``q8_k_r8``).

    Between twins the conversion is an exact byte permutation both ways; the values are
    unchanged. To ``q8_k_r8`` it is ik_llama.cpp's on-the-fly conversion for large batches
    (docs/formats.md §11.4): values are re-rounded to int8 with an fp16 scale per row and 256
    columns, so it is lossy (about 0.5-1 % relative change of matmul results) but
    ``matmul(repack(w, "q8_k_r8"), x)`` equals ``matmul(w, x, path="repack")`` bit for bit.
    Repacking to the tensor's own type returns it unchanged.

    Raises:
        ValueError: the types are neither twins nor a large-batch pair, or the row count is not
        a multiple of the interleave of the target type.

    Example:
        >>> q = iqkq.quantize(np.ones((8, 64)), "q8_0")
        >>> iqkq.repack(iqkq.repack(q, "q8_0_r8"), "q8_0") == q
        True
    """
    q = _require_qt(q, "q")
    nthreads = _check_threads(threads)
    src = q.type_info
    dst = type_info(qtype)
    if src.name == dst.name:
        return q
    if _LARGE_BATCH.get(src.name) == dst.name and dst.base != src.name:
        return _convert_large_batch(q, src, dst, nthreads)
    if not (dst.base == src.name or src.base == dst.name):
        twins = list(dict.fromkeys(n for n in (src.base, src.interleaved, _LARGE_BATCH.get(src.name)) if n))
        hint = f"; {src.name} can be repacked to {', '.join(twins)}" if twins else f"; {src.name} has no repack twin"
        raise ValueError(f"cannot repack {src.name} to {dst.name}: they are not row-interleaved twins{hint}")
    _check_weight_shape(dst, q.shape)
    K = q.shape[-1]
    rows_total = int(np.prod(q.shape[:-1]))
    if q.ndim == 3 and q.shape[1] % max(src.interleave, dst.interleave):
        raise ValueError(f"cannot repack: rows per expert ({q.shape[1]}) must be a multiple of the interleave")
    out = np.empty(q.nbytes, dtype=np.uint8)
    if rows_total:
        _core.repack(src.index, dst.index, q.data, out, rows_total, K, nthreads)
    return QuantizedTensor(out, dst, q.shape)


def _convert_large_batch(q: QuantizedTensor, src: TypeInfo, dst: TypeInfo, threads) -> QuantizedTensor:
    _check_weight_shape(dst, q.shape)
    nthreads = _check_threads(threads)
    K = q.shape[-1]
    rows_total = int(np.prod(q.shape[:-1]))
    if q.ndim == 3 and q.shape[1] % dst.interleave:
        raise ValueError(f"cannot convert: rows per expert ({q.shape[1]}) must be a multiple of {dst.interleave}")
    out = _core.convert_large_batch(src.index, q.data, rows_total, K, nthreads) if rows_total \
        else np.empty(0, np.uint8)
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
        float32 array of shape ``(rows,)`` for 1-D ``x``, else ``(N, rows)``. A 3-D ``w``
        (``n_expert`` stacked matrices) gives ``(n_expert, rows)`` / ``(n_expert, N, rows)``;
        then ``x`` may also be ``(n_expert, N, K)``, one batch per expert.

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
    nthreads = _num_threads if threads is None else _check_threads(threads)
    p = _PATHS.get(path) if isinstance(path, str) else None
    if p is None:
        raise ValueError(f"path must be one of 'auto', 'direct', 'repack', got {path!r}")
    if len(shape) == 3:
        return _matmul_stacked(w, x, nthreads, path)
    rows, K = shape
    if type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.aligned:
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
    if p == _PATHS["repack"]:
        lb = _LARGE_BATCH[t.name]
        if lb is None:
            raise ValueError(f"{t.name}: path='repack' needs a type with a large-batch form; {t.name} has none")
        if rows % _RAW_BY_NAME[lb]["interleave"]:
            raise ValueError(f"{t.name}: path='repack' converts to {lb}, which needs rows % "
                             f"{_RAW_BY_NAME[lb]['interleave']} == 0 (rows={rows})")
    y = np.empty((N, rows), dtype=np.float32)
    _core.matmul(t.index, w._data, rows, K, xa, N, y, nthreads, p)
    return y[0] if nd == 1 else y


def _expert(w: QuantizedTensor, e: int) -> QuantizedTensor:
    E, rows, K = w.shape
    n = w.nbytes // E
    return QuantizedTensor(w.data[e * n:(e + 1) * n], w.type_info, (rows, K))


def _matmul_stacked(w: QuantizedTensor, x, threads, path) -> np.ndarray:
    E, rows, K = w.shape
    xa = _as_float32(x, "x")
    if xa.ndim not in (1, 2, 3):
        raise ValueError(f"x must be (K,), (N, K) or (n_expert, N, K), got shape {xa.shape}")
    if xa.ndim == 3 and xa.shape[0] != E:
        raise ValueError(f"for stacked weights {w.shape}, a 3-D x must be (n_expert, N, K) = ({E}, N, {K}), "
                         f"got {xa.shape}")
    if xa.shape[-1] != K:
        raise ValueError(f"{w.qtype}: x has {xa.shape[-1]} columns but w has K={K} (w.shape={w.shape}, x.shape={xa.shape})")
    out_shape = (E,) + xa.shape[(1 if xa.ndim == 3 else 0):-1] + (rows,)
    if E == 0 or rows == 0 or 0 in xa.shape:  # nothing to compute (and no per-expert loop over empties)
        return np.zeros(out_shape, np.float32)
    if xa.ndim == 3:
        return np.stack([matmul(_expert(w, e), xa[e], threads=threads, path=path) for e in range(E)])
    return np.stack([matmul(_expert(w, e), xa, threads=threads, path=path) for e in range(E)])


# ----------------------------------------------------------------------------- fused up + gate
_ACTS = dict(_CONST["unary_ops"])


def _check_act(act, limit):
    op = _ACTS.get(act.lower()) if isinstance(act, str) else None
    if op is None:
        raise ValueError(f"act must be one of {sorted(_ACTS)}, got {act!r}")
    if limit is None:
        lim = 0.0
    else:
        if isinstance(limit, (bool, np.bool_)) or not isinstance(limit, (int, float, np.integer, np.floating)):
            raise TypeError(f"limit must be a number or None, not {type(limit).__name__}")
        lim = float(limit)
        # ik_llama.cpp reads a limit <= 1e-6 as "no limit"; refuse it rather than ignore it
        if not np.isfinite(lim) or lim <= 1e-6:
            raise ValueError(f"limit must be a finite number > 1e-6 or None (no limit), got {limit!r}")
        if np.float32(lim) <= np.float32(1e-6):
            raise ValueError(f"limit must be > 1e-6 in float32, got {limit!r}")
    return op, lim


def _check_pair(up, gate):
    _require_qt(up, "up")
    _require_qt(gate, "gate")
    if up.qtype != gate.qtype:
        raise TypeError(
            f"up and gate must have the same quantization type, got up={up.qtype} and gate={gate.qtype}; "
            f"re-quantize one of them (iqkq.quantize) or convert it with iqkq.repack where the types are twins"
        )
    if up.shape != gate.shape:
        raise ValueError(f"up and gate must have the same shape, got up.shape={up.shape} and gate.shape={gate.shape}")


def fused_up_gate(up: QuantizedTensor, gate: QuantizedTensor, x, *, act: str = "silu", limit=None,
                  threads: Optional[int] = None) -> np.ndarray:
    """The gated feed-forward product ``act(x @ gate.T) * (x @ up.T)`` in one pass.

    ``x`` is quantized once (to the weight type's activation format) and both products are
    computed by the same kernels as :func:`matmul`, tile by tile, with the activation applied
    while the tile is in cache -- the arithmetic of ik_llama.cpp's ``ggml_fused_up_gate``
    (docs/formats.md §12.1): SILU / GELU use ik_llama.cpp's 8-lane exp formulas (the last
    ``N_ff % 8`` outputs its scalar libm formulas), RELU is ``max(g, 0)``.

    Args:
        up, gate: QuantizedTensors of the same type and shape ``(N_ff, K)``.
        x: activations ``(K,)`` or ``(N, K)``.
        act: ``"silu"`` (default), ``"gelu"`` or ``"relu"``.
        limit: optional positive clamp: ``act(g)`` is capped at ``limit`` and ``x @ up.T``
            clamped to ``[-limit, limit]`` (the SwiGLU limit of some models).
        threads: threads to use (default ``get_num_threads()``); results do not depend on it.

    Returns:
        float32 ``(N_ff,)`` for 1-D ``x``, else ``(N, N_ff)``.

    Raises:
        TypeError: up and gate have different types (re-quantize or repack one of them).
        ValueError: different shapes, x of the wrong width, unknown act.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> up = iqkq.quantize(rng.standard_normal((64, 256)), "q8_0")
        >>> gate = iqkq.quantize(rng.standard_normal((64, 256)), "q8_0")
        >>> iqkq.fused_up_gate(up, gate, np.ones((3, 256))).shape
        (3, 64)
    """
    _check_pair(up, gate)
    nthreads = _check_threads(threads)
    if up.ndim != 2:
        raise ValueError(f"fused_up_gate needs 2-D weights (N_ff, K), got shape {up.shape}; use moe_up_gate for experts")
    op, lim = _check_act(act, limit)
    t = up.type_info
    nff, K = up.shape
    xa = _as_float32(x, "x")
    if xa.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D (K,) or 2-D (N, K), got shape {xa.shape}")
    if xa.shape[-1] != K:
        raise ValueError(f"{t.name}: x has {xa.shape[-1]} columns but the weights have K={K} (shape {up.shape})")
    x2 = xa.reshape(-1, K)
    N = x2.shape[0]
    y = np.empty((N, nff), dtype=np.float32)
    if N and nff:
        _core.fused_up_gate(t.index, up.data, gate.data, nff, K, x2, N, y, op, lim, nthreads)
    return y[0] if xa.ndim == 1 else y


def moe_up_gate(up: QuantizedTensor, gate: Optional[QuantizedTensor], x, expert_ids, *, act: str = "silu",
                limit=None, threads: Optional[int] = None) -> np.ndarray:
    """Fused up+gate for mixture-of-experts layers (ggml's ``mul_mat_id`` routing).

    Token ``t``'s slot ``s`` uses expert ``e = expert_ids[t, s]``:
    ``y[t, s] = act(x_t @ gate[e].T) * (x_t @ up[e].T)``. Every expert multiplies all the
    tokens routed to it at once (with the large-batch weight conversion when 32 or more hit
    it, as ik_llama.cpp does), so a token's result can depend on how many other tokens share
    its expert -- exactly as in ik_llama.cpp.

    Args:
        up: QuantizedTensor ``(n_expert, N_ff, K)``; or, with ``gate=None``, the merged
            tensor ``(n_expert, 2 * N_ff, K)`` whose first ``N_ff`` rows per expert are the gate
            rows (ik_llama.cpp's ``ffn_up_gate_exps``).
        gate: QuantizedTensor ``(n_expert, N_ff, K)`` of the same type as ``up``, or None.
        x: ``(T, K)`` (shared by a token's slots) or ``(T, n_used, K)``.
        expert_ids: integer array ``(T, n_used)``; ``-1`` means no expert (the output is 0).
        act, limit, threads: as in :func:`fused_up_gate`.

    Returns:
        float32 ``(T, n_used, N_ff)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> up = iqkq.quantize(rng.standard_normal((4, 32, 256)), "q8_0")
        >>> gate = iqkq.quantize(rng.standard_normal((4, 32, 256)), "q8_0")
        >>> ids = np.array([[0, 2], [3, -1]])
        >>> iqkq.moe_up_gate(up, gate, np.ones((2, 256)), ids).shape
        (2, 2, 32)
    """
    _require_qt(up, "up")
    nthreads = _check_threads(threads)
    if gate is not None:
        _check_pair(up, gate)
    if up.ndim != 3:
        raise ValueError(f"moe_up_gate needs 3-D expert weights (n_expert, N_ff, K), got up.shape={up.shape}")
    op, lim = _check_act(act, limit)
    t = up.type_info
    E, rows, K = up.shape
    if gate is None:
        if rows % 2:
            raise ValueError(f"a merged up/gate tensor needs an even number of rows per expert, got {rows}")
        nff = rows // 2
        if nff % t.interleave:
            raise ValueError(
                f"{t.name}: the gate and up halves of a merged tensor must each be a multiple of "
                f"{t.interleave} rows, got N_ff={nff}")
    else:
        nff = rows
    ids = np.asarray(expert_ids)
    if ids.dtype.kind not in "iu" and not (ids.dtype.kind == "f" and ids.size == 0):
        raise TypeError(f"expert_ids must be an integer array, got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(f"expert_ids must have shape (T, n_used), got {ids.shape}")
    T, n_used = ids.shape
    if ids.size and (ids.min() < -1 or ids.max() >= E):
        bad = ids[(ids < -1) | (ids >= E)].ravel()[0]
        raise ValueError(f"expert_ids must be in [-1, {E}) (n_expert={E}; -1 = no expert), found {int(bad)}")
    ids32 = np.require(ids, np.int32, ["C", "A"])
    xa = _as_float32(x, "x")
    if xa.ndim == 2:
        per_slot = False
        if xa.shape != (T, K):
            raise ValueError(f"x must have shape (T, K) = ({T}, {K}) or (T, n_used, K), got {xa.shape}")
    elif xa.ndim == 3:
        per_slot = True
        if xa.shape != (T, n_used, K):
            raise ValueError(f"x must have shape (T, n_used, K) = ({T}, {n_used}, {K}) or (T, K), got {xa.shape}")
    else:
        raise ValueError(f"x must be (T, K) or (T, n_used, K), got shape {xa.shape}")
    y = np.empty((T, n_used, nff), dtype=np.float32)
    if y.size:
        _core.moe_up_gate(t.index, up.data, None if gate is None else gate.data, E, nff, K, xa, per_slot, ids32, T,
                          n_used, y, op, lim, nthreads)
    return y
