"""k-quants (q4_K, q5_K, q6_K, their _r4 twins, q8_1_r8): what is specific to them.

The oracle cases themselves run in test_oracle.py (the base types bit-exact at every N); here:
gguf-py's dequantize equals ours bit for bit, the twins' matmul against ik's at N > 1 (bit-exact)
and N = 1 (ik's one-column kernels round differently), twins = repack(base), the large-batch
forms, and quantizer edge cases.
"""
import numpy as np
import pytest

import iqkq
from iqkq import _core
from conftest import load, oracle_cases, rng

BASES = ["q4_K", "q5_K", "q6_K"]
TWINS = {"q4_K": "q4_k_r4", "q5_K": "q5_k_r4", "q6_K": "q6_k_r4"}


def gguf_dequantize(data, name):
    gguf = pytest.importorskip("gguf")
    qt = getattr(gguf.GGMLQuantizationType, name.upper())
    return gguf.quants.dequantize(data, qt).astype(np.float32)


# ----------------------------------------------------------------------------- gguf-py
@pytest.mark.parametrize("path", oracle_cases(BASES))
def test_gguf_py_dequantize_equals_ours_on_oracle_bytes(path):
    z = load(path)
    name = str(z["type_name"])
    q = iqkq.QuantizedTensor(z["q"], name, z["w"].shape)
    ref = gguf_dequantize(q.rows_view(), name)
    np.testing.assert_array_equal(iqkq.dequantize(q).view(np.uint32), ref.reshape(z["w"].shape).view(np.uint32))


@pytest.mark.parametrize("name", BASES)
def test_gguf_py_dequantize_equals_ours_on_random_weights(name):
    for seed, scale in ((1, 1.0), (2, 1e-3), (3, 300.0)):
        w = (rng(seed).standard_normal((8, 1024)) * scale).astype(np.float32)
        q = iqkq.quantize(w, name)
        ref = gguf_dequantize(q.rows_view(), name)
        np.testing.assert_array_equal(iqkq.dequantize(q).view(np.uint32), ref.reshape(w.shape).view(np.uint32))


@pytest.mark.parametrize("name", BASES)
def test_gguf_py_dequantize_equals_ours_on_finite_raw_bytes(name):
    t = iqkq.type_info(name)
    raw = rng(7).integers(0, 256, (16, 2 * t.type_size), dtype=np.uint8)
    # keep the fp16 scales finite (gguf-py and ggml agree on inf/NaN scales only up to NaN payloads)
    for off in ((0, 2) if name != "q6_K" else (208,)):
        for b in range(2):
            raw[:, b * t.type_size + off + 1] &= 0x7b
    q = iqkq.QuantizedTensor(raw, name, (16, 512))
    ref = gguf_dequantize(raw, name)
    np.testing.assert_array_equal(iqkq.dequantize(q).view(np.uint32), ref.reshape(16, 512).view(np.uint32))


# ----------------------------------------------------------------------------- the twins
def twin_cases():
    return oracle_cases(list(TWINS.values()))


@pytest.mark.parametrize("path", twin_cases())
def test_twin_matmul_vs_ik(path, isa):
    z = load(path)
    name = str(z["type_name"])
    q = iqkq.QuantizedTensor(z["q"], name, z["w"].shape)
    for n in [int(v) for v in z["n_values"]]:
        y, yo = iqkq.matmul(q, z[f"x_N{n}"], threads=2), z[f"y_N{n}"]
        if n > 1:
            np.testing.assert_array_equal(y.view(np.uint32), yo.view(np.uint32), err_msg=f"N={n}")
        else:
            # ik's nrc_y == 1 instance multiplies the row scale by the activation scale first;
            # iqkq keeps one order for every N (a column gives the same bits alone or in a batch).
            np.testing.assert_allclose(y, yo, rtol=1e-5, atol=1e-6 * float(np.abs(yo).max()))


@pytest.mark.parametrize("path", twin_cases())
def test_twin_is_repacked_base(path):
    """Without an imatrix, or with a healthy one, the twin is the base type interleaved."""
    z = load(path)
    name = str(z["type_name"])
    base = iqkq.type_info(name).base
    imat = z["imatrix"] if bool(z["has_imatrix"]) else None
    qb = iqkq.quantize(z["w"], base, imatrix=imat)
    if imat is None or str(z["dist"]) not in ("zero_row", "tiny1e-20"):
        np.testing.assert_array_equal(iqkq.repack(qb, name).data, z["q"])
    back = iqkq.repack(iqkq.QuantizedTensor(z["q"], name, z["w"].shape), base)
    np.testing.assert_array_equal(iqkq.dequantize(back).view(np.uint32), z["deq"].view(np.uint32))


