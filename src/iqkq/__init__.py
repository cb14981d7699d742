"""iqkq: ggml / ik_llama.cpp quantization formats for numpy, byte-exact and fast.

Quick start::

    import numpy as np, iqkq
    w = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)
    q = iqkq.quantize(w, "q8_0")          # bytes identical to ik_llama.cpp's GGUF tensors
    y = iqkq.matmul(q, np.ones((8, 4096), np.float32))   # (8, 4096) = x @ W.T
    w2 = iqkq.dequantize(q)

See ``iqkq.types()`` for the supported types and ``iqkq.quant_map()`` (``python -m iqkq map``)
for the size, accuracy and speed of each on this CPU.
"""
from ._types import TypeInfo, type_info, types
from .ops import (
    dequantize,
    fused_up_gate,
    moe_up_gate,
    get_num_threads,
    isa,
    matmul,
    quantize,
    repack,
    set_isa,
    set_num_threads,
)
from .tensor import QuantizedTensor
from . import gguf  # noqa: E402  (GGUF read / write)
from . import limits, qmap  # noqa: E402  (machine limits; the quant map)
from .qmap import quant_map  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "QuantizedTensor",
    "TypeInfo",
    "dequantize",
    "fused_up_gate",
    "get_num_threads",
    "isa",
    "matmul",
    "moe_up_gate",
    "quant_map",
    "quantize",
    "repack",
    "set_isa",
    "set_num_threads",
    "type_info",
    "types",
]


def _init_isa() -> None:
    import os

    from . import _core

    want = os.environ.get("IQKQ_ISA")
    if want:
        want = want.strip().lower()
        if want not in ("scalar", "avx2", "avx512"):
            raise ImportError(f"IQKQ_ISA must be 'scalar', 'avx2' or 'avx512', got {want!r}")
        if not _core.isa_supported(want):
            raise ImportError(f"IQKQ_ISA={want!r} but this CPU does not support it")
        _core.set_isa(want)


_init_isa()
