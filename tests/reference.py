"""Independent numpy models used by the property tests (written from docs/formats.md, not from
the C++ code): q8_0 reference quantization (§2.3), q8_2_x4 activations (§10.2)."""
import numpy as np


def roundf(v):
    """C roundf (halves away from zero), exact for |v| < 2**52 via float64."""
    v = np.asarray(v, dtype=np.float64)
    return np.trunc(v + np.copysign(0.5, v)) * (np.abs(v) >= 0.5)


@np.errstate(all="ignore")  # overflow to inf / fp16 inf is part of the model
def q8_0_quantize(w):
    """(rows, K) float32 -> (rows, K//32) fp16 d and (rows, K) int8 quants, as ggml."""
    w = np.asarray(w, dtype=np.float32)
    rows, K = w.shape
    b = w.reshape(rows, K // 32, 32)
    amax = np.abs(b).max(axis=2)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        idv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        p = (b * idv[:, :, None]).astype(np.float32)
        q = np.where(np.isfinite(p), roundf(np.where(np.isfinite(p), p, 0)), 0)
    return d.astype(np.float16), q.astype(np.int8).reshape(rows, K)


def bf16_round(x):
    """fp32 -> bf16 (round to nearest even) -> fp32, as ggml's GGML_FP32_TO_BF16."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


@np.errstate(all="ignore")
def q8_2_dequant_x(x):
    """Values q*d' that q8_2_x4 represents for activation rows x (N, K), and d' per block."""
    x = np.asarray(x, dtype=np.float32)
    N, K = x.shape
    b = x.reshape(N, K // 32, 32)
    m = np.abs(b).max(axis=2)
    d = bf16_round((m / np.float32(127)).astype(np.float32))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        idv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        q = np.rint((b * idv[:, :, None]).astype(np.float32))
    return (q * d[:, :, None]).reshape(N, K), d
