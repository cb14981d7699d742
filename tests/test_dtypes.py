"""Dtypes by value: arrays from gguf.GGUFReader, memmaps, np.frombuffer views and dtype objects
equal to (but not the same as) numpy's own work everywhere; other byte orders are converted
by the Python layer and refused by the bindings; bf16 / f16 convert exactly; integer weights
are refused."""
import gguf
import ml_dtypes
import numpy as np
import pytest

import iqkq
from iqkq import _core
from conftest import TYPE_NAMES, rng

# the same dtypes as numpy's, as distinct objects (as gguf.GGUFReader's arrays carry them)
F32_EQ = np.dtype(np.float32).newbyteorder("<").newbyteorder("=")
U8_EQ = np.dtype(np.uint8).newbyteorder("|")
I32_EQ = np.dtype(np.int32).newbyteorder("<")


def twin(a, dt):
    """``a`` viewed with an equal dtype object that is not numpy's canonical one."""
    v = a.view(dt)
    assert v.dtype == a.dtype
    return v


def test_equal_dtype_objects_are_distinct():
    assert F32_EQ == np.float32 and F32_EQ is not np.dtype(np.float32)
    assert I32_EQ == np.int32 and I32_EQ is not np.dtype(np.int32)


def test_bindings_accept_equal_dtypes_and_refuse_other_byte_orders():
    """The private core itself: dtype checks compare by value; byte-swapped data is refused."""
    t = iqkq.type_info("q8_0")
    w = rng(0).standard_normal((8, 64)).astype(np.float32)
    out = np.empty(8 * t.row_bytes(64), np.uint8)
    assert _core.quantize(t.index, twin(w, F32_EQ), out, 8, 64, None, 1) == -1
    ref = iqkq.quantize(w, "q8_0")
    np.testing.assert_array_equal(out, ref.data)
    y = np.empty((8, 64), np.float32)
    _core.dequantize(t.index, twin(out, U8_EQ), twin(y, F32_EQ), 8, 64, 1)
    np.testing.assert_array_equal(y, iqkq.dequantize(ref))
    x = rng(1).standard_normal((3, 64)).astype(np.float32)
    yy = np.empty((3, 8), np.float32)
    _core.matmul(t.index, twin(out, U8_EQ), 8, 64, twin(x, F32_EQ), 3, twin(yy, F32_EQ), 1, 0)
    np.testing.assert_array_equal(yy, iqkq.matmul(ref, x))
    with pytest.raises(ValueError, match="src: non-native byte order"):
        _core.quantize(t.index, w.astype(">f4"), out, 8, 64, None, 1)
    with pytest.raises(ValueError, match="imatrix: non-native byte order"):
        _core.quantize(t.index, w, out, 8, 64, np.ones(64, ">f4"), 1)
    with pytest.raises(ValueError, match="x: non-native byte order"):
        _core.matmul(t.index, out, 8, 64, x.astype(">f4"), 3, yy, 1, 0)
    with pytest.raises(ValueError, match="src: wrong dtype"):
        _core.quantize(t.index, w.astype(np.float64), out, 8, 64, None, 1)
    ids = np.zeros((1, 1), I32_EQ)
    up = iqkq.quantize(rng(2).standard_normal((1, 32, 64)), "q8_0")
    ym = np.empty((1, 1, 32), np.float32)
    _core.moe_up_gate(t.index, up.data, up.data, 1, 32, 64, np.ones((1, 64), np.float32), False, ids, 1, 1, ym,
                      10, 0.0, 1)
    with pytest.raises(ValueError, match="ids: non-native byte order"):
        _core.moe_up_gate(t.index, up.data, up.data, 1, 32, 64, np.ones((1, 64), np.float32), False,
                          ids.astype(">i4"), 1, 1, ym, 10, 0.0, 1)


