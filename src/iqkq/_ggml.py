"""ggml tensor types by id: name and block geometry of every type a GGUF file may hold.

iqkq's own types come from the native traits table (``iqkq.types()``); the types of mainline
ggml come from the ``gguf`` package (``GGMLQuantizationType`` / ``GGML_QUANT_SIZES``); the ids
that only ik_llama.cpp defines come from the data table below. A tensor whose type id none of
them knows can still be passed through a GGUF file (its size is then taken from the file's
layout), but not sized or computed with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import numpy as np

__all__ = ["GGMLType", "ggml_type"]

# ik_llama.cpp's types with ids >= 31: (name, block size, bytes per block, bytes of per-row
# metadata). Data, not code: the values of ik_llama.cpp @ 8337e4cd (ggml_type_name,
# ggml_blck_size, ggml_type_size and ggml_row_size of its type_traits table, printed by a
# program linked against that build). Mainline ids that the installed ``gguf`` package knows
# take their sizes from it instead (the two agree where both define an id, see the tests).
_IK_TYPES: Dict[int, Tuple[str, Optional[int], Optional[int], int]] = {
    31: ("q4_0_4x4", 32, 18, 0),
    32: ("q4_0_4x8", 32, 18, 0),
    33: ("q4_0_8x8", 32, 18, 0),
    36: ("i2_s", None, None, 0),  # size is not block-based (ggml_nbytes special case)
    39: ("mxfp4", 32, 17, 0),
    41: ("q1_0_g128", 128, 18, 0),
    97: ("q8_0_x4", 32, 34, 0),
    98: ("q8_1_x4", 32, 36, 0),
    99: ("q8_2_x4", 32, 36, 0),
    133: ("q6_0", 32, 26, 0),
    134: ("iq1_bn", 64, 13, 2),
    135: ("iq2_bn", 64, 16, 4),
    136: ("q8_K64", 64, 68, 0),
    137: ("iq2_k", 256, 76, 0),
    138: ("iq3_k", 256, 110, 0),
    139: ("iq4_k", 256, 144, 0),
    140: ("iq5_k", 256, 176, 0),
    141: ("iq6_k", 256, 212, 0),
    144: ("iq4_ks", 256, 136, 4),
    145: ("iq2_ks", 256, 70, 2),
    146: ("iq4_kss", 256, 128, 4),
    147: ("q8_K16", 64, 64, 20),
    148: ("q8_K32", 256, 296, 0),
    149: ("q8_KR8", 256, 296, 0),
    150: ("q8_K128", 128, 140, 0),
    151: ("q8_KV", 32, 32, 8),
    152: ("iq5_ks", 256, 168, 4),
    153: ("iq2_kt", 256, 68, 4),
    154: ("iq3_kt", 256, 100, 4),
    155: ("iq4_kt", 256, 128, 4),
    156: ("iq3_ks", 256, 102, 2),
    157: ("iq2_kl", 256, 86, 2),
    158: ("iq1_kt", 256, 56, 4),
    202: ("q4_0_r8", 32, 18, 0),
    206: ("q5_0_r4", 32, 22, 0),
    208: ("q8_0_r8", 32, 34, 0),
    210: ("q2_k_r4", 256, 84, 0),
    211: ("q3_k_r4", 256, 110, 0),
    212: ("q4_k_r4", 256, 144, 0),
    213: ("q5_k_r4", 256, 176, 0),
    214: ("q6_k_r4", 256, 210, 0),
    216: ("iq2_xxs_r4", 256, 66, 0),
    217: ("iq2_xs_r4", 256, 74, 0),
    218: ("iq3_xxs_r4", 256, 98, 0),
    219: ("iq1_s_r4", 32, 6, 2),
    220: ("iq4_nl_r4", 32, 18, 0),
    221: ("iq3_s_r4", 256, 110, 0),
    222: ("iq2_s_r4", 256, 82, 0),
    223: ("iq4_xs_r8", 256, 136, 0),
    229: ("iq1_m_r4", 32, 7, 2),
    230: ("bf16_r16", 1, 2, 0),
    233: ("q6_0_r4", 32, 26, 0),
    335: ("iq2_bn_r4", 64, 16, 4),
    337: ("iq2_k_r4", 256, 76, 0),
    338: ("iq3_k_r4", 256, 110, 0),
    339: ("iq4_k_r4", 256, 144, 0),
    340: ("iq5_k_r4", 256, 176, 0),
    344: ("iq4_ks_r4", 256, 136, 4),
    352: ("iq5_ks_r4", 256, 168, 4),
    353: ("mxfp4_r8", 32, 17, 0),
    397: ("q8_k_r16", 256, 258, 0),
    398: ("q8_KV_r8", 32, 32, 4),
    399: ("q8_k_r8", 256, 258, 0),
}


@dataclass(frozen=True)
class GGMLType:
    """A ggml tensor type.

    Attributes:
        id: the ``enum ggml_type`` value stored in GGUF tensor infos.
        name: ggml's name (``"q4_K"``, ``"bf16"``, ``"iq4_ks"``); ``"unknown(<id>)"`` for
            ids no table knows.
        block_size: elements per block along a row, or None when the size is unknown.
        type_size: bytes per block, or None when the size is unknown.
        row_meta_size: bytes of per-row metadata before a row's blocks (ik_llama.cpp's
            row-scaled types, e.g. 4 for iq4_ks).

    Example:
        >>> iqkq.gguf.ggml_type(12)
        GGMLType(id=12, name='q4_K', block_size=256, type_size=144, row_meta_size=0)
        >>> iqkq.gguf.ggml_type("iq4_ks").nbytes((8, 512))
        2208
    """

    id: int
    name: str
    block_size: Optional[int]
    type_size: Optional[int]
    row_meta_size: int = 0

    @property
    def sized(self) -> bool:
        """Whether the byte size of a tensor of this type follows from its shape."""
        return self.block_size is not None

    def row_bytes(self, K: int) -> int:
        """Bytes of one row of K elements (``ggml_row_size``); K must be a multiple of the block."""
        if not self.sized:
            raise ValueError(f"the size of ggml type {self.name} ({self.id}) is not known")
        if K % self.block_size:
            raise ValueError(f"{self.name}: a row of {K} elements is not a whole number of {self.block_size}-element blocks")
        return self.row_meta_size + self.type_size * (K // self.block_size)

    def nbytes(self, shape) -> int:
        """Bytes of a tensor of ``shape`` (numpy order: the last dimension is ggml's ``ne[0]``).

        As ``ggml_nbytes``: a tensor with a zero dimension has 0 bytes; a 0-dimensional shape
        is one element.
        """
        shape = tuple(int(s) for s in shape)
        if any(s == 0 for s in shape):
            if self.sized and shape and shape[-1] % self.block_size:
                self.row_bytes(shape[-1])  # raises: K not a whole number of blocks
            return 0
        K = shape[-1] if shape else 1
        rows = 1
        for s in shape[:-1]:
            rows *= s
        return rows * self.row_bytes(K)


_TABLE: Optional[Dict[int, GGMLType]] = None
_BY_NAME: Dict[str, GGMLType] = {}


def _mainline_name(enum_name: str) -> str:
    # gguf-py spells ggml's names upper-case; ggml writes the K-quants as "q4_K" (capital K)
    # and everything else in lower case.
    n = enum_name.lower()
    return n[:-2] + "_K" if n.endswith("_k") and n[0] == "q" else n


def _table() -> Dict[int, GGMLType]:
    global _TABLE
    if _TABLE is None:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        from ._types import types as _iqkq_types

        tab: Dict[int, GGMLType] = {}
        for tid, (name, blk, size, meta) in _IK_TYPES.items():
            tab[tid] = GGMLType(tid, name, blk, size, meta)
        for qt in GGMLQuantizationType:
            blk, size = GGML_QUANT_SIZES.get(qt, (None, None))
            name = tab[int(qt)].name if int(qt) in tab else _mainline_name(qt.name)
            tab[int(qt)] = GGMLType(int(qt), name, blk, size, 0)
        for t in _iqkq_types():
            tab[t.ggml_id] = GGMLType(t.ggml_id, t.name, t.block_size, t.type_size, t.row_meta_size)
        _BY_NAME.update({t.name.lower(): t for t in tab.values()})
        _TABLE = tab
    return _TABLE


def ggml_type(t: Union[int, str, GGMLType]) -> GGMLType:
    """The :class:`GGMLType` of a ggml type id or name (names are case-insensitive).

    An id that no table knows gives a type named ``"unknown(<id>)"`` without a size; an
    unknown name is a ValueError.

    Example:
        >>> iqkq.gguf.ggml_type(30).name, iqkq.gguf.ggml_type("BF16").id
        ('bf16', 30)
        >>> iqkq.gguf.ggml_type(777).sized
        False
    """
    if isinstance(t, GGMLType):
        return t
    tab = _table()
    if isinstance(t, str):
        found = _BY_NAME.get(t.strip().lower())
        if found is None:
            raise ValueError(f"unknown ggml type name {t!r}")
        return found
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
        raise TypeError(f"a ggml type is an id (int) or a name (str), not {type(t).__name__}")
    tid = int(t)
    if not 0 <= tid < 2**32:
        raise ValueError(f"ggml type id must be in [0, 2**32), got {tid}")
    found = tab.get(tid)
    return found if found is not None else GGMLType(tid, f"unknown({tid})", None, None, 0)
