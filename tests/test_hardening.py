"""Regression tests of the reliability audit (issue 11): each finding, reproduced as it was
reported, now behaves as documented (docs/formats.md, "Non-finite and extreme activations")."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import iqkq
from iqkq import ops
from conftest import ISAS, rng, with_isa


def all_isas(fn, *a, **kw):
    return [with_isa(name, fn, *a, **kw) for name in ISAS]


# 1. kernel sets disagreed when an activation quantized to -128 (AVX2 sign trick)
def test_nan_activation_gives_nan_on_every_kernel_set():
    w = iqkq.quantize(rng(0).standard_normal((8, 256)).astype(np.float32), "q8_0_r8")
    x = rng(1).standard_normal(256).astype(np.float32)
    x[5] = np.nan
    for y in all_isas(iqkq.matmul, w, x):
        assert np.isnan(y).all()


@pytest.mark.parametrize("qtype", ["q8_0", "q8_0_r8", "q8_k_r8", "iq4_ks", "iq4_ks_r4", "iq3_xxs"])
def test_tiny_finite_activation_block_agrees_on_every_kernel_set(qtype):
    t = iqkq.type_info(qtype)
    w = iqkq.quantize(rng(2).standard_normal((8 * t.interleave, 512)).astype(np.float32), qtype)
    x = rng(3).standard_normal((3, 512)).astype(np.float32)
    x[:, :256] *= np.float32(1e-37)  # max |x| < 127 / FLT_MAX: 127/m overflows
    ys = all_isas(iqkq.matmul, w, x)
    for y in ys[1:]:
        np.testing.assert_array_equal(y, ys[0])
    x0 = x.copy()
    x0[:, :256] = 0
    np.testing.assert_array_equal(ys[0], iqkq.matmul(w, x0))


# 2. misaligned float32 input reached C++ as a misaligned float*
def test_misaligned_inputs_are_copied():
    K = 256
    buf = bytearray(4 * 8 * K + 1)
    w = np.frombuffer(buf, np.float32, count=8 * K, offset=1).reshape(8, K)
    assert not w.flags.aligned
    w_al = rng(4).standard_normal((8, K)).astype(np.float32)
    buf[1:] = w_al.tobytes()
    xb = bytearray(4 * K + 3)
    xb[3:] = w_al[0].tobytes()
    x = np.frombuffer(xb, np.float32, count=K, offset=3)
    im = np.frombuffer(bytes(xb), np.float32, count=K, offset=3)
    for qtype in ("q8_0", "iq4_ks", "iq3_xxs"):
        q = iqkq.quantize(w, qtype, imatrix=np.abs(im))
        assert q == iqkq.quantize(w_al, qtype, imatrix=np.abs(w_al[0]))
        np.testing.assert_array_equal(iqkq.matmul(q, x), iqkq.matmul(q, w_al[0]))
        np.testing.assert_array_equal(iqkq.fused_up_gate(q, q, x), iqkq.fused_up_gate(q, q, w_al[0]))


def test_core_refuses_misaligned_pointers():
    from iqkq import _core
    raw = np.zeros(4 * 256 + 1, np.uint8)
    x = raw[1:].view(np.float32)
    out = np.empty(34 * 8, np.uint8)
    with pytest.raises(ValueError, match="misaligned"):
        _core.quantize(iqkq.type_info("q8_0").index, x, out, 1, 256, None, 1)


# 3. data races: ISA switching while other threads compute, and the pool's job hand-over
def test_isa_switching_while_computing_is_safe():
    w = iqkq.quantize(rng(5).standard_normal((64, 512)).astype(np.float32), "iq4_ks")
    x = rng(6).standard_normal((40, 512)).astype(np.float32)
    ref = {n: iqkq.matmul(w, x[:n], threads=2) for n in (1, 5, 40)}
    prev = iqkq.isa()
    errors = []

    def compute():
        try:
            for _ in range(30):
                for n in (1, 5, 40):
                    np.testing.assert_array_equal(iqkq.matmul(w, x[:n], threads=2), ref[n])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def switch():
        for i in range(300):
            iqkq.set_isa(ISAS[i % len(ISAS)])

    ths = [threading.Thread(target=compute) for _ in range(3)] + [threading.Thread(target=switch)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    iqkq.set_isa(prev)
    assert not errors, errors[0]


# 4. a hang on 10^12 empty experts, and checks skipped when there was nothing to compute
def test_empty_stacked_weights_return_at_once():
    q = iqkq.QuantizedTensor(b"", "q8_0", (10 ** 12, 0, 32))
    y = iqkq.matmul(q, np.ones(32, np.float32))
    assert y.shape == (10 ** 12, 0)


@pytest.mark.parametrize("shape", [(0, 8, 32), (3, 0, 32), (8, 32)])
def test_arguments_checked_before_any_work(shape):
    t = iqkq.type_info("q8_0")
    q = iqkq.QuantizedTensor(np.zeros(int(np.prod(shape[:-1])) * t.row_bytes(32), np.uint8), "q8_0", shape)
    x = np.ones(32, np.float32)
    with pytest.raises(ValueError, match="path"):
        iqkq.matmul(q, x, path="bogus")
    with pytest.raises(ValueError, match="threads"):
        iqkq.matmul(q, x, threads=-5)
    with pytest.raises(ValueError, match="columns"):
        iqkq.matmul(q, np.ones(64, np.float32))
    with pytest.raises(TypeError, match="dtype"):
        iqkq.matmul(q, np.array([object()] * 32))


def test_threads_checked_when_output_is_empty():
    with pytest.raises(ValueError, match="threads"):
        iqkq.quantize(np.zeros((0, 256), np.float32), "q8_0", threads=0)
    q = iqkq.quantize(np.zeros((0, 256), np.float32), "q8_0")
    with pytest.raises(ValueError, match="threads"):
        iqkq.dequantize(q, threads=-1)
    with pytest.raises(TypeError, match="threads"):
        iqkq.repack(q, "q8_0_r8", threads=1.5)


# 5. silently wrong or surprising values
def test_limit_values():
    up = iqkq.quantize(rng(7).standard_normal((8, 256)).astype(np.float32), "q8_0")
    x = np.ones(256, np.float32)
    for bad in (1e-6, 1e-9, 0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="limit"):
            iqkq.fused_up_gate(up, up, x, limit=bad)
    for bad in ("1", b"1", [1.0], True):
        with pytest.raises(TypeError, match="limit"):
            iqkq.fused_up_gate(up, up, x, limit=bad)
    y = iqkq.fused_up_gate(up, up, x, limit=2e-6)
    assert np.abs(y).max() <= 2e-6 * np.abs(iqkq.matmul(up, x)).max() + 1e-12 or np.abs(y).max() < 1e-3


@pytest.mark.parametrize("qtype", ["iq4_ks", "iq4_ks_r4", "iq3_xxs", "iq3_xxs_r4"])
@pytest.mark.parametrize("big", [1e30, 3.4e38])
def test_huge_imatrix_is_rescaled(qtype, big):
    w = rng(8).standard_normal((8, 512)).astype(np.float32)
    im = np.exp(rng(9).standard_normal(512)).astype(np.float32)
    im /= im.max()
    q_big = iqkq.quantize(w, qtype, imatrix=(im * np.float32(big)).astype(np.float32))
    err = np.sqrt(((iqkq.dequantize(q_big) - w) ** 2).mean() / (w ** 2).mean())
    assert err < 0.25, err
    # a power-of-two multiple gives exactly the bytes of the rescaled imatrix
    assert iqkq.quantize(w, qtype, imatrix=np.ldexp(im, 100)) == iqkq.quantize(w, qtype, imatrix=np.ldexp(im, 30))
    # sane importance matrices are used as given (ik_llama.cpp's bytes)
    assert iqkq.quantize(w, qtype, imatrix=np.ldexp(im, 20)) == iqkq.quantize(w, qtype, imatrix=im)


def test_q8_0_scale_overflow_warns():
    w = np.full((8, 32), 8.0e6, np.float32)
    iqkq.quantize(w, "q8_0")  # 8.0e6 / 127 < 65504: fine, no warning (warnings are errors here)
    with pytest.warns(RuntimeWarning, match="fp16 block scales"):
        q = iqkq.quantize(w * np.float32(1.1), "q8_0")
    assert np.isinf(iqkq.dequantize(q)).all()


# 6. minor findings
def test_num_threads_env_is_capped():
    code = "import iqkq; print(iqkq.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, IQKQ_NUM_THREADS="3000000000"),
                         capture_output=True, text=True, check=True).stdout
    assert int(out) == ops._MAX_THREADS
    assert ops._check_threads(10 ** 9) == ops._MAX_THREADS
    q = iqkq.quantize(np.ones((8, 256), np.float32), "q8_0")
    np.testing.assert_array_equal(iqkq.matmul(q, np.ones(256, np.float32), threads=10 ** 9),
                                  iqkq.matmul(q, np.ones(256, np.float32), threads=1))


def test_fractional_shape_refused():
    with pytest.raises(TypeError, match="shape"):
        iqkq.QuantizedTensor(np.zeros(16 * 34 * 8, np.uint8), "q8_0", (16.7, 256))


def test_strided_memoryview_is_copied():
    q = iqkq.quantize(rng(10).standard_normal((8, 256)).astype(np.float32), "q8_0")
    big = np.zeros(2 * q.nbytes, np.uint8)
    big[::2] = q.data
    mv = memoryview(big)[::2]
    assert not mv.contiguous
    assert iqkq.QuantizedTensor(mv, "q8_0", (8, 256)) == q
    xs = np.zeros(512, np.float32)
    xs[::2] = 1.0
    np.testing.assert_array_equal(iqkq.matmul(q, memoryview(xs)[::2]), iqkq.matmul(q, np.ones(256, np.float32)))


def test_set_isa_needs_a_str():
    with pytest.raises(TypeError, match="str"):
        iqkq.set_isa(b"avx2")


def test_repack_hint_lists_each_twin_once():
    q = iqkq.quantize(np.ones((8, 256), np.float32), "q8_0")
    with pytest.raises(ValueError) as e:
        iqkq.repack(q, "iq4_ks")
    assert "q8_0_r8, q8_0_r8" not in str(e.value) and "q8_0_r8" in str(e.value)
