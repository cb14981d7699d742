"""iq3_xxs (ggml id 18) and iq3_xxs_r4 (id 218) beyond the oracle vectors.

* scalar reference vs AVX2: identical quantization bytes (the AVX2 quantizer uses a different,
  vectorised search), identical dequantization bits, identical matmul bits (also AVX-512, for
  every column count 1..70 on crafted bytes);
* thread-count independence;
* format properties of everything the quantizer writes (hypothesis): decoded values are
  +-db * g with g in the grid magnitudes, even sign parity per group of 8, error bounds;
* the defined behaviour of 32-blocks with all-zero importance weights (see below);
* iq3_xxs <-> iq3_xxs_r4 repacking and the QHelper preprocessing of iq3_xxs_r4;
* the large-batch conversion to q8_k_r8 (docs/formats.md §11.4), checked against the oracle with a
  numpy model of the q8_k_r8 kernel (C);
* bad input.

Zero-weight blocks: ik_llama.cpp keeps the chosen levels / on-grid flags of the scale search in
variables that live across the blocks of a row; a 32-block whose importance weights are all
zero never accepts a candidate and reuses the previous block's state. For the first block of a
row that state is uninitialised memory in C. iqkq defines it as "all levels 0, all groups on
the grid" at the start of every row, so such a block is encoded with grid index 0 in all 8
groups, its signs, and the scale max|x|/15 (test_zero_weight_first_block).
"""
import functools
import importlib.util
import struct
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import iqkq
from iqkq import _core
from conftest import ISAS, SHARED, load, oracle_files, rng

# hypothesis imports this (and through it libcst, which warns on import) only when a test
# fails; with warnings as errors that would turn a failure report into an INTERNALERROR.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except Exception:  # pragma: no cover - optional dependency
        pass

TYPES = ["iq3_xxs", "iq3_xxs_r4"]
GRID_MAGS = np.array([4, 12, 20, 28, 36, 44, 52, 62], np.float32)
HAVE_AVX2 = "avx2" in ISAS
FAST = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def with_isa(name, fn, *args, **kw):
    prev = iqkq.isa()
    iqkq.set_isa(name)
    try:
        return fn(*args, **kw)
    finally:
        iqkq.set_isa(prev)


def both_isas(fn, *args, **kw):
    """fn evaluated with every supported kernel set (scalar first)."""
    return [with_isa(i, fn, *args, **kw) for i in ISAS]


def tinfo(name):
    return iqkq.type_info(name)


# ----------------------------------------------------------------------------- inputs
def adversarial_inputs():
    """(name, w, imatrix) covering the quantizer's special paths."""
    g = rng(11)
    K = 512
    out = []
    normal = g.standard_normal((8, K)).astype(np.float32)
    im = np.exp(g.standard_normal(K)).astype(np.float32)
    out.append(("normal", normal, None))
    out.append(("normal_imat", normal, im))
    # integer-valued, tie-prone
    ints = g.integers(-7, 8, (8, K)).astype(np.float32)
    out.append(("integers", ints, None))
    out.append(("integers_imat", ints, np.round(im * 4).astype(np.float32)))
    out.append(("half_integers", (ints + 0.5).astype(np.float32), None))
    # constant magnitudes, alternating signs (odd counts of negatives -> parity flips)
    alt = np.ones((4, K), np.float32)
    alt[:, ::3] *= -1
    out.append(("alternating", alt, None))
    # all-zero rows, all-zero 32-blocks and super-blocks inside normal rows
    z = normal.copy()
    z[0] = 0
    z[1, 32:64] = 0
    z[2, 256:512] = 0
    z[3, :256] = 0
    out.append(("zeros", z, None))
    out.append(("zeros_imat", z, im))
    # blocks below the 1e-8 threshold next to normal ones; tiny and huge scales
    t = normal.copy()
    t[:, 64:96] *= 1e-10
    t[4] *= 1e-9
    out.append(("tiny_blocks", t, None))
    out.append(("tiny1e-20", (normal * 1e-20).astype(np.float32), None))
    out.append(("huge1e15", (normal * 1e15).astype(np.float32), im))
    out.append(("huge1e30", (normal * 1e30).astype(np.float32), None))  # w = x^2 overflows: defined, not meaningful
    out.append(("outliers", np.where(g.random((8, K)) < 0.01, 50.0, 1.0).astype(np.float32) * normal, None))
    # imatrix with zero / denormal / huge blocks (QHelper for _r4, stale levels for the plain type)
    imz = im.copy()
    imz[0:32] = 0
    imz[96:128] = 0
    imz[300:332] = 1e-30
    out.append(("imat_zero_blocks", normal, imz))
    out.append(("imat_all_zero", normal, np.zeros(K, np.float32)))
    imh = im.copy()
    imh[128:160] = 1e30
    out.append(("imat_huge_block", normal, imh))
    # negative zeros
    nz = normal.copy()
    nz[:, 10:40] = -0.0
    out.append(("negative_zeros", nz, None))
    return out