def test_twin_qhelper_replaces_degenerate_imatrix_blocks():
    """A zero imatrix block makes the base quantizer see zero weights; the twin (QHelper) sees
    1e-9 instead, so the two may differ there and nowhere else (rows are independent)."""
    r = rng(11)
    w = r.standard_normal((8, 512)).astype(np.float32)
    imat = np.exp(r.standard_normal(512)).astype(np.float32)
    imat[32:64] = 0
    for base, twin in TWINS.items():
        qt = iqkq.quantize(w, twin, imatrix=imat)
        d = iqkq.dequantize(qt)
        assert np.isfinite(d).all()
        ok = iqkq.quantize(w, twin, imatrix=np.where(imat == 0, np.float32(1e-9), imat))
        np.testing.assert_array_equal(qt.data, ok.data)


# ----------------------------------------------------------------------------- large batch
@pytest.mark.parametrize("name", BASES)
def test_large_batch_forms(name, isa):
    t = iqkq.type_info(name)
    assert t.large_batch == ("q8_0_r8" if name == "q6_K" else "q8_1_r8")
    assert t.large_batch_min_n == (64 if name == "q6_K" else 32)
    w = rng(3).standard_normal((32, 512)).astype(np.float32)
    x = rng(4).standard_normal((t.large_batch_min_n, 512)).astype(np.float32)
    q = iqkq.quantize(w, name)
    conv = iqkq.repack(q, t.large_batch)
    d0, d1 = iqkq.dequantize(q), iqkq.dequantize(conv)
    if name != "q6_K":  # q4_K / q5_K -> q8_1_r8 keeps the quants, rounds d*scale and dmin*min to fp16
        np.testing.assert_allclose(d1, d0, rtol=0, atol=2e-3 * float(np.abs(d0).max()))
    else:  # q6_K -> q8_0_r8 re-quantizes to int8
        np.testing.assert_allclose(d1, d0, rtol=0, atol=1e-2 * float(np.abs(d0).max()))
    np.testing.assert_array_equal(iqkq.matmul(q, x), iqkq.matmul(conv, x))
    assert not np.array_equal(iqkq.matmul(q, x[:-1]), iqkq.matmul(conv, x[:-1]))


def test_q8_1_r8_alone():
    """q8_1_r8 has no ik_llama.cpp type: quantize goes through q5_K, dequantize is d*q + m."""
    w = rng(5).standard_normal((16, 512)).astype(np.float32)
    q = iqkq.quantize(w, "q8_1_r8")
    via = iqkq.repack(iqkq.quantize(w, "q5_K"), "q8_1_r8")
    np.testing.assert_array_equal(q.data, via.data)
    assert q.nbytes == 16 * 2 * 288


# ----------------------------------------------------------------------------- quantizer edges
@pytest.mark.parametrize("name", BASES + list(TWINS.values()))
def test_zero_and_tiny_rows_quantize_to_zero(name):
    w = np.zeros((8, 512), np.float32)
    w[4:] = rng(6).standard_normal((4, 512)).astype(np.float32) * 1e-20
    for imat in (None, np.ones(512, np.float32)):
        q = iqkq.quantize(w, name, imatrix=imat)
        assert not q.data[: q.nbytes // 2].any()  # zero rows: zero bytes
        assert not iqkq.dequantize(q).any()  # tiny rows: 6-bit mins may be set, but fp16 d = dmin = 0


@pytest.mark.parametrize("name", BASES)
@pytest.mark.parametrize("scale", [1e-3, 3e3])
def test_extreme_scales_stay_finite_and_accurate(name, scale):
    w = rng(8).standard_normal((4, 512)).astype(np.float32)
    q = iqkq.quantize(w * np.float32(scale), name)
    d = iqkq.dequantize(q) / np.float32(scale)
    assert np.isfinite(d).all()
    tol = {"q4_K": 0.2, "q5_K": 0.1, "q6_K": 0.05}[name]
    assert float(np.sqrt(np.mean((d - w) ** 2))) < tol


def test_below_the_group_thresholds_everything_is_zero():
    """q4_K / q5_K treat a 32-block with max - min < 1e-10 as constant (make_qkx2/3_quants),
    q6_K a 16-block with max|x| < 1e-15 as zero: rows of 1e-12 dequantize to 0 / tiny."""
    w = rng(8).standard_normal((4, 512)).astype(np.float32) * np.float32(1e-12)
    for name in ("q4_K", "q5_K"):
        assert not iqkq.dequantize(iqkq.quantize(w, name)).any()
    d = iqkq.dequantize(iqkq.quantize(w, "q6_K"))
    assert np.isfinite(d).all() and float(np.abs(d).max()) < 1e-10


def test_one_large_outlier_block():
    """A 1e4 outlier dominates its super-block's scale but not its neighbours'."""
    w = rng(9).standard_normal((1, 512)).astype(np.float32)
    w[0, 3] = 1e4
    for name in BASES:
        d = iqkq.dequantize(iqkq.quantize(w, name))
        assert abs(d[0, 3] - 1e4) < 1e4 * 0.02
        assert float(np.abs(d[0, 256:] - w[0, 256:]).max()) < 0.5


def test_convert_rejects_bad_row_counts():
    q = iqkq.quantize(rng(1).standard_normal((12, 256)).astype(np.float32), "q4_K")
    with pytest.raises(ValueError):
        _core.convert_large_batch(q.type_info.index, q.data, 12, 256)
