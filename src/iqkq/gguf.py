"""GGUF files in and out: every tensor and every metadata value, with its type, exactly.

The container parser and writer are iqkq's own, because the ``gguf`` package (gguf-py)
refuses files with ik_llama.cpp's type ids (iq4_ks = 144, q8_0_r8 = 208, q8_k_r8 = 399, ...);
its enums and key names (``gguf.GGUFValueType``, ``gguf.Keys``) and mainline block sizes
(``gguf.GGML_QUANT_SIZES``) are used as they are.

Reading
    :func:`load` gives ``(tensors, metadata)``: a dict of tensors in file order and a
    :class:`GGUFMetadata` mapping. Tensors are memory-mapped views, never copies:

    * iqkq's quantized types (2-D / 3-D) -> :class:`~iqkq.QuantizedTensor`;
    * f32, f16, f64, i8, i16, i32, i64 -> numpy arrays (read-only views);
    * everything else -- bf16, mainline quantized types (``q4_K``...), ik_llama.cpp's other
      types (``iq2_k``...), unknown ids, iqkq types of 1 or 4 dimensions -> :class:`~iqkq.RawTensor`
      (type id, ggml type name, shape, bytes). ``iqkq.dequantize`` / ``iqkq.quantize`` take
      the bf16 ones; computing with a type iqkq has no kernels for raises a TypeError naming it.

    :func:`read` gives the lower-level :class:`GGUFFile`: version, alignment, the ordered
    typed key/value list, and a :class:`TensorInfo` per tensor (name, shape, ggml type,
    absolute byte offset, nbytes) with lazy access to each tensor -- for streaming a model
    tensor by tensor.

Metadata types
    Every value keeps its GGUF type. ``metadata[key]`` is a plain Python value (int, float,
    bool, str, list of str, numpy array for numeric arrays); ``metadata.typed(key)`` is the
    exact :class:`GGUFValue` (value, ``gguf.GGUFValueType``, item type of arrays), which is
    what :func:`save` writes. Plain values given to ``save`` (or assigned to a new key) get
    the ecosystem's types (see :meth:`GGUFValue.infer`): non-negative ints UINT32 (what
    llama.cpp's loaders expect for hyperparameters, ``general.alignment``, ``general.file_type``),
    negative ints INT32, floats FLOAT32, lists of ints INT32 arrays (``tokenizer.ggml.token_type``),
    mixed int / float lists FLOAT32 arrays; numpy scalars and arrays keep their dtype. Assigning
    a plain value to an existing key keeps the key's type when the value fits it. A
    :class:`GGUFValue` forces a type.

Writing
    :class:`GGUFStreamWriter` takes the metadata and every tensor's (name, shape, type,
    nbytes) up front, writes the header, then the tensors one at a time in that order, into a
    temporary file in the target folder that is renamed into place only when complete (and
    removed on any error). :func:`save` is built on it. The layout is the canonical one of
    llama.cpp's, ik_llama.cpp's and gguf-py's writers (GGUF v3, tensor data in header order,
    zero padding to the alignment), so ``save(p2, *load(p1))`` reproduces such a file byte for
    byte.

    >>> tensors, meta = iqkq.gguf.load("model.gguf")            # doctest: +SKIP
    >>> y = iqkq.matmul(tensors["blk.0.ffn_up.weight"], x)       # doctest: +SKIP
"""
from __future__ import annotations

import os
import struct
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
from gguf import GGUFValueType, Keys

from ._ggml import GGMLType, ggml_type
from ._types import _BY_ID
from .tensor import _NUMPY_TYPES, QuantizedTensor, RawTensor, _raw_shape

__all__ = [
    "GGUF_MAGIC",
    "GGMLType",
    "GGUFFile",
    "GGUFMetadata",
    "GGUFStreamWriter",
    "GGUFValue",
    "GGUFValueType",
    "RawTensor",
    "TensorInfo",
    "from_reader_tensor",
    "ggml_type",
    "load",
    "read",
    "save",
]

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
_ALIGNMENT_KEY = Keys.General.ALIGNMENT
# Keys whose integer values are always UINT32 (llama.cpp and gguf-py read them with that type).
_UINT32_KEYS = frozenset({Keys.General.ALIGNMENT, Keys.General.FILE_TYPE, Keys.General.QUANTIZATION_VERSION})
_MAX_DEPTH = 64  # nesting of arrays of arrays; deeper is refused as corrupt

VT = GGUFValueType
# little-endian numpy dtype of each numeric GGUF value type
_NUM_DTYPE = {
    VT.UINT8: np.dtype("<u1"), VT.INT8: np.dtype("<i1"), VT.UINT16: np.dtype("<u2"), VT.INT16: np.dtype("<i2"),
    VT.UINT32: np.dtype("<u4"), VT.INT32: np.dtype("<i4"), VT.UINT64: np.dtype("<u8"), VT.INT64: np.dtype("<i8"),
    VT.FLOAT32: np.dtype("<f4"), VT.FLOAT64: np.dtype("<f8"),
}
_INT_TYPES = frozenset(t for t, d in _NUM_DTYPE.items() if d.kind in "iu")
_FLOAT_TYPES = frozenset({VT.FLOAT32, VT.FLOAT64})
# smallest encoding of a value of each type (to bound counts read from a file)
_MIN_SIZE = {**{t: d.itemsize for t, d in _NUM_DTYPE.items()}, VT.BOOL: 1, VT.STRING: 8, VT.ARRAY: 12}
# numpy dtype (kind, itemsize) -> GGUF value type
_VT_OF_DTYPE = {(d.kind, d.itemsize): t for t, d in _NUM_DTYPE.items()}


def _vtype(t) -> GGUFValueType:
    try:
        if isinstance(t, str):
            return GGUFValueType[t.strip().upper()]
        if isinstance(t, (bool, np.bool_)):
            raise ValueError
        return GGUFValueType(int(t))
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"unknown GGUF value type {t!r}; one of {', '.join(v.name for v in GGUFValueType)}") from None


def _encode_str(s: str, what: str = "string") -> bytes:
    try:
        # surrogateescape: strings read from a file with invalid UTF-8 are written back unchanged
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} {s!r} cannot be encoded as UTF-8: {e.reason}") from None


