"""GGUF interop: read and write GGUF files holding iqkq tensors, without the `gguf` package.

ik_llama.cpp's types (iq4_ks = 144, q8_0_r8 = 208, iq3_xxs_r4 = 218, iq4_ks_r4 = 344,
q8_k_r8 = 399, ...) are unknown to the mainline ``gguf`` package's enum, which refuses files
that contain them. This module parses the container itself (GGUF v2/v3), memory-maps the data
and wraps each quantized tensor as a :class:`~iqkq.QuantizedTensor` without copying, so iqkq
reads exactly the bytes ik_llama.cpp wrote -- and writes files ik_llama.cpp can load.

    >>> tensors, meta = iqkq.gguf.load("model.gguf")            # doctest: +SKIP
    >>> y = iqkq.matmul(tensors["blk.0.ffn_up.weight"], x)       # doctest: +SKIP

``from_reader_tensor`` converts a tensor of the ``gguf`` package's ``GGUFReader`` (for the
types that package knows) the same way.
"""
from __future__ import annotations

import struct
from typing import Any, Dict, Mapping, Tuple, Union

import numpy as np

from ._types import _BY_ID, type_info
from .tensor import QuantizedTensor

__all__ = ["load", "save", "from_reader_tensor", "GGUF_MAGIC"]

GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# Unquantized tensor types: ggml id -> numpy dtype.
_FLOAT_TYPES = {0: np.float32, 1: np.float16, 30: None}  # 30 = bf16 (returned as uint16 bits)

# GGUF metadata value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALAR_FMT = {_U8: "<B", _I8: "<b", _U16: "<H", _I16: "<h", _U32: "<I", _I32: "<i", _F32: "<f", _BOOL: "<?",
               _U64: "<Q", _I64: "<q", _F64: "<d"}


class _Cursor:
    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v[0]

    def string(self):
        n = self.take("<Q")
        if n > len(self.buf) - self.pos:
            raise ValueError("corrupt GGUF: string runs past the end of the file")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype):
        if vtype == _STR:
            return self.string()
        if vtype == _ARR:
            itype = self.take("<I")
            n = self.take("<Q")
            if itype in _SCALAR_FMT and itype != _BOOL:
                dt = np.dtype(_SCALAR_FMT[itype][1:]).newbyteorder("<")
                arr = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos).copy()
                self.pos += n * dt.itemsize
                return arr
            return [self.value(itype) for _ in range(n)]
        if vtype not in _SCALAR_FMT:
            raise ValueError(f"corrupt GGUF: unknown metadata value type {vtype}")
        return self.take(_SCALAR_FMT[vtype])


def _qt_shape(ne) -> Tuple[int, ...]:
    return tuple(int(v) for v in reversed(ne))


