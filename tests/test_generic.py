"""The invariants every type must keep, checked for every type in ``iqkq.types()`` on every
kernel set this CPU has -- a new type gets them by being in the table:

* cross-ISA bit-exactness of quantize (with and without imatrix) / dequantize / repack /
  large-batch conversion / matmul / the fused ops, on random, adversarial and raw random bytes;
* results independent of the thread count and of how a batch is split (every N = 1..70, odd
  row and row-group counts, columns computed alone);
* non-finite activations: a row holding NaN or Inf gives NaN outputs, the other rows keep
  their bits; activation blocks too small for their scale act as zeros.

Type-specific properties (oracle cases, reference models, layouts) stay in the per-type files.
"""
import numpy as np
import pytest

import iqkq
from iqkq import _core
from conftest import ISAS, TYPE_NAMES, rng, with_isa

SIMD = [i for i in ISAS if i != "scalar"]
TYPES = [iqkq.type_info(n) for n in TYPE_NAMES]
TWINNED = [t for t in TYPES if t.interleaved]
LARGE = [t for t in TYPES if t.large_batch]
# Twins whose ik_llama.cpp dequantization is d * code + (-min * d): equal in value to the base
# type's (code - min) * d, but never -0 (docs/formats.md, "Legacy 32-blocks").
POSITIVE_ZERO_TWINS = {"q5_0_r4", "q6_0_r4"}
# Types whose ik_llama.cpp one-column kernel has its own float order: a column computed alone
# (N = 1) differs in the last bits from the same column inside a batch (docs/formats.md,
# "Legacy 32-blocks: the one-column rule").
ONE_COLUMN_KERNEL = {"q4_0_r8", "q4_k_r4", "q5_k_r4", "q6_k_r4"}


def ids(ts):
    return [t.name for t in ts]


def shape_for(t, groups=3, blocks=3):
    """An odd number of row groups and of blocks per row (tails of every grouping)."""
    return groups * t.interleave, blocks * t.block_size


