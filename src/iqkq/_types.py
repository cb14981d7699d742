"""Python view of the native type-traits table.

Every quantized type iqkq supports is one row of the C++ table in ``csrc/types.cpp``;
this module exposes it as :class:`TypeInfo` records and resolves user-supplied type
names / ggml ids to them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import numpy as np

from . import _core

__all__ = ["TypeInfo", "types", "type_info"]


@dataclass(frozen=True)
class TypeInfo:
    """Traits of one quantized type (values as in ggml / ik_llama.cpp).

    Attributes:
        name: canonical lowercase ggml name, e.g. ``"q8_0_r8"``.
        ggml_id: the ``enum ggml_type`` value (ik_llama.cpp numbering), e.g. 208.
        block_size: elements per block along a row (K must be a multiple of it).
        type_size: bytes per block per row.
        row_meta_size: bytes of per-row metadata stored before a row's blocks.
        interleave: rows stored together (1, 4 or 8); the row count must be a multiple.
        act_format: the activation format ``matmul`` quantizes ``x`` to (e.g. ``"q8_2_x4"``).
        needs_imatrix: whether the type requires an importance matrix to quantize.
        base: name of the plain type an interleaved type is a permutation of, or None.
        interleaved: name of this type's interleaved twin, or None.
        large_batch: the type ``matmul`` converts the weights to for large batches (as
            ik_llama.cpp does), or None when the type is always used directly.
        large_batch_min_n: the batch size (activation rows) from which that conversion is used.
    """

    name: str
    ggml_id: int
    block_size: int
    type_size: int
    row_meta_size: int
    interleave: int
    act_format: Optional[str]
    needs_imatrix: bool
    base: Optional[str]
    interleaved: Optional[str]
    large_batch: Optional[str]
    large_batch_min_n: int
    index: int  # position in the native table (private)

    @property
    def block_bpw(self) -> float:
        """Bits per weight of the blocks alone (without per-row metadata)."""
        return self.type_size * 8.0 / self.block_size

    def row_bytes(self, K: int) -> int:
        """Bytes of one row of K elements (``ggml_row_size``)."""
        return self.row_meta_size + self.type_size * (K // self.block_size)

    def bpw(self, K: int = 4096) -> float:
        """Bits per weight for rows of K elements, row metadata included."""
        return self.row_bytes(K) * 8.0 / K


_RAW = _core.types_table()
_RAW_BY_NAME = {r["name"]: r for r in _RAW}


def _load() -> List[TypeInfo]:
    raw = _RAW
    names = [r["name"] for r in raw]
    out = []
    for r in raw:
        if not r["available"]:
            continue
        out.append(
            TypeInfo(
                name=r["name"],
                ggml_id=r["ggml_id"],
                block_size=r["block_size"],
                type_size=r["type_size"],
                row_meta_size=r["row_meta"],
                interleave=r["interleave"],
                act_format=r["act"],
                needs_imatrix=bool(r["needs_imatrix"]),
                base=names[r["base"]] if r["base"] >= 0 else None,
                interleaved=names[r["interleaved"]] if r["interleaved"] >= 0 else None,
                large_batch=names[r["large_batch"]] if r["has_large_batch"] else None,
                large_batch_min_n=r["large_batch_min_n"] if r["has_large_batch"] else 0,
                index=r["index"],
            )
        )
    return out


_TYPES: List[TypeInfo] = _load()
_BY_NAME: Dict[str, TypeInfo] = {t.name.lower(): t for t in _TYPES}
_BY_ID: Dict[int, TypeInfo] = {t.ggml_id: t for t in _TYPES}
# Large-batch form of each type (the type its weights are converted to for N >= 32), if any.
_LARGE_BATCH: Dict[str, Optional[str]] = {
    r["name"]: (_RAW[r["large_batch"]]["name"] if r["has_large_batch"] else None) for r in _RAW if r["available"]
}


def types() -> List[TypeInfo]:
    """All supported types, one :class:`TypeInfo` per type, in table order.

    Example:
        >>> [t.name for t in iqkq.types()][:2]
        ['q8_0', 'q8_0_r8']
    """
    return list(_TYPES)


def _supported() -> str:
    return ", ".join(f"{t.name} ({t.ggml_id})" for t in _TYPES)


def type_info(qtype: Union[str, int, TypeInfo]) -> TypeInfo:
    """Resolve a type given by ggml name (any case), ggml id, or TypeInfo.

    Raises:
        ValueError: unknown name or id (the message lists the supported types).
        TypeError: ``qtype`` is neither a string nor an integer.
    """
    if isinstance(qtype, TypeInfo):
        return qtype
    if isinstance(qtype, str):
        t = _BY_NAME.get(qtype.strip().lower())
        if t is None and any(r["name"].lower() == qtype.strip().lower() for r in _RAW):
            raise ValueError(f"type {qtype!r} has no kernels in this build; supported: {_supported()}")
        if t is None:
            raise ValueError(f"unknown quantization type {qtype!r}; supported: {_supported()}")
        return t
    if isinstance(qtype, (int, np.integer)) and not isinstance(qtype, (bool, np.bool_)):
        t = _BY_ID.get(int(qtype))
        if t is None:
            raise ValueError(f"unknown ggml type id {int(qtype)}; supported: {_supported()}")
        return t
    raise TypeError(f"qtype must be a type name (str) or ggml id (int), not {type(qtype).__name__}")