def load(path, *, mmap: bool = True) -> Tuple[Dict[str, Union[QuantizedTensor, np.ndarray]], Dict[str, Any]]:
    """Read a GGUF file: ``(tensors, metadata)``.

    Quantized tensors of iqkq's types become QuantizedTensors (views of the memory-mapped
    file); f32 / f16 tensors become numpy arrays, bf16 a uint16 array of the raw bits; tensors
    of other quantized types are returned as raw uint8 arrays of their bytes (shape
    ``(..., rows, row_bytes)`` is not known for them, so 1-D).
    """
    buf = np.memmap(path, dtype=np.uint8, mode="r") if mmap else np.fromfile(path, dtype=np.uint8)
    c = _Cursor(buf)
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (bad magic)")
    c.pos = 4
    version = c.take("<I")
    if version not in (2, 3):
        raise ValueError(f"{path}: unsupported GGUF version {version}")
    n_tensors = c.take("<Q")
    n_kv = c.take("<Q")
    meta: Dict[str, Any] = {}
    for _ in range(n_kv):
        key = c.string()
        meta[key] = c.value(c.take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = c.string()
        nd = c.take("<I")
        ne = [c.take("<Q") for _ in range(nd)]
        tid = c.take("<I")
        off = c.take("<Q")
        infos.append((name, ne, tid, off))
    align = int(meta.get("general.alignment", _DEFAULT_ALIGNMENT))
    start = (c.pos + align - 1) // align * align
    tensors: Dict[str, Union[QuantizedTensor, np.ndarray]] = {}
    # end of each tensor's bytes = the next tensor's offset (for types iqkq cannot size)
    ends = sorted({off for _, _, _, off in infos} | {len(buf) - start})
    for name, ne, tid, off in infos:
        shape = _qt_shape(ne)
        n = int(np.prod(shape)) if shape else 1
        if tid in _BY_ID:
            t = _BY_ID[tid]
            nbytes = t.row_bytes(shape[-1]) * (n // shape[-1])
            if start + off + nbytes > len(buf):
                raise ValueError(f"{path}: tensor {name!r} runs past the end of the file")
            tensors[name] = QuantizedTensor(buf[start + off:start + off + nbytes], t, shape)
        elif tid in _FLOAT_TYPES:
            dt = _FLOAT_TYPES[tid] or np.uint16
            tensors[name] = np.frombuffer(buf, dtype=dt, count=n, offset=start + off).reshape(shape)
        else:
            end = next(e for e in ends if e > off) if off < ends[-1] else off
            tensors[name] = buf[start + off:start + end]
    return tensors, meta


def _w_str(out, s: str):
    b = s.encode("utf-8")
    out += struct.pack("<Q", len(b)) + b


def _w_value(out, v):
    if isinstance(v, bool):
        out += struct.pack("<I?", _BOOL, v)
    elif isinstance(v, (int, np.integer)):
        out += struct.pack("<Iq", _I64, int(v)) if int(v) < 0 else struct.pack("<IQ", _U64, int(v))
    elif isinstance(v, (float, np.floating)):
        out += struct.pack("<If", _F32, float(v))
    elif isinstance(v, str):
        out += struct.pack("<I", _STR)
        _w_str(out, v)
    elif isinstance(v, (list, tuple, np.ndarray)):
        vals = list(v)
        if all(isinstance(x, str) for x in vals):
            out += struct.pack("<IIQ", _ARR, _STR, len(vals))
            for x in vals:
                _w_str(out, x)
        elif all(isinstance(x, (float, np.floating)) for x in vals):
            out += struct.pack("<IIQ", _ARR, _F32, len(vals)) + np.asarray(vals, "<f4").tobytes()
        else:
            out += struct.pack("<IIQ", _ARR, _I64, len(vals)) + np.asarray(vals, "<i8").tobytes()
    else:
        raise TypeError(f"cannot store metadata value of type {type(v).__name__} in GGUF")


def save(path, tensors: Mapping[str, Union[QuantizedTensor, np.ndarray]], metadata: Mapping[str, Any] = None, *,
         alignment: int = _DEFAULT_ALIGNMENT) -> None:
    """Write a GGUF v3 file with the given tensors (QuantizedTensors, or float32 / float16
    numpy arrays) and metadata (str -> bool / int / float / str / list). Tensor bytes are
    written unchanged, so a QuantizedTensor's bytes land in the file exactly as ik_llama.cpp
    would write them."""
    metadata = dict(metadata or {})
    if alignment != _DEFAULT_ALIGNMENT:
        metadata["general.alignment"] = int(alignment)
    entries = []
    for name, t in tensors.items():
        if isinstance(t, QuantizedTensor):
            entries.append((name, t.shape, t.type_id, t.data))
        else:
            a = np.ascontiguousarray(t)
            if a.dtype == np.float32:
                tid = 0
            elif a.dtype == np.float16:
                tid = 1
            else:
                raise TypeError(f"tensor {name!r}: only QuantizedTensor, float32 or float16 arrays can be saved")
            entries.append((name, a.shape, tid, a.reshape(-1).view(np.uint8)))
    head = bytearray(GGUF_MAGIC + struct.pack("<IQQ", 3, len(entries), len(metadata)))
    for k, v in metadata.items():
        _w_str(head, k)
        _w_value(head, v)
    off = 0
    offsets = []
    for name, shape, tid, data in entries:
        _w_str(head, name)
        ne = list(reversed(shape))
        head += struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", tid, off)
        offsets.append(off)
        off = (off + data.size + alignment - 1) // alignment * alignment
    pad = (-len(head)) % alignment
    with open(path, "wb") as f:
        f.write(head)
        f.write(b"\0" * pad)
        pos = 0
        for (name, shape, tid, data), o in zip(entries, offsets):
            f.write(b"\0" * (o - pos))
            f.write(memoryview(np.ascontiguousarray(data)))
            pos = o + data.size
        f.write(b"\0" * ((-pos) % alignment))


def from_reader_tensor(t) -> QuantizedTensor:
    """A tensor from ``gguf.GGUFReader(...).tensors`` as a QuantizedTensor (no copy).

    The ``gguf`` package exposes quantized data as uint8 arrays ``(..., rows, row_bytes)``
    and lists shapes in ggml order (``ne``: K first); both are handled here.
    """
    tid = int(getattr(t.tensor_type, "value", t.tensor_type))
    info = type_info(tid)
    shape = _qt_shape([int(v) for v in t.shape])
    return QuantizedTensor(np.asarray(t.data), info, shape)
