"""QuantizedTensor: ggml-layout bytes + type + logical shape, without copies; RawTensor: the same
for any ggml type (those iqkq has no kernels for included), so that every tensor of a GGUF file
can be held, inspected and written back unchanged."""
from __future__ import annotations

import operator
from typing import Tuple, Union

import numpy as np

from ._types import _BY_ID, TypeInfo, type_info

__all__ = ["QuantizedTensor", "RawTensor"]

_MAX_DIMS = 4  # GGML_MAX_DIMS
# ggml types with an exact numpy dtype (little-endian, as GGUF stores them)
_NUMPY_TYPES = {0: "<f4", 1: "<f2", 24: "<i1", 25: "<i2", 26: "<i4", 27: "<i8", 28: "<f8"}
_BF16 = 30


def _as_bytes_array(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype not in (np.uint8, np.int8):
            raise TypeError(
                f"QuantizedTensor data must be raw bytes (uint8), got an array of dtype {data.dtype}; "
                "to quantize float weights use iqkq.quantize()"
            )
        arr = data.view(np.uint8) if data.dtype == np.int8 else data
    else:
        if isinstance(data, memoryview) and not data.contiguous:
            data = np.array(data)  # a strided buffer: copied once, as documented
            return _as_bytes_array(data)
        try:
            arr = np.frombuffer(data, dtype=np.uint8)
        except TypeError:
            raise TypeError(
                f"QuantizedTensor data must be a bytes-like object or uint8 array, not {type(data).__name__}"
            ) from None
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr.reshape(-1)


def _check_shape(t: TypeInfo, shape) -> Tuple[int, ...]:
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}") from None
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be (rows, K) or (n_expert, rows, K), got {shape}")
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must be non-negative, got {shape}")
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
    return shape


class QuantizedTensor:
    """A quantized matrix (or stack of matrices) in ggml / ik_llama.cpp byte layout.

    ``QuantizedTensor(data, qtype, shape)`` wraps existing bytes without copying them (a
    non-contiguous array is copied once), after checking that their length is exactly what
    ``qtype`` needs for ``shape``.

    Args:
        data: the tensor bytes: a uint8 numpy array of any shape (e.g. a ``gguf`` reader's
            tensor data, ``(rows, row_bytes)``), or any buffer (``bytes``, ``memoryview``...).
        qtype: type name (``"q8_0"``, case-insensitive) or ggml id (``8``).
        shape: ``(rows, K)``, or ``(n_expert, rows, K)`` for stacked experts. Note the
            numpy order: ggml's ``ne = [K, rows]``.

    Attributes:
        data: the bytes as a 1-D uint8 array (a view of the input where possible).
        qtype: canonical lowercase type name.
        type_id: ggml type id.
        shape: logical float shape.
        nbytes: size of ``data`` in bytes.
        bpw: bits per weight, row metadata included.

    Example:
        >>> q = iqkq.quantize(np.ones((8, 64), np.float32), "q8_0")
        >>> q2 = iqkq.QuantizedTensor(q.data.tobytes(), "q8_0", (8, 64))
        >>> q2.nbytes
        544
    """

    __slots__ = ("_data", "_info", "_shape")

    def __init__(self, data, qtype: Union[str, int, TypeInfo], shape):
        info = type_info(qtype)
        shape = _check_shape(info, shape)
        arr = _as_bytes_array(data)
        expected = self._expected_bytes(info, shape)
        if arr.size != expected:
            raise ValueError(
                f"{info.name}: a tensor of shape {shape} takes {expected} bytes "
                f"({info.row_bytes(shape[-1])} per row), but the data has {arr.size} bytes"
            )
        self._data = arr
        self._info = info
        self._shape = shape

    @staticmethod
    def _expected_bytes(info: TypeInfo, shape) -> int:
        n = info.row_bytes(shape[-1])
        for s in shape[:-1]:
            n *= s
        return n

    @property
    def data(self) -> np.ndarray:
        return self._data

    @property
    def qtype(self) -> str:
        return self._info.name

    @property
    def type_id(self) -> int:
        return self._info.ggml_id

    @property
    def type_info(self) -> TypeInfo:
        return self._info

    @property
    def shape(self) -> Tuple[int, ...]:
        return self._shape

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def nbytes(self) -> int:
        return int(self._data.size)

    @property
    def row_bytes(self) -> int:
        return self._info.row_bytes(self._shape[-1])

    @property
    def bpw(self) -> float:
        n = 1
        for s in self._shape:
            n *= s
        return self.nbytes * 8.0 / n if n else float(self._info.row_bytes(self._shape[-1]) * 8) / self._shape[-1]

    def rows_view(self) -> np.ndarray:
        """The bytes as a ``(..., rows, row_bytes)`` uint8 view (gguf's convention)."""
        return self._data.reshape(self._shape[:-1] + (self.row_bytes,))

    def __eq__(self, other) -> bool:
        if not isinstance(other, QuantizedTensor):
            return NotImplemented
        return (
            self._info.name == other._info.name
            and self._shape == other._shape
            and np.array_equal(self._data, other._data)
        )

    __hash__ = None  # mutable buffer

    def __repr__(self) -> str:
        return f"QuantizedTensor(qtype={self.qtype!r}, shape={self._shape}, nbytes={self.nbytes})"


