"""iq4_xs / iq4_xs_r8 beyond the oracle files and the generic invariants: the byte layout
(numpy decoder, gguf-py's dequantizer), the r8 interleave, the quantizer's edge cases
(all-zero / tiny super-blocks, zero-importance blocks and QHelper), and a numpy model of
ik_llama.cpp's AVX2 iq4_xs x q8_K kernel including its int16 saturation.
"""
import numpy as np
import pytest

import iqkq
from iqkq import _core
from conftest import ISAS, with_isa

# kvalues_iq4nl (docs/formats.md §17)
GRID = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int32)


def normal(rows, K, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal((rows, K)) * scale).astype(np.float32)


def random_bytes(rows, K, seed):
    """Arbitrary iq4_xs bytes with finite fp16 super-block scales."""
    r = np.random.default_rng(seed)
    data = r.integers(0, 256, rows * 136 * (K // 256), dtype=np.uint8).reshape(-1, 136)
    data[:, :2] = r.uniform(-2, 2, data.shape[0]).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return data.reshape(-1)


# ----------------------------------------------------------------------------- layout
def decode(data, rows, K):
    """iq4_xs in numpy: (d, block scale codes ls + 32, nibbles), y = f32(f32(d*ls) * grid)."""
    sb = data.reshape(rows, K // 256, 136)
    d = sb[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    sh = sb[..., 2].astype(np.int32) | (sb[..., 3].astype(np.int32) << 8)
    sl = sb[..., 4:8].astype(np.int32)
    b = np.arange(8)
    code = ((sl[..., b // 2] >> (4 * (b % 2))) & 15) | (((sh[..., None] >> (2 * b)) & 3) << 4)
    qs = sb[..., 8:].reshape(rows, K // 256, 8, 16)
    nib = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.int32)
    dl = (d[..., None] * (code - 32).astype(np.float32)).astype(np.float32)
    y = (dl[..., None] * GRID[nib].astype(np.float32)).astype(np.float32)
    return y.reshape(rows, K), d, code, nib


def test_dequantize_matches_numpy_and_gguf_py(isa):
    gq = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType

    rows, K = 8, 768
    for data in (iqkq.quantize(normal(rows, K, 1), "iq4_xs").data, random_bytes(rows, K, 2)):
        q = iqkq.QuantizedTensor(data, "iq4_xs", (rows, K))
        y = iqkq.dequantize(q)
        ref, *_ = decode(data, rows, K)
        np.testing.assert_array_equal(y.view(np.uint32), ref.view(np.uint32))
        g = gq.dequantize(data.reshape(rows, -1), GGMLQuantizationType.IQ4_XS).astype(np.float32)
        np.testing.assert_array_equal(y.view(np.uint32), g.reshape(rows, K).view(np.uint32))


def test_repack_round_trip_and_r8_layout(isa):
    rows, K = 16, 512
    data = random_bytes(rows, K, 3)
    q = iqkq.QuantizedTensor(data, "iq4_xs", (rows, K))
    q8 = iqkq.repack(q, "iq4_xs_r8")
    assert iqkq.repack(q8, "iq4_xs") == q
    np.testing.assert_array_equal(iqkq.dequantize(q8).view(np.uint32), iqkq.dequantize(q).view(np.uint32))
    # layout spot checks of the first group's first super-block
    _, d, code, nib = decode(data, rows, K)
    g = q8.data[:1088]
    np.testing.assert_array_equal(g[:16].view(np.float16), d[:8, 0].astype(np.float16))
    for k in range(8):
        for b in range(8):
            i = 8 * b + k
            c = ((g[32 + i % 32] >> (4 * (i // 32))) & 15) | (((g[16 + i % 16] >> (2 * (i // 16))) & 3) << 4)
            assert c == code[k, 0, b]
            for e in range(32):
                byte = g[64 + 128 * b + 4 * k + e % 4 + 32 * (e // 8)]
                assert ((byte & 15) if e % 8 < 4 else (byte >> 4)) == nib[k, 0, b, e]


def test_r8_is_repack_of_plain_without_degenerate_imatrix(isa):
    rows, K = 16, 512
    w = normal(rows, K, 4) * np.exp(np.random.default_rng(5).normal(0, 1, (rows, 1))).astype(np.float32)
    for im in (None, np.exp(np.random.default_rng(6).normal(0, 1, K)).astype(np.float32)):
        q = iqkq.quantize(w, "iq4_xs", imatrix=im)
        assert iqkq.quantize(w, "iq4_xs_r8", imatrix=im) == iqkq.repack(q, "iq4_xs_r8")


def test_zero_importance_block_plain_vs_r8(isa):
    """quantize_iq4_xs uses the imatrix as given: a 32-block of zero importance has 0/0 as its
    scale, which codes as 0 (the block dequantizes to zeros). quantize_iq4_xs_r8 first runs
    QHelper, which gives such a block weights 1e-9, so it gets a proper scale."""
    rows, K = 8, 256
    w = normal(rows, K, 7)
    im = np.ones(K, np.float32)
    im[64:96] = 0
    q = iqkq.quantize(w, "iq4_xs", imatrix=im)
    q8 = iqkq.quantize(w, "iq4_xs_r8", imatrix=im)
    y, y8 = iqkq.dequantize(q), iqkq.dequantize(q8)
    _, _, code, _ = decode(q.data, rows, K)
    assert (code[:, 0, 2] == 32).all()
    assert (y[:, 64:96] == 0).all()
    assert (np.abs(y8[:, 64:96] - w[:, 64:96]).max(axis=1) < 0.2 * np.abs(w[:, 64:96]).max(axis=1)).all()
    # the other blocks agree in rows where the super-block scale is the same (elsewhere the
    # hole block's new scale became the largest one and changed d)
    keep = np.r_[0:64, 96:256]
    d0 = q.data.reshape(rows, 136)[:, :2].copy().view(np.uint16)[:, 0]
    d8 = iqkq.repack(q8, "iq4_xs").data.reshape(rows, 136)[:, :2].copy().view(np.uint16)[:, 0]
    assert (d0 == d8).any()
    np.testing.assert_array_equal(y[d0 == d8][:, keep], y8[d0 == d8][:, keep])


def test_all_zero_and_tiny_super_blocks(isa):
    """A super-block whose 32-blocks are all below 1e-15 in |x| gets d = -0.0 (fp16 0x8000),
    scale codes 32 and nibble 8 everywhere (ggml's -max_scale/32 with max_scale = 0)."""
    K = 512
    w = np.zeros((2, K), np.float32)
    w[1] = normal(1, K, 8, 1e-20)[0]
    w[1, 256:] = normal(1, 256, 9)[0]  # second super-block of row 1 is normal
    q = iqkq.quantize(w, "iq4_xs")
    sb = q.data.reshape(2, 2, 136)
    for blk in (sb[0, 0], sb[0, 1], sb[1, 0]):
        assert blk[:4].tolist() == [0x00, 0x80, 0xAA, 0xAA]
        assert (blk[4:8] == 0).all() and (blk[8:] == 0x88).all()
    y = iqkq.dequantize(q)
    assert (y[0] == 0).all() and (y[1, :256] == 0).all()
    assert np.abs(y[1, 256:] - w[1, 256:]).max() < 0.3


def test_quantize_thread_count_and_row_chunks(isa):
    w = normal(24, 512, 10)
    im = np.exp(np.random.default_rng(11).normal(0, 1, 512)).astype(np.float32)
    for t in ("iq4_xs", "iq4_xs_r8"):
        ref = iqkq.quantize(w, t, imatrix=im, threads=1)
        assert iqkq.quantize(w, t, imatrix=im, threads=3) == ref
        parts = [iqkq.quantize(w[i:i + 8], t, imatrix=im).data for i in range(0, 24, 8)]
        np.testing.assert_array_equal(np.concatenate(parts), ref.data)


# ----------------------------------------------------------------------------- matmul model
def fma_f32(a, b, c):
    """Exactly rounded float32 fma (a*b exact in float64; float64 ties corrected via TwoSum)."""
    a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
    p = a * b
    r = p + c
    bb = r - p
    err = (p - (r - bb)) + (c - bb)
    f = r.astype(np.float32)
    up = np.nextafter(f, np.float32(np.inf))
    dn = np.nextafter(f, np.float32(-np.inf))
    other = np.where(f.astype(np.float64) < r, up, dn)
    mid = (f.astype(np.float64) + other.astype(np.float64)) / 2
    tie = (mid == r) & (err != 0)
    toward = np.where(err > 0, np.maximum(f, other), np.minimum(f, other))
    return np.where(tie, toward, f).astype(np.float32)


def h8(acc):
    a = acc.astype(np.float32)
    s = lambda i, j: (a[..., i] + a[..., j]).astype(np.float32)
    return (((s(0, 4) + s(2, 6)).astype(np.float32)) + ((s(1, 5) + s(3, 7)).astype(np.float32))).astype(np.float32)


def direct_kernel(data, rows, K, x):
    """ik_llama.cpp's AVX2 iq4_xs x q8_K kernel in numpy: grid + 128 (unsigned) times the
    int8 activations, pairs summed with int16 saturation, the +128 removed via the int16
    block sums, two fmas per super-block and 8 lanes, then H8."""
    n = x.shape[0]
    ns = K // 256
    _, d, code, nib = decode(data, rows, K)
    a = _core.quantize_activations(1, np.ascontiguousarray(x), n, K).reshape(n, ns, 296)
    dA = a[..., :4].copy().view(np.float32)[..., 0]
    qa = a[..., 8:264].view(np.int8).astype(np.int64).reshape(n, ns, 8, 32)
    bs = a[..., 264:296].copy().view(np.int16).astype(np.int64).reshape(n, ns, 8, 2)
    ls = (code - 32).astype(np.int64)  # (rows, ns, 8)
    u = (GRID[nib] + 128).astype(np.int64)  # (rows, ns, 8, 32)
    prod = u[None] * qa[:, None]  # (n, rows, ns, 8, 32)
    pairs = np.clip(prod[..., 0::2] + prod[..., 1::2], -32768, 32767)  # (n, rows, ns, 8, 16)
    lanes = pairs.reshape(n, rows, ns, 8, 8, 2).sum(-1)  # lane L = pairs 2L, 2L+1
    S = (ls[None, ..., None] * lanes).sum(3)  # (n, rows, ns, 8 lanes)
    M = ls[None] * bs.sum(-1)[:, None]  # (n, rows, ns, 8): lane k = block k
    acc = np.zeros((n, rows, 8), np.float32)
    for s in range(ns):
        cm = ((np.float32(-128) * d[None, :, s]).astype(np.float32) * dA[:, None, s]).astype(np.float32)
        acc = fma_f32(cm[..., None], M[:, :, s].astype(np.float32), acc)
        c = (d[None, :, s] * dA[:, None, s]).astype(np.float32)
        acc = fma_f32(c[..., None], S[:, :, s].astype(np.float32), acc)
    return h8(acc)


def test_direct_kernel_model_and_saturation():
    rows, K = 8, 512
    w = normal(rows, K, 12)
    w[:, :64] = np.abs(w[:, :64]) + 2  # large positive values: grid top, u = 241 ...
    q = iqkq.quantize(w, "iq4_xs")
    x = normal(5, K, 13)
    x[0] = 1.0  # ... times q8 = 127: pair sums 61214 saturate to 32767
    x[1, :64] = 3.0
    model = direct_kernel(q.data, rows, K, x)
    for name in ISAS:
        y = with_isa(name, iqkq.matmul, q, x, path="direct")
        np.testing.assert_array_equal(y.view(np.uint32), model.view(np.uint32), err_msg=name)
    # the saturation is real: the first rows are far from the float result
    exact = x.astype(np.float64) @ iqkq.dequantize(q).T.astype(np.float64)
    assert np.abs(model[0] - exact[0]).max() > 0.1 * np.abs(exact[0]).max()


def test_large_batch_uses_q8_k_r8_like_ik():
    t = iqkq.type_info("iq4_xs")
    assert t.large_batch == "q8_k_r8" and t.large_batch_min_n == 32
    assert iqkq.type_info("iq4_xs_r8").large_batch is None
    assert iqkq.type_info("iq4_xs").act_format == "q8_K" and iqkq.type_info("iq4_xs_r8").act_format == "q8_K32"


# ----------------------------------------------------------------------------- SIMD quantizer
def weight_kinds(rows, K, seed):
    r = np.random.default_rng(seed)
    yield "normal", r.standard_normal((rows, K))
    yield "student_t2", r.standard_t(2, (rows, K))
    yield "integers", r.integers(-8, 9, (rows, K)).astype(np.float64)  # ties in best_index / the search
    yield "halves", r.integers(-20, 21, (rows, K)) * 0.5
    yield "sparse", r.standard_normal((rows, K)) * (r.random((rows, K)) < 0.1)
    yield "tiny", r.standard_normal((rows, K)) * 1e-12
    yield "large", r.standard_normal((rows, K)) * 1e6
    yield "mixed_scales", r.standard_normal((rows, K)) * np.exp(r.normal(0, 4, (rows, K // 32, 1))).repeat(32, 2).reshape(rows, K)
    yield "constant_blocks", np.repeat(r.integers(-3, 4, (rows, K // 32)), 32, axis=1).astype(np.float64)


@pytest.mark.parametrize("t", ["iq4_xs", "iq4_xs_r8"])
def test_quantize_all_isas_identical(t):
    rows, K = 16, 512
    r = np.random.default_rng(20)
    ims = [None, np.exp(r.normal(0, 1, K)).astype(np.float32), np.where(r.random(K) < 0.2, 0, r.random(K)).astype(np.float32)]
    for kind, w in weight_kinds(rows, K, 21):
        w = w.astype(np.float32)
        for im in ims:
            ref = with_isa("scalar", iqkq.quantize, w, t, imatrix=im)
            for name in ISAS[1:]:
                got = with_isa(name, iqkq.quantize, w, t, imatrix=im)
                bad = np.flatnonzero(got.data != ref.data)
                assert bad.size == 0, f"{kind} imatrix={im is not None} [{name}]: {bad.size} bytes differ"


def test_gguf_file_round_trip_through_gguf_py(tmp_path):
    """iq4_xs is a mainline ggml type: a file iqkq writes opens in gguf-py, whose dequantizer
    gives iqkq's floats bit for bit, and iqkq reads it back byte for byte."""
    gguf = pytest.importorskip("gguf")
    w = normal(32, 512, 30)
    q = iqkq.quantize(w, "iq4_xs")
    meta = iqkq.gguf.GGUFMetadata() if hasattr(iqkq.gguf, "GGUFMetadata") else {}
    meta["general.architecture"] = "llama"
    path = tmp_path / "iq4_xs.gguf"
    iqkq.gguf.save(path, {"blk.0.ffn_up.weight": q}, meta)
    r = gguf.GGUFReader(path)
    t = r.tensors[0]
    assert int(t.tensor_type) == 23
    y = gguf.quants.dequantize(t.data, t.tensor_type).reshape(32, 512)
    np.testing.assert_array_equal(y.view(np.uint32), iqkq.dequantize(q).view(np.uint32))
    back, _ = iqkq.gguf.load(path)
    assert back["blk.0.ffn_up.weight"] == q
