"""iq4_ks / iq4_ks_r4 beyond the oracle files: scalar vs AVX2 bit-exactness on random and
adversarial data, the format's structure, repacking, matmul, the large-batch conversion to
q8_k_r8, and argument errors.
"""
import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import iqkq
from iqkq import _core
from conftest import ISAS, LOCAL, SHARED, load

TYPES = ["iq4_ks", "iq4_ks_r4"]
HAVE_AVX2 = "avx2" in ISAS

# iq4k_values (docs/formats.md §6.1): base table, shifted table = base + 4
BASE = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int32)
TABLES = np.stack([BASE, BASE + 4])


@contextlib.contextmanager
def use_isa(name):
    prev = iqkq.isa()
    iqkq.set_isa(name)
    try:
        yield
    finally:
        iqkq.set_isa(prev)


def assert_same_bytes(a, b, what=""):
    bad = np.flatnonzero(a != b)
    assert bad.size == 0, f"{what}: {bad.size} bytes differ, first at {bad[:8]}"


def assert_same_on_all_isas(fn, what=""):
    """fn() (an array) is bit-identical on every kernel set this CPU supports."""
    out = {}
    for name in ISAS:
        with use_isa(name):
            out[name] = np.ascontiguousarray(fn())
    ref = out["scalar"].view(np.uint8)
    for name, v in out.items():
        assert_same_bytes(v.view(np.uint8), ref, f"{what} [{name} vs scalar]")


# ----------------------------------------------------------------------------- data
def make_weights(kind, rows, K, seed):
    r = np.random.default_rng(seed)
    if kind == "normal":
        w = r.standard_normal((rows, K))
    elif kind == "student_t":
        w = r.standard_t(2, (rows, K))
    elif kind == "integers":  # many exact ties in best_index and the scale search
        w = r.integers(-8, 9, (rows, K)).astype(np.float64)
    elif kind == "halves":  # values on the table's midpoints after scaling
        w = r.integers(-254, 255, (rows, K)) / 2.0
    elif kind == "tiny":
        w = r.standard_normal((rows, K)) * 1e-17  # around the 1e-16 block threshold
    elif kind == "huge":
        w = r.standard_normal((rows, K)) * 1e19  # x*x overflows in the weights
    elif kind == "sparse":
        w = r.standard_normal((rows, K)) * (r.random((rows, K)) < 0.05)
    elif kind == "mixed":
        w = r.standard_normal((rows, K)) * 10.0 ** r.integers(-20, 5, (rows, K // 32, 1)).repeat(32, axis=2).reshape(rows, K)
        w[:, 32:64] = 0  # a zero block
    elif kind == "constant":
        w = np.full((rows, K), 0.75) * np.where(r.random((rows, 1)) < 0.5, -1, 1)
    else:
        raise ValueError(kind)
    w = w.astype(np.float32)
    if rows > 1:
        w[rows // 2] = 0  # an all-zero row
    return w


def make_imatrix(kind, K, seed):
    r = np.random.default_rng(seed + 1000)
    if kind is None:
        return None
    im = np.exp(r.standard_normal(K)).astype(np.float32)
    if kind == "zero_blocks":  # degenerate 32-blocks: QHelper replaces them by 1e-9
        im[:32] = 0
        im[96:128] = 1e-30
    elif kind == "sparse":
        im[r.random(K) < 0.5] = 0
    elif kind == "wide":
        im = (10.0 ** r.uniform(-12, 12, K)).astype(np.float32)
    return im


KINDS = ["normal", "student_t", "integers", "halves", "tiny", "huge", "sparse", "mixed", "constant"]
IMATS = [None, "random", "zero_blocks", "sparse", "wide"]


# ----------------------------------------------------------------------------- quantize
@pytest.mark.skipif(not HAVE_AVX2, reason="this CPU has no AVX2")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("imat", IMATS)
def test_quantize_scalar_equals_avx2(kind, imat):
    K = 512
    w = make_weights(kind, 8, K, seed=hash((kind, imat)) % 1000)
    im = make_imatrix(imat, K, seed=7)
    for t in TYPES:
        assert_same_on_all_isas(lambda: iqkq.quantize(w, t, imatrix=im, threads=1).data, f"{t} {kind} {imat}")


@pytest.mark.skipif(not HAVE_AVX2, reason="this CPU has no AVX2")
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    w=hnp.arrays(np.float32, (4, 256), elements=st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)),
    use_im=st.booleans(),
    im_seed=st.integers(0, 100),
)
@pytest.mark.filterwarnings("ignore:.*fp16 block scales:RuntimeWarning")  # huge weights on purpose
def test_quantize_scalar_equals_avx2_hypothesis(w, use_im, im_seed):
    """Arbitrary finite floats (subnormals, huge values, repeats chosen by hypothesis)."""
    im = make_imatrix("random", 256, im_seed) if use_im else None
    for t in TYPES:
        assert_same_on_all_isas(lambda: iqkq.quantize(w, t, imatrix=im, threads=1).data, t)


@pytest.mark.skipif(not HAVE_AVX2, reason="this CPU has no AVX2")
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), scale=st.sampled_from([1.0, 1e-3, 1e3, 127.0, 1 / 127.0]),
       ints=st.booleans(), use_im=st.booleans())
