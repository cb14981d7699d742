"""GGUF interop: iqkq's own reader/writer (which accepts ik_llama.cpp's type ids) against the
`gguf` package (gguf-py: GGUFReader / GGUFWriter), typed metadata, exact round trips, raw
tensors, the streaming writer and never losing data."""
import math
import os

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

import iqkq
from iqkq.gguf import GGUFMetadata, GGUFStreamWriter, GGUFValue
from conftest import TYPE_NAMES, rng


def sample_tensors():
    r = rng(0)
    out = {}
    for name in TYPE_NAMES:
        t = iqkq.type_info(name)
        out[f"w.{name}"] = iqkq.quantize(r.standard_normal((8 * t.interleave, 512)).astype(np.float32), name)
    out["experts.q8_0"] = iqkq.quantize(r.standard_normal((3, 16, 256)).astype(np.float32), "q8_0")
    out["norm"] = r.standard_normal(64).astype(np.float32)
    out["half"] = r.standard_normal((4, 8)).astype(np.float16)
    return out


def gguf_py_write(path, tensors=(), kv=(), *, alignment=None, arch="llama"):
    """A file written by gguf-py's GGUFWriter. tensors: (name, array, raw_dtype or None);
    kv: (key, value, GGUFValueType, sub_type or None)."""
    w = gguf.GGUFWriter(str(path), arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, val, vt, sub in kv:
        w.add_key_value(key, val, vt, sub_type=sub)
    for name, arr, raw in tensors:
        if raw is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_shape=arr.shape, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# every scalar and array value type gguf-py writes (key, value, type, sub_type), exact types
MANY_KV = [
    ("t.u8", 200, VT.UINT8, None), ("t.i8", -5, VT.INT8, None), ("t.u16", 60000, VT.UINT16, None),
    ("t.i16", -30000, VT.INT16, None), ("t.u32", 4000000000, VT.UINT32, None), ("t.i32", -2000000000, VT.INT32, None),
    ("t.f32", 3.25, VT.FLOAT32, None), ("t.u64", 2**63 + 5, VT.UINT64, None), ("t.i64", -2**62, VT.INT64, None),
    ("t.f64", math.pi, VT.FLOAT64, None), ("t.bool", True, VT.BOOL, None), ("t.false", False, VT.BOOL, None),
    ("t.str", "héllo ✓", VT.STRING, None), ("t.empty_str", "", VT.STRING, None),
    ("t.arr_str", ["<s>", "</s>", "▁the", ""], VT.ARRAY, None),
    ("t.arr_i32", [0, -1, 2**31 - 1], VT.ARRAY, None),
    ("t.arr_f32", [0.5, -1e-5, 3.0], VT.ARRAY, None),
    ("t.arr_bool", [True, False, True], VT.ARRAY, None),
    ("t.arr_u8", [1, 2, 255], VT.ARRAY, VT.UINT8), ("t.arr_i8", [-128, 127], VT.ARRAY, VT.INT8),
    ("t.arr_u16", [65535], VT.ARRAY, VT.UINT16), ("t.arr_i16", [-1, 1], VT.ARRAY, VT.INT16),
    ("t.arr_u32", [4000000000, 1], VT.ARRAY, VT.UINT32), ("t.arr_u64", [2**64 - 1], VT.ARRAY, VT.UINT64),
    ("t.arr_i64", [-2**63, 2**63 - 1], VT.ARRAY, VT.INT64), ("t.arr_f64", [math.e, -0.0], VT.ARRAY, VT.FLOAT64),
    ("t.nested", [[1, 2], [3]], VT.ARRAY, None),
    ("t.nested_str", [["a"], ["b", "c"]], VT.ARRAY, None),
]


def many_tensors():
    r = rng(3)
    w = r.standard_normal((32, 256)).astype(np.float32)
    q8 = iqkq.quantize(w, "q8_0")
    iq3 = iqkq.quantize(r.standard_normal((8, 512)).astype(np.float32), "iq3_xxs")
    bf16_bits = (w.view(np.uint32) >> 16).astype(np.uint16)
    q4k = r.integers(0, 256, (4, 2 * 144), dtype=np.uint8)  # 4 rows of 512 q4_K values (bytes unchecked)
    return [
        ("f32.1d", r.standard_normal(64).astype(np.float32), None),
        ("f32.2d", w, None),
        ("f32.row", r.standard_normal((1, 64)).astype(np.float32), None),
        ("f32.4d", r.standard_normal((2, 3, 4, 8)).astype(np.float32), None),
        ("f16", r.standard_normal((4, 64)).astype(np.float16), None),
        ("f64", r.standard_normal((2, 8)), None),
        ("i32", r.integers(-5, 5, (3, 4), dtype=np.int32), None),
        ("i8", r.integers(-5, 5, 16, dtype=np.int8), None),
        ("bf16", bf16_bits, QT.BF16),
        ("q8_0", q8.rows_view(), QT.Q8_0),
        ("iq3_xxs", iq3.rows_view(), QT.IQ3_XXS),
        ("q4_K", q4k, QT.Q4_K),
    ]


def expected_value(val, vt, sub):
    """What iqkq.gguf.load should give for a key gguf-py wrote: (plain value, type, item type)."""
    if vt != VT.ARRAY:
        return val, vt, None
    item = sub if sub is not None else VT.get_type(val[0])
    return val, vt, item


# ----------------------------------------------------------------------------- gguf-py -> iqkq
def test_we_read_gguf_py_files_with_types(tmp_path):
    p = tmp_path / "g.gguf"
    gguf_py_write(p, many_tensors(), MANY_KV)
    tensors, meta = iqkq.gguf.load(p)
    assert isinstance(meta, GGUFMetadata)
    assert list(meta) == ["general.architecture"] + [k for k, *_ in MANY_KV]
    assert meta.typed("general.architecture") == GGUFValue("llama", VT.STRING)
    for key, val, vt, sub in MANY_KV:
        v, t, it = expected_value(val, vt, sub)
        gv = meta.typed(key)
        assert gv.type == t and gv.item_type == it, key
        got = meta[key]
        if it == VT.ARRAY:
            assert [list(x) for x in got] == v
        elif isinstance(got, np.ndarray):
            assert got.dtype.kind in "iufb"
            np.testing.assert_array_equal(got, np.array(v, dtype=got.dtype))
            if it in (VT.FLOAT32,):
                np.testing.assert_array_equal(got, np.array(v, np.float32))
        elif t == VT.FLOAT32:
            assert got == float(np.float32(v))
        else:
            assert got == v and type(got) is type(v), key
    assert meta["t.f64"] == math.pi  # FLOAT64 stays FLOAT64 (no f32 rounding)
    r = gguf.GGUFReader(str(p))
    by = {t.name: t for t in r.tensors}
    for name, arr, raw in many_tensors():
        got = tensors[name]
        if raw is None:
            assert isinstance(got, np.ndarray) and got.dtype == arr.dtype and got.shape == arr.shape
            np.testing.assert_array_equal(got, arr)
            assert not got.flags.writeable and not got.flags.owndata  # read-only memory-mapped views
        elif name in ("q8_0", "iq3_xxs", "q4_K"):
            assert isinstance(got, iqkq.QuantizedTensor) and got.qtype == name
            np.testing.assert_array_equal(got.rows_view(), arr)
            # dequantize of what gguf-py reads is bit-identical to gguf-py's own dequantize
            ref = gguf.quants.dequantize(by[name].data, by[name].tensor_type)
            mine = iqkq.dequantize(iqkq.gguf.from_reader_tensor(by[name]))
            np.testing.assert_array_equal(mine.view(np.uint32), ref.astype(np.float32).view(np.uint32))
            np.testing.assert_array_equal(iqkq.dequantize(got).view(np.uint32), mine.view(np.uint32))
        else:
            assert isinstance(got, iqkq.RawTensor) and got.type_id == int(raw) and got.type_name == name
            assert got.nbytes == arr.nbytes
            np.testing.assert_array_equal(got.data, arr.reshape(-1).view(np.uint8))
    assert tensors["q4_K"].shape == (4, 512)
    assert tensors["bf16"].shape == (32, 256)
    ref = gguf.quants.dequantize(by["bf16"].data, QT.BF16)
    np.testing.assert_array_equal(iqkq.dequantize(tensors["bf16"]).view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("alignment", [None, 1, 8, 64, 4096])
@pytest.mark.parametrize("seed", [0, 1])
def test_exact_round_trip_of_gguf_py_files(tmp_path, alignment, seed):
    """save(p2, *load(p1)) is byte-identical for files in the canonical layout, whatever the
    alignment, key order, value types and tensor order."""
    order = np.random.default_rng(seed).permutation(len(MANY_KV))
    torder = np.random.default_rng(seed + 10).permutation(len(many_tensors()))
    p1, p2 = tmp_path / "a.gguf", tmp_path / "b.gguf"
    gguf_py_write(p1, [many_tensors()[i] for i in torder], [MANY_KV[i] for i in order], alignment=alignment)
    f = iqkq.gguf.read(p1)
    assert f.is_canonical and f.alignment == (alignment or 32)
    iqkq.gguf.save(p2, *iqkq.gguf.load(p1))
    assert p2.read_bytes() == p1.read_bytes()
    # and through the streaming writer from the low-level reader, tensor by tensor
    p3 = tmp_path / "c.gguf"
    with iqkq.gguf.read(p1) as f, GGUFStreamWriter(p3, f.metadata, f.tensors) as w:
        for ti in f.tensors:
            w.write(ti.name, f.tensor_bytes(ti))
    assert p3.read_bytes() == p1.read_bytes()


def test_gguf_py_reads_our_files_with_types(tmp_path):
    meta = {
        "general.architecture": "llama", "general.alignment": 64, "general.file_type": 7,
        "llama.context_length": 4096, "llama.rope.freq_base": 10000.0, "neg": -3, "big": 2**40,
        "f64": np.float64(math.pi), "i8": np.int8(-2), "flag": True, "name": "x",
        "tokens": ["a", "b"], "types": [1, 2, 3], "scores": [0.5, -1.5], "mixed": [1, 2.5],
        "u16s": np.array([1, 2], np.uint16), "nested": [[1, 2], ["a"]],
    }
    want = {
        "general.architecture": (VT.STRING, None), "general.alignment": (VT.UINT32, None),
        "general.file_type": (VT.UINT32, None), "llama.context_length": (VT.UINT32, None),
        "llama.rope.freq_base": (VT.FLOAT32, None), "neg": (VT.INT32, None), "big": (VT.UINT64, None),
        "f64": (VT.FLOAT64, None), "i8": (VT.INT8, None), "flag": (VT.BOOL, None), "name": (VT.STRING, None),
        "tokens": (VT.ARRAY, VT.STRING), "types": (VT.ARRAY, VT.INT32), "scores": (VT.ARRAY, VT.FLOAT32),
        "mixed": (VT.ARRAY, VT.FLOAT32), "u16s": (VT.ARRAY, VT.UINT16), "nested": (VT.ARRAY, VT.ARRAY),
    }
    ts = {k: v for k, v in sample_tensors().items() if k in ("w.q8_0", "experts.q8_0", "norm", "half", "w.iq3_xxs")}
    path = tmp_path / "m.gguf"
    iqkq.gguf.save(path, ts, meta)
    reader = gguf.GGUFReader(str(path))
    assert reader.alignment == 64
    for key, (t, it) in want.items():
        field = reader.fields[key]
        assert field.types[0] == t, key
        if it is not None:
            assert field.types[1] == it, key
    assert reader.fields["mixed"].contents() == [1.0, 2.5]  # never truncated
    assert reader.fields["f64"].contents() == math.pi
    assert reader.fields["nested"].types[:2] == [VT.ARRAY, VT.ARRAY]  # (gguf-py's contents() flattens nesting)
    by = {t.name: t for t in reader.tensors}
    for name in ("w.q8_0", "experts.q8_0", "w.iq3_xxs"):
        t = iqkq.gguf.from_reader_tensor(by[name])
        assert t == ts[name]
        ref = gguf.quants.dequantize(by[name].data, by[name].tensor_type)
        np.testing.assert_array_equal(iqkq.dequantize(t).view(np.uint32), ref.astype(np.float32).view(np.uint32))
    for name in ("norm", "half"):
        t = iqkq.gguf.from_reader_tensor(by[name])
        assert t.dtype == ts[name].dtype and t.shape == ts[name].shape
        np.testing.assert_array_equal(t, ts[name])
        assert by[name].data_offset % 64 == 0


def test_from_reader_tensor_every_type(tmp_path):
    p = tmp_path / "g.gguf"
    gguf_py_write(p, many_tensors())
    reader = gguf.GGUFReader(str(p))
    mine, _ = iqkq.gguf.load(p)
    assert len(reader.tensors) == len(mine)
    for rt in reader.tensors:
        t = iqkq.gguf.from_reader_tensor(rt)
        ref = mine[rt.name]
        assert type(t) is type(ref) or (isinstance(t, np.ndarray) and isinstance(ref, np.ndarray)), rt.name
        if isinstance(t, np.ndarray):
            assert t.shape == ref.shape and t.dtype == ref.dtype
            np.testing.assert_array_equal(t, ref)
        else:
            assert t == ref
        if isinstance(t, iqkq.RawTensor) and t.type_name == "q4_K":
            with pytest.raises(TypeError, match=r"q4_K \(12\)"):
                iqkq.dequantize(t)
    with pytest.raises(TypeError, match="ReaderTensor"):
        iqkq.gguf.from_reader_tensor(np.zeros(3))


# ----------------------------------------------------------------------------- iqkq -> iqkq
def test_roundtrip_own_files(tmp_path):
    ts = sample_tensors()
    meta = {"general.name": "iqkq-test", "n": 7, "neg": -3, "pi": 3.5, "flag": True, "names": ["a", "b"],
            "ints": [1, 2, 3], "floats": [0.5, 1.5]}
    path = tmp_path / "t.gguf"
    iqkq.gguf.save(path, ts, meta)
    back, m = iqkq.gguf.load(path)
    assert list(back) == list(ts)
    for k, v in ts.items():
        if isinstance(v, iqkq.QuantizedTensor):
            assert isinstance(back[k], iqkq.QuantizedTensor) and back[k] == v
            np.testing.assert_array_equal(iqkq.dequantize(back[k]), iqkq.dequantize(v))
        else:
            assert back[k].dtype == v.dtype
            np.testing.assert_array_equal(back[k], v)
    assert m["general.name"] == "iqkq-test" and m["n"] == 7 and m["neg"] == -3 and m["pi"] == 3.5
    assert m["flag"] is True and m["names"] == ["a", "b"] and list(m["ints"]) == [1, 2, 3]
    assert not back["w.q8_0"].data.flags.owndata  # memory-mapped views, not copies
    assert iqkq.gguf.read(path).is_canonical
    p2 = tmp_path / "t2.gguf"
    iqkq.gguf.save(p2, back, m)
    assert p2.read_bytes() == path.read_bytes()
    # mmap=False reads the same
    back2, m2 = iqkq.gguf.load(path, mmap=False)
    assert m2 == m and all(np.array_equal(getattr(back2[k], "data", back2[k]), getattr(back[k], "data", back[k]))
                           for k in back)


def test_metadata_types_survive_edits():
    m = GGUFMetadata()
    m["a"] = GGUFValue(3, VT.INT16)
    m["a"] = 5                      # plain value that fits: keeps INT16
    assert m.typed("a") == GGUFValue(5, VT.INT16)
    m["a"] = 2**20                  # does not fit INT16: the conventions decide
    assert m.typed("a").type == VT.UINT32
    m["f"] = np.float64(1.5)
    m["f"] = 2                      # int into a float key: stays FLOAT64, value 2.0
    assert m.typed("f") == GGUFValue(2.0, VT.FLOAT64)
    m["f"] = np.float32(1.5)        # numpy values carry their own type
    assert m.typed("f").type == VT.FLOAT32
    m["arr"] = np.array([1, 2], np.int16)
    m["arr"] = [3, 4]
    assert m.typed("arr") == GGUFValue([3, 4], VT.ARRAY, VT.INT16)
    m["arr"] = ["x"]
    assert m.typed("arr").item_type == VT.STRING
    m["general.alignment"] = np.int64(64)  # always UINT32
    assert m.typed("general.alignment") == GGUFValue(64, VT.UINT32)
    assert list(m) == ["a", "f", "arr", "general.alignment"]
    del m["a"]
    assert "a" not in m and len(m) == 3
    c = m.copy()
    assert c == m and c is not m
    c["f"] = 9.0
    assert c != m
    with pytest.raises(TypeError, match="keys must be str"):
        m[3] = 1
    with pytest.raises(ValueError, match="empty list"):
        m["e"] = []
    m["e"] = np.array([], np.float32)
    assert m.typed("e") == GGUFValue([], VT.ARRAY, VT.FLOAT32)
    assert isinstance(m["e"], np.ndarray) and not m["e"].flags.writeable


def test_value_inference_and_forcing():
    G = GGUFValue.infer
    assert [G(v).type for v in (0, 2**32 - 1, 2**32, -1, -2**31 - 1, 1.0, True, "s", b"raw")] == [
        VT.UINT32, VT.UINT32, VT.UINT64, VT.INT32, VT.INT64, VT.FLOAT32, VT.BOOL, VT.STRING, VT.STRING]
    assert [G(np.dtype(d).type(1)).type for d in ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8")] == [
        VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32, VT.UINT64, VT.INT64, VT.FLOAT32, VT.FLOAT64]
    assert G([1, 2]).item_type == VT.INT32 and G([0, 2**31]).item_type == VT.UINT32
    assert G([-1, 2**40]).item_type == VT.INT64 and G([2**63]).item_type == VT.UINT64
    assert G([1, 2.5]) == GGUFValue([1.0, 2.5], VT.ARRAY, VT.FLOAT32)
    assert G([np.float64(1), np.float64(2)]).item_type == VT.FLOAT64
    assert G(np.arange(6, dtype=np.int16).reshape(2, 3)).to_python()[1].tolist() == [3, 4, 5]
    assert G(np.array(5, np.uint8)) == GGUFValue(5, VT.UINT8)
    assert G(("a", "b")).to_python() == ["a", "b"]
    assert GGUFValue(7, "int64").type == VT.INT64 and GGUFValue(7, 11).type == VT.INT64
    with pytest.raises(ValueError, match="out of range for UINT8"):
        GGUFValue(256, VT.UINT8)
    with pytest.raises(ValueError, match="out of range for INT8"):
        GGUFValue([1, 200], VT.ARRAY, VT.INT8)
    with pytest.raises(ValueError, match="out of range for FLOAT32"):
        GGUFValue(1e300, VT.FLOAT32)
    with pytest.raises(TypeError, match="integer"):
        GGUFValue(2.5, VT.UINT32)
    with pytest.raises(TypeError, match="integer"):
        GGUFValue([1.5], VT.ARRAY, VT.INT32)
    with pytest.raises(TypeError, match="bool"):
        GGUFValue(1, VT.BOOL)
    with pytest.raises(TypeError):
        G([1, "a"])
    with pytest.raises(TypeError):
        G(None)
    with pytest.raises(TypeError, match="float16"):
        G(np.float16(1))
    with pytest.raises(ValueError, match="64 bits"):
        G(2**64)
    with pytest.raises(ValueError, match="unknown GGUF value type"):
        GGUFValue(1, "int7")
    with pytest.raises(ValueError, match="nested more than"):
        deep = 1
        for _ in range(100):
            deep = [deep]
        G(deep)
    with pytest.raises(AttributeError):
        G(1).value = 2
    nan = GGUFValue(float("nan"), VT.FLOAT32)
    assert nan == GGUFValue(float("nan"), VT.FLOAT32)  # compared by encoding
    assert GGUFValue(1, VT.UINT32) != GGUFValue(1, VT.UINT64)


def test_exact_float_bits_and_odd_strings_survive(tmp_path):
    """NaN payloads, -0.0, denormals and strings that are not valid UTF-8 come back bit for bit."""
    bits = np.array([0x7FC00001, 0xFFA00000, 0x80000000, 0x00000001, 0x7F7FFFFF], np.uint32)
    p = tmp_path / "odd.gguf"
    with open(p, "wb") as fh:
        import struct

        kv = bytearray()
        for i, b in enumerate(bits):
            k = f"f{i}".encode()
            kv += struct.pack("<Q", len(k)) + k + struct.pack("<II", 6, int(b))
        k, s = b"bad.utf8", b"ab\xff\xfe\xc3"
        kv += struct.pack("<Q", len(k)) + k + struct.pack("<IQ", 8, len(s)) + s
        k = b"arr"
        kv += struct.pack("<Q", len(k)) + k + struct.pack("<IIQ", 9, 6, len(bits)) + bits.tobytes()
        head = b"GGUF" + struct.pack("<IQQ", 3, 0, len(bits) + 2) + kv
        fh.write(head + bytes((-len(head)) % 32))
    f = iqkq.gguf.read(p)
    assert f.is_canonical
    for i, b in enumerate(bits):
        assert f.metadata.typed(f"f{i}").value.view(np.uint32) == b
    assert f.metadata["bad.utf8"].encode("utf-8", "surrogateescape") == b"ab\xff\xfe\xc3"
    p2 = tmp_path / "odd2.gguf"
    iqkq.gguf.save(p2, {}, f.metadata)
    assert p2.read_bytes() == p.read_bytes()


# ----------------------------------------------------------------------------- alignment
def test_alignment_declared_equals_used(tmp_path):
    q = iqkq.quantize(np.ones((8, 256)), "q8_0")
    for a in (1, 2, 16, 64, 256):
        p = tmp_path / f"a{a}.gguf"
        iqkq.gguf.save(p, {"w": q, "n": np.ones(3, np.float32)}, {"general.alignment": a})
        f = iqkq.gguf.read(p)
        assert f.alignment == a and f.metadata.typed("general.alignment") == GGUFValue(a, VT.UINT32)
        assert all((t.offset - f.data_offset) % a == 0 for t in f.tensors) and f.data_offset % a == 0
        assert f.tensor("w") == q and f.is_canonical
        assert gguf.GGUFReader(str(p)).alignment == a
        p2 = tmp_path / f"b{a}.gguf"
        iqkq.gguf.save(p2, {"w": q, "n": np.ones(3, np.float32)}, alignment=a)
        f2 = iqkq.gguf.read(p2)
        assert f2.alignment == a and ("general.alignment" in f2.metadata) == (a != 32)
    with pytest.raises(ValueError, match="contradicts"):
        iqkq.gguf.save(tmp_path / "x.gguf", {}, {"general.alignment": 64}, alignment=16)
    for bad in (0, -32, 3, 48, 2**32):
        with pytest.raises(ValueError, match="power of two"):
            iqkq.gguf.save(tmp_path / "x.gguf", {"w": q}, alignment=bad)
        with pytest.raises(ValueError, match="power of two|UINT32|out of range"):
            iqkq.gguf.save(tmp_path / "x.gguf", {"w": q}, {"general.alignment": bad} if bad >= 0 else
                           {"general.alignment": GGUFValue(bad, VT.INT32)})
    with pytest.raises(ValueError, match="UINT32"):
        iqkq.gguf.save(tmp_path / "x.gguf", {}, {"general.alignment": GGUFValue(64, VT.UINT64)})
    with pytest.raises(TypeError):
        iqkq.gguf.save(tmp_path / "x.gguf", {}, alignment=32.0)
    assert not (tmp_path / "x.gguf").exists()


# ----------------------------------------------------------------------------- raw tensors
def test_every_tensor_passes_through(tmp_path):
    """Types iqkq has no kernels for, ik_llama.cpp-only types, unknown ids, 1-D / 4-D tensors of
    iqkq types: loaded as typed raw tensors and written back unchanged."""
    r = rng(5)
    q = iqkq.quantize(r.standard_normal((4, 256)).astype(np.float32), "q8_0")
    ts = {
        "iq2_k": iqkq.RawTensor(r.integers(0, 256, 2 * 76, dtype=np.uint8), 137, (2, 256)),
        "iq2_ks": iqkq.RawTensor(r.integers(0, 256, 3 * (2 + 70), dtype=np.uint8), "iq2_ks", (3, 256)),
        "q6_K": iqkq.RawTensor(r.integers(0, 256, 210, dtype=np.uint8), "Q6_K", (256,)),
        "tq2_0": iqkq.RawTensor(r.integers(0, 256, 66, dtype=np.uint8), 35, (1, 256)),
        "unknown": iqkq.RawTensor(r.integers(0, 256, 96, dtype=np.uint8), 777, (3, 8)),
        "q8_0.1d": iqkq.RawTensor(q.data[:q.row_bytes], "q8_0", (256,)),
        "q8_0.4d": iqkq.RawTensor(q.data, 8, (2, 1, 2, 256)),
        "last_unknown": iqkq.RawTensor(r.integers(0, 256, 64, dtype=np.uint8), 5000, (64,)),
    }
    p = tmp_path / "raw.gguf"
    iqkq.gguf.save(p, ts, {"general.architecture": "llama"})
    f = iqkq.gguf.read(p)
    assert f.is_canonical
    back, _ = iqkq.gguf.load(p)
    for k, t in ts.items():
        b = back[k]
        assert isinstance(b, iqkq.RawTensor) and b.type_id == t.type_id and b.shape == t.shape, k
        if t.ggml_type.sized:
            assert b == t and f.tensor_info(k).nbytes_known
        else:  # size unknown: the bytes up to the next tensor (padding included)
            assert not f.tensor_info(k).nbytes_known
            assert b.nbytes == -(-t.nbytes // 32) * 32 and np.array_equal(b.data[:t.nbytes], t.data)
    assert back["iq2_k"].type_name == "iq2_k" and back["unknown"].type_name == "unknown(777)"
    p2 = tmp_path / "raw2.gguf"
    iqkq.gguf.save(p2, back, iqkq.gguf.load(p)[1])
    assert p2.read_bytes() == p.read_bytes()
    # computing with a type iqkq has no kernels for names the type
    for fn in (lambda t: iqkq.dequantize(t), lambda t: iqkq.matmul(t, np.ones(256, np.float32)),
               lambda t: iqkq.quantize(t, "q8_0"), lambda t: iqkq.repack(t, "q8_0_r8")):
        with pytest.raises(TypeError, match=r"iq2_k \(137\)"):
            fn(back["iq2_k"])
    # raw tensors of iqkq's types dequantize (any ndim) but are not matmul operands
    np.testing.assert_array_equal(iqkq.dequantize(back["q8_0.4d"]), iqkq.dequantize(q).reshape(2, 1, 2, 256))
    np.testing.assert_array_equal(iqkq.dequantize(back["q8_0.1d"]), iqkq.dequantize(q)[0])
    with pytest.raises(TypeError, match="QuantizedTensor of shape"):
        iqkq.matmul(back["q8_0.1d"], np.ones(256, np.float32))


def test_raw_tensor_checks():
    with pytest.raises(ValueError, match="takes 152 bytes"):
        iqkq.RawTensor(np.zeros(150, np.uint8), "iq2_k", (2, 256))
    with pytest.raises(ValueError, match="blocks"):
        iqkq.RawTensor(np.zeros(0, np.uint8), "q4_K", (0, 100))
    with pytest.raises(ValueError, match="at most 4"):
        iqkq.RawTensor(np.zeros(4, np.uint8), 777, (1, 1, 1, 1, 4))
    with pytest.raises(ValueError, match="unknown ggml type name"):
        iqkq.RawTensor(b"", "q9_9", (0,))
    with pytest.raises(TypeError, match="raw bytes"):
        iqkq.RawTensor(np.zeros(4, np.float32), 777, (4,))
    t = iqkq.RawTensor(bytes(8), "i32", (2,))
    with pytest.raises(TypeError, match="integer type i32"):
        iqkq.dequantize(t)


def test_ggml_type_table_agrees_with_gguf_py_and_iqkq():
    from iqkq._ggml import _IK_TYPES

    for qt, (blk, size) in gguf.GGML_QUANT_SIZES.items():
        t = iqkq.gguf.ggml_type(int(qt))
        assert (t.block_size, t.type_size) == (blk, size)
        if int(qt) in _IK_TYPES and _IK_TYPES[int(qt)][1] is not None:  # ids both define agree
            assert _IK_TYPES[int(qt)][1:3] == (blk, size)
    for t in iqkq.types():
        g = iqkq.gguf.ggml_type(t.ggml_id)
        assert (g.name, g.block_size, g.type_size, g.row_meta_size) == (t.name, t.block_size, t.type_size,
                                                                        t.row_meta_size)
        if t.ggml_id in _IK_TYPES:
            assert _IK_TYPES[t.ggml_id] == (t.name, t.block_size, t.type_size, t.row_meta_size)
    assert iqkq.gguf.ggml_type("iq4_kt").row_bytes(512) == 4 + 2 * 128
    assert not iqkq.gguf.ggml_type("i2_s").sized


# ----------------------------------------------------------------------------- save errors
def test_save_errors(tmp_path):
    p = tmp_path / "x.gguf"
    q = iqkq.quantize(np.ones((8, 256)), "q8_0")
    with pytest.raises(TypeError, match="uint8"):
        iqkq.gguf.save(p, {"w": np.ones(3, np.uint8)})
    with pytest.raises(TypeError, match="complex"):
        iqkq.gguf.save(p, {"w": np.ones(3, np.complex64)})
    with pytest.raises(TypeError, match="list"):
        iqkq.gguf.save(p, {"w": [1.0, 2.0]})
    with pytest.raises(TypeError, match="names must be str"):
        iqkq.gguf.save(p, {1: q})
    with pytest.raises(TypeError, match="keys must be str"):
        iqkq.gguf.save(p, {"w": q}, {1: 2})
    with pytest.raises(ValueError, match="64 bits"):
        iqkq.gguf.save(p, {"w": q}, {"k": 2**70})
    with pytest.raises(ValueError, match="64 bits|fit"):
        iqkq.gguf.save(p, {"w": q}, {"k": [2**70]})
    with pytest.raises(TypeError, match="one kind"):
        iqkq.gguf.save(p, {"w": q}, {"k": [1, "a"]})
    with pytest.raises(TypeError, match="dict"):
        iqkq.gguf.save(p, {"w": q}, {"k": {"a": 1}})
    with pytest.raises(ValueError, match="UTF-8"):
        iqkq.gguf.save(p, {"w": q}, {"k": "\ud800"})
    with pytest.raises(ValueError, match="at most 4"):
        iqkq.gguf.save(p, {"w": np.ones((1, 1, 1, 1, 2), np.float32)})
    with pytest.raises(TypeError, match="mapping"):
        iqkq.gguf.save(p, [q])
    assert not p.exists() and os.listdir(tmp_path) == []
    # int64 / f64 / int arrays are ggml tensor types (I64, F64, I32...), as in gguf-py
    iqkq.gguf.save(p, {"i": np.arange(3), "d": np.ones(2), "b": np.arange(4, dtype=">i2")})
    back, _ = iqkq.gguf.load(p)
    assert back["i"].dtype == np.int64 and back["d"].dtype == np.float64 and back["b"].tolist() == [0, 1, 2, 3]
    assert [t.type_name for t in iqkq.gguf.read(p).tensors] == ["i64", "f64", "i16"]


# ----------------------------------------------------------------------------- streaming writer
def test_stream_writer_checks_and_cleans_up(tmp_path):
    p = tmp_path / "s.gguf"
    p.write_bytes(b"old contents")
    q = iqkq.quantize(np.ones((8, 256)), "q8_0")
    decl = [("a", q.shape, "q8_0"), ("b", (4,), 0), ("c", (3,), 777, 5)]
    w = GGUFStreamWriter(p, {"general.architecture": "llama"}, decl)
    assert [t.nbytes for t in w.tensors] == [q.nbytes, 16, 5] and w.remaining == ["a", "b", "c"]
    with pytest.raises(ValueError, match="declared order"):
        w.write("b", np.ones(4, np.float32))
    assert p.read_bytes() == b"old contents" and os.listdir(tmp_path) == ["s.gguf"]  # aborted, temp gone
    with pytest.raises(ValueError, match="closed"):
        w.write("a", q)

    def attempt(writes, exc=ValueError, match=None):
        with pytest.raises(exc, match=match):
            with GGUFStreamWriter(p, {}, decl) as w:
                for name, t in writes:
                    w.write(name, t)
        assert p.read_bytes() == b"old contents" and os.listdir(tmp_path) == ["s.gguf"]

    attempt([("a", iqkq.quantize(np.ones((8, 256)), "q8_0_r8"))], match="declared q8_0")
    attempt([("a", q), ("b", np.ones(5, np.float32))], match="declared f32")
    attempt([("a", q), ("b", np.ones(4, np.float16))], match="declared f32")
    attempt([("a", q), ("b", bytes(15))], match="declared 16 bytes")
    attempt([("a", q), ("b", np.ones(4, np.float32))], match="not written")
    attempt([("a", q), ("b", np.ones(4, np.float32)), ("c", b"12345"), ("c", b"12345")], match="already written")
    attempt([("a", q), ("b", object())], exc=TypeError, match="cannot write")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with GGUFStreamWriter(p, {}, decl) as w:
            w.write("a", q)
            raise Boom()
    assert p.read_bytes() == b"old contents" and os.listdir(tmp_path) == ["s.gguf"]
    with pytest.raises(ValueError, match="declared twice"):
        GGUFStreamWriter(p, {}, [("a", (4,), 0), ("a", (4,), 0)])
    with pytest.raises(ValueError, match="give its nbytes"):
        GGUFStreamWriter(p, {}, [("a", (4,), 777)])
    with pytest.raises(ValueError, match="takes 1088 bytes"):
        GGUFStreamWriter(p, {}, [("a", (4, 256), "q8_0", 1000)])
    with pytest.raises(ValueError, match="blocks"):
        GGUFStreamWriter(p, {}, [("a", (4, 100), "q8_0")])
    with pytest.raises(TypeError, match="declaration"):
        GGUFStreamWriter(p, {}, ["a"])
    assert os.listdir(tmp_path) == ["s.gguf"]
    with GGUFStreamWriter(p, {}, decl) as w:
        w.write("a", q.data.tobytes())  # plain bytes of the declared size are fine
        w.write("b", np.arange(4, dtype=">f4"))  # big-endian input is written little-endian
        w.write("c", memoryview(b"12345"))
    back, _ = iqkq.gguf.load(p)
    assert back["a"] == q and back["b"].tolist() == [0, 1, 2, 3] and back["c"].data[:5].tobytes() == b"12345"
    assert os.listdir(tmp_path) == ["s.gguf"]
    mode = os.stat(p).st_mode & 0o777
    um = os.umask(0)
    os.umask(um)
    assert mode == 0o666 & ~um  # like a file made by open(), not mkstemp's 0600


def test_saving_over_a_loaded_file_keeps_its_tensors(tmp_path):
    """Never lose data: save over a file whose tensors are memory-mapped writes a new file and
    renames it into place; the loaded tensors still read the old bytes (no SIGBUS, no zeros)."""
    p = tmp_path / "m.gguf"
    ts = sample_tensors()
    iqkq.gguf.save(p, ts, {"v": 1})
    back, meta = iqkq.gguf.load(p)
    keep = {k: (v.data.copy() if isinstance(v, iqkq.QuantizedTensor) else v.copy()) for k, v in back.items()}
    small = {"w.q8_0": iqkq.quantize(np.zeros((8, 512)), "q8_0")}
    iqkq.gguf.save(p, small, {"v": 2})
    for k, v in back.items():
        np.testing.assert_array_equal(v.data if isinstance(v, iqkq.QuantizedTensor) else v, keep[k])
    assert iqkq.gguf.load(p)[1]["v"] == 2
    # saving the loaded tensors back over their own file works too
    iqkq.gguf.save(p, back, meta)
    again, m2 = iqkq.gguf.load(p)
    assert m2 == meta and all(again[k] == back[k] if isinstance(back[k], iqkq.QuantizedTensor)
                              else np.array_equal(again[k], back[k]) for k in back)
    assert sorted(os.listdir(tmp_path)) == ["m.gguf"]


# ----------------------------------------------------------------------------- a llama-like model
def llama_like(path, qtype="q8_0", n_vocab=64, n_embd=256, n_ff=512, n_layer=2):
    """A small llama-shaped model written by gguf-py's GGUFWriter with the metadata a converter
    writes (tokenizer arrays of str / f32 / i32, u32 hyperparameters, f32 eps...) and weights
    quantized by iqkq."""
    r = rng(11)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_rope_dimension_count(n_embd // 4)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"▁t{i}" for i in range(n_vocab - 3)])
    w.add_token_scores([float(-i) for i in range(n_vocab)])
    w.add_token_types([2, 3, 3] + [1] * (n_vocab - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    qt = QT[qtype.upper()]

    def quant(name, rows, cols):
        q = iqkq.quantize(r.standard_normal((rows, cols)).astype(np.float32), qtype)
        w.add_tensor(name, q.rows_view(), raw_shape=q.rows_view().shape, raw_dtype=qt)

    w.add_tensor("token_embd.weight", r.standard_normal((n_vocab, n_embd)).astype(np.float16))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        for n, rows in (("attn_q", n_embd), ("attn_k", n_embd // 2), ("attn_v", n_embd // 2), ("attn_output", n_embd)):
            quant(f"blk.{i}.{n}.weight", rows, n_embd)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        quant(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        quant(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        quant(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    quant("output.weight", n_vocab, n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("qtype", ["q8_0", "iq3_xxs"])
def test_llama_like_model_round_trip(tmp_path, qtype):
    p1, p2 = tmp_path / "m.gguf", tmp_path / "m2.gguf"
    llama_like(p1, qtype)
    tensors, meta = iqkq.gguf.load(p1)
    assert meta.typed("llama.block_count") == GGUFValue(2, VT.UINT32)
    assert meta.typed("llama.attention.layer_norm_rms_epsilon").type == VT.FLOAT32
    assert meta.typed("tokenizer.ggml.token_type").item_type == VT.INT32
    assert meta.typed("tokenizer.ggml.scores").item_type == VT.FLOAT32
    assert meta["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    assert isinstance(tensors["blk.0.ffn_up.weight"], iqkq.QuantizedTensor)
    assert tensors["token_embd.weight"].dtype == np.float16
    iqkq.gguf.save(p2, tensors, meta)
    assert p2.read_bytes() == p1.read_bytes()
    # a requantization flow: every 2-D quantized weight -> iq4_ks (an ik_llama.cpp type), the
    # rest as is, metadata edited; values and types survive
    out = {}
    for name, t in tensors.items():
        out[name] = iqkq.quantize(iqkq.dequantize(t), "iq4_ks") if isinstance(t, iqkq.QuantizedTensor) else t
    meta["general.name"] = "tiny-llama-iq4_ks"
    meta["general.file_type"] = 137  # stays UINT32
    p3 = tmp_path / "m3.gguf"
    iqkq.gguf.save(p3, out, meta)
    back, m3 = iqkq.gguf.load(p3)
    assert m3 == meta and list(back) == list(out)
    assert m3.typed("general.file_type") == GGUFValue(137, VT.UINT32)
    assert all(back[k] == out[k] if isinstance(out[k], iqkq.QuantizedTensor) else np.array_equal(back[k], out[k])
               for k in out)


# ----------------------------------------------------------------------------- property: any typed metadata
from hypothesis import given, settings, strategies as st  # noqa: E402

_INT_RANGES = {VT.UINT8: (0, 2**8 - 1), VT.INT8: (-2**7, 2**7 - 1), VT.UINT16: (0, 2**16 - 1),
               VT.INT16: (-2**15, 2**15 - 1), VT.UINT32: (0, 2**32 - 1), VT.INT32: (-2**31, 2**31 - 1),
               VT.UINT64: (0, 2**64 - 1), VT.INT64: (-2**63, 2**63 - 1)}


def _scalar(vt):
    if vt in _INT_RANGES:
        return st.integers(*_INT_RANGES[vt])
    if vt == VT.FLOAT32:
        return st.floats(width=32)
    if vt == VT.FLOAT64:
        return st.floats()
    if vt == VT.BOOL:
        return st.booleans()
    return st.text(max_size=12)


_SCALAR_TYPES = list(_INT_RANGES) + [VT.FLOAT32, VT.FLOAT64, VT.BOOL, VT.STRING]


@st.composite
def gguf_values(draw, depth=0):
    kind = draw(st.sampled_from(["scalar", "array"] + (["nested"] if depth == 0 else [])))
    if kind == "scalar":
        vt = draw(st.sampled_from(_SCALAR_TYPES))
        return GGUFValue(draw(_scalar(vt)), vt)
    if kind == "array":
        it = draw(st.sampled_from(_SCALAR_TYPES))
        return GGUFValue(draw(st.lists(_scalar(it), max_size=6)), VT.ARRAY, it)
    items = draw(st.lists(gguf_values(depth=1).filter(lambda v: v.type == VT.ARRAY), max_size=3))
    return GGUFValue(items, VT.ARRAY, VT.ARRAY)


@settings(max_examples=60, deadline=None)
@given(st.lists(gguf_values(), max_size=8), st.sampled_from([None, 1, 16, 64]))
def test_any_typed_metadata_round_trips(tmp_path_factory, values, alignment):
    d = tmp_path_factory.mktemp("prop")
    meta = GGUFMetadata([(f"k.{i}", v) for i, v in enumerate(values)])
    p1, p2 = d / "a.gguf", d / "b.gguf"
    iqkq.gguf.save(p1, {"t": np.arange(3, dtype=np.float32)}, meta, alignment=alignment)
    t, back = iqkq.gguf.load(p1)
    want = meta.copy()
    if alignment not in (None, 32):
        want["general.alignment"] = GGUFValue(alignment, VT.UINT32)
    assert back == want
    iqkq.gguf.save(p2, t, back)
    assert p2.read_bytes() == p1.read_bytes()
    r = gguf.GGUFReader(str(p1))  # gguf-py agrees on every type
    for k, v in meta.typed_items():
        assert r.fields[k].types[0] == v.type
        if v.type == VT.ARRAY and v.item_type != VT.ARRAY and len(v.value):
            assert r.fields[k].types[1] == v.item_type


# ----------------------------------------------------------------------------- a file from ik_llama.cpp's quantizer
IK_FILE = os.path.join(os.path.dirname(__file__), "data", "gguf", "ik_llama_quantize_iq4_ks.gguf")


def test_file_from_ik_llama_quantize_round_trips(tmp_path):
    """A model quantized by ik_llama.cpp's llama-quantize (tests/data/gguf/README.md): iqkq reads
    its tensors (iq4_ks, ik-only iq5_k, mainline q6_K, f32) and metadata types, and writes it back
    byte for byte -- where gguf-py refuses the file."""
    with pytest.raises(ValueError, match="144"):
        gguf.GGUFReader(IK_FILE)
    f = iqkq.gguf.read(IK_FILE)
    assert f.is_canonical and f.version == 3 and f.alignment == 32
    kinds = [t.type_name for t in f.tensors]
    assert kinds.count("iq4_ks") == 7 and kinds.count("f32") == 3 and kinds.count("iq5_k") == 1
    assert kinds.count("q6_K") == 1
    tensors, meta = iqkq.gguf.load(IK_FILE)
    assert meta.typed("general.file_type") == GGUFValue(145, VT.UINT32)
    assert meta.typed("llama.attention.head_count_kv") == GGUFValue(2, VT.UINT32)
    assert meta.typed("llama.attention.layer_norm_rms_epsilon") == GGUFValue(1e-5, VT.FLOAT32)
    assert meta.typed("tokenizer.ggml.token_type").item_type == VT.INT32
    assert meta.typed("tokenizer.ggml.add_eos_token") == GGUFValue(False, VT.BOOL)
    assert meta["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    up = tensors["blk.0.ffn_up.weight"]
    assert isinstance(up, iqkq.QuantizedTensor) and up.qtype == "iq4_ks" and up.shape == (256, 256)
    w = iqkq.dequantize(up)
    assert np.isfinite(w).all() and 0.01 < w.std() < 0.03  # the N(0, 0.02) weights it was made from
    y = iqkq.matmul(up, np.ones(256, np.float32))
    np.testing.assert_allclose(y, w.sum(axis=1), rtol=0.02, atol=0.02)
    assert isinstance(tensors["blk.0.attn_v.weight"], iqkq.RawTensor)
    assert tensors["blk.0.attn_v.weight"].type_name == "iq5_k"
    out = tensors["output.weight"]  # q6_K, quantized by ik_llama.cpp
    assert isinstance(out, iqkq.QuantizedTensor) and out.qtype == "q6_K"
    wo = iqkq.dequantize(out)
    assert np.isfinite(wo).all() and 0.01 < wo.std() < 0.03
    p = tmp_path / "copy.gguf"
    iqkq.gguf.save(p, tensors, meta)
    with open(IK_FILE, "rb") as fh:
        assert p.read_bytes() == fh.read()