def _raw_shape(shape) -> Tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}") from None
    if len(shape) > _MAX_DIMS:
        raise ValueError(f"a ggml tensor has at most {_MAX_DIMS} dimensions, got shape {shape}")
    if any(s < 0 or s >= 2**63 for s in shape):
        raise ValueError(f"shape entries must be in [0, 2**63), got {shape}")
    return shape


class RawTensor:
    """The bytes of a ggml tensor of any type, with its type and shape (numpy order).

    ``iqkq.gguf.load`` returns one for every tensor that is neither a numpy array (f32, f16,
    f64, i8-i64) nor a :class:`QuantizedTensor`: types iqkq has no kernels for (``q4_K``,
    ``iq2_k``, ...), ``bf16``, and iqkq types of 1 or 4 dimensions. ``iqkq.gguf.save`` writes
    it back byte for byte. ``iqkq.dequantize`` turns bf16 / f16 / f32 / f64 raw tensors and
    raw tensors of iqkq's types into float32, and ``iqkq.quantize`` accepts the float ones;
    any other computation raises a TypeError that names the type.

    Args:
        data: the bytes: a uint8 array of any shape or any buffer (not copied).
        ggml_type: ggml type id (``12``) or name (``"q4_K"``); ids no table knows are
            accepted (their byte size cannot be checked).
        shape: numpy order, at most 4 dimensions (ggml's ``ne`` reversed).

    Raises:
        ValueError: the byte count is not what the type needs for the shape (types of known
        size), or the last dimension is not a whole number of blocks.

    Example:
        >>> bits = np.array([[0x3F80, 0xC040]], np.uint16)          # bf16 1.0, -3.0
        >>> t = iqkq.RawTensor(bits.view(np.uint8), "bf16", (1, 2))
        >>> t
        RawTensor(type='bf16' (30), shape=(1, 2), nbytes=4)
        >>> iqkq.dequantize(t)
        array([[ 1., -3.]], dtype=float32)
    """

    __slots__ = ("_data", "_type", "_shape")

    def __init__(self, data, ggml_type, shape):
        from ._ggml import ggml_type as _lookup

        t = _lookup(ggml_type)
        shape = _raw_shape(shape)
        arr = _as_bytes_array(data)
        if t.sized:
            expected = t.nbytes(shape)
            if arr.size != expected:
                raise ValueError(
                    f"{t.name}: a tensor of shape {shape} takes {expected} bytes, but the data has {arr.size} bytes"
                )
        self._data = arr
        self._type = t
        self._shape = shape

    @property
    def data(self) -> np.ndarray:
        """The bytes, a 1-D uint8 array (a view of the input where possible)."""
        return self._data

    @property
    def type_id(self) -> int:
        return self._type.id

    @property
    def type_name(self) -> str:
        """ggml's name of the type, e.g. ``"q4_K"``; ``"unknown(<id>)"`` for unknown ids."""
        return self._type.name

    @property
    def ggml_type(self):
        """The :class:`iqkq.gguf.GGMLType` (block size, bytes per block, row metadata)."""
        return self._type

    @property
    def shape(self) -> Tuple[int, ...]:
        return self._shape

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def nbytes(self) -> int:
        return int(self._data.size)

    @property
    def is_float(self) -> bool:
        """Whether the type is f32, f16, bf16 or f64 (``dequantize`` / ``quantize`` take it)."""
        return self._type.id in (0, 1, 28, _BF16)

    def to_float32(self) -> np.ndarray:
        """The values as float32 of shape ``self.shape`` (exact for f32 / f16 / bf16; f64 is
        rounded; iqkq's quantized types are dequantized by its kernels).

        Raises:
            TypeError: a type iqkq cannot convert (a quantized type it has no kernels for,
            an integer type or an unknown id).
        """
        from .ops import dequantize

        return dequantize(self)

    def _float32(self) -> np.ndarray:
        # exact conversion of the float types; None for the others
        tid = self._type.id
        if tid == _BF16:
            bits = self._data.view("<u2").astype(np.uint32)
            bits <<= np.uint32(16)  # in place: one float32-sized buffer, not two
            return bits.view(np.float32).reshape(self._shape)
        if tid in (0, 1, 28):
            return self._data.view(_NUMPY_TYPES[tid]).astype(np.float32).reshape(self._shape)
        return None

    def _kernel_view(self) -> Union[QuantizedTensor, None]:
        # a raw tensor of an iqkq type (e.g. 1-D or 4-D) as a 2-D QuantizedTensor (rows, K)
        info = _BY_ID.get(self._type.id)
        if info is None:
            return None
        K = self._shape[-1] if self._shape else 1
        rows = 1
        for s in self._shape[:-1]:
            rows *= s
        return QuantizedTensor(self._data, info, (rows, K))

    def unsupported(self, role: str = "") -> TypeError:
        """The TypeError raised when iqkq is asked to compute with this tensor (``role``: the
        argument it was passed as)."""
        from ._types import _supported

        as_ = f" as {role}" if role else ""
        if self._type.id in _BY_ID:
            return TypeError(
                f"this RawTensor holds {self.type_name} data of shape {self._shape} and cannot be used{as_}: iqkq "
                f"computes with {self.type_name} as a QuantizedTensor of shape (rows, K) or (n_expert, rows, K); "
                f"iqkq.dequantize(t) gives its float values"
            )
        if self._type.id in (24, 25, 26, 27):
            return TypeError(f"a RawTensor of integer type {self.type_name} cannot be used{as_}: iqkq takes float values "
                             f"or quantized tensors")
        return TypeError(
            f"iqkq has no kernels for ggml type {self.type_name} ({self.type_id}), so this RawTensor cannot be used{as_} "
            f"(iqkq.gguf loads and saves such tensors unchanged); types iqkq computes with: {_supported()}, "
            f"and f32 / f16 / bf16 as float input"
        )

    def __eq__(self, other) -> bool:
        if not isinstance(other, RawTensor):
            return NotImplemented
        return self.type_id == other.type_id and self._shape == other._shape and np.array_equal(self._data, other._data)

    __hash__ = None  # mutable buffer

    def __repr__(self) -> str:
        return f"RawTensor(type={self.type_name!r} ({self.type_id}), shape={self._shape}, nbytes={self.nbytes})"
