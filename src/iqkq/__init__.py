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
from .tensor import QuantizedTensor, RawTensor
from . import limits, qmap  # noqa: E402  (machine limits; the quant map)
from .qmap import quant_map  # noqa: E402
from . import cook, imatrix  # noqa: E402  (model cook: python -m iqkq quantize; imatrix files)
from .cook import quantize_model  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "QuantizedTensor",
    "RawTensor",
    "TypeInfo",
    "dequantize",
    "fused_up_gate",
    "get_num_threads",
    "isa",
    "matmul",
    "moe_up_gate",
    "quant_map",
    "quantize",
    "quantize_model",
    "repack",
    "set_isa",
    "set_num_threads",
    "type_info",
    "types",
]


def __getattr__(name):
    # iqkq.gguf (GGUF read / write) is imported on first use: it pulls in the gguf package
    if name == "gguf":
        import importlib

        return importlib.import_module(".gguf", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _init_isa() -> None:
    import os

    from . import _core

    want = os.environ.get("IQKQ_ISA")
    if want is None or not want.strip():
        return
    want = want.strip().lower()
    try:
        supported = _core.isa_supported(want)
    except ValueError as e:  # unknown name: the core's one parser says which names exist
        raise ImportError(f"IQKQ_ISA: {e}") from None
    if not supported:
        raise ImportError(f"IQKQ_ISA={want!r} but this CPU does not support it")
    _core.set_isa(want)


_init_isa()