def _decode_str(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return _is_int(v) or isinstance(v, (float, np.floating))


def _int_fits(t: GGUFValueType, lo: int, hi: int) -> bool:
    info = np.iinfo(_NUM_DTYPE[t])
    return int(info.min) <= lo and hi <= int(info.max)


# ----------------------------------------------------------------------------- values
class GGUFValue:
    """One GGUF metadata value with its exact type.

    Args:
        value: the value. For an ``ARRAY``, a sequence (or numpy array) of items; items of
            an ``ARRAY`` of ``ARRAY`` are GGUFValues or sequences (typed by :meth:`infer`).
        type: a ``gguf.GGUFValueType`` (or its name / number).
        item_type: the item type of an ``ARRAY``; inferred from the items when omitted.

    Attributes:
        value: normalized exact value: a numpy scalar of the type's dtype (``np.uint32(7)``)
            for numeric types, ``bool``, ``str``; for arrays a read-only 1-D numpy array
            (numeric and BOOL items), a tuple of str (STRING items) or a tuple of GGUFValues
            (ARRAY items).
        type, item_type: ``gguf.GGUFValueType`` (``item_type`` None except for arrays).

    Raises:
        TypeError: the value is of the wrong kind for the type (a float for an integer type:
        values are never truncated; a str for a number...). ValueError: out of range.

    Example:
        >>> v = iqkq.gguf.GGUFValue(5, "uint32")
        >>> v
        GGUFValue(5, UINT32)
        >>> v.to_python(), v.type == gguf.GGUFValueType.UINT32
        (5, True)
        >>> iqkq.gguf.GGUFValue([1, 2], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT8).value
        array([1, 2], dtype=int8)
        >>> iqkq.gguf.GGUFValue(2.5, "uint32")
        Traceback (most recent call last):
        ...
        TypeError: a UINT32 value must be an integer, got float 2.5
    """

    __slots__ = ("value", "type", "item_type")

    def __init__(self, value, type, item_type=None, *, _depth: int = 0):
        vt = _vtype(type)
        if vt == VT.ARRAY:
            if _depth > _MAX_DEPTH:
                raise ValueError(f"arrays nested more than {_MAX_DEPTH} deep")
            if isinstance(value, GGUFValue):
                value = value.value
            if item_type is None:
                item_type = _infer_array(value, _depth).item_type
            it = _vtype(item_type)
            v = _norm_array(value, it, _depth)
        else:
            if item_type is not None:
                raise TypeError(f"item_type is only for ARRAY values, not {vt.name}")
            it = None
            v = _norm_scalar(value, vt)
        object.__setattr__(self, "value", v)
        object.__setattr__(self, "type", vt)
        object.__setattr__(self, "item_type", it)

    @classmethod
    def _exact(cls, value, vt, it=None) -> "GGUFValue":
        # trusted constructor for already-normalized values (the parser)
        self = object.__new__(cls)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "type", vt)
        object.__setattr__(self, "item_type", it)
        return self

    def __setattr__(self, name, value):
        raise AttributeError("GGUFValue is immutable")

    @staticmethod
    def infer(value, key: Optional[str] = None) -> "GGUFValue":
        """The GGUFValue a plain value is written as (iqkq's conventions, those of gguf-py and
        llama.cpp's loaders):

        * a GGUFValue is kept; numpy scalars and arrays keep their dtype (float16 and complex
          have no GGUF type: TypeError);
        * bool -> BOOL; str (or bytes) -> STRING; float -> FLOAT32;
        * int -> UINT32 if in [0, 2**32), INT32 if negative and in int32, else INT64 / UINT64;
          for ``general.alignment``, ``general.file_type`` and ``general.quantization_version``
          any integer (numpy ones too) is UINT32;
        * list / tuple -> ARRAY: of STRING, BOOL, INT32 (ints that fit, else UINT32 / INT64 /
          UINT64), FLOAT32 (any float among the numbers, never truncated), or ARRAY (each
          element typed by these rules) for lists of lists; a 2-D numpy array is an ARRAY of
          row ARRAYs. An empty list has no item type: ValueError (pass a typed numpy array or
          a GGUFValue). Note that llama.cpp's and ik_llama.cpp's readers abort on arrays of
          arrays (gguf-py and iqkq read them).

        Example:
            >>> G = iqkq.gguf.GGUFValue.infer
            >>> G(4096), G(-1), G(1e-5), G(np.float64(0.5)), G(np.int8(3))
            (GGUFValue(4096, UINT32), GGUFValue(-1, INT32), GGUFValue(1e-05, FLOAT32), GGUFValue(0.5, FLOAT64), GGUFValue(3, INT8))
            >>> G([1, 2.5]), G(["a", "b"]), G(np.array([1, 2], np.uint16))
            (GGUFValue([1.0, 2.5], ARRAY[FLOAT32]), GGUFValue(['a', 'b'], ARRAY[STRING]), GGUFValue([1, 2], ARRAY[UINT16]))
        """
        return _infer(value, key)

    def to_python(self):
        """The plain value: int / float / bool / str, a list of str, a (read-only) numpy array
        for numeric and BOOL arrays, a list of plain values for arrays of arrays."""
        v = self.value
        if self.type == VT.ARRAY:
            if self.item_type == VT.STRING:
                return list(v)
            if self.item_type == VT.ARRAY:
                return [x.to_python() for x in v]
            return v
        if isinstance(v, np.generic):
            return v.item()
        return v

    def encode(self) -> bytes:
        """The value's bytes in a GGUF file, after its type tag (``gguf_metadata_value_t``)."""
        out = bytearray()
        _encode_payload(out, self)
        return bytes(out)

    def __eq__(self, other) -> bool:
        if not isinstance(other, GGUFValue):
            return NotImplemented
        return self.type == other.type and self.item_type == other.item_type and self.encode() == other.encode()

    __hash__ = None

    def __repr__(self) -> str:
        t = self.type.name if self.type != VT.ARRAY else f"ARRAY[{self.item_type.name}]"
        if self.type == VT.FLOAT32:  # float32's shortest repr, not that of the float64 it converts to
            r = str(self.value)
        elif self.type == VT.ARRAY and self.item_type == VT.FLOAT32:
            r = "[" + ", ".join(str(x) for x in self.value[:16]) + "]"
        else:
            p = self.to_python()
            r = repr(p.tolist() if isinstance(p, np.ndarray) else p)
        if len(r) > 80:
            n = len(self.value) if self.type == VT.ARRAY else None
            r = r[:72] + " ..." + (f" ({n} items)" if n is not None else "")
        return f"GGUFValue({r}, {t})"


def _norm_scalar(v, vt: GGUFValueType):
    if vt == VT.STRING:
        if isinstance(v, (bytes, bytearray, memoryview)):
            return _decode_str(bytes(v))
        if isinstance(v, str):
            _encode_str(v)
            return str(v)
        raise TypeError(f"a STRING value must be a str, got {type(v).__name__}")
    if vt == VT.BOOL:
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        raise TypeError(f"a BOOL value must be a bool, got {type(v).__name__} {v!r}")
    if vt in _INT_TYPES:
        if not _is_int(v):
            raise TypeError(f"a {vt.name} value must be an integer, got {type(v).__name__} {v!r}")
        iv = int(v)
        if not _int_fits(vt, iv, iv):
            raise ValueError(f"{iv} is out of range for {vt.name}")
        return _NUM_DTYPE[vt].type(iv)
    if vt in _FLOAT_TYPES:
        if not _is_number(v):
            raise TypeError(f"a {vt.name} value must be a number, got {type(v).__name__} {v!r}")
        with np.errstate(over="raise"):
            try:
                return _NUM_DTYPE[vt].type(v)
            except (FloatingPointError, OverflowError):
                raise ValueError(f"{v!r} is out of range for {vt.name}") from None
    raise ValueError(f"{vt.name} is not a scalar type")