def write_reader_file(path, w, q):
    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_tensor("q", q.rows_view(), raw_shape=q.rows_view().shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    wr.add_tensor("w", w)
    wr.add_tensor("im", np.exp(w[0]).astype(np.float32))
    wr.add_tensor("x", w[:5].copy())
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def test_gguf_reader_arrays_everywhere(tmp_path):
    """Every array gguf.GGUFReader returns is accepted: as QuantizedTensor data, by from_reader_tensor,
    as weights, activations and imatrix -- and gives the results of ordinary arrays."""
    w = rng(3).standard_normal((32, 256)).astype(np.float32)
    q = iqkq.quantize(w, "q8_0")
    p = tmp_path / "r.gguf"
    write_reader_file(p, w, q)
    by = {t.name: t for t in gguf.GGUFReader(str(p)).tensors}
    assert by["w"].data.dtype is not np.dtype(np.float32)  # what the bug was about
    x = w[:5].copy()
    q1 = iqkq.QuantizedTensor(by["q"].data, "q8_0", (32, 256))
    q2 = iqkq.gguf.from_reader_tensor(by["q"])
    for qq in (q1, q2):
        np.testing.assert_array_equal(iqkq.dequantize(qq), iqkq.dequantize(q))
        np.testing.assert_array_equal(iqkq.matmul(qq, x), iqkq.matmul(q, x))
        np.testing.assert_array_equal(iqkq.matmul(qq, by["x"].data), iqkq.matmul(q, x))
        assert iqkq.repack(qq, "q8_0_r8") == iqkq.repack(q, "q8_0_r8")
        h = iqkq.fused_up_gate(qq, qq, by["x"].data)
        np.testing.assert_array_equal(h, iqkq.fused_up_gate(q, q, x))
    assert iqkq.quantize(by["w"].data, "q8_0") == q
    im = np.exp(w[0]).astype(np.float32)
    for name in ("iq4_ks", "iq3_xxs"):
        assert iqkq.quantize(by["w"].data, name, imatrix=by["im"].data) == iqkq.quantize(w, name, imatrix=im)
    np.testing.assert_array_equal(iqkq.dequantize(by["w"].data), w)


def test_memmaps_and_frombuffer_views(tmp_path):
    w = rng(4).standard_normal((16, 256)).astype(np.float32)
    q = iqkq.quantize(w, "iq4_ks")
    (tmp_path / "w.bin").write_bytes(w.tobytes())
    (tmp_path / "q.bin").write_bytes(q.data.tobytes())
    wm = np.memmap(tmp_path / "w.bin", dtype=np.float32, mode="r", shape=w.shape)
    qm = np.memmap(tmp_path / "q.bin", dtype=np.uint8, mode="r")
    assert iqkq.quantize(wm, "iq4_ks") == q
    qt = iqkq.QuantizedTensor(qm, "iq4_ks", w.shape)
    np.testing.assert_array_equal(iqkq.matmul(qt, wm[:3]), iqkq.matmul(q, w[:3]))
    raw = w.tobytes()
    wf = np.frombuffer(raw, dtype="<f4").reshape(w.shape)  # read-only view of bytes
    assert not wf.flags.writeable
    assert iqkq.quantize(wf, "iq4_ks") == q
    qf = iqkq.QuantizedTensor(np.frombuffer(q.data.tobytes(), np.uint8), "iq4_ks", w.shape)
    np.testing.assert_array_equal(iqkq.dequantize(qf), iqkq.dequantize(q))
    # float32 data at an odd address (GGUF alignment 1 allows it) are copied to an aligned array
    buf = np.zeros(w.nbytes + 1, np.uint8)
    buf[1:] = np.frombuffer(raw, np.uint8)
    wu = buf[1:].view(np.float32).reshape(w.shape)
    assert not wu.flags.aligned
    assert iqkq.quantize(wu, "iq4_ks") == q
    np.testing.assert_array_equal(iqkq.matmul(q, wu[:2]), iqkq.matmul(q, w[:2]))


@pytest.mark.parametrize("qtype", TYPE_NAMES)
def test_other_byte_order_is_converted(qtype):
    t = iqkq.type_info(qtype)
    w = rng(5).standard_normal((8 * t.interleave, 256)).astype(np.float32)
    im = np.exp(rng(6).standard_normal(256)).astype(np.float32)
    x = rng(7).standard_normal((3, 256)).astype(np.float32)
    q = iqkq.quantize(w, qtype, imatrix=im)
    assert iqkq.quantize(w.astype(">f4"), qtype, imatrix=im.astype(">f4")) == q
    np.testing.assert_array_equal(iqkq.matmul(q, x.astype(">f4")), iqkq.matmul(q, x))
    np.testing.assert_array_equal(iqkq.fused_up_gate(q, q, x.astype(">f4")), iqkq.fused_up_gate(q, q, x))
    np.testing.assert_array_equal(iqkq.dequantize(w.astype(">f4")), w)


def test_bf16_and_f16_inputs_convert_exactly():
    w = rng(8).standard_normal((16, 256)).astype(np.float32)
    w_bf = w.astype(ml_dtypes.bfloat16)
    w_bf32 = w_bf.astype(np.float32)  # the bf16 values, exactly
    bits = w_bf.view(np.uint16)
    np.testing.assert_array_equal(bits.astype(np.uint32) << 16, w_bf32.view(np.uint32))
    raw = iqkq.RawTensor(bits.view(np.uint8), "bf16", w.shape)
    for qtype in ("q8_0", "iq4_ks", "iq3_xxs"):
        ref = iqkq.quantize(w_bf32, qtype)
        assert iqkq.quantize(w_bf, qtype) == ref
        assert iqkq.quantize(raw, qtype) == ref
    np.testing.assert_array_equal(iqkq.dequantize(raw), w_bf32)
    np.testing.assert_array_equal(iqkq.dequantize(w_bf), w_bf32)
    np.testing.assert_array_equal(raw.to_float32(), w_bf32)
    w16 = w.astype(np.float16)
    assert iqkq.quantize(w16, "q8_0") == iqkq.quantize(w16.astype(np.float32), "q8_0")
    assert iqkq.quantize(w16.astype(">f2"), "q8_0") == iqkq.quantize(w16.astype(np.float32), "q8_0")
    r16 = iqkq.RawTensor(w16.view(np.uint8), "f16", w.shape)
    np.testing.assert_array_equal(iqkq.dequantize(r16), w16.astype(np.float32))
    np.testing.assert_array_equal(iqkq.matmul(iqkq.quantize(w, "q8_0"), raw.to_float32()[:2]),
                                  iqkq.matmul(iqkq.quantize(w, "q8_0"), w_bf32[:2]))
    # bf16 tensors saved as ml_dtypes arrays are BF16 in the file and load as bf16 raw tensors
    assert iqkq.gguf.TensorInfo.of("b", w_bf).type_name == "bf16"


def test_float32_dequantize_is_no_copy():
    w = np.ones((2, 3), np.float32)
    assert iqkq.dequantize(w) is w
    with pytest.raises(TypeError, match="int64"):
        iqkq.dequantize(np.ones(3, np.int64))
    with pytest.raises(TypeError):
        iqkq.dequantize("abc")


@pytest.mark.parametrize("dt", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.uint64])
def test_quantize_refuses_integer_arrays(dt):
    w = np.ones((8, 256), dt)
    with pytest.raises(TypeError) as e:
        iqkq.quantize(w, "q8_0")
    assert np.dtype(dt).name in str(e.value) and "RawTensor" in str(e.value)
    with pytest.raises(TypeError, match="int64"):
        iqkq.quantize([[1] * 256] * 8, "q8_0")
    with pytest.raises(TypeError, match="bool"):
        iqkq.quantize(np.ones((8, 256), bool), "q8_0")
    with pytest.raises(TypeError, match="complex"):
        iqkq.quantize(np.ones((8, 256), np.complex64), "q8_0")
    with pytest.raises(TypeError, match="QuantizedTensor"):
        iqkq.quantize(iqkq.quantize(np.ones((8, 256)), "q8_0"), "q8_0")
    # activations (like imatrix) may still be integers: they are values, converted to float
    q = iqkq.quantize(np.ones((8, 256), np.float32), "q8_0")
    np.testing.assert_array_equal(iqkq.matmul(q, np.ones(256, dt)), iqkq.matmul(q, np.ones(256, np.float32)))
