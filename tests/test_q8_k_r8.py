"""q8_k_r8 beyond the oracle: a numpy model of its quantizer (q8_K32 rounding with the f32
scale, fp16 scale stored), scalar vs AVX2, threads, error bounds, extremes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import iqkq
from conftest import ISAS, rng, with_isa


@np.errstate(all="ignore")
def model_q8_k_r8(w):
    """(rows, K) -> bytes, written from docs/formats.md §4.2 / §5 with numpy."""
    rows, K = w.shape
    b = w.reshape(rows, K // 256, 256)
    m = np.abs(b).max(2)
    d = (m / np.float32(127)).astype(np.float32)
    idv = np.where(m != 0, np.float32(127) / np.where(m != 0, m, 1), 0).astype(np.float32)
    q = np.clip(np.rint((idv[:, :, None] * b).astype(np.float32)), -128, 127).astype(np.int8)
    out = np.empty((rows // 8, K // 256, 2064), np.uint8)
    d16 = d.astype(np.float16).view(np.uint8).reshape(rows // 8, 8, K // 256, 2)
    out[:, :, :16] = d16.transpose(0, 2, 1, 3).reshape(rows // 8, K // 256, 16)
    # qs[32 m + 4 r + j] = q_r[4 m + j]
    qg = q.reshape(rows // 8, 8, K // 256, 64, 4).transpose(0, 2, 3, 1, 4)
    out[:, :, 16:] = qg.reshape(rows // 8, K // 256, 2048).view(np.uint8)
    return out.reshape(-1)


def test_quantize_matches_numpy_model(isa):
    r = rng(1)
    w = np.concatenate([r.standard_normal((16, 512)), r.standard_t(2, (8, 512)) * 1e3,
                        np.zeros((8, 512)), np.tile(np.arange(256) - 127.5, (8, 2)),
                        r.standard_normal((8, 512)) * 1e-30]).astype(np.float32)
    np.testing.assert_array_equal(iqkq.quantize(w, "q8_k_r8").data, model_q8_k_r8(w))


@pytest.mark.skipif(len(ISAS) < 2, reason="CPU has no AVX2: only the scalar kernels exist")
@pytest.mark.parametrize("K", [256, 768, 4096])
def test_scalar_avx2_agree(K):
    r = rng(K)
    w = np.concatenate([r.standard_normal((24, K)), np.zeros((8, K)), r.standard_normal((8, K)) * 1e4])
    w = w.astype(np.float32)
    x = r.standard_normal((70, K)).astype(np.float32)
    x[3] = 0
    x[4, ::2] = 127.0
    res = {}
    for name in ISAS:
        def run():
            q = iqkq.quantize(w, "q8_k_r8")
            out = [q.data.copy(), iqkq.dequantize(q)]
            for n in (1, 2, 3, 4, 5, 9, 33, 70):
                out.append(iqkq.matmul(q, x[:n]))
            return out
        res[name] = with_isa(name, run)
    for name in ISAS[1:]:
        for a, b in zip(res["scalar"], res[name]):
            np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8), err_msg=name)


def test_thread_count_determinism(isa):
    w = rng(3).standard_normal((136, 1024)).astype(np.float32)
    x = rng(4).standard_normal((70, 1024)).astype(np.float32)
    ref = None
    for th in (1, 2, 3, 5):
        q = iqkq.quantize(w, "q8_k_r8", threads=th)
        out = (q.data.copy(), iqkq.dequantize(q, threads=th), iqkq.matmul(q, x, threads=th),
               iqkq.matmul(q, x[:3], threads=th))
        if ref is None:
            ref = out
        for a, b in zip(ref, out):
            np.testing.assert_array_equal(a, b)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), nb=st.integers(1, 4), n=st.sampled_from([1, 3, 8, 40]),
       scale=st.sampled_from([1e-3, 1.0, 1e4]))
def test_roundtrip_and_matmul_bounds(seed, nb, n, scale):
    K = 256 * nb
    r = rng(seed)
    w = (r.standard_normal((16, K)) * scale).astype(np.float32)
    x = r.standard_normal((n, K)).astype(np.float32)
    q = iqkq.quantize(w, "q8_k_r8")
    deq = iqkq.dequantize(q).astype(np.float64)
    m = np.abs(w.reshape(16, nb, 256)).max(2)
    d = m / 127.0
    d16 = (m / np.float32(127)).astype(np.float32).astype(np.float16).astype(np.float64)
    # rounding with the f32 scale, storage with the fp16 scale: |deq - w| <= d/2 + 127|d16 - d|
    bound = np.repeat(0.5 * d + 128 * np.abs(d16 - d), 256, axis=1) * (1 + 1e-5) + 1e-6 * np.abs(w)
    assert (np.abs(deq - w) <= bound + 1e-38).all()
    # matmul vs exact float64 product of the quantized activations (q8_K, one scale per 256)
    xb = x.reshape(n, nb, 256)
    mx = np.abs(xb).max(2).astype(np.float32)
    idx = np.where(mx != 0, np.float32(127) / np.where(mx != 0, mx, 1), 0).astype(np.float32)
    xq = np.rint((idx[:, :, None] * xb).astype(np.float32)) * (mx / np.float32(127)).astype(np.float32)[:, :, None]
    xq = xq.reshape(n, K).astype(np.float64)
    y = iqkq.matmul(q, x).astype(np.float64)
    mag = np.abs(xq) @ np.abs(deq).T
    assert (np.abs(y - xq @ deq.T) <= 1e-5 * mag + 1e-30).all()


def test_extremes(isa):
    """+-127 weights against +-127 activations in every lane: no int16 saturation."""
    K = 4096
    pat = np.tile(np.array([1.0, -1.0, 1.0, 1.0], np.float32), K // 4)
    w = np.tile(pat, (8, 1))
    x = np.tile(pat, (5, 1))
    y = iqkq.matmul(iqkq.quantize(w, "q8_k_r8"), x)
    np.testing.assert_allclose(y, float(K), rtol=2e-4)  # fp16 scale: 1/127 to 11 bits
    y = iqkq.matmul(iqkq.quantize(-w, "q8_k_r8"), x)
    np.testing.assert_allclose(y, -float(K), rtol=2e-4)
