"""The legacy 32-blocks (q4_0, q5_0, q6_0, iq4_nl and the twins q4_0_r8, q5_0_r4, q6_0_r4,
iq4_nl_r4) beyond the oracle: gguf-py agreement, interleave layouts written out from the format
description, the one-column rule of q4_0_r8, QHelper in the twins, and edge cases."""
import numpy as np
import pytest

import iqkq
from conftest import ISAS, rng, with_isa

gguf = pytest.importorskip("gguf")
from gguf.quants import quantize as gg_quantize, dequantize as gg_dequantize  # noqa: E402
from gguf import GGMLQuantizationType as GQ  # noqa: E402

BASES = ["q4_0", "q5_0", "q6_0", "iq4_nl"]
TWINS = {"q4_0": "q4_0_r8", "q5_0": "q5_0_r4", "q6_0": "q6_0_r4", "iq4_nl": "iq4_nl_r4"}
ALL = BASES + list(TWINS.values())
IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)


def weights(rows, K, seed, kind="llm"):
    r = rng(seed)
    if kind == "normal":
        return r.standard_normal((rows, K)).astype(np.float32)
    w = r.standard_t(3, (rows, K)).astype(np.float32) * np.exp(r.normal(0, 0.7, (rows, 1))).astype(np.float32)
    w[:, r.choice(K, max(1, K // 64), replace=False)] *= 30
    w[1] = np.round(w[1] * 2) / 2  # ties for the rounding
    return w


def bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


# ----------------------------------------------------------------------------- gguf-py
@pytest.mark.parametrize("qtype", ["q4_0", "q5_0"])
@pytest.mark.parametrize("kind", ["normal", "llm"])
def test_quantize_matches_gguf_py(qtype, kind, isa):
    """gguf-py's quantizers are ggml's _ref routines (no imatrix): same bytes."""
    w = weights(24, 320, 3, kind)
    ref = gg_quantize(w, GQ[qtype.upper()]).reshape(-1)
    got = iqkq.quantize(w, qtype).data
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("qtype", ["q4_0", "q5_0", "iq4_nl"])
def test_dequantize_matches_gguf_py(qtype, isa):
    t = iqkq.type_info(qtype)
    rows, K = 16, 256
    for q in (iqkq.quantize(weights(rows, K, 4), qtype),
              iqkq.QuantizedTensor(rng(5).integers(0, 256, rows * t.row_bytes(K), dtype=np.uint8), qtype, (rows, K))):
        with np.errstate(all="ignore"):  # raw bytes: inf / NaN scales
            ref = gg_dequantize(q.data.reshape(rows, -1), GQ[qtype.upper()]).reshape(rows, K)
        got = iqkq.dequantize(q)
        fin = np.isfinite(ref)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_array_equal(bits(got[fin]), bits(ref[fin]))


# ----------------------------------------------------------------------------- layouts
def codes(qtype, data, rows, K):
    """Per-element codes of base-type bytes (numpy model of the block layouts)."""
    nb = K // 32
    B = {"q4_0": 18, "iq4_nl": 18, "q5_0": 22, "q6_0": 26}[qtype]
    blk = data.reshape(rows, nb, B)
    qs = blk[..., B - 16:]
    c = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.int32)
    if qtype == "q5_0":
        qh = blk[..., 2:6].copy().view(np.uint32)[..., 0]
        c |= ((qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32) << 4
    if qtype == "q6_0":
        qh = blk[..., 2:10].astype(np.int32)
        j = np.arange(32)
        sh = np.select([j < 8, j < 16, j < 24], [0, 4, 2], 6)
        c |= ((qh[..., j % 8] >> sh) & 3) << 4
    return c, blk[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)


@pytest.mark.parametrize("qtype", BASES)
def test_base_dequantize_model(qtype):
    rows, K = 8, 96
    q = iqkq.quantize(weights(rows, K, 6), qtype)
    c, d = codes(qtype, q.data, rows, K)
    vals = IQ4NL[c].astype(np.float32) if qtype == "iq4_nl" else (c - {"q4_0": 8, "q5_0": 16, "q6_0": 32}[qtype]).astype(np.float32)
    ref = (vals * d[..., None]).reshape(rows, K)
    np.testing.assert_array_equal(bits(iqkq.dequantize(q)), bits(ref))


def test_q4_0_r8_layout():
    """qs[32 l + 4 k + i] of a q4_0_r8 block = byte 4 l + i of row k's q4_0 block; d[k] first."""
    rows, K = 16, 64
    q = iqkq.quantize(weights(rows, K, 7), "q4_0")
    r = iqkq.repack(q, "q4_0_r8").data.reshape(rows // 8, K // 32, 144)
    b = q.data.reshape(rows // 8, 8, K // 32, 18)
    for k in range(8):
        np.testing.assert_array_equal(r[:, :, 2 * k:2 * k + 2], b[:, k, :, :2])
        for l in range(4):
            np.testing.assert_array_equal(r[:, :, 16 + 32 * l + 4 * k:16 + 32 * l + 4 * k + 4], b[:, k, :, 2 + 4 * l:6 + 4 * l])


@pytest.mark.parametrize("qtype", ["q5_0", "q6_0", "iq4_nl"])
def test_r4_layout(qtype):
    """The 4-row interleave: row k's element e sits in nibble (e // 8) % 2 of
    qs[4 k + e % 4 + 16 l] with l = 2 ((e % 8) // 4) + e // 16; the high bits in qh as documented."""
    rows, K = 8, 64
    q = iqkq.quantize(weights(rows, K, 8), qtype)
    c, d = codes(qtype, q.data, rows, K)
    twin = TWINS[qtype]
    B = 4 * {"q5_0": 22, "q6_0": 26, "iq4_nl": 18}[qtype]
    r = iqkq.repack(q, twin).data.reshape(rows // 4, K // 32, B).astype(np.int32)
    qs_off = {"q5_0": 24, "q6_0": 40, "iq4_nl": 8}[qtype]
    for g in range(rows // 4):
        for k in range(4):
            np.testing.assert_array_equal(r[g, :, 2 * k:2 * k + 2].astype(np.uint8).copy().view(np.float16)[:, 0],
                                          d[4 * g + k].astype(np.float16))
            for e in range(32):
                i, l, hi = e % 4, 2 * ((e % 8) // 4) + e // 16, (e // 8) % 2
                byte = r[g, :, qs_off + 4 * k + i + 16 * l]
                code = (byte >> (4 * hi)) & 15
                if qtype == "q5_0":
                    code |= ((r[g, :, 8 + 4 * k + i] >> (l + 4 * hi)) & 1) << 4
                if qtype == "q6_0":
                    code |= ((r[g, :, 8 + 4 * k + i + 16 * (l % 2)] >> (2 * (l // 2) + 4 * hi)) & 3) << 4
                np.testing.assert_array_equal(code, c[4 * g + k, :, e])


@pytest.mark.parametrize("qtype", BASES)
def test_repack_round_trip_and_twin_quantize(qtype):
    twin = TWINS[qtype]
    t = iqkq.type_info(twin)
    rows, K = 2 * t.interleave, 160
    w = weights(rows, K, 9)
    q = iqkq.quantize(w, qtype)
    r = iqkq.repack(q, twin)
    assert iqkq.repack(r, qtype) == q
    assert iqkq.quantize(w, twin) == r  # without imatrix the twin is the interleaved base
    dq, dr = iqkq.dequantize(q), iqkq.dequantize(r)
    np.testing.assert_array_equal(dq, dr)  # values; q5_0_r4 / q6_0_r4 give +0 for -0 (next test)


@pytest.mark.parametrize("qtype", ["q5_0", "q6_0"])
def test_r4_dequantize_gives_positive_zero(qtype):
    """ik_llama.cpp dequantizes q5_0_r4 / q6_0_r4 as d * code - min * d: a zero is +0 even for
    a negative d, where the base type's (code - min) * d is -0."""
    w = np.zeros((4, 32), np.float32)
    w[:, 0] = 1.0  # max > 0 -> d = max / -nmax < 0, zeros get code nmax
    q = iqkq.quantize(w, qtype)
    base, twin = iqkq.dequantize(q), iqkq.dequantize(iqkq.repack(q, TWINS[qtype]))
    assert np.signbit(base[:, 1:]).all() and not np.signbit(twin[:, 1:]).any()
    np.testing.assert_array_equal(base, twin)


@pytest.mark.parametrize("qtype", ["q4_0", "q6_0", "iq4_nl"])
def test_twin_quantize_runs_qhelper(qtype):
    """q4_0_r8, q6_0_r4, iq4_nl_r4 replace the imatrix of a degenerate 32-block by 1e-9 (QHelper);
    q5_0_r4 passes the imatrix on untouched, like the plain types."""
    twin = TWINS[qtype]
    t = iqkq.type_info(twin)
    rows, K = t.interleave, 128
    w = weights(rows, K, 10)
    im = np.exp(rng(11).normal(0, 1, K)).astype(np.float32)
    im[32:64] = 0  # a zero-importance block
    plain = iqkq.repack(iqkq.quantize(w, qtype, imatrix=im), twin)
    im2 = im.copy()
    im2[32:64] = 1e-9
    helped = iqkq.repack(iqkq.quantize(w, qtype, imatrix=im2), twin)
    got = iqkq.quantize(w, twin, imatrix=im)
    assert got == helped
    assert got != plain  # the zero block really quantizes differently
    q5 = iqkq.quantize(w[:4], "q5_0_r4", imatrix=im)
    assert q5 == iqkq.repack(iqkq.quantize(w[:4], "q5_0", imatrix=im), "q5_0_r4")


# ----------------------------------------------------------------------------- one-column rule
def test_q4_0_r8_one_column_rule(isa):
    """ik_llama.cpp's one-column q4_0_r8 kernel has its own float order. It is used for N = 1,
    and (fewer than 32 rows: batches tiled by 32 columns) for a last tile of one column."""
    K = 320  # 10 blocks: a 4-block group tail too
    x = rng(12).standard_normal((70, K)).astype(np.float32)
    for rows, lone in ((16, True), (40, False)):
        q = iqkq.quantize(weights(rows, K, 13), "q4_0_r8")
        one = [iqkq.matmul(q, x[n]) for n in range(70)]
        two = [iqkq.matmul(q, x[[n, n]])[0] for n in range(70)]
        y33 = iqkq.matmul(q, x[:33])
        assert any(not np.array_equal(bits(a), bits(b)) for a, b in zip(one, two))  # the orders differ
        for n in range(32):
            np.testing.assert_array_equal(bits(y33[n]), bits(two[n]))
        np.testing.assert_array_equal(bits(y33[32]), bits(one[32] if lone else two[32]))
        y40 = iqkq.matmul(q, x[:40])
        for n in range(40):
            np.testing.assert_array_equal(bits(y40[n]), bits(two[n]))


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.filterwarnings("ignore:.*fp16 block scales:RuntimeWarning")  # the 1e30 row on purpose
@pytest.mark.parametrize("qtype", ALL)
def test_edge_values(qtype):
    """All-zero rows, tiny (denormal), huge and constant rows: same bytes on every kernel set,
    zeros dequantize to zeros, and no error is raised."""
    t = iqkq.type_info(qtype)
    K = 96
    base = [np.zeros(K), np.full(K, 1e-40), rng(14).standard_normal(K) * 1e-30, np.full(K, -3.0),
            rng(15).standard_normal(K) * 1e30, np.where(np.arange(K) % 2 == 0, -0.0, 0.0),
            np.tile([1.0, -1.0], K // 2), rng(16).standard_normal(K)]
    rows = len(base) * t.interleave // np.gcd(len(base), t.interleave)
    w = np.array([base[i % len(base)] for i in range(rows)], np.float32)
    for im in (None, np.exp(rng(17).normal(0, 1, K)).astype(np.float32)):
        with np.errstate(all="ignore"):
            outs = {i: with_isa(i, lambda: iqkq.quantize(w, qtype, imatrix=im)) for i in ISAS}
        for i in ISAS:
            assert outs[i] == outs["scalar"], f"{i} quantizes differently"
        d = iqkq.dequantize(outs["scalar"])
        np.testing.assert_array_equal(d[0], 0)
        np.testing.assert_array_equal(d[5], 0)
        assert np.isfinite(d[[0, 1, 2, 3, 5, 6, 7]]).all()


@pytest.mark.parametrize("qtype", ALL)
def test_nan_weights_raise(qtype):
    t = iqkq.type_info(qtype)
    w = rng(18).standard_normal((2 * t.interleave, 64)).astype(np.float32)
    w[t.interleave, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        iqkq.quantize(w, qtype)


@pytest.mark.parametrize("qtype", BASES)
def test_large_batch_is_q8_0_r8_of_the_values(qtype):
    """The large-batch path multiplies q8_0_r8 weights holding the signed values (exact)."""
    t = iqkq.type_info(qtype)
    assert t.large_batch == "q8_0_r8" and t.large_batch_min_n == 32
    rows, K = 32, 128
    q = iqkq.quantize(weights(rows, K, 19), qtype)
    deq8 = iqkq.dequantize(iqkq.repack(q, "q8_0_r8"))
    np.testing.assert_array_equal(deq8, iqkq.dequantize(q))