def _norm_array(v, it: GGUFValueType, depth: int):
    if isinstance(v, (str, bytes, bytearray)) or not (isinstance(v, (list, tuple, np.ndarray, range))):
        raise TypeError(f"an ARRAY value must be a list, tuple or numpy array, got {type(v).__name__}")
    if it == VT.STRING:
        return tuple(_norm_scalar(x, VT.STRING) for x in v)
    if it == VT.ARRAY:
        out = []
        for x in v:
            if isinstance(x, GGUFValue):
                if x.type != VT.ARRAY:
                    raise TypeError(f"items of an ARRAY of ARRAY must be arrays, got a {x.type.name} value")
                out.append(x)
            else:
                out.append(GGUFValue(x, VT.ARRAY, _infer_array(x, depth + 1).item_type, _depth=depth + 1))
        return tuple(out)
    if isinstance(v, np.ndarray) and v.ndim != 1:
        raise ValueError(f"an ARRAY of {it.name} must be 1-D, got shape {v.shape}")
    if any(isinstance(x, GGUFValue) for x in (v if not isinstance(v, np.ndarray) else ())):
        v = [x.value if isinstance(x, GGUFValue) else x for x in v]
    if it == VT.BOOL:
        a = np.asarray(v)
        if a.size and a.dtype.kind != "b":
            raise TypeError(f"items of an ARRAY of BOOL must be bools, got dtype {a.dtype}")
        a = np.array(a, dtype=np.bool_).reshape(-1)
    else:
        dt = _NUM_DTYPE[it]
        a = np.asarray(v)
        if a.dtype == object or (not isinstance(v, np.ndarray) and a.dtype.kind == "f" and it in _INT_TYPES):
            # Python ints beyond int64 (numpy makes them float64 or object): checked one by one
            a = np.array([_norm_scalar(x, it) for x in v], dtype=dt)
        elif a.size == 0:
            a = np.zeros(0, dt)
        elif a.dtype.kind == "b" or a.dtype.kind not in ("iu" if it in _INT_TYPES else "iuf"):
            kind = "integers" if it in _INT_TYPES else "numbers"
            raise TypeError(f"items of an ARRAY of {it.name} must be {kind}, got dtype {a.dtype}")
        elif it in _INT_TYPES:
            lo, hi = int(a.min()), int(a.max())
            if not _int_fits(it, lo, hi):
                raise ValueError(f"values in [{lo}, {hi}] are out of range for {it.name}")
            a = a.astype(dt)
        else:
            with np.errstate(over="raise"):
                try:
                    a = a.astype(dt)
                except FloatingPointError:
                    raise ValueError(f"values out of range for {it.name}") from None
        a = np.array(a, dtype=dt).reshape(-1)
    a.flags.writeable = False
    return a


