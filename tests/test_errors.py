"""Bad input raises a clear Python exception naming the problem; nothing crashes."""
import numpy as np
import pytest

import iqkq
from conftest import TYPE_NAMES, rng


def info(name):
    return iqkq.type_info(name)


@pytest.mark.parametrize("qtype", TYPE_NAMES)
def test_k_not_multiple_of_block(qtype):
    t = info(qtype)
    K = t.block_size + 1 if t.block_size > 1 else 3
    w = np.zeros((8 * t.interleave, K), np.float32)
    with pytest.raises(ValueError) as e:
        iqkq.quantize(w, qtype)
    msg = str(e.value)
    assert qtype in msg and str(t.block_size) in msg and f"K={K}" in msg


@pytest.mark.parametrize("qtype", [t.name for t in iqkq.types() if t.interleave > 1])
def test_rows_not_multiple_of_interleave(qtype):
    t = info(qtype)
    w = np.zeros((t.interleave + 1, t.block_size * 8), np.float32)
    with pytest.raises(ValueError) as e:
        iqkq.quantize(w, qtype)
    assert qtype in str(e.value) and str(t.interleave) in str(e.value) and f"rows={t.interleave + 1}" in str(e.value)
    with pytest.raises(ValueError):
        iqkq.QuantizedTensor(np.zeros(t.row_bytes(w.shape[1]) * w.shape[0], np.uint8), qtype, w.shape)


@pytest.mark.parametrize("qtype", TYPE_NAMES)
def test_wrong_ndim(qtype):
    t = info(qtype)
    for shape in [(t.block_size,), (1, 1, 1, t.block_size), ()]:
        with pytest.raises(ValueError, match="2-D|3-D"):
            iqkq.quantize(np.zeros(shape, np.float32), qtype)


