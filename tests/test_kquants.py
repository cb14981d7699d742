"""k-quants (q4_K, q5_K, q6_K, their _r4 twins, q8_1_r8): what is specific to them.

The oracle cases themselves run in test_oracle.py (the base types bit-exact at every N); here:
gguf-py's dequantize equals ours bit for bit, the twins' matmul against ik's at every N (bit-exact;
N = 1 takes ik's one-column float order), twins = repack(base), the large-batch
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
        # bit-exact at every N, N = 1 included (ik's one-column order, GemmArgs::single_col)
        np.testing.assert_array_equal(y.view(np.uint32), yo.view(np.uint32), err_msg=f"N={n}")


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


# ----------------------------------------------------------------------------- ik's N = 1 order
def _fma(a, b, c):
    """float32 fma through float64 (exact product; fine for these magnitudes)."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def _ik_one_column(tw, qbase, x, K):
    """A model of ik's nrc_y == 1 instance of mul_mat_q{4,5,6}_k_r4_q8_k, from the base rows."""
    f32 = np.float32
    acts = {a["name"]: a["index"] for a in _core.act_table()}
    A = _core.quantize_activations(acts["q8_K" if tw == "q6_k_r4" else "q8_K32"], x.astype(f32), 1, K)
    base = iqkq.type_info(iqkq.type_info(tw).base)
    deq_rows = []
    for r in range(qbase.shape[0]):
        acc = [f32(0), f32(0)]
        for i in range(K // 256):
            a = A[296 * i:296 * (i + 1)]
            dA, aq = a[0:4].view(f32)[0], a[8:264].view(np.int8).astype(np.int64)
            blk = qbase[r, base.type_size * i:base.type_size * (i + 1)]
            one = iqkq.QuantizedTensor(blk.copy(), base.name, (1, 256))
            L = _unpacked_levels(one)
            if tw == "q6_k_r4":
                sc, d = blk[192:208].view(np.int8).astype(np.int64), blk[208:210].view(np.float16)[0].astype(f32)
                bs = a[264:296].view(np.int16).astype(np.int64)
                d4 = f32(d * dA)
                mn = f32(d4 * f32(-32))
                for h in range(2):
                    acc[h] = _fma(mn, f32(int((sc[8 * h:8 * h + 8] * bs[8 * h:8 * h + 8]).sum())), acc[h])
                for ib in range(8):
                    for h in range(2):
                        e = slice(32 * ib + 16 * h, 32 * ib + 16 * h + 16)
                        acc[h] = _fma(f32(d4 * f32(sc[2 * ib + h])), f32(int((L[e] * aq[e]).sum())), acc[h])
            else:
                d, dm = blk[0:2].view(np.float16)[0].astype(f32), blk[2:4].view(np.float16)[0].astype(f32)
                ls, lm = _scales_mins(blk[4:16])
                bs = a[264:296].view(f32)
                for h in range(2):
                    s = f32(f32(lm[4 * h]) * bs[4 * h])
                    for j in range(1, 4):
                        s = _fma(f32(lm[4 * h + j]), bs[4 * h + j], s)
                    acc[h] = _fma(f32(f32(-1) * dm), s, acc[h])
                    isum = sum(int(ls[ib]) * int((L[32 * ib + 16 * h:32 * ib + 16 * h + 16] *
                                                  aq[32 * ib + 16 * h:32 * ib + 16 * h + 16]).sum()) for ib in range(8))
                    acc[h] = _fma(f32(d * dA), f32(isum), acc[h])
        deq_rows.append(f32(acc[0] + acc[1]))
    return np.array(deq_rows, f32)


def _scales_mins(s):
    ls, lm = [], []
    for j in range(8):
        if j < 4:
            ls.append(s[j] & 63), lm.append(s[j + 4] & 63)
        else:
            ls.append((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4)), lm.append((s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    return np.array(ls, np.int64), np.array(lm, np.int64)


def _unpacked_levels(one):
    """The unsigned levels of a one-super-block tensor (docs/formats.md §16, layouts)."""
    name = one.qtype
    blk = one.data
    L = np.zeros(256, np.int64)
    if name == "q6_K":
        ql, qh = blk[:128].astype(np.int64), blk[128:192].astype(np.int64)
        for h in range(2):
            for l in range(32):
                a, b, q = ql[64 * h + l], ql[64 * h + 32 + l], qh[32 * h + l]
                L[128 * h + l] = (a & 15) | ((q & 3) << 4)
                L[128 * h + 32 + l] = (b & 15) | (((q >> 2) & 3) << 4)
                L[128 * h + 64 + l] = (a >> 4) | (((q >> 4) & 3) << 4)
                L[128 * h + 96 + l] = (b >> 4) | (((q >> 6) & 3) << 4)
        return L
    five = name == "q5_K"
    qs = blk[48:176] if five else blk[16:144]
    qh = blk[16:48]
    for b in range(4):
        for l in range(32):
            L[64 * b + l] = qs[32 * b + l] & 15
            L[64 * b + 32 + l] = qs[32 * b + l] >> 4
            if five:
                L[64 * b + l] |= ((qh[l] >> (2 * b)) & 1) << 4
                L[64 * b + 32 + l] |= ((qh[l] >> (2 * b + 1)) & 1) << 4
    return L


@pytest.mark.parametrize("path", [p for p in twin_cases() if "__normal__8x256" in p.id])
def test_twin_n1_is_iks_one_column_order(path, isa):
    """The N = 1 oracle outputs are reproduced bit for bit by a model of ik's nrc_y == 1
    instance, and by iqkq."""
    z = load(path)
    tw = str(z["type_name"])
    rows, K = z["w"].shape
    q = iqkq.QuantizedTensor(z["q"], tw, (rows, K))
    qb = iqkq.repack(q, iqkq.type_info(tw).base).data.reshape(rows, -1)
    model = _ik_one_column(tw, qb, z["x_N1"], K)
    np.testing.assert_array_equal(model.view(np.uint32), z["y_N1"][0].view(np.uint32))
    np.testing.assert_array_equal(iqkq.matmul(q, z["x_N1"][0]).view(np.uint32), model.view(np.uint32))


@pytest.mark.parametrize("tw", list(TWINS.values()))
def test_twin_one_column_rule(tw, isa):
    """ik's one-column instance is used for N = 1 and, with fewer than 32 rows (batches tiled
    by 32 columns), for a last tile of one column (N % 32 == 1): the last of 33 columns is the
    model's one-column result there, and the multi-column one with 40 rows."""
    K = 512
    x = rng(31).standard_normal((34, K)).astype(np.float32)
    for rows, lone in ((16, True), (40, False)):
        w = rng(32).standard_normal((rows, K)).astype(np.float32)
        q = iqkq.quantize(w, tw)
        qb = iqkq.repack(q, iqkq.type_info(tw).base).data.reshape(rows, -1)
        one = _ik_one_column(tw, qb, x[32:33], K)
        multi = iqkq.matmul(q, x[32:34])[0]
        assert not np.array_equal(one.view(np.uint32), multi.view(np.uint32))  # the orders differ
        np.testing.assert_array_equal(iqkq.matmul(q, x[32]).view(np.uint32), one.view(np.uint32))
        y33 = iqkq.matmul(q, x[:33])
        np.testing.assert_array_equal(y33[:32].view(np.uint32), iqkq.matmul(q, x[:32]).view(np.uint32))
        np.testing.assert_array_equal(y33[32].view(np.uint32), (one if lone else multi).view(np.uint32))
        for threads in (1, 3):
            np.testing.assert_array_equal(iqkq.matmul(q, x[:33], threads=threads).view(np.uint32), y33.view(np.uint32))


def test_zero_imatrix_super_block():
    """q4_K / q5_K with an imatrix that is zero over a whole 256-column super-block: ik_llama.cpp
    aborts (0/0 scale); iqkq raises. q6_K and the twins handle it (zero weights / QHelper)."""
    w = rng(12).standard_normal((4, 512)).astype(np.float32)
    im = np.ones(512, np.float32)
    im[256:] = 0
    for name in ("q4_K", "q5_K"):
        with pytest.raises(ValueError, match=r"columns \[256, 512\)"):
            iqkq.quantize(w, name, imatrix=im)
    for name in ("q6_K", "q4_k_r4", "q5_k_r4", "q6_k_r4"):
        assert np.isfinite(iqkq.dequantize(iqkq.quantize(w, name, imatrix=im))).all()
    im[256:300] = 1  # a partly zero super-block is fine
    assert np.isfinite(iqkq.dequantize(iqkq.quantize(w, "q4_K", imatrix=im))).all()