def _infer_array(v, depth: int = 0) -> GGUFValue:
    """Item type of a plain sequence by the conventions of GGUFValue.infer (returns a GGUFValue)."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"arrays nested more than {_MAX_DEPTH} deep")
    if isinstance(v, GGUFValue):
        if v.type != VT.ARRAY:
            raise TypeError(f"expected an ARRAY value, got {v.type.name}")
        return v
    if isinstance(v, np.ndarray):
        if v.ndim == 0:
            raise TypeError("a 0-dimensional numpy array is a scalar, not an ARRAY")
        if v.ndim > 1:
            return GGUFValue._exact(tuple(_infer_array(row, depth + 1) for row in v), VT.ARRAY, VT.ARRAY)
        dt = v.dtype
        if dt.kind == "b":
            return GGUFValue(v, VT.ARRAY, VT.BOOL, _depth=depth)
        if dt.kind in "US":
            return GGUFValue(list(v.tolist()), VT.ARRAY, VT.STRING, _depth=depth)
        if dt.kind == "O":
            return _infer_array(list(v), depth)
        t = _VT_OF_DTYPE.get((dt.kind, dt.itemsize))
        if t is None:
            raise TypeError(f"numpy dtype {dt} has no GGUF value type (float16 and complex have none)")
        return GGUFValue(v, VT.ARRAY, t, _depth=depth)
    if isinstance(v, (str, bytes, bytearray)) or not isinstance(v, (list, tuple, range)):
        raise TypeError(f"an ARRAY value must be a list, tuple or numpy array, got {type(v).__name__}")
    items = list(v)
    if not items:
        raise ValueError("an empty list has no GGUF item type; pass a typed numpy array (e.g. np.array([], np.int32)) "
                         "or GGUFValue([], GGUFValueType.ARRAY, item_type)")
    if all(isinstance(x, GGUFValue) for x in items):
        types = {(x.type, x.item_type) for x in items}
        if len(types) == 1 and items[0].type != VT.ARRAY:
            return GGUFValue(items, VT.ARRAY, items[0].type, _depth=depth)
        if all(x.type == VT.ARRAY for x in items):
            return GGUFValue._exact(tuple(items), VT.ARRAY, VT.ARRAY)
        raise TypeError(f"the items of a GGUF array must all have one type, got {sorted(t.name for t, _ in types)}")
    if all(isinstance(x, (str, bytes, np.str_)) for x in items):
        return GGUFValue(items, VT.ARRAY, VT.STRING, _depth=depth)
    if all(isinstance(x, (bool, np.bool_)) for x in items):
        return GGUFValue(items, VT.ARRAY, VT.BOOL, _depth=depth)
    if all(isinstance(x, (list, tuple, np.ndarray, range, GGUFValue)) for x in items):
        return GGUFValue._exact(tuple(_infer_array(x, depth + 1) for x in items), VT.ARRAY, VT.ARRAY)
    if all(_is_number(x) for x in items):
        np_types = {x.dtype for x in items if isinstance(x, np.generic)}
        if len(np_types) == 1 and all(isinstance(x, np.generic) for x in items):
            t = _VT_OF_DTYPE.get((next(iter(np_types)).kind, next(iter(np_types)).itemsize))
            if t is not None:
                return GGUFValue(items, VT.ARRAY, t, _depth=depth)
        if any(isinstance(x, (float, np.floating)) for x in items):
            return GGUFValue([float(x) for x in items], VT.ARRAY, VT.FLOAT32, _depth=depth)
        ints = [int(x) for x in items]
        lo, hi = min(ints), max(ints)
        for t in (VT.INT32, VT.UINT32, VT.INT64, VT.UINT64):
            if _int_fits(t, lo, hi):
                return GGUFValue(ints, VT.ARRAY, t, _depth=depth)
        raise ValueError(f"integers in [{lo}, {hi}] do not fit any GGUF integer type")
    kinds = sorted({type(x).__name__ for x in items})
    raise TypeError(f"a GGUF array holds items of one kind (all str, all bool, all numbers or all lists), got {kinds}")


def _infer(v, key: Optional[str] = None) -> GGUFValue:
    if isinstance(v, GGUFValue):
        if key == _ALIGNMENT_KEY and v.type != VT.UINT32:
            raise ValueError(f"{_ALIGNMENT_KEY} must be a UINT32 (llama.cpp and gguf-py refuse other types), got {v.type.name}")
        return v
    if key in _UINT32_KEYS and _is_int(v):
        return GGUFValue(v, VT.UINT32)
    if isinstance(v, (bool, np.bool_)):
        return GGUFValue(bool(v), VT.BOOL)
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v[()]
    if isinstance(v, np.generic) and not isinstance(v, (np.str_, np.bytes_)):
        t = _VT_OF_DTYPE.get((v.dtype.kind, v.dtype.itemsize))
        if t is None:
            raise TypeError(f"numpy {v.dtype} has no GGUF value type (float16 and complex have none)")
        return GGUFValue(v, t)
    if _is_int(v):
        iv = int(v)
        for t in ((VT.UINT32, VT.UINT64) if iv >= 0 else (VT.INT32, VT.INT64)):
            if _int_fits(t, iv, iv):
                return GGUFValue(iv, t)
        raise ValueError(f"{iv} does not fit any GGUF integer type (64 bits at most)")
    if isinstance(v, float):
        return GGUFValue(v, VT.FLOAT32)
    if isinstance(v, (str, bytes, bytearray)):
        return GGUFValue(v, VT.STRING)
    if isinstance(v, (list, tuple, np.ndarray, range)):
        return _infer_array(v)
    raise TypeError(f"cannot store a {type(v).__name__} as a GGUF metadata value")


def _encode_payload(out: bytearray, gv: GGUFValue) -> None:
    vt = gv.type
    if vt == VT.STRING:
        b = _encode_str(gv.value)
        out += struct.pack("<Q", len(b))
        out += b
    elif vt == VT.BOOL:
        out += b"\x01" if gv.value else b"\x00"
    elif vt == VT.ARRAY:
        it = gv.item_type
        out += struct.pack("<IQ", int(it), len(gv.value))
        if it == VT.STRING:
            for s in gv.value:
                b = _encode_str(s)
                out += struct.pack("<Q", len(b))
                out += b
        elif it == VT.ARRAY:
            for x in gv.value:
                _encode_payload(out, x)
        elif it == VT.BOOL:
            out += gv.value.astype(np.uint8).tobytes()
        else:
            out += np.ascontiguousarray(gv.value, dtype=_NUM_DTYPE[it]).tobytes()
    else:
        out += np.array(gv.value, dtype=_NUM_DTYPE[vt]).tobytes()


# ----------------------------------------------------------------------------- metadata mapping
class GGUFMetadata(MutableMapping):
    """GGUF metadata: an ordered mapping key -> plain value that keeps every value's GGUF type.

    ``m[key]`` is the plain value (see :meth:`GGUFValue.to_python`); ``m.typed(key)`` the
    :class:`GGUFValue` that is written. Assigning a :class:`GGUFValue` sets value and type;
    assigning a plain value to an existing key keeps that key's type when the value fits it
    (else, and for new keys, the type follows :meth:`GGUFValue.infer`). Order is insertion
    order (a loaded file's order). ``GGUFMetadata(mapping_or_pairs)`` copies a mapping whose
    values are plain or GGUFValues (a GGUFMetadata is copied with its types).

    Example:
        >>> m = iqkq.gguf.GGUFMetadata({"general.architecture": "llama", "llama.block_count": 32})
        >>> m.typed("llama.block_count")
        GGUFValue(32, UINT32)
        >>> m["llama.rope.freq_base"] = np.float64(5e5)
        >>> m["llama.rope.freq_base"] = 1e6          # existing key: stays FLOAT64
        >>> m.types["llama.rope.freq_base"].name
        'FLOAT64'
        >>> list(m)
        ['general.architecture', 'llama.block_count', 'llama.rope.freq_base']
    """

    __slots__ = ("_d",)

    def __init__(self, items: Union[Mapping, Iterable[Tuple[str, Any]], None] = None):
        self._d: Dict[str, GGUFValue] = {}
        if items is None:
            return
        if isinstance(items, GGUFMetadata):
            self._d.update(items._d)
            return
        pairs = items.items() if isinstance(items, Mapping) else items
        for k, v in pairs:
            self[k] = v

    @staticmethod
    def _check_key(key) -> str:
        if not isinstance(key, str):
            raise TypeError(f"GGUF metadata keys must be str, not {type(key).__name__} ({key!r})")
        _encode_str(key, "key")
        return key

    def __getitem__(self, key):
        return self._d[key].to_python()

    def __setitem__(self, key, value):
        key = self._check_key(key)
        old = self._d.get(key)
        # plain Python values keep an existing key's type; GGUFValues and numpy values carry their own
        if old is not None and not isinstance(value, (GGUFValue, np.generic, np.ndarray)) and key not in _UINT32_KEYS:
            try:
                self._d[key] = GGUFValue(value, old.type, old.item_type if old.item_type != VT.ARRAY else None)
                return
            except (TypeError, ValueError):
                pass
        self._d[key] = _infer(value, key)

    def __delitem__(self, key):
        del self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key) -> bool:
        return key in self._d

    def typed(self, key: str) -> GGUFValue:
        """The exact :class:`GGUFValue` of ``key`` (KeyError if absent)."""
        return self._d[key]

    def typed_items(self) -> List[Tuple[str, GGUFValue]]:
        """``[(key, GGUFValue), ...]`` in order: the key/value list as the file holds it."""
        return list(self._d.items())

    @property
    def types(self) -> Dict[str, GGUFValueType]:
        """``{key: GGUFValueType}`` (ARRAY for arrays; ``typed(key).item_type`` has the items' type)."""
        return {k: v.type for k, v in self._d.items()}

    def copy(self) -> "GGUFMetadata":
        return GGUFMetadata(self)

    def __eq__(self, other) -> bool:
        if not isinstance(other, GGUFMetadata):
            return NotImplemented
        return list(self._d) == list(other._d) and all(self._d[k] == other._d[k] for k in self._d)

    __hash__ = None

    def __repr__(self) -> str:
        body = ", ".join(f"{k!r}: {v!r}" for k, v in list(self._d.items())[:8])
        more = f", ... ({len(self._d)} keys)" if len(self._d) > 8 else ""
        return f"GGUFMetadata({{{body}{more}}})"


# ----------------------------------------------------------------------------- tensor infos
@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file (from :class:`GGUFFile`) or declared to a :class:`GGUFStreamWriter`.

    Attributes:
        name: tensor name.
        shape: numpy order (ggml's ``ne`` reversed: the last entry is ``ne[0]``, the row length).
        type_id: ggml type id.
        nbytes: bytes of the tensor data. For ids whose size no table knows, the bytes up to
            the next tensor's data (or the end of the file), padding included.
        offset: absolute byte offset of the data in the file (None in a declaration not yet
            given to a writer).
        nbytes_known: False when ``nbytes`` was taken from the layout (unknown type size).

    Example:
        >>> ti = iqkq.gguf.TensorInfo.of("w", iqkq.quantize(np.ones((8, 256)), "q8_0"))
        >>> ti.type_name, ti.shape, ti.ne, ti.nbytes
        ('q8_0', (8, 256), (256, 8), 2176)
    """

    name: str
    shape: Tuple[int, ...]
    type_id: int
    nbytes: int
    offset: Optional[int] = None
    nbytes_known: bool = True

    @property
    def ggml_type(self) -> GGMLType:
        return ggml_type(self.type_id)

    @property
    def type_name(self) -> str:
        return self.ggml_type.name

    @property
    def ne(self) -> Tuple[int, ...]:
        """The shape in ggml order (``ne[0]`` first)."""
        return tuple(reversed(self.shape))

    @property
    def n_elements(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @staticmethod
    def of(name: str, tensor) -> "TensorInfo":
        """The declaration of a tensor object (QuantizedTensor, RawTensor or numpy array)."""
        tid, shape, nbytes = _tensor_parts(name, tensor, data=False)
        return TensorInfo(name, shape, tid, nbytes)

    @staticmethod
    def declare(name: str, shape, ggml_type_, nbytes: Optional[int] = None) -> "TensorInfo":
        """A declaration from its parts; ``nbytes`` may be omitted for types of known size
        (it is checked against the shape when given)."""
        return _declaration((name, shape, ggml_type_, nbytes))


# numpy dtype -> ggml type id, for tensors given as arrays
_GGML_OF_DTYPE = {np.dtype(v).newbyteorder("=").str[1:]: k for k, v in _NUMPY_TYPES.items()}


def _array_type_id(a: np.ndarray) -> Optional[int]:
    if a.dtype.itemsize == 2 and a.dtype.name == "bfloat16":  # ml_dtypes.bfloat16
        return 30
    if a.dtype.kind not in "fi":
        return None
    return _GGML_OF_DTYPE.get(f"{a.dtype.kind}{a.dtype.itemsize}")


def _tensor_parts(name, t, data: bool = True) -> Tuple[int, Tuple[int, ...], Any]:
    """(type id, shape, 1-D uint8 little-endian bytes -- or just their count if not ``data``)
    of a tensor object."""
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, not {type(name).__name__} ({name!r})")
    if isinstance(t, (QuantizedTensor, RawTensor)):
        return t.type_id, t.shape, (t.data if data else t.nbytes)
    if isinstance(t, np.ndarray):
        tid = _array_type_id(t)
        if tid is None:
            raise TypeError(
                f"tensor {name!r}: a numpy array of dtype {t.dtype} has no ggml type; arrays of float32, float16, "
                f"float64, int8, int16, int32, int64 (or ml_dtypes.bfloat16) can be saved; quantized bytes go in an "
                f"iqkq.QuantizedTensor or iqkq.RawTensor"
            )
        shape = _raw_shape(t.shape)
        if not data:
            return tid, shape, int(t.nbytes)
        a = np.ascontiguousarray(t)
        if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
            a = a.astype(a.dtype.newbyteorder("<"))
        return tid, shape, a.reshape(-1).view(np.uint8)
    raise TypeError(
        f"tensor {name!r}: cannot save a {type(t).__name__}; tensors are iqkq.QuantizedTensor, iqkq.RawTensor "
        f"or numpy arrays"
    )


def _declaration(d) -> TensorInfo:
    if isinstance(d, TensorInfo):
        name, shape, tid, nbytes = d.name, d.shape, d.type_id, d.nbytes
        known = d.nbytes_known
    else:
        try:
            name, shape, tid, *rest = d
        except (TypeError, ValueError):
            raise TypeError(f"a tensor declaration is a TensorInfo or (name, shape, ggml_type[, nbytes]), got {d!r}") \
                from None
        if len(rest) > 1:
            raise TypeError(f"a tensor declaration is a TensorInfo or (name, shape, ggml_type[, nbytes]), got {d!r}")
        nbytes = rest[0] if rest else None
        known = True
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, not {type(name).__name__} ({name!r})")
    _encode_str(name, "tensor name")
    shape = _raw_shape(shape)
    t = ggml_type(tid)
    if t.sized:
        try:
            expected = t.nbytes(shape)
        except ValueError as e:
            raise ValueError(f"tensor {name!r}: {e}") from None
        if nbytes is not None and int(nbytes) != expected:
            raise ValueError(f"tensor {name!r}: {t.name} of shape {shape} takes {expected} bytes, not {nbytes}")
        nbytes = expected
    elif nbytes is None:
        raise ValueError(f"tensor {name!r}: the size of ggml type {t.name} is not known; give its nbytes")
    if not _is_int(nbytes) or int(nbytes) < 0:
        raise ValueError(f"tensor {name!r}: nbytes must be a non-negative integer, got {nbytes!r}")
    return TensorInfo(name, shape, t.id, int(nbytes), None, known)


# ----------------------------------------------------------------------------- reading
class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every failure is a ValueError."""

    __slots__ = ("mv", "pos", "end", "where")

    def __init__(self, mv: memoryview, where: str):
        self.mv = mv
        self.pos = 0
        self.end = len(mv)
        self.where = where

    def fail(self, msg: str):
        raise ValueError(f"{self.where}: corrupt GGUF: {msg}")

    def need(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            self.fail(f"truncated: {what} at byte {self.pos} needs {n} bytes, the file has {self.end - self.pos} left")

    def u32(self, what: str) -> int:
        self.need(4, what)
        v = struct.unpack_from("<I", self.mv, self.pos)[0]
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        v = struct.unpack_from("<Q", self.mv, self.pos)[0]
        self.pos += 8
        return v

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        s = _decode_str(bytes(self.mv[self.pos:self.pos + n]))
        self.pos += n
        return s

    def count(self, n: int, item_size: int, what: str) -> int:
        # a count can never claim more items than the bytes left could hold
        if n * item_size > self.end - self.pos:
            self.fail(f"{what} claims {n} items (at least {n * item_size} bytes), the file has {self.end - self.pos} "
                      f"bytes left")
        return n

    def vtype(self, what: str) -> GGUFValueType:
        at = self.pos
        t = self.u32(what)
        try:
            return GGUFValueType(t)
        except ValueError:
            self.pos = at
            self.fail(f"unknown value type {t} for {what} at byte {at}")

    def value(self, vt: GGUFValueType, what: str, depth: int = 0) -> GGUFValue:
        if vt == VT.STRING:
            return GGUFValue._exact(self.string(what), vt)
        if vt == VT.BOOL:
            self.need(1, what)
            b = self.mv[self.pos]
            if b > 1:
                self.fail(f"{what}: a BOOL must be 0 or 1, got {b}")
            self.pos += 1
            return GGUFValue._exact(bool(b), vt)
        if vt == VT.ARRAY:
            if depth >= _MAX_DEPTH:
                self.fail(f"{what}: arrays nested more than {_MAX_DEPTH} deep")
            it = self.vtype(f"item type of {what}")
            n = self.count(self.u64(f"length of {what}"), _MIN_SIZE[it], what)
            if it == VT.STRING:
                return GGUFValue._exact(tuple(self.string(f"item {i} of {what}") for i in range(n)), vt, it)
            if it == VT.ARRAY:
                return GGUFValue._exact(
                    tuple(self.value(VT.ARRAY, f"item {i} of {what}", depth + 1) for i in range(n)), vt, it)
            if it == VT.BOOL:
                raw = np.frombuffer(self.mv, np.uint8, n, self.pos)
                if n and raw.max() > 1:
                    self.fail(f"{what}: BOOL items must be 0 or 1, found {int(raw.max())}")
                a = raw.astype(np.bool_)
            else:
                dt = _NUM_DTYPE[it]
                a = np.frombuffer(self.mv, dt, n, self.pos).copy()
            self.pos += n * _MIN_SIZE[it]
            a.flags.writeable = False
            return GGUFValue._exact(a, vt, it)
        dt = _NUM_DTYPE[vt]
        self.need(dt.itemsize, what)
        v = np.frombuffer(self.mv, dt, 1, self.pos)[0]
        self.pos += dt.itemsize
        return GGUFValue._exact(v, vt)


def _pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _check_alignment(a) -> int:
    if not _is_int(a):
        raise TypeError(f"alignment must be an int, not {type(a).__name__}")
    a = int(a)
    if a <= 0 or a & (a - 1) or a >= 2**32:
        raise ValueError(f"alignment must be a power of two in [1, 2**31], got {a}")
    return a


class GGUFFile:
    """A GGUF file opened for reading (see :func:`read`): header, typed metadata, tensor infos,
    and lazy memory-mapped tensors.

    Attributes:
        path: the file path (str).
        version: GGUF version (2 or 3).
        alignment: data alignment (``general.alignment`` or 32).
        metadata: :class:`GGUFMetadata`, in file order.
        tensors: list of :class:`TensorInfo` in header order (``offset`` absolute).
        header_size: bytes of magic, counts, key/values and tensor infos (before padding).
        data_offset: absolute offset of the data section (``header_size`` padded to ``alignment``).
        file_size: bytes in the file.

    Tensors are views of one read-only memory map: :meth:`tensor` costs nothing until the data
    are touched, and a tensor stays valid after :meth:`close` (the map lives as long as any
    view of it).

    Example:
        >>> iqkq.gguf.save("ex.gguf", {"w": iqkq.quantize(np.ones((8, 256)), "q8_0")}, {"general.name": "ex"})
        >>> with iqkq.gguf.read("ex.gguf") as f:
        ...     print(f.version, f.alignment, f.kv)
        ...     ti = f.tensors[0]
        ...     print(ti.name, ti.shape, ti.type_name, ti.offset, ti.nbytes)
        ...     w = f.tensor("w")
        3 32 [('general.name', GGUFValue('ex', STRING))]
        w (8, 256) q8_0 128 2176
        >>> w
        QuantizedTensor(qtype='q8_0', shape=(8, 256), nbytes=2176)
    """

    def __init__(self, path, *, mmap: bool = True):
        import mmap as _mmap

        self.path = os.fspath(path)
        where = self.path
        self._mm = None
        if mmap:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size == 0:
                    raise ValueError(f"{where}: not a GGUF file (empty)")
                self._mm = _mmap.mmap(fh.fileno(), 0, access=_mmap.ACCESS_READ)
            buf = np.frombuffer(self._mm, dtype=np.uint8)
        else:
            buf = np.fromfile(self.path, dtype=np.uint8)
        self._buf = buf
        mv = memoryview(buf)
        try:
            self._parse(mv, where)
        finally:
            mv.release()

    @classmethod
    def _from_buffer(cls, data, where: str = "<buffer>") -> "GGUFFile":
        # parse bytes already in memory (tests, in-memory files)
        self = object.__new__(cls)
        self.path = where
        self._mm = None
        self._buf = np.frombuffer(data, dtype=np.uint8)
        mv = memoryview(self._buf)
        try:
            self._parse(mv, where)
        finally:
            mv.release()
        return self

    def _parse(self, mv: memoryview, where: str) -> None:
        c = _Cursor(mv, where)
        self.file_size = c.end
        if c.end < 4 or bytes(mv[:4]) != GGUF_MAGIC:
            raise ValueError(f"{where}: not a GGUF file (bad magic {bytes(mv[:4])!r})")
        c.pos = 4
        version = c.u32("version")
        if version not in (2, 3):
            hint = ""
            if version == 1:
                hint = " (GGUF v1 is obsolete; llama.cpp no longer reads it either)"
            elif version & 0xFFFF == 0 and (version >> 24) in (2, 3):
                hint = " (this looks like a big-endian GGUF, which iqkq does not read)"
            raise ValueError(f"{where}: unsupported GGUF version {version}{hint}")
        self.version = version
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("key/value count")
        left = c.end - c.pos
        if n_kv * 13 > left or n_tensors * 24 > left or n_kv * 13 + n_tensors * 24 > left:
            c.fail(f"the header claims {n_kv} key/values and {n_tensors} tensors, more than {left} bytes can hold")
        meta = GGUFMetadata()
        for i in range(n_kv):
            key = c.string(f"key {i}")
            if key in meta._d:
                c.fail(f"duplicate key {key!r}")
            vt = c.vtype(f"value type of {key!r}")
            meta._d[key] = c.value(vt, f"value of {key!r}")
        self.metadata = meta
        align = DEFAULT_ALIGNMENT
        if _ALIGNMENT_KEY in meta:
            av = meta.typed(_ALIGNMENT_KEY)
            if av.type != VT.UINT32:
                c.fail(f"{_ALIGNMENT_KEY} must be a UINT32, got {av.type.name}")
            align = int(av.value)
            if align == 0 or align & (align - 1):
                c.fail(f"{_ALIGNMENT_KEY} = {align} is not a power of two")
        self.alignment = align
        raw_infos = []
        seen = set()
        for i in range(n_tensors):
            name = c.string(f"name of tensor {i}")
            if name in seen:
                c.fail(f"duplicate tensor name {name!r}")
            seen.add(name)
            nd = c.u32(f"dimension count of tensor {name!r}")
            if nd > 4:
                c.fail(f"tensor {name!r} has {nd} dimensions (at most 4)")
            ne = [c.u64(f"dimension {j} of tensor {name!r}") for j in range(nd)]
            n = 1
            for v in ne:
                if v >= 2**63:
                    c.fail(f"tensor {name!r} has dimension {v} (ggml's limit is 2**63 - 1)")
                n *= v
            if n >= 2**63:
                c.fail(f"tensor {name!r} has {n} elements (ggml's limit is 2**63 - 1)")
            tid = c.u32(f"type of tensor {name!r}")
            off = c.u64(f"data offset of tensor {name!r}")
            if off % align:
                c.fail(f"tensor {name!r} has data offset {off}, not a multiple of the alignment {align}")
            raw_infos.append((name, tuple(reversed(ne)), tid, off))
        self.header_size = c.pos
        self.data_offset = _pad(c.pos, align)
        self._where = where
        self.tensors: List[TensorInfo] = []
        starts = sorted({self.data_offset + off for _, _, _, off in raw_infos})
        for name, shape, tid, off in raw_infos:
            start = self.data_offset + off
            t = ggml_type(tid)
            if t.sized:
                try:
                    nbytes = t.nbytes(shape)
                except ValueError as e:
                    c.fail(f"tensor {name!r} of shape {shape}: {e}")
                known = True
            else:
                if start > c.end:
                    c.fail(f"tensor {name!r} ({t.name}) has its data at offset {start}, past the end of the file "
                           f"({c.end} bytes)")
                nxt = [s for s in starts if s > start]
                nbytes = (nxt[0] if nxt else c.end) - start
                known = False
            if start + nbytes > c.end:
                c.fail(f"tensor {name!r} ({t.name}, shape {shape}, {nbytes} bytes at offset {start}) runs past the end "
                       f"of the file ({c.end} bytes)")
            self.tensors.append(TensorInfo(name, shape, tid, nbytes, start, known))
        self._by_name = {ti.name: ti for ti in self.tensors}

    # -- access
    @property
    def kv(self) -> List[Tuple[str, GGUFValue]]:
        """The key/value list in file order, ``[(key, GGUFValue), ...]``."""
        return self.metadata.typed_items()

    def tensor_info(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self._where}: no tensor named {name!r}") from None

    def _info(self, t: Union[str, TensorInfo]) -> TensorInfo:
        return t if isinstance(t, TensorInfo) else self.tensor_info(t)

    def tensor_bytes(self, t: Union[str, TensorInfo]) -> np.ndarray:
        """The data of a tensor as a read-only 1-D uint8 view of the file."""
        ti = self._info(t)
        if self._buf is None:
            raise ValueError(f"{self._where}: the file is closed")
        return self._buf[ti.offset:ti.offset + ti.nbytes]

    def tensor(self, t: Union[str, TensorInfo]):
        """A tensor by name or TensorInfo, as :func:`load` returns it (a view, no copy)."""
        ti = self._info(t)
        raw = self.tensor_bytes(ti)
        try:
            return _make_tensor(raw, ti.type_id, ti.shape)
        except ValueError as e:
            raise ValueError(f"{self._where}: tensor {ti.name!r}: {e}") from None

    def items(self) -> Iterator[Tuple[str, Any]]:
        """``(name, tensor)`` pairs in header order, one at a time."""
        for ti in self.tensors:
            yield ti.name, self.tensor(ti)

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name) -> bool:
        return name in self._by_name

    @property
    def is_canonical(self) -> bool:
        """Whether :func:`save` reproduces this file byte for byte: GGUF v3, tensor data in
        header order, each at the previous one's end padded to the alignment, zero padding,
        and nothing after the last tensor's padding."""
        if self.version != 3 or self._buf is None:
            return False
        pos = self.data_offset
        if np.any(self._buf[self.header_size:pos]):
            return False
        for ti in self.tensors:
            if ti.offset != pos:
                return False
            end = ti.offset + ti.nbytes
            pos = _pad(end - self.data_offset, self.alignment) + self.data_offset
            if pos > self.file_size or np.any(self._buf[end:pos]):
                return False
        return pos == self.file_size

    def close(self) -> None:
        """Drop this object's reference to the memory map (views already taken stay valid)."""
        self._buf = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # tensors still view it; it is unmapped when the last one goes
            self._mm = None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}, version={self.version}, alignment={self.alignment}, "
                f"{len(self.metadata)} keys, {len(self.tensors)} tensors)")


def _make_tensor(raw: np.ndarray, tid: int, shape: Tuple[int, ...]):
    dt = _NUMPY_TYPES.get(tid)
    if dt is not None:
        return raw.view(dt).reshape(shape)
    info = _BY_ID.get(tid)
    if info is not None and len(shape) in (2, 3) and shape[-1] > 0:
        return QuantizedTensor(raw, info, shape)
    return RawTensor(raw, tid, shape)


def read(path, *, mmap: bool = True) -> GGUFFile:
    """Open a GGUF file: a :class:`GGUFFile` with its header parsed and its data memory-mapped
    (``mmap=False`` reads the whole file into memory instead).

    Raises:
        ValueError: not a GGUF file, or a malformed one (truncated, counts larger than the
        file, unknown value types, duplicate keys or tensor names, a ``general.alignment``
        that is not a UINT32 power of two, misaligned or out-of-file tensor data, arrays
        nested more than 64 deep); the message names the problem.

    Example:
        >>> iqkq.gguf.save("ex.gguf", {"norm": np.ones(4, np.float32)})
        >>> f = iqkq.gguf.read("ex.gguf")
        >>> [(t.name, t.type_name, t.shape) for t in f.tensors], f.is_canonical
        ([('norm', 'f32', (4,))], True)
    """
    return GGUFFile(path, mmap=mmap)


def load(path, *, mmap: bool = True) -> Tuple[Dict[str, Any], GGUFMetadata]:
    """Read a GGUF file: ``(tensors, metadata)``.

    ``tensors`` maps names (in file order) to QuantizedTensors (iqkq's types, 2-D / 3-D),
    read-only numpy arrays (f32, f16, f64, i8, i16, i32, i64) and :class:`~iqkq.RawTensor`
    (every other type, bf16 included) -- all views of the memory-mapped file. ``metadata`` is a
    :class:`GGUFMetadata` that keeps each value's type, so ``save(p2, *load(p1))`` writes the
    same values with the same types (and, for files in the canonical layout, the same bytes).

    Raises:
        ValueError: as :func:`read`, or a tensor that does not fit its type (e.g. rows of an
        interleaved type not a multiple of its interleave).

    Example:
        >>> iqkq.gguf.save("ex.gguf", {"w": iqkq.quantize(np.ones((8, 256)), "q8_0")}, {"llama.block_count": 1})
        >>> tensors, meta = iqkq.gguf.load("ex.gguf")
        >>> tensors["w"].qtype, meta["llama.block_count"], meta.typed("llama.block_count").type.name
        ('q8_0', 1, 'UINT32')
    """
    with read(path, mmap=mmap) as f:
        return dict(f.items()), f.metadata


# ----------------------------------------------------------------------------- writing
class GGUFStreamWriter:
    """Write a GGUF v3 file tensor by tensor, never holding more than one tensor.

    The metadata and every tensor's (name, shape, type, nbytes) are given up front; the
    header is written at once, then :meth:`write` takes the tensors one at a time in declared
    order (their type, shape and size are checked). Everything goes to a temporary file in
    the target's folder, which is flushed, fsync'ed and renamed over ``path`` by :meth:`close`
    once every tensor was written; on any error (or an incomplete file) it is deleted and
    ``path`` is untouched. Use it as a context manager.

    Args:
        path: target file.
        metadata: a :class:`GGUFMetadata` or a mapping (plain values are typed by
            :meth:`GGUFValue.infer`); written in its order.
        tensors: declarations: :class:`TensorInfo` (e.g. a :class:`GGUFFile`'s, to copy a
            file) or ``(name, shape, ggml_type[, nbytes])`` tuples (shape in numpy order,
            type by id or name; nbytes required only for types of unknown size).
        alignment: data alignment, a power of two. By default the metadata's
            ``general.alignment``, else 32. A value other than 32 that the metadata does not
            declare is added to it as ``general.alignment`` (UINT32, last key); one that
            contradicts the metadata is a ValueError. The layout always uses the declared value.

    Attributes:
        tensors: the declarations with the absolute ``offset`` each tensor's data will have.
        alignment, data_offset: as in :class:`GGUFFile`.

    Example:
        >>> q = iqkq.quantize(np.ones((8, 256)), "q8_0")
        >>> decl = [("blk.0.w", q.shape, "q8_0"), ("norm", (256,), "f32")]
        >>> with iqkq.gguf.GGUFStreamWriter("out.gguf", {"general.architecture": "llama"}, decl) as w:
        ...     w.write("blk.0.w", q)
        ...     w.write("norm", np.ones(256, np.float32))
        >>> [t.offset for t in iqkq.gguf.read("out.gguf").tensors]
        [160, 2336]
    """

    def __init__(self, path, metadata=None, tensors: Iterable = (), *, alignment: Optional[int] = None):
        meta = metadata.copy() if isinstance(metadata, GGUFMetadata) else GGUFMetadata(metadata)
        if alignment is not None:
            alignment = _check_alignment(alignment)
        if _ALIGNMENT_KEY in meta:
            av = meta.typed(_ALIGNMENT_KEY)
            if av.type != VT.UINT32:
                raise ValueError(f"{_ALIGNMENT_KEY} must be a UINT32 (llama.cpp and gguf-py refuse other types), "
                                 f"got {av.type.name}")
            declared = _check_alignment(int(av.value))
            if alignment is not None and alignment != declared:
                raise ValueError(f"alignment={alignment} contradicts the metadata's {_ALIGNMENT_KEY} = {declared}")
            alignment = declared
        elif alignment is None:
            alignment = DEFAULT_ALIGNMENT
        elif alignment != DEFAULT_ALIGNMENT:
            meta[_ALIGNMENT_KEY] = GGUFValue(alignment, VT.UINT32)
        self.alignment = alignment
        self.metadata = meta
        decls = [_declaration(d) for d in tensors]
        names = set()
        for d in decls:
            if d.name in names:
                raise ValueError(f"tensor {d.name!r} is declared twice")
            names.add(d.name)

        head = bytearray(GGUF_MAGIC)
        head += struct.pack("<IQQ", 3, len(decls), len(meta))
        for k, v in meta.typed_items():
            kb = _encode_str(k, "key")
            head += struct.pack("<Q", len(kb)) + kb + struct.pack("<I", int(v.type))
            _encode_payload(head, v)
        rel = 0
        rels = []
        for d in decls:
            nb = _encode_str(d.name, "tensor name")
            head += struct.pack("<Q", len(nb)) + nb
            head += struct.pack("<I", len(d.shape)) + struct.pack(f"<{len(d.shape)}Q", *d.ne)
            head += struct.pack("<IQ", d.type_id, rel)
            rels.append(rel)
            rel = _pad(rel + d.nbytes, alignment)
        self.data_offset = _pad(len(head), alignment)
        self.tensors: List[TensorInfo] = [
            TensorInfo(d.name, d.shape, d.type_id, d.nbytes, self.data_offset + r, d.nbytes_known)
            for d, r in zip(decls, rels)
        ]
        self.path = os.fspath(path)
        self._next = 0
        self._fh = None
        self._tmp = None
        self._open_temp()
        try:
            self._fh.write(head)
            self._fh.write(bytes(self.data_offset - len(head)))
        except BaseException:
            self.abort()
            raise

    def _open_temp(self) -> None:
        folder, base = os.path.split(os.path.abspath(self.path))
        for i in range(100):
            tmp = os.path.join(folder, f".{base}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
            try:
                # 0o666 & ~umask, like open(); O_EXCL: never clobber another writer's temp file
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            except FileExistsError:
                continue
            self._tmp = tmp
            self._fh = os.fdopen(fd, "wb")
            return
        raise OSError(f"could not create a temporary file next to {self.path}")

    @property
    def remaining(self) -> List[str]:
        """Names of the declared tensors not written yet, in order."""
        return [t.name for t in self.tensors[self._next:]]

    def write(self, name: str, tensor) -> None:
        """Write the next declared tensor: a QuantizedTensor, RawTensor, numpy array (its type
        and shape must match the declaration) or any bytes-like object / uint8 array of exactly
        the declared nbytes."""
        if self._fh is None:
            raise ValueError("the writer is closed")
        try:
            if self._next >= len(self.tensors):
                raise ValueError(f"tensor {name!r}: all {len(self.tensors)} declared tensors are already written")
            d = self.tensors[self._next]
            if name != d.name:
                raise ValueError(f"tensors must be written in declared order: expected {d.name!r}, got {name!r}")
            if isinstance(tensor, (QuantizedTensor, RawTensor)) or (isinstance(tensor, np.ndarray)
                                                                   and tensor.dtype != np.uint8):
                tid, shape, data = _tensor_parts(name, tensor)
                if tid != d.type_id or shape != d.shape:
                    raise ValueError(f"tensor {name!r} was declared {ggml_type(d.type_id).name} {d.shape}, "
                                     f"got {ggml_type(tid).name} {shape}")
            else:
                try:
                    data = np.frombuffer(tensor, dtype=np.uint8) if not isinstance(tensor, np.ndarray) \
                        else np.ascontiguousarray(tensor).reshape(-1)
                except TypeError:
                    raise TypeError(f"tensor {name!r}: cannot write a {type(tensor).__name__}") from None
            if data.size != d.nbytes:
                raise ValueError(f"tensor {name!r}: declared {d.nbytes} bytes, got {data.size}")
            pos = self._fh.tell()
            if pos != d.offset:  # cannot happen unless the file was tampered with
                raise RuntimeError(f"internal error: at byte {pos}, tensor {name!r} belongs at {d.offset}")
            self._fh.write(memoryview(np.ascontiguousarray(data)))
            end = d.offset + d.nbytes
            self._fh.write(bytes(_pad(end - self.data_offset, self.alignment) + self.data_offset - end))
            self._next += 1
        except BaseException:
            self.abort()
            raise

    def flush(self, sync: bool = False) -> None:
        """Hand what was written so far to the OS; with ``sync`` also to the disk (fdatasync), so
        that :meth:`close` has little left to wait for (a streaming writer calls it while other
        work runs)."""
        if self._fh is None:
            raise ValueError("the writer is closed")
        try:
            self._fh.flush()
            if sync and hasattr(os, "fdatasync"):
                os.fdatasync(self._fh.fileno())
        except BaseException:
            self.abort()
            raise

    def close(self) -> None:
        """Finish: fsync the temporary file and rename it over ``path``. If tensors are missing,
        the file is discarded and ValueError raised."""
        if self._fh is None:
            return
        if self._next != len(self.tensors):
            missing = self.remaining
            self.abort()
            raise ValueError(f"{self.path}: {len(missing)} declared tensors were not written (first {missing[0]!r}); "
                             f"nothing was saved")
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            os.replace(self._tmp, self.path)
            self._tmp = None
        except BaseException:
            self.abort()
            raise
        try:  # make the rename itself durable (best effort: not every OS / file system allows it)
            dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    def abort(self) -> None:
        """Discard the temporary file; ``path`` is left as it was."""
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def __enter__(self) -> "GGUFStreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self):
        # an abandoned writer leaves no temporary file behind
        if getattr(self, "_tmp", None) is not None:
            self.abort()


def save(path, tensors: Mapping[str, Any], metadata=None, *, alignment: Optional[int] = None) -> None:
    """Write a GGUF v3 file (via :class:`GGUFStreamWriter`: a temporary file renamed into place).

    Args:
        path: target file; replaced only once the new file is complete, so saving over a file
            whose tensors are loaded (memory-mapped) leaves them intact.
        tensors: name -> QuantizedTensor, RawTensor or numpy array (float32, float16, float64,
            int8, int16, int32, int64, ml_dtypes.bfloat16; any byte order); written in the
            mapping's order, bytes unchanged.
        metadata: :class:`GGUFMetadata` (types kept) or a mapping of plain values /
            :class:`GGUFValue` (plain values typed by :meth:`GGUFValue.infer`).
        alignment: as in :class:`GGUFStreamWriter` (default: the metadata's, else 32).

    Raises:
        TypeError: a non-str key or name, a value or tensor of a kind GGUF cannot hold.
        ValueError: out-of-range values, a bad or contradictory alignment, empty lists.

    Example:
        >>> q = iqkq.quantize(np.ones((8, 256)), "iq4_ks")
        >>> iqkq.gguf.save("ex.gguf", {"w": q}, {"general.architecture": "llama", "llama.context_length": 4096})
        >>> t, m = iqkq.gguf.load("ex.gguf")
        >>> t["w"] == q, m.typed("llama.context_length")
        (True, GGUFValue(4096, UINT32))
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping name -> tensor, not {type(tensors).__name__}")
    decls = [TensorInfo.of(name, t) for name, t in tensors.items()]
    with GGUFStreamWriter(path, metadata, decls, alignment=alignment) as w:
        for name, t in tensors.items():
            w.write(name, t)


# ----------------------------------------------------------------------------- gguf-py interop
def from_reader_tensor(t):
    """A tensor of ``gguf.GGUFReader(...).tensors`` as iqkq returns it from :func:`load`,
    without copying: a QuantizedTensor (iqkq's types), a numpy array (f32, f16, f64, i8-i64)
    or a :class:`~iqkq.RawTensor` (bf16 and the other quantized types gguf-py knows).

    gguf-py lists shapes in ggml order (``ne``) and quantized data as uint8
    ``(..., rows, row_bytes)``; both are handled. Arrays from the reader have dtypes equal
    to, but not the same objects as, numpy's own; iqkq accepts them.

    Example:
        >>> q = iqkq.quantize(np.ones((32, 256)), "q8_0")
        >>> w = gguf.GGUFWriter("g.gguf", "llama")
        >>> w.add_tensor("w", q.rows_view(), raw_shape=q.rows_view().shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        >>> w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
        >>> t = iqkq.gguf.from_reader_tensor(gguf.GGUFReader("g.gguf").tensors[0])
        >>> t == q
        True
    """
    try:
        tid = int(getattr(t, "tensor_type"))
        ne = [int(v) for v in t.shape]
        data = np.asarray(t.data)
    except (AttributeError, TypeError, ValueError):
        raise TypeError(f"expected a gguf.ReaderTensor, got {type(t).__name__}") from None
    shape = tuple(reversed(ne))
    if tid in _NUMPY_TYPES:
        return data.reshape(shape)
    if data.dtype != np.uint8:
        raise TypeError(f"tensor {getattr(t, 'name', '?')!r}: expected uint8 data for ggml type {tid}, got {data.dtype}")
    raw = np.ascontiguousarray(data).reshape(-1)
    return _make_tensor(raw, tid, shape)