def test_quantize_scalar_equals_avx2_random(seed, scale, ints, use_im):
    r = np.random.default_rng(seed)
    w = r.integers(-127, 128, (4, 512)) if ints else r.standard_normal((4, 512))
    w = (w * scale).astype(np.float32)
    im = make_imatrix("random", 512, seed) if use_im else None
    assert_same_on_all_isas(lambda: iqkq.quantize(w, "iq4_ks", imatrix=im, threads=1).data)


def test_quantize_thread_count_and_chunking(isa):
    w = make_weights("normal", 48, 512, 3)
    im = make_imatrix("zero_blocks", 512, 3)
    for t in TYPES:
        ref = iqkq.quantize(w, t, imatrix=im, threads=1).data
        for th in (2, 3):
            assert_same_bytes(iqkq.quantize(w, t, imatrix=im, threads=th).data, ref, f"{t} threads={th}")
        # quantizing a group of rows alone gives the same bytes (rows are independent)
        rb = iqkq.type_info(t).row_bytes(512)
        assert_same_bytes(iqkq.quantize(w[8:12], t, imatrix=im, threads=1).data, ref[8 * rb:12 * rb], t)


def test_all_zero_and_tiny_rows(isa):
    w = np.zeros((4, 256), np.float32)
    w[1, :] = 1e-17  # every block below the 1e-16 threshold: skipped
    w[2, 5] = -0.0
    for t in TYPES:
        q = iqkq.quantize(w, t)
        assert not q.data.any(), t
        assert not iqkq.dequantize(q).any()


def test_best_index_beyond_int32(isa):
    """ik_llama.cpp's best_index starts with a C (int) cast; on x86 (CVTTSS2SI) a value of
    2^31 or more gives INT32_MIN and thus index 0, not 15. Reachable in pass 2 when a block's
    largest element has zero importance and every block scale of the row is tiny: here
    idl * x is about 1e12. We reproduce the x86 behaviour, which ik's x86 build (our oracle)
    shows (docs/formats.md §6.3 and §14 item 3)."""
    K = 256
    w = np.full((1, K), 1e-10, np.float32)
    w[0, ::32] = 1.0
    im = np.ones(K, np.float32)
    im[::32] = 0
    for t in TYPES:
        q = iqkq.quantize(w[[0, 0, 0, 0]], t, imatrix=im)
        if t == "iq4_ks_r4":
            q = iqkq.repack(q, "iq4_ks")
        row = q.data[: q.row_bytes]
        assert all(row[4 + 8 + 16 * b] & 15 == 0 for b in range(8)), t  # element 0 of each block: index 0
        deq = iqkq.dequantize(q)[0]
        assert np.all(deq[::32] < 0) and np.all(deq[1::32] > 0)


