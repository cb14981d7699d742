"""q8_0 / q8_0_r8 beyond the oracle: an independent numpy model, scalar vs AVX2 agreement,
thread determinism, round-trip and matmul error bounds, adversarial values."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import iqkq
from iqkq import _core
from conftest import ISAS, rng, with_isa
from reference import q8_0_quantize, q8_2_dequant_x

Q8 = ["q8_0", "q8_0_r8"]


def adversarial_rows(K):
    """Rows that stress rounding and range: ties, +-127-step extremes, zeros, denormals, huge."""
    r = rng(7)
    rows = [
        np.zeros(K),                                    # all-zero blocks
        np.tile([127.0, -127.0, 63.5, -63.5], K // 4),  # exact .5 ties at the scale 1
        np.arange(K) % 255 - 127.0,                     # every int8 step
        (np.arange(K) - K / 2) / 8.0,                   # the spec's worked example pattern
        r.standard_normal(K) * 1e-40,                   # denormals: d underflows
        r.standard_normal(K) * 1e-30,                   # tiny normals, fp16(d) = 0
        np.clip(r.standard_normal(K), -3, 3) * 1.1e38,  # near float max: fp16(d) = inf
        r.standard_normal(K) * 6e-6,                    # fp16 subnormal scales
        np.where(np.arange(K) % 32 == 0, 1e4, 1e-3),    # one outlier per block
        np.full(K, -5.0),                               # constant negative
        r.integers(-3, 4, K).astype(float) * 0.5,       # many exact halves
        r.standard_normal(K),
        np.where(r.random(K) < 0.5, -0.0, 0.0),         # signed zeros
        r.standard_t(2, K) * 100,
        np.full(K, 1.17549435e-38),                     # smallest normal
        np.full(K, 65504.0 * 127),                      # d exactly at the fp16 max
    ]
    return np.array(rows, dtype=np.float32)


@pytest.mark.filterwarnings("ignore:.*fp16 block scales:RuntimeWarning")  # huge weights on purpose
@pytest.mark.parametrize("K", [32, 96, 256, 1056])
def test_quantize_matches_numpy_model(K, isa):
    w = np.concatenate([adversarial_rows(K), rng(K).standard_normal((16, K), dtype=np.float32)])
    q = iqkq.quantize(w, "q8_0")
    blocks = q.data.reshape(w.shape[0], K // 32, 34)
    d, qs = q8_0_quantize(w)
    np.testing.assert_array_equal(blocks[:, :, :2].copy().view(np.uint16)[:, :, 0], d.view(np.uint16))
    # Where 1/d overflows (denormal blocks) the quants are defined as 0, see formats/q8_0.h.
    got = blocks[:, :, 2:].reshape(w.shape[0], K).view(np.int8)
    with np.errstate(divide="ignore", over="ignore"):
        d32 = (np.abs(w.reshape(w.shape[0], K // 32, 32)).max(2) / np.float32(127)).astype(np.float32)
        inv_ok = np.isfinite(np.float32(1) / np.where(d32 != 0, d32, 1))
    inv_ok = np.repeat(inv_ok, 32, axis=1)
    np.testing.assert_array_equal(got[inv_ok], qs[inv_ok])
    assert (got[~inv_ok] == 0).all()
    assert (~inv_ok).any()  # the denormal rows exercise that case


@pytest.mark.filterwarnings("ignore:.*fp16 block scales:RuntimeWarning")  # huge weights on purpose
@pytest.mark.parametrize("qtype", Q8)
@pytest.mark.parametrize("K", [32, 64, 96, 160, 256, 4096])
def test_scalar_avx2_agree(qtype, K):
    if len(ISAS) < 2:
        pytest.skip("CPU has no AVX2: only the scalar kernels exist")
    w = np.concatenate([adversarial_rows(K), rng(K + 1).standard_normal((32, K), dtype=np.float32)])
    w = w[: (w.shape[0] // 8) * 8]
    x = np.concatenate([adversarial_rows(K)[:9], rng(K + 2).standard_normal((60, K), dtype=np.float32) * 3])
    x = np.nan_to_num(x, posinf=1e30, neginf=-1e30)
    res = {}
    for name in ISAS:
        def run():
            q = iqkq.quantize(w, qtype)
            out = [q.data.copy(), iqkq.dequantize(q)]
            for n in (1, 2, 3, 5, 8, 31, 32, 69):
                out.append(iqkq.matmul(q, x[:n]))
                out.append(iqkq.matmul(q, x[:n], path="direct"))
            out.append(_core.quantize_activations(0, x, x.shape[0], K))
            other = "q8_0_r8" if qtype == "q8_0" else "q8_0"
            out.append(iqkq.repack(q, other).data.copy())
            return out

        res[name] = with_isa(name, run)
    for name in ISAS[1:]:
        for a, b in zip(res["scalar"], res[name]):
            np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8), err_msg=name)


@pytest.mark.parametrize("qtype", Q8)
def test_thread_count_determinism(qtype, isa):
    w = rng(3).standard_normal((264, 512), dtype=np.float32)
    x = rng(4).standard_normal((70, 512), dtype=np.float32)
    ref = None
    for threads in (1, 2, 3, 4, 7):
        q = iqkq.quantize(w, qtype, threads=threads)
        out = (q.data.copy(), iqkq.dequantize(q, threads=threads), iqkq.matmul(q, x, threads=threads),
               iqkq.matmul(q, x[:5], threads=threads), iqkq.matmul(q, x[0], threads=threads))
        if ref is None:
            ref = out
        for a, b in zip(ref, out):
            np.testing.assert_array_equal(a, b)


@settings(max_examples=60, deadline=None)
@given(
    w=hnp.arrays(np.float32, st.tuples(st.sampled_from([8, 16]), st.sampled_from([32, 64, 128])),
                 elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=True)),
    qtype=st.sampled_from(Q8),
)
def test_roundtrip_within_half_step(w, qtype):
    q = iqkq.quantize(w, qtype)
    deq = iqkq.dequantize(q)
    rows, K = w.shape
    b = w.reshape(rows, K // 32, 32)
    d = (np.abs(b).max(2) / np.float32(127)).astype(np.float32)
    d16 = d.astype(np.float16).astype(np.float32)
    bound = 0.5 * d + 128 * np.abs(d16 - d)
    bound = np.repeat(bound, 32, axis=1) * (1 + 1e-6) + 1e-6 * np.abs(w) + 1e-38
    assert (np.abs(deq.astype(np.float64) - w) <= bound).all()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.sampled_from([8, 16, 40]),
    nb=st.integers(1, 9),
    n=st.sampled_from([1, 2, 4, 7, 33]),
    qtype=st.sampled_from(Q8),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_repack_roundtrip_and_matmul_bound(seed, rows, nb, n, qtype, scale):
    K = 32 * nb
    r = rng(seed)
    w = (r.standard_normal((rows, K)) * scale).astype(np.float32)
    x = r.standard_normal((n, K)).astype(np.float32)
    q = iqkq.quantize(w, qtype)
    other = "q8_0_r8" if qtype == "q8_0" else "q8_0"
    assert iqkq.repack(iqkq.repack(q, other), qtype) == q
    deq = iqkq.dequantize(q).astype(np.float64)
    y = iqkq.matmul(q, x).astype(np.float64)  # (n, rows)
    xq, dx = q8_2_dequant_x(x)
    xq = xq.astype(np.float64)
    mag = np.abs(xq) @ np.abs(deq).T  # sum |x w| per output
    # 1) against the quantized activations: only float rounding (fp16*bf16 scale products,
    #    fma accumulation over blocks) separates the result from the exact sum.
    assert (np.abs(y - xq @ deq.T) <= 1e-5 * mag + 1e-30).all()
    # 2) against the float activations: each x moves by at most half its block step.
    step = np.repeat(dx, 32, axis=1).astype(np.float64)
    bound = (0.5 * step * 1.001) @ np.abs(deq).T + 1e-5 * mag
    assert (np.abs(y - x.astype(np.float64) @ deq.T) <= bound + 1e-30).all()


def test_nonfinite_activations_do_not_crash(isa):
    w = rng(5).standard_normal((64, 256), dtype=np.float32)
    x = rng(6).standard_normal((40, 256), dtype=np.float32)
    x[0, 3] = np.nan
    x[1, :] = np.inf
    x[2, 100] = -np.inf
    x[3, :] = 1e-42  # denormal activations: 1/d overflows
    for qtype in Q8:
        q = iqkq.quantize(w, qtype)
        for n in (1, 4, 40):
            y = iqkq.matmul(q, x[:n])
            assert y.shape == (n, 64)
        # rows without non-finite values are unaffected
        y = iqkq.matmul(q, x)
        np.testing.assert_array_equal(y[4:], iqkq.matmul(q, x[4:]) if x[4:].shape[0] >= 32 else y[4:])


def test_extreme_weights_and_activations(isa):
    """+-127 quants against +-127 activations: the maddubs int16 pair sums stay exact."""
    K = 4096
    w = np.tile(np.array([1.0, -1.0] * 16, np.float32), (8, K // 32))
    x = np.tile(np.array([1.0, -1.0] * 16, np.float32), (3, K // 32))
    for qtype in Q8:
        q = iqkq.quantize(w, qtype)
        if qtype == "q8_0":
            assert np.abs(q.data.reshape(8, -1, 34)[:, :, 2:].view(np.int8)).min() == 127
        y = iqkq.matmul(q, x)
        np.testing.assert_allclose(y, np.full((3, 8), float(K)), rtol=1e-3)
        y = iqkq.matmul(q, -x)
        np.testing.assert_allclose(y, np.full((3, 8), -float(K)), rtol=1e-3)


def test_large_batch_path_is_exact_permutation(isa):
    """q8_0 with N >= 32 runs through the q8_0_r8 kernel: it equals matmul on the repacked
    tensor bit for bit, and differs from the direct kernel only in float order."""
    w = rng(8).standard_normal((64, 320), dtype=np.float32)
    x = rng(9).standard_normal((48, 320), dtype=np.float32)
    q = iqkq.quantize(w, "q8_0")
    y_auto = iqkq.matmul(q, x)
    y_rep = iqkq.matmul(q, x, path="repack")
    y_r8 = iqkq.matmul(iqkq.repack(q, "q8_0_r8"), x)
    y_dir = iqkq.matmul(q, x, path="direct")
    np.testing.assert_array_equal(y_auto, y_rep)
    np.testing.assert_array_equal(y_auto, y_r8)
    np.testing.assert_allclose(y_dir, y_auto, rtol=1e-5, atol=1e-5 * np.abs(y_auto).max())
    # below the threshold the direct kernel is used
    np.testing.assert_array_equal(iqkq.matmul(q, x[:31]), iqkq.matmul(q, x[:31], path="direct"))