def lb_rows(t):
    """The smallest row count >= 32 the large-batch path takes for this type."""
    if not t.large_batch:
        return 40 if 40 % t.interleave == 0 else 32
    g = iqkq.type_info(t.large_batch).interleave if t.large_batch in TYPE_NAMES else 8
    step = np.lcm(g, t.interleave)
    return int(-(-32 // step) * step)


def weights(kind, rows, K, seed):
    r = rng(seed)
    if kind == "normal":
        return r.standard_normal((rows, K), dtype=np.float32)
    if kind == "llm":  # heavy tails, spread of row scales, a few outlier columns
        w = r.standard_t(3, (rows, K)).astype(np.float32) * np.exp(r.normal(0, 0.7, (rows, 1))).astype(np.float32)
        w[:, r.choice(K, max(1, K // 64), replace=False)] *= 30
        return w
    if kind == "adversarial":
        base = [
            np.zeros(K), np.full(K, -3.0), np.where(np.arange(K) % 32 == 0, 1e4, 1e-3),
            r.standard_normal(K) * 1e-30, r.standard_normal(K) * 1e-40, np.where(r.random(K) < 0.5, -0.0, 0.0),
            r.integers(-4, 5, K) * 0.5, r.standard_normal(K) * 1e4, np.tile([1.0, -1.0], K // 2),
            np.linspace(-1, 1, K),
        ]
        return np.array([base[i % len(base)] for i in range(rows)], dtype=np.float32)
    raise ValueError(kind)


def imatrix_for(kind, K, seed):
    if kind is None:
        return None
    r = rng(seed)
    im = np.exp(r.normal(0, 1, K)).astype(np.float32)
    if kind == "holes":  # whole 32-column blocks of zero importance
        im[: K // 2 : 64] = 0
        for b in range(0, K, 96):
            im[b:b + 32] = 0
    return im


def raw_tensor(t, rows, K, seed):
    """Arbitrary bytes of the right size: every scale, index and sign pattern can occur."""
    return iqkq.QuantizedTensor(rng(seed).integers(0, 256, rows * t.row_bytes(K), dtype=np.uint8), t, (rows, K))


def same(a, b, msg=""):
    """Bit-identical (NaN compared as NaN: SIMD and scalar code may pick different NaN payloads)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, msg
    if a.dtype.kind == "f":
        np.testing.assert_array_equal(a, b, err_msg=msg)
        fin = np.isfinite(a)
        np.testing.assert_array_equal(a[fin].view(np.uint32 if a.dtype == np.float32 else np.uint64),
                                      b[fin].view(np.uint32 if b.dtype == np.float32 else np.uint64), err_msg=msg)
    else:
        np.testing.assert_array_equal(a, b, err_msg=msg)


def on_all(fn, *args, **kw):
    """fn evaluated with every kernel set; returns {isa: result}."""
    return {name: with_isa(name, fn, *args, **kw) for name in ISAS}


def assert_isas_agree(results, what):
    ref = results["scalar"]
    for name, got in results.items():
        if isinstance(ref, (list, tuple)):
            for i, (a, b) in enumerate(zip(ref, got)):
                same(b, a, f"{what} [{i}]: {name} differs from scalar")
        else:
            same(got, ref, f"{what}: {name} differs from scalar")


def need_simd():
    if not SIMD:
        pytest.skip("this CPU has no SIMD kernel set: only the scalar kernels exist, nothing to compare")


# ----------------------------------------------------------------------------- quantize / dequantize
@pytest.mark.parametrize("kind", ["normal", "llm", "adversarial"])
@pytest.mark.parametrize("im", [None, "random", "holes"])
@pytest.mark.parametrize("t", TYPES, ids=ids(TYPES))
def test_quantize_dequantize_all_isas(t, kind, im):
    need_simd()
    rows, K = shape_for(t, groups=max(1, 12 // t.interleave) + 1)
    w = weights(kind, rows, K, 11)
    imat = imatrix_for(im, K, 12)

    def run():
        q = iqkq.quantize(w, t.name, imatrix=imat, threads=1)
        q3 = iqkq.quantize(w, t.name, imatrix=imat, threads=3)
        same(q3.data, q.data, "quantize depends on the thread count")
        return [q.data.copy(), iqkq.dequantize(q, threads=1), iqkq.dequantize(q, threads=3)]

    res = on_all(run)
    assert_isas_agree(res, f"{t.name} {kind} imatrix={im}")
    same(res["scalar"][1], res["scalar"][2], "dequantize depends on the thread count")


@pytest.mark.parametrize("t", TYPES, ids=ids(TYPES))
def test_dequantize_raw_bytes_all_isas(t):
    need_simd()
    rows, K = shape_for(t, groups=5)
    q = raw_tensor(t, rows, K, 13)
    assert_isas_agree(on_all(iqkq.dequantize, q), f"{t.name} dequantize of raw bytes")


@pytest.mark.parametrize("t", TYPES, ids=ids(TYPES))
def test_stacked_experts_are_independent_matrices(t):
    rows, K = shape_for(t, groups=2)
    w = weights("normal", 3 * rows, K, 14).reshape(3, rows, K)
    q = iqkq.quantize(w, t.name)
    for e in range(3):
        same(iqkq.quantize(w[e], t.name).data, q.data[e * (q.nbytes // 3):(e + 1) * (q.nbytes // 3)])


# ----------------------------------------------------------------------------- repack / conversion
@pytest.mark.parametrize("t", TWINNED, ids=ids(TWINNED))
def test_repack_both_ways_all_isas(t):
    twin = iqkq.type_info(t.interleaved)
    rows, K = shape_for(twin, groups=3)
    q = iqkq.quantize(weights("llm", rows, K, 15), t.name)
    raw = raw_tensor(t, rows, K, 16)

    def run():
        out = []
        for src in (q, raw):
            r = iqkq.repack(src, twin.name)
            back = iqkq.repack(r, t.name)
            same(back.data, src.data, f"{t.name} -> {twin.name} -> {t.name} is not the identity")
            dr, ds = iqkq.dequantize(r), iqkq.dequantize(src)
            if twin.name in POSITIVE_ZERO_TWINS:
                dr, ds = dr + np.float32(0), ds + np.float32(0)  # -0 -> +0
            same(dr, ds, f"{twin.name} dequantizes differently from {t.name}")
            out.append(r.data.copy())
        return out

    assert_isas_agree(on_all(run), f"repack {t.name} <-> {twin.name}")


@pytest.mark.parametrize("t", LARGE, ids=ids(LARGE))
def test_large_batch_conversion_all_isas(t):
    rows, K = lb_rows(t), 3 * max(t.block_size, 256)
    q = iqkq.quantize(weights("llm", rows, K, 17), t.name)
    raw = raw_tensor(t, rows, K, 18)
    conv = lambda src: _core.convert_large_batch(t.index, src.data, rows, K, 1)  # noqa: E731
    assert_isas_agree(on_all(lambda: [conv(q), conv(raw)]), f"{t.name} -> {t.large_batch}")
    # threads do not matter, and the conversion is what the large-batch path multiplies with
    same(_core.convert_large_batch(t.index, q.data, rows, K, 3), conv(q))
    x = weights("normal", t.large_batch_min_n, K, 19)
    y = iqkq.matmul(q, x)
    np.testing.assert_array_equal(y, iqkq.matmul(q, x, path="repack"))
    if t.large_batch in TYPE_NAMES:
        np.testing.assert_array_equal(y, iqkq.matmul(iqkq.repack(q, t.large_batch), x))


# ----------------------------------------------------------------------------- matmul
def x_rows(n, K, seed):
    r = rng(seed)
    x = r.standard_normal((n, K), dtype=np.float32)
    x[::7] *= 100
    x[3::11] = np.round(x[3::11] * 4) / 4  # ties for the activation rounding
    return x


@pytest.mark.parametrize("t", TYPES, ids=ids(TYPES))
def test_matmul_every_n_all_isas(t):
    """N = 1..70 on an odd number of row groups (no large-batch path) and on a row count the
    large-batch path takes, direct and auto: every kernel set gives the same bits."""
    need_simd()
    K = 3 * t.block_size if t.block_size == 256 else 5 * t.block_size
    x = x_rows(70, K, 20)
    cases = []
    for rows in sorted({shape_for(t, groups=3)[0], lb_rows(t)}):
        cases.append(iqkq.quantize(weights("llm", rows, K, 21 + rows), t.name))

    def run():
        out = []
        for q in cases:
            for n in range(1, 71):
                out.append(iqkq.matmul(q, x[:n], threads=2))
                if t.large_batch and n >= t.large_batch_min_n:
                    out.append(iqkq.matmul(q, x[:n], threads=2, path="direct"))
        return out

    assert_isas_agree(on_all(run), f"{t.name} matmul")


@pytest.mark.parametrize("t", TYPES, ids=ids(TYPES))
def test_matmul_raw_bytes_all_isas(t):
    need_simd()
    rows, K = lb_rows(t), 2 * max(256, t.block_size)
    q = raw_tensor(t, rows, K, 22)
    x = x_rows(40, K, 23)
    assert_isas_agree(on_all(lambda: [iqkq.matmul(q, x[:n], path=p) for n in (1, 3, 9, 40)
                                      for p in (("auto", "direct") if t.large_batch else ("auto",))]),
                      f"{t.name} matmul of raw bytes")


@pytest.mark.parametrize("t", TYPES, ids=ids(TYPES))
def test_matmul_columns_are_independent(t, isa):
    """The direct kernels compute every output from its row and column only: a batch equals
    its columns computed one by one (any tile / column-chunk / thread split)."""
    rows, K = shape_for(t, groups=5)
    q = iqkq.quantize(weights("normal", rows, K, 24), t.name)
    x = x_rows(67, K, 25)
    y = iqkq.matmul(q, x, path="direct", threads=3)
    for n in (0, 1, 5, 31, 32, 63, 66):
        if t.name in ONE_COLUMN_KERNEL:  # alone = ik's one-column kernel: compare in a batch of two
            same(y[n], iqkq.matmul(q, x[[n, n]], path="direct", threads=1)[0], f"{t.name} column {n}")
        else:
            same(y[n], iqkq.matmul(q, x[n], path="direct", threads=1), f"{t.name} column {n}")


@pytest.mark.parametrize("t", TYPES, ids=ids(TYPES))
def test_matmul_thread_determinism(t, isa):
    rows, K = lb_rows(t) * 3, 2 * max(256, t.block_size)
    q = iqkq.quantize(weights("llm", rows, K, 26), t.name)
    x = x_rows(100, K, 27)
    for n in (1, 7, 40, 100):
        ref = iqkq.matmul(q, x[:n], threads=1)
        for th in (2, 3, 5, 8):
            same(iqkq.matmul(q, x[:n], threads=th), ref, f"{t.name} N={n} threads={th}")


@pytest.mark.parametrize("t", TYPES, ids=ids(TYPES))
def test_nonfinite_activation_rows(t, isa):
    """A row of x holding NaN or +-Inf gives a row of NaN; the other rows keep their bits."""
    rows, K = lb_rows(t), 2 * max(256, t.block_size)
    q = iqkq.quantize(weights("normal", rows, K, 28), t.name)
    for n, path in ((1, "auto"), (6, "direct"), (40, "auto"), (40, "direct")):
        x = x_rows(n + 3, K, 29)
        bad = [0, n // 2 + 1, n + 2]
        x[bad[0], 5] = np.nan
        x[bad[1], :] = np.inf
        x[bad[2], K - 1] = -np.inf
        y = iqkq.matmul(q, x, path=path)
        assert np.isnan(y[bad]).all(), f"{t.name}: non-finite activation rows must give NaN"
        good = [i for i in range(n + 3) if i not in bad]
        clean = x.copy()
        clean[bad] = 0
        same(y[good], iqkq.matmul(q, clean, path=path)[good], f"{t.name} N={n} {path}: finite rows changed")


@pytest.mark.parametrize("t", TYPES, ids=ids(TYPES))
def test_tiny_activation_blocks_act_as_zeros(t, isa):
    """Activation blocks whose scale overflows (max |x| < ~3.7e-37) quantize to zeros (ik_llama.cpp
    would give -128s there and kernel sets would disagree)."""
    rows, K = shape_for(t, groups=2, blocks=2 if t.block_size == 256 else 16)
    q = iqkq.quantize(weights("normal", rows, K, 30), t.name)
    x = x_rows(3, K, 31)
    tiny = x.copy()
    tiny[1, :256] = rng(32).standard_normal(256) * 1e-39
    tiny[2, 256:] = 1e-44
    zero = tiny.copy()
    zero[1, :256] = 0
    zero[2, 256:] = 0
    y = iqkq.matmul(q, tiny)
    np.testing.assert_array_equal(y, iqkq.matmul(q, zero))
    assert np.isfinite(y).all()


# ----------------------------------------------------------------------------- fused ops
@pytest.mark.parametrize("t", TYPES, ids=ids(TYPES))
def test_fused_ops_all_isas_and_threads(t):
    rows, K = lb_rows(t), 2 * max(256, t.block_size)
    up = iqkq.quantize(weights("normal", rows, K, 33), t.name)
    gate = iqkq.quantize(weights("llm", rows, K, 34), t.name)
    x = x_rows(40, K, 35)
    E = 3
    ups = iqkq.quantize(weights("normal", E * rows, K, 36).reshape(E, rows, K), t.name)
    gates = iqkq.quantize(weights("normal", E * rows, K, 37).reshape(E, rows, K), t.name)
    ids_ = rng(38).integers(-1, E, (40, 2))
    ids_[:, 0] = np.where(np.arange(40) < 34, 0, ids_[:, 0])  # expert 0 gets >= 32 pairs

    def run(threads):
        out = [iqkq.fused_up_gate(up, gate, x[:n], act=a, threads=threads) for n in (1, 5, 40)
               for a in ("silu", "gelu", "relu")]
        out.append(iqkq.fused_up_gate(up, gate, x, act="silu", limit=3.0, threads=threads))
        out.append(iqkq.moe_up_gate(ups, gates, x, ids_, threads=threads))
        return out

    res = {name: with_isa(name, run, 1) for name in ISAS}
    assert_isas_agree(res, f"{t.name} fused ops")
    for th in (2, 3):
        for a, b in zip(with_isa(ISAS[-1], run, th), res[ISAS[-1]]):
            same(a, b, f"{t.name} fused ops depend on the thread count")