def test_r4_is_repack_of_plain(isa):
    """docs/formats.md §7.3, §9.3: iq4_ks_r4 applies QHelper like iq4_ks, so the bytes are
    always a permutation of the iq4_ks bytes, even with a degenerate imatrix."""
    w = make_weights("student_t", 16, 768, 5)
    for imat in IMATS:
        im = make_imatrix(imat, 768, 5)
        q = iqkq.quantize(w, "iq4_ks", imatrix=im)
        q4 = iqkq.quantize(w, "iq4_ks_r4", imatrix=im)
        assert iqkq.repack(q, "iq4_ks_r4") == q4
        assert iqkq.repack(q4, "iq4_ks") == q
        np.testing.assert_array_equal(iqkq.dequantize(q4).view(np.uint32), iqkq.dequantize(q).view(np.uint32))


def test_repack_round_trip_random_bytes(isa):
    """The repack is a pure byte permutation, whatever the bytes."""
    rows, K = 8, 512
    rb = iqkq.type_info("iq4_ks").row_bytes(K)
    data = np.random.default_rng(11).integers(0, 256, rows * rb, dtype=np.uint8)
    q = iqkq.QuantizedTensor(data, "iq4_ks", (rows, K))
    q4 = iqkq.repack(q, "iq4_ks_r4")
    assert not np.array_equal(q4.data, data)
    assert np.array_equal(iqkq.repack(q4, "iq4_ks").data, data)
    # the same permutation on both ISAs
    assert_same_on_all_isas(lambda: iqkq.repack(q, "iq4_ks_r4").data)
    assert_same_on_all_isas(lambda: iqkq.repack(q4, "iq4_ks").data)
    # r4 layout spot checks (docs/formats.md §7.1): scales[4b + r], D_r in the group header
    src = data.reshape(rows, rb)
    g = q4.data[: 4 * rb]
    assert np.array_equal(g[:16].view(np.float32), src[:4, :4].copy().view(np.float32).ravel())
    for r in range(4):
        for b in range(8):
            assert g[16 + 4 * b + r] == src[r, 4 + b]
    # byte 64b + 4r + i of the nibbles = (elem i | elem i+8 << 4) of row r, block b (i < 4)
    qs_r, qs4 = src[:4, 12:140], g[16 + 32:16 + 544]
    for r in range(4):
        for b in range(8):
            for i in range(4):
                lo, hi = qs_r[r, 16 * b + i] & 15, qs_r[r, 16 * b + i + 8] & 15
                assert qs4[64 * b + 4 * r + i] == lo | (hi << 4)


