"""The large-batch path (docs/formats.md §11.2/§11.4): when it is taken, what it equals, and that
it never depends on the thread count or the ISA."""
import numpy as np
import pytest

import iqkq
from iqkq import _core
from conftest import ISAS, rng, with_isa

LB = {t.name: iqkq.ops._LARGE_BATCH[t.name] for t in iqkq.types() if iqkq.ops._LARGE_BATCH[t.name]}


def test_large_batch_types():
    assert LB == {"q8_0": "q8_0_r8", "iq4_ks": "q8_k_r8", "iq3_xxs": "q8_k_r8", "iq4_xs": "q8_k_r8",
                  "q4_0": "q8_0_r8", "q5_0": "q8_0_r8", "q6_0": "q8_0_r8", "iq4_nl": "q8_0_r8",
                  "q4_K": "q8_1_r8", "q5_K": "q8_1_r8", "q6_K": "q8_0_r8"}


@pytest.mark.parametrize("qtype", sorted(LB))
def test_rule_is_thread_independent(qtype):
    idx = iqkq.type_info(qtype).index
    for rows, N, expect in [(32, 32, True), (32, 31, False), (24, 40, False), (40, 40, True), (36, 64, False),
                            (4096, 512, True), (8, 1000, False), (64, 1, False)]:
        expect = expect and N >= iqkq.type_info(qtype).large_batch_min_n  # q6_K: 64
        assert _core.uses_large_batch(idx, rows, N, 0) == expect, (rows, N)
        assert _core.uses_large_batch(idx, rows, N, 1) is False
    for rows in (8, 16, 32):
        assert _core.uses_large_batch(idx, rows, 1, 2) is True


@pytest.mark.parametrize("qtype", sorted(LB))
def test_repack_path_equals_converted_weights(qtype, isa):
    r = rng(1)
    w = r.standard_normal((48, 512)).astype(np.float32)
    x = r.standard_normal((70, 512)).astype(np.float32)
    q = iqkq.quantize(w, qtype)
    conv = iqkq.repack(q, LB[qtype])
    assert conv.qtype == LB[qtype] and conv.shape == q.shape
    for n in (1, 5, 31, 32, 70):
        y = iqkq.matmul(q, x[:n], path="repack")
        np.testing.assert_array_equal(y, iqkq.matmul(conv, x[:n]))
        if n >= iqkq.type_info(qtype).large_batch_min_n:
            np.testing.assert_array_equal(y, iqkq.matmul(q, x[:n]))  # auto takes it


@pytest.mark.parametrize("qtype", sorted(LB))
def test_direct_path_equals_small_batch_kernels(qtype, isa):
    """Each output of the direct kernels depends only on its row and column, so a forced
    direct product of a large batch equals the small-batch results stacked."""
    r = rng(2)
    w = r.standard_normal((64, 768)).astype(np.float32)
    x = r.standard_normal((70, 768)).astype(np.float32)
    q = iqkq.quantize(w, qtype)
    y = iqkq.matmul(q, x, path="direct")
    parts = np.vstack([iqkq.matmul(q, x[i:i + 20]) for i in range(0, 70, 20)])
    np.testing.assert_array_equal(y, parts)


@pytest.mark.parametrize("qtype", sorted(LB))
def test_paths_agree_to_requantization_error(qtype):
    """The documented difference between the two paths: exact for q8_0 and the legacy 32-blocks
    (their values are int8 already) up to float order, about a percent of the output scale for
    the requantizing conversions."""
    r = rng(3)
    w = r.standard_normal((256, 1024)).astype(np.float32)
    x = r.standard_normal((40, 1024)).astype(np.float32)
    q = iqkq.quantize(w, qtype)
    yd, yr = iqkq.matmul(q, x, path="direct"), iqkq.matmul(q, x, path="repack")
    rel = np.abs(yd - yr).max() / np.abs(yd).max()
    exact = qtype in ("q8_0", "q4_0", "q5_0", "q6_0", "iq4_nl")
    # iq4_xs: ik_llama.cpp's direct AVX2 kernel saturates int16 pair sums (unsigned grid + 128,
    # maddubs), which the converted path does not; that difference dominates
    assert rel < (1e-5 if exact else 0.3 if qtype == "iq4_xs" else 3e-2), rel
    if not exact:
        assert rel > 1e-5  # the conversion really re-rounds


@pytest.mark.parametrize("qtype", sorted(LB))
def test_large_batch_threads_and_isas(qtype):
    r = rng(4)
    w = r.standard_normal((40, 512)).astype(np.float32)  # 40 rows: ik's choice would depend on threads
    x = r.standard_normal((64, 512)).astype(np.float32)
    q = iqkq.quantize(w, qtype)
    ref = with_isa("scalar", iqkq.matmul, q, x, threads=1)
    for name in ISAS:
        for th in (1, 2, 3, 4):
            np.testing.assert_array_equal(with_isa(name, iqkq.matmul, q, x, threads=th), ref)
    conv = with_isa("scalar", iqkq.repack, q, LB[qtype])
    for name in ISAS[1:]:
        assert with_isa(name, iqkq.repack, q, LB[qtype], threads=2) == conv


def test_repack_to_large_batch_errors():
    q = iqkq.quantize(rng(5).standard_normal((12, 256)).astype(np.float32), "iq4_ks")
    with pytest.raises(ValueError, match="multiple of 8"):
        iqkq.repack(q, "q8_k_r8")
    with pytest.raises(ValueError, match="q8_k_r8"):
        iqkq.repack(iqkq.quantize(np.ones((8, 256)), "iq4_ks_r4"), "q8_k_r8")
    with pytest.raises(ValueError, match="rows % 8"):
        iqkq.matmul(q, np.ones((40, 256)), path="repack")


@pytest.mark.parametrize("qtype", ["iq3_xxs", "iq4_ks"])
def test_conversion_raw_bytes_all_isas(qtype):
    """Arbitrary bytes (any scale, any grid index, sign pattern or block scale) convert to
    q8_k_r8 identically with every kernel set."""
    g = rng(16)
    rows, K = 16, 512
    ref = iqkq.quantize(np.ones((rows, K), np.float32), qtype)
    for trial in range(8):
        raw = g.integers(0, 256, ref.nbytes, dtype=np.uint8)
        q = iqkq.QuantizedTensor(raw, qtype, (rows, K))
        outs = [with_isa(i, iqkq.repack, q, "q8_k_r8", threads=2) for i in ISAS]
        for o in outs[1:]:
            assert o == outs[0], trial
