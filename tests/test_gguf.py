"""GGUF interop: iqkq's own reader/writer (which accepts ik_llama.cpp's type ids) and the
`gguf` package (GGUFReader / GGUFWriter) for the types it knows."""
import numpy as np
import pytest

import iqkq
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


def test_roundtrip(tmp_path):
    ts = sample_tensors()
    meta = {"general.name": "iqkq-test", "n": 7, "neg": -3, "pi": 3.5, "flag": True, "names": ["a", "b"],
            "ints": [1, 2, 3], "floats": [0.5, 1.5]}
    path = tmp_path / "t.gguf"
    iqkq.gguf.save(path, ts, meta)
    back, m = iqkq.gguf.load(path)
    assert set(back) == set(ts)
    for k, v in ts.items():
        if isinstance(v, iqkq.QuantizedTensor):
            assert isinstance(back[k], iqkq.QuantizedTensor) and back[k] == v
            np.testing.assert_array_equal(iqkq.dequantize(back[k]), iqkq.dequantize(v))
        else:
            np.testing.assert_array_equal(back[k], v)
    assert m["general.name"] == "iqkq-test" and m["n"] == 7 and m["neg"] == -3 and m["pi"] == 3.5
    assert m["flag"] is True and m["names"] == ["a", "b"] and list(m["ints"]) == [1, 2, 3]
    # the data are memory-mapped views, not copies
    assert not back["w.q8_0"].data.flags.owndata


def test_gguf_package_reads_our_file(tmp_path):
    import gguf  # part of the [test] extra
    ts = {k: v for k, v in sample_tensors().items() if k in ("w.q8_0", "experts.q8_0", "norm")}
    path = tmp_path / "m.gguf"
    iqkq.gguf.save(path, ts, {"general.architecture": "llama"})
    reader = gguf.GGUFReader(str(path))
    by = {t.name: t for t in reader.tensors}
    for name in ("w.q8_0", "experts.q8_0"):
        q = iqkq.gguf.from_reader_tensor(by[name])
        assert q == ts[name]
    np.testing.assert_array_equal(np.asarray(by["norm"].data).reshape(-1), ts["norm"])


def test_we_read_gguf_package_file(tmp_path):
    import gguf
    w = rng(1).standard_normal((32, 256)).astype(np.float32)
    q = iqkq.quantize(w, "q8_0")
    path = tmp_path / "g.gguf"
    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_tensor("w", q.rows_view(), raw_shape=q.rows_view().shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    wr.add_tensor("f", w)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    back, meta = iqkq.gguf.load(path)
    assert back["w"] == q
    np.testing.assert_array_equal(back["f"], w)
    assert meta["general.architecture"] == "llama"
    # and the gguf package's own quantizer agrees with iqkq byte for byte on q8_0
    from gguf import quants

    np.testing.assert_array_equal(quants.quantize(w, gguf.GGMLQuantizationType.Q8_0).reshape(-1), q.data)


def test_corrupt_files(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ValueError, match="GGUF"):
        iqkq.gguf.load(p)
    good = tmp_path / "good.gguf"
    iqkq.gguf.save(good, {"w": iqkq.quantize(np.ones((8, 256)), "q8_0")})
    data = good.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="past the end"):
        iqkq.gguf.load(p)
    with pytest.raises(TypeError):
        iqkq.gguf.save(tmp_path / "x.gguf", {"w": np.ones(3, np.int64)})