# ----------------------------------------------------------------------------- dequantize
def decode_numpy(data, rows, K):
    """docs/formats.md §6.2 in numpy: y = f32(f32(D * ls) * T_s[n])."""
    rb = 4 + 136 * (K // 256)
    r = data.reshape(rows, rb)
    D = r[:, :4].copy().view(np.float32)[:, 0]
    sb = r[:, 4:].reshape(rows, K // 256, 136)
    sc = sb[:, :, :8].astype(np.int32)  # (rows, ns, 8)
    qs = sb[:, :, 8:].reshape(rows, K // 256, 8, 16)
    nib = np.concatenate([qs & 15, qs >> 4], axis=3).astype(np.int32)  # (rows, ns, 8, 32)
    ls = ((sc & 254) - 127).astype(np.float32)
    dl = (D[:, None, None] * ls).astype(np.float32)
    vals = TABLES[(sc & 1)[..., None], nib].astype(np.float32)
    return (dl[..., None] * vals).astype(np.float32).reshape(rows, K), nib, sc


def test_dequantize_structure_and_isas(isa):
    rows, K = 8, 512
    rb = iqkq.type_info("iq4_ks").row_bytes(K)
    r = np.random.default_rng(2)
    data = r.integers(0, 256, (rows, rb), dtype=np.uint8)
    data[:, :4] = r.standard_normal(rows).astype(np.float32).view(np.uint8).reshape(rows, 4)
    data[1, :4] = 0  # D = 0
    data = data.ravel()
    q = iqkq.QuantizedTensor(data, "iq4_ks", (rows, K))
    expect, _, _ = decode_numpy(data, rows, K)
    got = iqkq.dequantize(q)
    np.testing.assert_array_equal(got.view(np.uint32), expect.view(np.uint32))
    got4 = iqkq.dequantize(iqkq.repack(q, "iq4_ks_r4"))
    np.testing.assert_array_equal(got4.view(np.uint32), expect.view(np.uint32))


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(["normal", "student_t", "integers", "halves", "sparse", "mixed", "constant"]),
       seed=st.integers(0, 10**6), scale=st.sampled_from([1.0, 3e-5, 7e4]))
def test_quantized_values_structure_and_least_squares(kind, seed, scale):
    """Every decoded value is D * (2c - 127) * T[idx]; without imatrix D is the optimum of
    sum x^2 (x - D L)^2 for the chosen integers L (docs/formats.md §6.3 pass 2)."""
    rows, K = 8, 512
    w = make_weights(kind, rows, K, seed) * np.float32(scale)
    q = iqkq.quantize(w, "iq4_ks")
    assert_same_on_all_isas(lambda: iqkq.quantize(w, "iq4_ks").data)
    assert_same_on_all_isas(lambda: iqkq.dequantize(q))
    deq = iqkq.dequantize(q)
    expect, nib, sc = decode_numpy(q.data, rows, K)
    np.testing.assert_array_equal(deq.view(np.uint32), expect.view(np.uint32))
    D = q.data.reshape(rows, -1)[:, :4].copy().view(np.float32)[:, 0].astype(np.float64)
    L = (((sc & 254) - 127)[..., None] * TABLES[(sc & 1)[..., None], nib]).reshape(rows, K).astype(np.float64)
    x = w.astype(np.float64)
    for r in range(rows):
        if not x[r].any():
            assert D[r] == 0
            continue
        def err(d):
            return float(np.sum(x[r] ** 2 * (x[r] - d * L[r]) ** 2))
        e0 = err(D[r])
        for f in (1 - 1e-4, 1 + 1e-4):
            assert e0 <= err(D[r] * f) * (1 + 1e-9)
        if kind in ("normal", "student_t"):  # ~4.25 bpw: weighted relative error well below 10 %
            assert e0 / float(np.sum(x[r] ** 4)) < 0.01


# ----------------------------------------------------------------------------- matmul
def dot_reference(q, x):
    """float64 x @ deq.T: the kernels must be close to it (activation quantization error)."""
    return x.astype(np.float64) @ iqkq.dequantize(q).astype(np.float64).T


@pytest.mark.skipif(not HAVE_AVX2, reason="this CPU has no AVX2")
@pytest.mark.parametrize("t", TYPES)
def test_matmul_scalar_equals_avx2(t):
    rows, K = 32, 512
    w = make_weights("student_t", rows, K, 21)
    q = iqkq.quantize(w, t)
    r = np.random.default_rng(4)
    for n in (1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 64, 70):
        x = r.standard_normal((n, K)).astype(np.float32)
        x[0, :256] = 0  # an all-zero activation super-block
        assert_same_on_all_isas(lambda: iqkq.matmul(q, x, threads=2, path="direct"), f"{t} N={n}")
        y = iqkq.matmul(q, x, threads=2, path="direct")
        ref = dot_reference(q, x)
        assert np.abs(y - ref).max() <= 0.05 * np.abs(ref).max()


def test_matmul_threads_deterministic(isa):
    rows, K = 64, 768
    w = make_weights("normal", rows, K, 8)
    x = np.random.default_rng(5).standard_normal((12, K)).astype(np.float32)
    for t in TYPES:
        q = iqkq.quantize(w, t)
        ref = iqkq.matmul(q, x, threads=1)
        for th in (2, 3):
            np.testing.assert_array_equal(iqkq.matmul(q, x, threads=th).view(np.uint32), ref.view(np.uint32))
        # a column computed alone equals the same column in a batch
        np.testing.assert_array_equal(iqkq.matmul(q, x[5], threads=1).view(np.uint32), ref[5].view(np.uint32))


def test_matmul_shifted_blocks_exact_ints(isa):
    """Integer activations in a single 256-block scale exactly: y must equal the exact dot
    product up to the two float roundings of the scales (checks the +4 shifted-table path of
    the r4 kernel and the sign handling of negative block scales)."""
    K = 256
    w = make_weights("integers", 8, K, 12)
    x = np.zeros((1, K), np.float32)
    x[0, ::3] = 127
    x[0, 1::3] = -127
    for t in TYPES:
        q = iqkq.quantize(w, t)
        y = iqkq.matmul(q, x)
        ref = dot_reference(q, x)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def crafted_iq4_ks(rows, K, seed):
    """Raw iq4_ks rows that reach every decoder path of the SIMD kernels: every nibble value in
    every position of both halves, every scale byte (codes 0..127 with and without the shifted
    table, so multipliers -127..127), all-zero super-blocks, rows of extreme nibbles and plain
    random bytes; D is finite with random sign and exponent."""
    g = np.random.default_rng(seed)
    ns = K // 256
    rb = 4 + 136 * ns
    data = g.integers(0, 256, (rows, rb), dtype=np.uint8)
    D = (g.standard_normal(rows) * np.exp2(g.integers(-20, 20, rows))).astype(np.float32)
    data[:, :4] = D.view(np.uint8).reshape(rows, 4)
    sb = data[:, 4:].reshape(rows * ns, 136)  # view
    n = rows * ns
    # scale bytes 0..255 cycling through all blocks (shift bit = bit 0, code = bits 1..7)
    sb[:, :8] = (np.arange(n * 8) * 37 % 256).reshape(n, 8).astype(np.uint8)
    # nibbles: (lo, hi) = (k, 15 - k) and (k, k) patterns on every other super-block
    k = np.arange(128) % 16
    sb[0::2, 8:] = (k | ((15 - k) << 4)).astype(np.uint8)
    sb[1::4, 8:] = (((k + 5) % 16) | (((k * 7) % 16) << 4)).astype(np.uint8)
    sb[n // 2] = 0  # all-zero super-block: scale byte 0 (ls = -127, base table), index 0
    sb[n // 3, :8] = 0xff  # ls = +127, shifted table, with the largest index
    sb[n // 3, 8:] = 0xff
    sb[n // 5, :8] = 0x01  # ls = -127, shifted table, smallest index
    sb[n // 5, 8:] = 0x00
    return data.reshape(-1)


def crafted_activations(n, K, seed):
    """Activation rows with extreme q8_K values (+-127 everywhere), sign patterns, zero rows,
    one-hot rows, super-blocks of very different scales and random rows."""
    g = np.random.default_rng(seed)
    x = g.standard_normal((max(n, 9), K)).astype(np.float32)
    x[1] = 1.0  # every quant 127
    x[2] = -1.0  # every quant -127
    x[3, ::2], x[3, 1::2] = 5.0, -5.0
    x[4] = 0.0
    x[5, :256] *= 1e4
    x[6] = np.where(g.random(K) < 0.5, 1.0, -1.0) * 1e-30
    x[7, 100] = 1.0
    x[8:] *= np.exp(g.standard_normal((x.shape[0] - 8, 1)) * 3).astype(np.float32)
    return x[:n]


def crafted_tensor(t, rows, K, seed):
    q = iqkq.QuantizedTensor(crafted_iq4_ks(rows, K, seed), "iq4_ks", (rows, K))
    return iqkq.repack(q, t) if t != "iq4_ks" else q


def _matmul_on(isa_name, q, x, **kw):
    with use_isa(isa_name):
        return iqkq.matmul(q, x, **kw)


# (type, rows): odd row / group counts leave a lone row / group for the pair kernels; 40 rows
# of iq4_ks take the large-batch path for N >= 32 by default.
@pytest.mark.parametrize("t,rows", [("iq4_ks", 13), ("iq4_ks", 40), ("iq4_ks_r4", 12), ("iq4_ks_r4", 32)])
@pytest.mark.parametrize("path", ["direct", "auto"])
def test_matmul_all_isas_every_n_crafted(t, rows, path):
    """Every kernel set gives the scalar bits for N = 1..70 (the SIMD kernels switch code paths
    by column count) on crafted weight bytes and activations with extreme q8_K values."""
    K = 512
    q = crafted_tensor(t, rows, K, 31)
    x = crafted_activations(70, K, 32)
    for n in range(1, 71):
        ref = _matmul_on("scalar", q, x[:n], threads=1, path=path)
        for name in ISAS[1:]:
            y = _matmul_on(name, q, x[:n], threads=1, path=path)
            np.testing.assert_array_equal(y.view(np.uint32), ref.view(np.uint32), err_msg=f"{name} {t} N={n} {path}")


@pytest.mark.parametrize("t", TYPES)
def test_matmul_long_rows_all_isas(t):
    """Very long rows (the AVX-512 kernels then take fewer columns per pass)."""
    rows, K = 8, 65536
    q = crafted_tensor(t, rows, K, 39)
    x = crafted_activations(11, K, 40)
    for n in (1, 3, 11):
        ref = _matmul_on("scalar", q, x[:n], threads=1, path="direct")
        for name in ISAS[1:]:
            y = _matmul_on(name, q, x[:n], threads=1, path="direct")
            np.testing.assert_array_equal(y.view(np.uint32), ref.view(np.uint32), err_msg=f"{name} N={n}")


@pytest.mark.parametrize("t", TYPES)
def test_matmul_crafted_matches_reference(t):
    """The crafted bytes give finite results close to the float64 dot product of the decoded
    weights (every decoder path produces the values of docs/formats.md §6.2)."""
    rows, K = 16, 768
    q = crafted_tensor(t, rows, K, 33)
    x = crafted_activations(9, K, 34)
    deq = iqkq.dequantize(q).astype(np.float64)
    for name in ISAS:
        y = _matmul_on(name, q, x, threads=1, path="direct")
        ref = x.astype(np.float64) @ deq.T
        xs = np.abs(x.reshape(9, -1, 256)).max(axis=2) / 127 * 0.5
        bound = (xs[:, None, :] * np.abs(deq).reshape(rows, -1, 256).sum(axis=2)[None, :, :]).sum(axis=2)
        assert np.all(np.abs(y - ref) <= bound * 1.01 + 1e-5 * np.abs(ref).max()), name


@pytest.mark.parametrize("t", TYPES)
def test_matmul_nonfinite_activations(t):
    """NaN / inf activations do not crash any kernel set; the finite columns keep the bits they
    have when computed without the others."""
    rows, K = 16, 512
    q = crafted_tensor(t, rows, K, 35)
    g = np.random.default_rng(36)
    for n in (1, 2, 3, 5, 9, 33, 70):
        x = g.standard_normal((n, K)).astype(np.float32)
        x[0, 3] = np.nan
        if n > 1:
            x[1, 300] = np.inf
        if n > 2:
            x[2, 7] = -np.inf
        for path in ("direct", "auto"):
            ys = [_matmul_on(name, q, x, threads=1, path=path) for name in ISAS]
            for y in ys:
                assert y.shape == (n, rows)
            if n > 3:
                alone = _matmul_on("scalar", q, x[3:], threads=1, path=path)
                for name, y in zip(ISAS, ys):
                    np.testing.assert_array_equal(y[3:].view(np.uint32), alone.view(np.uint32), err_msg=f"{name} N={n}")


@pytest.mark.parametrize("t", TYPES)
def test_matmul_crafted_threads_deterministic(t, isa):
    """Any thread count (and so any split of rows into tiles and of tiles into row pairs) gives
    the same bits."""
    rows, K = 72, 1024
    q = crafted_tensor(t, rows, K, 37)
    x = crafted_activations(70, K, 38)
    for n in (1, 3, 6, 17, 40, 70):
        for path in ("direct", "auto"):
            ref = iqkq.matmul(q, x[:n], threads=1, path=path)
            for th in (2, 3):
                y = iqkq.matmul(q, x[:n], threads=th, path=path)
                np.testing.assert_array_equal(y.view(np.uint32), ref.view(np.uint32), err_msg=f"N={n} th={th} {path}")


# ----------------------------------------------------------------------------- large batch
def decode_q8_k_r8(cv, rows, K):
    """q8_k_r8 (docs/formats.md §5) in numpy: fp16 d[8] then qs[32m + 4r + j] = q_r[4m + j]."""
    ns = K // 256
    g = cv.reshape(rows // 8, ns, 2064)
    d = g[:, :, :16].copy().view(np.float16).astype(np.float32)  # (G, ns, 8)
    qs = g[:, :, 16:].view(np.int8).reshape(rows // 8, ns, 64, 8, 4)  # (G, ns, m, r, j)
    q = qs.transpose(0, 3, 1, 2, 4).reshape(rows, ns, 256)
    return d.transpose(0, 2, 1).reshape(rows, ns), q


def convert(q):
    rows, K = q.shape
    return _core.convert_large_batch(q.type_info.index, q.data, rows, K)


def test_large_batch_conversion(isa):
    rows, K = 16, 768
    # (kinds whose D * dnew fits fp16: like ik_llama.cpp, the conversion overflows to inf
    # for rows with |w| >~ 500, e.g. "mixed"; the q8_k_r8 path is lossy by design)
    for kind in ("normal", "student_t", "integers", "sparse", "tiny"):
        w = make_weights(kind, rows, K, 17)
        q = iqkq.quantize(w, "iq4_ks")
        cv = convert(q)
        d16, qv = decode_q8_k_r8(cv, rows, K)
        # the integers ls * T[n] of iq4_ks and their scale
        _, nib, sc = decode_numpy(q.data, rows, K)
        v = (((sc & 254) - 127)[..., None] * TABLES[(sc & 1)[..., None], nib]).reshape(rows, K // 256, 256)
        D = q.data.reshape(rows, -1)[:, :4].copy().view(np.float32)[:, 0].astype(np.float64)
        M = np.abs(v).max(axis=2)
        dnew = np.maximum(1.0, M * np.float64(np.float32(1 / 127)))
        small = M * np.float32(1 / 127) < 1
        # blocks that fit int8 are copied exactly
        assert np.array_equal(qv[small], v[small])
        got = d16.astype(np.float64)[..., None] * qv
        want = D[:, None, None] * v
        bound = np.abs(D)[:, None] * dnew * (0.5 + 127 * 2.0**-11) * 1.0001
        assert np.all(np.abs(got - want) <= bound[..., None] + 1e-30), kind


@pytest.mark.skipif(not HAVE_AVX2, reason="this CPU has no AVX2")
def test_large_batch_conversion_scalar_equals_avx2():
    rows, K = 16, 512
    r = np.random.default_rng(31)
    for data in (
        iqkq.quantize(make_weights("student_t", rows, K, 1), "iq4_ks").data,
        r.integers(0, 256, rows * iqkq.type_info("iq4_ks").row_bytes(K), dtype=np.uint8),
    ):
        q = iqkq.QuantizedTensor(data, "iq4_ks", (rows, K))
        assert_same_on_all_isas(lambda: convert(q))


def _fma32(c, p, acc):
    """binary32 fma(c, p, acc) elementwise: exact double product + TwoSum, one final rounding."""
    c, p, acc = c.astype(np.float64), p.astype(np.float64), acc.astype(np.float64)
    prod = c * p  # exact: 24 x 24 bits
    r = prod + acc
    bb = r - prod
    err = (prod - (r - bb)) + (acc - bb)
    f = r.astype(np.float32)
    f64 = f.astype(np.float64)
    lo = np.where(f64 > r, np.nextafter(f, np.float32(-np.inf)), f)
    hi = np.where(f64 > r, f, np.nextafter(f, np.float32(np.inf)))
    tie = (r == (lo.astype(np.float64) + hi.astype(np.float64)) / 2) & (f64 != r)
    return np.where(tie & (err > 0), hi, np.where(tie & (err < 0), lo, f)).astype(np.float32)


def _oracle_large_batch_cases():
    from conftest import oracle_files
    out = []
    for f in oracle_files():
        if f.name.startswith("iq4_ks__"):
            with np.load(f) as z:
                if int(z["rows"]) >= 32 and int(z["rows"]) % 8 == 0 and max(z["n_values"]) >= 32:
                    out.append(pytest.param(f, id=f.stem))
    return out


@pytest.mark.parametrize("path", _oracle_large_batch_cases())
def test_large_batch_conversion_matches_oracle(path, isa):
    """Where ik_llama.cpp used the q8_k_r8 path (N >= 32), our conversion followed by a numpy
    model of kernel (C) (docs/formats.md §11.3) reproduces the oracle y bit for bit. This checks the
    conversion now, before the q8_k_r8 kernel exists."""
    z = load(path)
    rows, K = z["w"].shape
    q = iqkq.QuantizedTensor(z["q"], "iq4_ks", (rows, K))
    d16, qv = decode_q8_k_r8(convert(q), rows, K)
    ns = K // 256
    checked = 0
    for n in z["n_values"]:
        if n < 32:
            continue
        x, yo = z[f"x_N{n}"], z[f"y_N{n}"]
        a = _core.quantize_activations(1, x, int(n), K).reshape(n, ns, 296)  # q8_K
        dA = a[:, :, :4].copy().view(np.float32)[:, :, 0]
        qa = a[:, :, 8:264].view(np.int8).astype(np.int64)
        P = np.einsum("rse,nse->nrs", qv.astype(np.int64), qa)
        acc = np.zeros((n, rows), np.float32)
        for s in range(ns):
            c = (d16[None, :, s] * dA[:, s, None]).astype(np.float32)
            acc = _fma32(c, P[:, :, s].astype(np.float32), acc)
        np.testing.assert_array_equal(acc.view(np.uint32), yo.view(np.uint32), err_msg=f"N={n}")
        checked += 1
    assert checked


def test_local_oracle_covers_large_batch():
    assert any(p.id in {f.stem for f in (LOCAL / "public").glob("iq4_ks__*.npz")} for p in _oracle_large_batch_cases())


# ----------------------------------------------------------------------------- errors
def test_bad_arguments():
    w = np.ones((8, 256), np.float32)
    for t in TYPES:
        with pytest.raises(ValueError, match="multiple of the block size"):
            iqkq.quantize(np.ones((8, 300), np.float32), t)
        with pytest.raises(ValueError, match="multiple of the block size"):
            iqkq.quantize(np.ones((8, 128), np.float32), t)
        with pytest.raises(ValueError, match="imatrix"):
            iqkq.quantize(w, t, imatrix=np.ones(255, np.float32))
        with pytest.raises(ValueError, match="imatrix"):
            iqkq.quantize(w, t, imatrix=-np.ones(256, np.float32))
        im = np.ones(256, np.float32)
        im[7] = np.nan
        with pytest.raises(ValueError, match="imatrix"):
            iqkq.quantize(w, t, imatrix=im)
        bad = w.copy()
        bad[3, 5] = np.inf
        with pytest.raises(ValueError, match="NaN or infinite"):
            iqkq.quantize(bad, t)
        q = iqkq.quantize(w, t)
        with pytest.raises(ValueError):
            iqkq.matmul(q, np.ones((2, 512), np.float32))
    with pytest.raises(ValueError, match="multiple of 4"):
        iqkq.quantize(np.ones((6, 256), np.float32), "iq4_ks_r4")
    with pytest.raises(ValueError, match="multiple of 4"):
        iqkq.repack(iqkq.quantize(np.ones((6, 256), np.float32), "iq4_ks"), "iq4_ks_r4")
    idx = iqkq.type_info("iq4_ks").index
    q = iqkq.quantize(np.ones((12, 256), np.float32), "iq4_ks")
    with pytest.raises(ValueError, match="multiple of 8"):
        _core.convert_large_batch(idx, q.data, 12, 256)
    with pytest.raises(ValueError):
        _core.convert_large_batch(idx, q.data[:100], 8, 256)
    with pytest.raises(ValueError, match="no large-batch"):
        _core.convert_large_batch(iqkq.type_info("iq4_ks_r4").index, q.data, 8, 256)