@pytest.mark.parametrize("qtype", TYPE_NAMES)
def test_matmul_shape_errors(qtype):
    t = info(qtype)
    K = 256 * max(1, t.block_size // 256)
    rows = 8 * t.interleave
    q = iqkq.quantize(rng(0).standard_normal((rows, K)), qtype)
    with pytest.raises(ValueError) as e:
        iqkq.matmul(q, np.zeros((3, K + t.block_size), np.float32))
    assert f"K={K}" in str(e.value) and str(K + t.block_size) in str(e.value)
    with pytest.raises(ValueError, match="1-D|2-D"):
        iqkq.matmul(q, np.zeros((2, 3, K), np.float32))
    with pytest.raises(ValueError, match="1-D|2-D"):
        iqkq.matmul(q, np.float32(1.0))
    with pytest.raises(ValueError, match="path"):
        iqkq.matmul(q, np.zeros(K, np.float32), path="fast")


@pytest.mark.parametrize("qtype", TYPE_NAMES)
def test_nonfinite_weights_rejected(qtype):
    t = info(qtype)
    K = 256
    for bad in (np.nan, np.inf, -np.inf):
        w = rng(1).standard_normal((2 * 8 * t.interleave, K)).astype(np.float32)
        w[8 * t.interleave + 1, 17] = bad
        with pytest.raises(ValueError) as e:
            iqkq.quantize(w, qtype)
        assert "NaN or infinite" in str(e.value) and f"row {8 * t.interleave + 1}" in str(e.value)


@pytest.mark.parametrize("bad", ["abc", object(), None, 3.5, True])
def test_unknown_type(bad):
    with pytest.raises((ValueError, TypeError)) as e:
        iqkq.quantize(np.zeros((8, 256), np.float32), bad)
    if isinstance(e.value, ValueError):
        for name in TYPE_NAMES:
            assert name in str(e.value)


def test_unknown_type_lists_supported():
    for bad in ("q9_9", 12345, -1):
        with pytest.raises(ValueError) as e:
            iqkq.type_info(bad)
        assert all(n in str(e.value) for n in TYPE_NAMES)


@pytest.mark.parametrize(
    "w", [np.array([["a"] * 32] * 8), np.zeros((8, 32), np.complex64), np.zeros((8, 32), bool),
          np.array([[object()] * 32] * 8)]
)
def test_non_numeric_weights(w):
    with pytest.raises(TypeError, match="dtype"):
        iqkq.quantize(w, "q8_0")


def test_non_numeric_activations():
    q = iqkq.quantize(np.ones((8, 32)), "q8_0")
    with pytest.raises(TypeError, match="dtype"):
        iqkq.matmul(q, np.array(["x"] * 32))
    with pytest.raises(TypeError, match="QuantizedTensor"):
        iqkq.matmul(np.ones((8, 32), np.float32), np.ones(32, np.float32))
    with pytest.raises(TypeError, match="QuantizedTensor"):
        iqkq.dequantize(b"\x00" * 34)


@pytest.mark.parametrize("qtype", TYPE_NAMES)
def test_quantized_tensor_wrong_length(qtype):
    t = info(qtype)
    K = 256
    rows = 8 * t.interleave
    n = t.row_bytes(K) * rows
    for size in (n - 1, n + 1, 0):
        with pytest.raises(ValueError) as e:
            iqkq.QuantizedTensor(np.zeros(size, np.uint8), qtype, (rows, K))
        assert str(n) in str(e.value) and str(size) in str(e.value) and qtype in str(e.value)
    with pytest.raises(TypeError, match="uint8"):
        iqkq.QuantizedTensor(np.zeros(n // 4, np.float32), qtype, (rows, K))


@pytest.mark.parametrize("qtype", TYPE_NAMES)
def test_bad_imatrix(qtype):
    w = rng(2).standard_normal((8 * info(qtype).interleave, 256)).astype(np.float32)
    for im, pat in [(np.ones(255), "shape"), (np.ones((2, 256)), "shape"), (-np.ones(256), "negative"),
                    (np.full(256, np.nan), "NaN"), (np.full(256, np.inf), "NaN or infinite")]:
        with pytest.raises(ValueError, match=pat):
            iqkq.quantize(w, qtype, imatrix=im)
    with pytest.raises(TypeError):
        iqkq.quantize(w, qtype, imatrix=np.array(["a"] * 256))


def test_bad_threads():
    q = iqkq.quantize(np.ones((8, 32)), "q8_0")
    for bad in (0, -1):
        with pytest.raises(ValueError, match="threads"):
            iqkq.matmul(q, np.ones(32), threads=bad)
        with pytest.raises(ValueError, match="threads"):
            iqkq.set_num_threads(bad)
    for bad in (1.5, "2", True):
        with pytest.raises(TypeError, match="threads"):
            iqkq.quantize(np.ones((8, 32)), "q8_0", threads=bad)


def test_repack_errors():
    q = iqkq.quantize(np.ones((8, 32)), "q8_0")
    others = [n for n in TYPE_NAMES if n not in ("q8_0", "q8_0_r8")]
    for other in others:
        with pytest.raises(ValueError, match="twin"):
            iqkq.repack(q, other)
    q12 = iqkq.quantize(np.ones((12, 32)), "q8_0")
    with pytest.raises(ValueError, match="multiple of 8"):
        iqkq.repack(q12, "q8_0_r8")


def test_repack_path_needs_rows_multiple_of_8():
    q = iqkq.quantize(np.ones((12, 32)), "q8_0")
    with pytest.raises(ValueError, match="rows % 8"):
        iqkq.matmul(q, np.ones((40, 32)), path="repack")
    # the default path silently uses the direct kernel
    assert iqkq.matmul(q, np.ones((40, 32))).shape == (40, 12)


def test_bad_isa():
    with pytest.raises(ValueError, match="scalar"):
        iqkq.set_isa("neon")


def test_private_core_guards_pointers():
    """The private module re-checks buffer sizes: misuse raises instead of overrunning."""
    from iqkq import _core

    t = info("q8_0")
    with pytest.raises(ValueError):
        _core.dequantize(t.index, np.zeros(10, np.uint8), np.zeros((8, 32), np.float32), 8, 32, 1)
    with pytest.raises(ValueError):
        _core.matmul(t.index, np.zeros(272, np.uint8), 8, 32, np.zeros(31, np.float32), 1,
                     np.zeros((1, 8), np.float32), 1, 0)
    ro = np.zeros((1, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        _core.matmul(t.index, np.zeros(272, np.uint8), 8, 32, np.zeros(32, np.float32), 1, ro, 1, 0)
