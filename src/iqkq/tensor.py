"""QuantizedTensor: ggml-layout bytes + type + logical shape, without copies."""
from __future__ import annotations

import operator
from typing import Tuple, Union

import numpy as np

from ._types import TypeInfo, type_info

__all__ = ["QuantizedTensor"]


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