ADV = adversarial_inputs()


# ----------------------------------------------------------------------------- scalar vs AVX2
@pytest.mark.filterwarnings("ignore:.*fp16 block scales:RuntimeWarning")  # huge weights on purpose
@pytest.mark.skipif(not HAVE_AVX2, reason="CPU without AVX2: only the scalar kernels exist")
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("case", ADV, ids=[c[0] for c in ADV])
def test_quantize_scalar_avx2_identical(case, qtype):
    _, w, im = case
    qs, *others = both_isas(iqkq.quantize, w, qtype, imatrix=im, threads=1)
    for qa in others:
        np.testing.assert_array_equal(qs.data, qa.data)


@pytest.mark.skipif(not HAVE_AVX2, reason="CPU without AVX2: only the scalar kernels exist")
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    dist=st.sampled_from(["normal", "uniform", "t2", "ints", "sparse"]),
    scale=st.sampled_from([1e-6, 1.0, 1e3]),
    imat=st.sampled_from(["none", "random", "zero_blocks", "integers"]),
)
def test_quantize_scalar_avx2_random(seed, dist, scale, imat):
    g = np.random.default_rng(seed)
    rows, K = 4, 512
    if dist == "normal":
        w = g.standard_normal((rows, K))
    elif dist == "uniform":
        w = g.uniform(-1, 1, (rows, K))
    elif dist == "t2":
        w = g.standard_t(2, (rows, K))
    elif dist == "ints":
        w = g.integers(-4, 5, (rows, K))
    else:
        w = g.standard_normal((rows, K)) * (g.random((rows, K)) < 0.2)
    w = (w * scale).astype(np.float32)
    im = None
    if imat == "random":
        im = np.exp(g.standard_normal(K)).astype(np.float32)
    elif imat == "zero_blocks":
        im = np.exp(g.standard_normal(K)).astype(np.float32)
        for b in g.choice(K // 32, 3, replace=False):
            im[32 * b : 32 * b + 32] = 0
    elif imat == "integers":
        im = g.integers(0, 3, K).astype(np.float32)
    for qtype in TYPES:
        qs, *others = both_isas(iqkq.quantize, w, qtype, imatrix=im, threads=1)
        for qa in others:
            np.testing.assert_array_equal(qs.data, qa.data)


@pytest.mark.skipif(not HAVE_AVX2, reason="CPU without AVX2: only the scalar kernels exist")
def test_quantize_scalar_avx2_bulk_ties():
    """~500 super-blocks of tie-prone data (small integers, their halves / thirds, a few
    distinct magnitudes, constant blocks), with and without (integer, zero-block) imatrix."""
    g = rng(17)
    K = 1024
    rows = []
    for scale in (1.0, 0.5, 1.0 / 3.0, 0.1, 7.0):
        rows.append(g.integers(-8, 9, (8, K)) * scale)
    rows.append(g.choice([-3.0, -1.0, 1.0, 3.0], (8, K)))
    rows.append(np.repeat(g.choice([-2.0, 1.0, 5.0], (8, K // 32)), 32, axis=1))
    rows.append(g.integers(-1, 2, (8, K)) * g.integers(1, 4, (8, 1)))
    w = np.concatenate(rows).astype(np.float32)
    im_int = g.integers(0, 4, K).astype(np.float32)
    im_zero = np.exp(g.standard_normal(K)).astype(np.float32)
    im_zero[g.integers(0, 2, K // 32).astype(bool).repeat(32)] = 0
    for im in (None, im_int, im_zero):
        for qtype in TYPES:
            qs, *others = both_isas(iqkq.quantize, w, qtype, imatrix=im, threads=2)
            for qa in others:
                np.testing.assert_array_equal(qs.data, qa.data)


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_random_bytes_scalar_avx2(qtype):
    """Any byte pattern is a valid block (fp16 d may be inf/NaN): both kernel sets decode
    it to the same bits."""
    t = tinfo(qtype)
    g = rng(5)
    rows, K = 8, 1024
    data = g.integers(0, 256, rows * t.row_bytes(K), dtype=np.uint8)
    q = iqkq.QuantizedTensor(data, qtype, (rows, K))
    outs = both_isas(iqkq.dequantize, q, threads=1)
    for o in outs[1:]:
        np.testing.assert_array_equal(o.view(np.uint32), outs[0].view(np.uint32))


def dequant_model(data, rows, K):
    """numpy model of the iq3_xxs dequantization structure: returns db per 32-block (f32,
    docs/formats.md §8.2) and the sign masks, from the bytes."""
    nbl = K // 256
    blk = data.reshape(rows, nbl, 98)
    d = blk[:, :, 0:2].copy().view(np.float16).astype(np.float32)[:, :, 0]
    sas = blk[:, :, 66:98].copy().view(np.uint32)  # (rows, nbl, 8)
    sc = (sas >> 28).astype(np.float32)
    db = ((d[:, :, None] * (np.float32(0.5) + sc)).astype(np.float32) * np.float32(0.5)).astype(np.float32)
    return db


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("isa_name", ISAS)
@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    rows4=st.integers(1, 3),
    nbl=st.integers(1, 3),
    dist=st.sampled_from(["normal", "t2", "ints", "sparse", "mixed_scale"]),
    use_imat=st.booleans(),
)
def test_format_properties(qtype, isa_name, seed, rows4, nbl, dist, use_imat):
    """Everything the quantizer writes decodes to +-db*g (g a grid magnitude) with an even
    number of negative signs per group of 8; round trip within bounds; _r4 bytes are a
    permutation of iq3_xxs bytes."""
    g = np.random.default_rng(seed)
    rows, K = 4 * rows4, 256 * nbl
    if dist == "normal":
        w = g.standard_normal((rows, K))
    elif dist == "t2":
        w = g.standard_t(2, (rows, K))
    elif dist == "ints":
        w = g.integers(-5, 6, (rows, K))
    elif dist == "sparse":
        w = g.standard_normal((rows, K)) * (g.random((rows, K)) < 0.1)
    else:
        w = g.standard_normal((rows, K)) * 10.0 ** g.integers(-6, 6, (rows, 1))
    w = w.astype(np.float32)
    im = np.exp(g.standard_normal(K)).astype(np.float32) if use_imat else None
    q = with_isa(isa_name, iqkq.quantize, w, qtype, imatrix=im, threads=1)
    base = q if qtype == "iq3_xxs" else with_isa(isa_name, iqkq.repack, q, "iq3_xxs")
    deq = with_isa(isa_name, iqkq.dequantize, q)
    np.testing.assert_array_equal(deq.view(np.uint32), with_isa(isa_name, iqkq.dequantize, base).view(np.uint32))

    db = dequant_model(base.data, rows, K)  # (rows, nbl, 8)
    dbe = np.repeat(db.reshape(rows, -1), 32, axis=1)  # per element
    a = np.abs(deq)
    cand = (dbe[:, :, None] * GRID_MAGS[None, None, :]).astype(np.float32)
    assert np.all((a[:, :, None] == cand).any(axis=2)), "a decoded value is not db * grid magnitude"
    neg = np.signbit(deq).reshape(rows, K // 8, 8).sum(axis=2)
    assert np.all(neg % 2 == 0), "odd number of negative signs in a group of 8"
    # every stored grid index is a valid index (all 256 are) and d is finite and >= 0
    d = base.data.reshape(rows, nbl, 98)[:, :, 0:2].copy().view(np.float16)
    assert np.all(np.isfinite(d)) and np.all(d >= 0)
    # error bounds per super-block (the grid is coarse; bounds have margin)
    wb, qb = w.reshape(-1, 256), deq.reshape(-1, 256)
    mx = np.abs(wb).max(axis=1)
    assert np.all(np.abs(qb).max(axis=1) <= 2.0 * mx + 1e-30)
    live = mx > 1e-6 * max(float(np.abs(w).max()), 1e-30)
    if dist in ("normal", "ints") and live.all():
        rel = np.sqrt(((wb - qb) ** 2).sum()) / np.sqrt((wb**2).sum())
        assert rel < 0.35, rel


def test_roundtrip_error_gaussian():
    g = rng(3)
    w = g.standard_normal((64, 1024)).astype(np.float32)
    for qtype in TYPES:
        for im in (None, np.exp(g.standard_normal(1024)).astype(np.float32)):
            d = iqkq.dequantize(iqkq.quantize(w, qtype, imatrix=im))
            rel = np.sqrt(((w - d) ** 2).mean()) / np.sqrt((w**2).mean())
            assert 0.1 < rel < 0.25, (qtype, rel)


# ----------------------------------------------------------------------------- special blocks
def blocks(q, rows, K):
    return q.data.reshape(rows, K // 256, 98)


def test_all_zero_superblock_and_skipped_blocks(isa):
    g = rng(4)
    w = g.standard_normal((4, 512)).astype(np.float32)
    w[0] = 0  # all-zero row: every super-block is 98 zero bytes, dequantizes to 0
    w[1, :256] = 0
    w[2, 32:64] = 0  # a skipped 32-block inside a live super-block: grid index 0, signs 0, scale code 0
    w[3, 64:96] = 1e-9  # below the 1e-8 threshold: same
    q = iqkq.quantize(w, "iq3_xxs")
    b = blocks(q, 4, 512)
    assert not b[0].any() and not b[1, 0].any() and b[1, 1].any()
    d = iqkq.dequantize(q)
    assert np.all(d[0] == 0) and not np.signbit(d[0]).any() and np.all(d[1, :256] == 0)
    for r, ib in ((2, 1), (3, 2)):
        blk = b[r, 0]
        assert not blk[2 + 8 * ib : 10 + 8 * ib].any()
        assert struct.unpack_from("<I", bytes(blk), 66 + 4 * ib)[0] == 0
        dd = np.float32(np.frombuffer(bytes(blk[:2]), np.float16)[0])
        seg = d[r, 32 * ib : 32 * ib + 32]
        # decodes to +d (= db * 4 with db = d/4), not to zero
        np.testing.assert_array_equal(seg, np.full(32, np.float32(np.float32(dd * np.float32(0.5)) * np.float32(0.5)) * 4))
        assert dd > 0


@functools.lru_cache(maxsize=None)
def ref_model():
    """The specification's scalar Python model (tools/ref_quant.py), if the shared spec is
    present (it is where the oracle vectors are)."""
    path = SHARED.parent / "spec" / "tools" / "ref_quant.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("ref_quant", path)
    mod = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # it reads tables.json with a bare open()
        spec.loader.exec_module(mod)
    return mod


def test_zero_weight_first_block(isa):
    """The first 32-block of a row has all-zero importance weights: defined as levels 0 /
    all groups on the grid (see the module docstring). The block gets grid index 0 in all 8
    groups, its sign bits, and block scale max|x|/15; the rest of the row is unaffected by
    what came before (rows are independent, positions in the tensor do not matter)."""
    g = rng(7)
    K = 512
    w = g.standard_normal((6, K)).astype(np.float32)
    w[3] = w[1]
    im = np.exp(g.standard_normal(K)).astype(np.float32)
    im[:32] = 0
    q = iqkq.quantize(w, "iq3_xxs", imatrix=im)
    b = blocks(q, 6, K)
    np.testing.assert_array_equal(b[1], b[3])  # same row, other position
    single = blocks(iqkq.quantize(w[3:4], "iq3_xxs", imatrix=im), 1, K)
    np.testing.assert_array_equal(single[0], b[3])
    for r in range(6):
        blk = b[r, 0]
        assert not blk[2:10].any(), "grid indices of the zero-weight first block must be 0"
        x = w[r, :32]
        # signs: 7 stored bits per group of 8; with all weights 0 the parity flip hits element 0
        aux = struct.unpack_from("<I", bytes(blk), 66)[0]
        for m in range(4):
            neg = [i for i in range(8) if x[8 * m + i] < 0]
            s = sum(1 << i for i in neg)
            if len(neg) % 2:
                s ^= 1
            assert (aux >> (7 * m)) & 127 == s & 127
    # the reference model of the spec treats the initial state the same way
    if isa == "scalar":
        assert_matches_reference(w[:2], im)


def assert_matches_reference(w, im):
    """Every kernel set's bytes equal the specification's Python model row by row (when the
    spec tools are present; otherwise the kernel sets agree with each other)."""
    outs = both_isas(iqkq.quantize, w, "iq3_xxs", imatrix=im, threads=1)
    for q in outs[1:]:
        assert q == outs[0]
    ref = ref_model()
    if ref is None:
        return
    rows, K = w.shape
    for r in range(rows):
        assert ref.quantize_iq3_xxs_row(w[r], im) == bytes(blocks(outs[0], rows, K)[r].reshape(-1)), f"row {r}"


def test_zero_weight_later_block_matches_reference_model():
    """A zero-weight 32-block that is not the first of its row reuses the previous block's
    levels (verified against ik_llama.cpp by the spec's model); compare with that model."""
    g = rng(8)
    K = 768
    w = g.standard_normal((3, K)).astype(np.float32)
    w[2] = g.integers(-3, 4, K)
    im = np.exp(g.standard_normal(K)).astype(np.float32)
    im[64:96] = 0  # block 2 of super-block 0
    im[256:288] = 0  # block 0 of super-block 1: inherits from the previous super-block
    im[600:640] = 0
    assert_matches_reference(w, im)


@pytest.mark.parametrize("case", [c for c in ADV if c[0] in ("integers", "normal_imat", "imat_zero_blocks")], ids=lambda c: c[0])
def test_reference_model_rows(case):
    """A few rows against the specification's independent Python model."""
    _, w, im = case
    assert_matches_reference(w[:2], im)


# ----------------------------------------------------------------------------- r4 / repack
def test_repack_roundtrip_and_equivalence(isa):
    g = rng(9)
    w = g.standard_normal((16, 512)).astype(np.float32)
    im = np.exp(g.standard_normal(512)).astype(np.float32)
    for imat in (None, im):
        q = iqkq.quantize(w, "iq3_xxs", imatrix=imat)
        r4 = iqkq.repack(q, "iq3_xxs_r4")
        assert r4.qtype == "iq3_xxs_r4" and r4.nbytes == q.nbytes
        assert iqkq.repack(r4, "iq3_xxs") == q
        # healthy or no imatrix: quantizing to _r4 is the same as repacking
        assert iqkq.quantize(w, "iq3_xxs_r4", imatrix=imat) == r4
        np.testing.assert_array_equal(iqkq.dequantize(r4), iqkq.dequantize(q))
    # random bytes: the repack is a bijection on every byte pattern
    t = tinfo("iq3_xxs")
    data = g.integers(0, 256, 8 * t.row_bytes(512), dtype=np.uint8)
    q = iqkq.QuantizedTensor(data, "iq3_xxs", (8, 512))
    back = iqkq.repack(iqkq.repack(q, "iq3_xxs_r4"), "iq3_xxs")
    np.testing.assert_array_equal(back.data, data)


def test_r4_layout_worked_example():
    """docs/formats.md §9.1: sas word with s = (1, 0, 3, 127), sc = 10 -> bytes FE 01 02 AB."""
    K = 256
    blk = bytearray(98)
    blk[0:2] = np.float16(1.0).tobytes()
    aux = 1 | (0 << 7) | (3 << 14) | (127 << 21) | (10 << 28)
    struct.pack_into("<I", blk, 66, aux)
    for i in range(64):
        blk[2 + i] = i
    data = np.frombuffer(bytes(blk) * 4, np.uint8)
    r4 = iqkq.repack(iqkq.QuantizedTensor(data, "iq3_xxs", (4, K)), "iq3_xxs_r4").data
    assert bytes(r4[8 + 0 : 8 + 4]) == bytes([0xFE, 0x01, 0x02, 0xAB])  # block 0, row 0
    assert bytes(r4[136 + 8 : 136 + 16]) == bytes(range(8))  # qs[32b + 8r + k], b=0, r=1


def test_r4_qhelper_degenerate_imatrix():
    """iq3_xxs_r4 passes the imatrix through QHelper: a 32-block whose imatrix is all zero
    gets weights 1e-9 (for every row, since sum(W^2) = 0), so quantize(_r4, im) equals
    repack(quantize(iq3_xxs, im')) with those blocks set to 1e-9 -- and differs from
    repacking quantize(iq3_xxs, im) (stale levels)."""
    g = rng(10)
    w = g.standard_normal((8, 512)).astype(np.float32)
    im = np.exp(g.standard_normal(512)).astype(np.float32)
    im[0:32] = 0
    im[200:232] = 0  # straddles two blocks: block 6 and 7 are not all zero, block 6 has 24 zeros
    im2 = im.copy()
    im2[0:32] = np.float32(1e-9)
    r4 = iqkq.quantize(w, "iq3_xxs_r4", imatrix=im)
    assert r4 == iqkq.repack(iqkq.quantize(w, "iq3_xxs", imatrix=im2), "iq3_xxs_r4")
    assert r4 != iqkq.repack(iqkq.quantize(w, "iq3_xxs", imatrix=im), "iq3_xxs_r4")
    if HAVE_AVX2:
        qs, *others = both_isas(iqkq.quantize, w, "iq3_xxs_r4", imatrix=im)
        assert all(qs == qa for qa in others)


# ----------------------------------------------------------------------------- matmul
@pytest.mark.parametrize("qtype,rows", [("iq3_xxs", 13), ("iq3_xxs", 24), ("iq3_xxs_r4", 12), ("iq3_xxs_r4", 32)])
def test_matmul_scalar_avx2_and_reference(qtype, rows):
    g = rng(12)
    K = 768
    w = g.standard_normal((rows, K)).astype(np.float32)
    q = iqkq.quantize(w, qtype)
    deq = iqkq.dequantize(q).astype(np.float64)
    for n in (1, 2, 3, 4, 5, 7, 8, 17, 33, 70):
        x = g.standard_normal((n, K)).astype(np.float32)
        x[0, :256] *= 100  # a super-block with a different activation scale
        ys = both_isas(iqkq.matmul, q, x, threads=1, path="direct")
        for y in ys[1:]:
            np.testing.assert_array_equal(y.view(np.uint32), ys[0].view(np.uint32), err_msg=f"N={n}")
        ref = x.astype(np.float64) @ deq.T
        # error of the q8_K activation quantization: <= 0.5 * max|x_sb|/127 per element
        xs = np.abs(x.reshape(n, -1, 256)).max(axis=2) / 127 * 0.5
        bound = (xs[:, None, :] * np.abs(deq).reshape(rows, -1, 256).sum(axis=2)[None, :, :]).sum(axis=2)
        assert np.all(np.abs(ys[0] - ref) <= bound * 1.01 + 1e-4 * np.abs(ref).max())


def crafted_iq3_xxs(rows, K, seed):
    """Raw iq3_xxs rows that reach every decoder path: every grid index in every position,
    every 7-bit sign index in every group, every scale code, all-zero super-blocks and plain
    random bytes; d is a finite fp16 (random sign and exponent)."""
    g = rng(seed)
    nbl = K // 256
    blk = g.integers(0, 256, (rows, nbl, 98), dtype=np.uint8)
    nsb = rows * nbl
    d = (g.standard_normal(nsb) * np.exp2(g.integers(-6, 6, nsb))).astype(np.float16)
    blk.reshape(nsb, 98)[:, 0:2] = d.view(np.uint8).reshape(nsb, 2)
    flat = blk.reshape(nsb, 98)
    # grid indices: 0..255 cycling through all positions, shifted per super-block
    for s in range(nsb):
        flat[s, 2:66] = (np.arange(64) * 4 + s) % 256 if s % 3 == 0 else flat[s, 2:66]
    # sign indices 0..127 over the 4 groups and scale codes 0..15
    sas = flat[:, 66:98].copy().view(np.uint32).reshape(nsb, 8)
    k = np.arange(nsb * 8, dtype=np.uint32).reshape(nsb, 8)
    crafted = np.zeros_like(sas)
    for m in range(4):
        crafted |= ((k * 4 + m * 37) % 128) << np.uint32(7 * m)
    crafted |= (k % 16) << np.uint32(28)
    sas[1::2] = crafted[1::2]
    flat[:, 66:98] = sas.view(np.uint8).reshape(nsb, 32)
    flat[nsb // 2] = 0  # an all-zero super-block (d = 0)
    flat[nsb // 3, 2:66] = 255  # largest index everywhere
    flat[nsb // 3, 66:98] = 0xFF  # all signs set (parity completes), scale 15
    return blk.reshape(-1)


@pytest.mark.parametrize("qtype", TYPES)
def test_matmul_all_isas_every_n_crafted(qtype):
    """Every kernel set gives the same bits for N = 1..70 (the SIMD kernels switch code paths
    by column count) on crafted weight bytes and activations with extreme q8_K values."""
    rows, K = 8, 512
    data = crafted_iq3_xxs(rows, K, 21)
    q = iqkq.QuantizedTensor(data, "iq3_xxs", (rows, K))
    if qtype == "iq3_xxs_r4":
        q = iqkq.repack(q, "iq3_xxs_r4")
    g = rng(22)
    x = g.standard_normal((70, K)).astype(np.float32)
    x[1] = 1.0  # every quant 127
    x[2] = -1.0  # every quant -127
    x[3, ::2], x[3, 1::2] = 5.0, -5.0
    x[4] = 0.0
    x[5, :256] *= 1e4  # super-blocks with very different scales
    x[6] = np.where(g.random(K) < 0.5, 1.0, -1.0) * 1e-30
    x[7, 100] = 1.0  # one-hot
    x[8:] *= np.exp(g.standard_normal((62, 1)) * 3).astype(np.float32)
    for n in range(1, 71):
        ys = both_isas(iqkq.matmul, q, x[:n], threads=1, path="direct")
        for isa_name, y in zip(ISAS[1:], ys[1:]):
            np.testing.assert_array_equal(y.view(np.uint32), ys[0].view(np.uint32), err_msg=f"{isa_name} N={n}")


@pytest.mark.parametrize("qtype", TYPES)
def test_matmul_nonfinite_activations(qtype):
    """NaN / inf activations do not crash any kernel set; finite columns keep their bits."""
    rows, K = 8, 512
    q = iqkq.QuantizedTensor(crafted_iq3_xxs(rows, K, 23), "iq3_xxs", (rows, K))
    if qtype == "iq3_xxs_r4":
        q = iqkq.repack(q, "iq3_xxs_r4")
    g = rng(24)
    for n in (1, 2, 3, 5, 9, 33):
        x = g.standard_normal((n, K)).astype(np.float32)
        x[0, 3] = np.nan
        if n > 1:
            x[1, 300] = np.inf
        if n > 2:
            x[2, 7] = -np.inf
        ys = both_isas(iqkq.matmul, q, x, threads=1, path="direct")
        for y in ys:
            assert y.shape == (n, rows)
            if n > 3:
                np.testing.assert_array_equal(y[3:].view(np.uint32), ys[0][3:].view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES)
def test_matmul_special_values(qtype, isa):
    g = rng(13)
    K = 512
    w = g.standard_normal((8, K)).astype(np.float32)
    w[1] = 0
    q = iqkq.quantize(w, qtype)
    x = np.zeros((3, K), np.float32)
    x[1] = 1e30  # q8_K saturates nothing: every quant is 127
    x[2, 7] = -3.0  # one-hot
    y = iqkq.matmul(q, x)
    assert np.all(y[0] == 0)
    d = iqkq.dequantize(q)
    np.testing.assert_allclose(y[2], -3.0 * d[:, 7], rtol=1e-6)
    assert np.all(y[:, 1] == 0)
    np.testing.assert_allclose(y[1], 1e30 * d.astype(np.float64).sum(axis=1), rtol=1e-5)


@pytest.mark.parametrize("qtype", TYPES)
def test_thread_determinism(qtype):
    g = rng(14)
    w = g.standard_normal((64, 1024)).astype(np.float32)
    im = np.exp(g.standard_normal(1024)).astype(np.float32)
    qs = [iqkq.quantize(w, qtype, imatrix=im, threads=t) for t in (1, 2, 3)]
    assert qs[0] == qs[1] == qs[2]
    ds = [iqkq.dequantize(qs[0], threads=t) for t in (1, 2, 3)]
    for d in ds[1:]:
        np.testing.assert_array_equal(d, ds[0])
    for n in (1, 3, 6, 17, 40):
        x = g.standard_normal((n, 1024)).astype(np.float32)
        ys = [iqkq.matmul(qs[0], x, threads=t) for t in (1, 2, 3)]
        for y in ys[1:]:
            np.testing.assert_array_equal(y.view(np.uint32), ys[0].view(np.uint32))


# ----------------------------------------------------------------------------- q8_k_r8 conversion
def decode_q8_k_r8(data, rows, K):
    """numpy decoder of q8_k_r8 (docs/formats.md §5): fp16 d[8] + qs[32m + 4r + j] = q_r[4m + j]."""
    nbl = K // 256
    blk = data.reshape(rows // 8, nbl, 2064)
    d = blk[:, :, :16].copy().view(np.float16).astype(np.float32)  # (groups, nbl, 8)
    qs = blk[:, :, 16:].view(np.int8).reshape(rows // 8, nbl, 64, 8, 4)  # m, r, j
    q = qs.transpose(0, 3, 1, 2, 4).reshape(rows // 8, 8, nbl, 256)
    dd = d.transpose(0, 2, 1)  # (groups, 8, nbl)
    vals = (dd[..., None] * q.astype(np.float32)).astype(np.float32)
    return vals.reshape(rows, K), dd.reshape(rows, nbl), q.reshape(rows, nbl, 256)


def convert(q, rows, K):
    return _core.convert_large_batch(tinfo("iq3_xxs").index, q.data, rows, K)


def test_convert_to_q8_k_r8_values():
    g = rng(15)
    rows, K = 24, 768
    w = g.standard_normal((rows, K)).astype(np.float32)
    w[3] *= 1e-3
    w[5, :256] = 0
    w[9] = g.integers(-2, 3, K)
    q = iqkq.quantize(w, "iq3_xxs")
    outs = both_isas(convert, q, rows, K)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    assert outs[0].size == rows * 258 * K // 256
    vals, d, qq = decode_q8_k_r8(outs[0], rows, K)
    deq = iqkq.dequantize(q)
    # F = 0.25 * d_iq3 per super-block; the requantized value differs by at most half a step
    # of the new scale (F * dnew) plus the fp16 rounding of that scale
    F = 0.25 * blocks(q, rows, K)[:, :, 0:2].copy().view(np.float16).astype(np.float64)[:, :, 0]
    step = np.maximum(d.astype(np.float64), 1e-45)  # fp16(F * dnew)
    err = np.abs(vals.astype(np.float64) - deq.astype(np.float64)).reshape(rows, -1, 256).max(axis=2)
    assert np.all(err <= 0.5 * step * (1 + 2**-10) + 127 * (step * 2**-11 + 2**-25))
    # int8 range used fully where rescaled (dnew > 1), values exact where not
    assert np.abs(qq).max() <= 127


def fma_f32(a, b, c):
    """Exactly rounded float32 fma of float32 arrays (a*b is exact in float64; the sum is
    corrected with its TwoSum error where the float64 result sits on a float32 tie)."""
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


def q8k_r8_kernel(conv, rows, K, act, n):
    """numpy model of kernel (C), q8_k_r8 x q8_K (docs/formats.md §11.3): per row, per
    super-block, acc = fma(f32(fp16(d_r) * dA), f32(P), acc)."""
    nbl = K // 256
    _, d, qq = decode_q8_k_r8(conv, rows, K)
    a = act.reshape(n, nbl, 296)
    dA = a[:, :, 0:4].copy().view(np.float32)[:, :, 0]  # (n, nbl)
    aq = a[:, :, 8:264].view(np.int8).astype(np.int64)  # (n, nbl, 256)
    acc = np.zeros((n, rows), np.float32)
    for i in range(nbl):
        P = aq[:, i, :] @ qq[:, i, :].astype(np.int64).T  # (n, rows), exact
        c = (dA[:, i : i + 1] * d[None, :, i]).astype(np.float32)
        acc = fma_f32(c, P.astype(np.float32), acc)
    return acc


def large_batch_oracle_cases():
    out = []
    for p in oracle_files():
        if p.name.startswith("iq3_xxs__"):
            with np.load(p) as z:
                if int(z["rows"]) >= 32 and any(int(n) >= 32 for n in z["n_values"]):
                    out.append(pytest.param(p, id=p.stem))
    return out


@pytest.mark.parametrize("path", large_batch_oracle_cases())
def test_convert_matches_ik_large_batch(path):
    """For the oracle cases where ik_llama.cpp used the large-batch path (N >= 32, rows >= 32),
    our conversion + a numpy model of the q8_k_r8 kernel reproduce its y bit for bit. (The
    driver uses this path once q8_k_r8's own kernels exist.)"""
    z = load(path)
    rows, K = int(z["rows"]), int(z["K"])
    ns = [int(n) for n in z["n_values"] if n >= 32]
    q = iqkq.QuantizedTensor(z["q"], "iq3_xxs", (rows, K))
    for conv in both_isas(convert, q, rows, K):
        for n in ns:
            x = z[f"x_N{n}"]
            act = _core.quantize_activations(1, np.ascontiguousarray(x), n, K)  # q8_K
            y = q8k_r8_kernel(conv, rows, K, act, n)
            np.testing.assert_array_equal(y.view(np.uint32), z[f"y_N{n}"].view(np.uint32), err_msg=f"N={n}")


def test_fma_model_sanity():
    # 1 + 2^-24 (tie between 1 and 1+2^-23) resolved by a tiny term only a true fma sees
    a = np.float32(1 + 2**-12)
    got = fma_f32(a, a, np.float32(-1.0))
    assert got == np.float32(2**-11 + 2**-24)
    assert fma_f32(np.float32(3), np.float32(5), np.float32(7)) == 22


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("qtype", TYPES)
def test_bad_input(qtype):
    g = rng(16)
    with pytest.raises(ValueError):
        iqkq.quantize(np.ones((4, 200), np.float32), qtype)  # K not a multiple of 256
    with pytest.raises(ValueError):
        iqkq.quantize(np.ones((4, 32), np.float32), qtype)
    w = g.standard_normal((4, 256)).astype(np.float32)
    with pytest.raises(ValueError):
        iqkq.quantize(w, qtype, imatrix=np.ones(255, np.float32))
    with pytest.raises(ValueError):
        iqkq.quantize(w, qtype, imatrix=-np.ones(256, np.float32))
    with pytest.raises(ValueError):
        iqkq.quantize(w, qtype, imatrix=np.full(256, np.nan, np.float32))
    bad = w.copy()
    bad[2, 5] = np.inf
    with pytest.raises(ValueError):
        iqkq.quantize(bad, qtype)
    q = iqkq.quantize(w, qtype)
    with pytest.raises(ValueError):
        iqkq.matmul(q, np.ones((2, 512), np.float32))
    with pytest.raises(ValueError):
        iqkq.QuantizedTensor(q.data[:-1], qtype, (4, 256))
    if qtype == "iq3_xxs_r4":
        with pytest.raises(ValueError):
            iqkq.quantize(np.ones((6, 256), np.float32), qtype)  # rows not a multiple of 4
        with pytest.raises(ValueError):
            iqkq.repack(iqkq.quantize(np.ones((6, 256), np.float32), "iq3_xxs"), qtype)
    with pytest.raises(ValueError):
        _core.convert_large_batch(tinfo("iq3_xxs").index, iqkq.quantize(np.ones((4, 256)), "iq3_xxs").data, 4, 256)


def test_conversion_never_saturates():
    """The AVX-512 conversion applies the sign after rounding the magnitude, which equals
    rounding the signed product only if no positive value saturates. Every possible maximum
    M = mult * g (mult odd 1..31, g a grid byte) keeps round(inv * M) well inside int8, in the
    float32 arithmetic of §11.4 (dnew = M * f32(1/124); inv = 1 / dnew, or 1 when dnew < 1)."""
    d0 = np.float32(1.0) / np.float32(124.0)
    assert d0.view(np.uint32) == 0x3C042108
    worst = 0
    for mult in range(1, 32, 2):
        for g in (4, 12, 20, 28, 36, 44, 52, 62):
            M = np.float32(mult * g)
            dnew = M * d0
            top = M if dnew < 1 else np.float32(np.float32(1.0) / dnew) * M
            worst = max(worst, int(np.rint(top)))
    assert worst <= 124

