"""The model cook: iqkq.quantize_model / python -m iqkq quantize (docs/cook.md).

The test builds a small llama-like model with gguf-py's writer (BF16, F16 and F32 tensors, two
blocks, a 3-D expert tensor, a tensor with K = 320, metadata of many value types) and imatrix
files of both formats written from the format description (docs/imatrix.md).
"""
import io
import os
import struct
import subprocess
import sys
import textwrap
import warnings

import gguf
import numpy as np
import pytest

import iqkq
from iqkq import cook
from iqkq.__main__ import main
from iqkq.imatrix import IMatrix, read as read_imatrix, write_gguf, write_legacy

HAVE = {t.name for t in iqkq.types()}
_HAVE_LOWER = {n.lower() for n in HAVE}


def _lacking(*candidates):
    """The first of these ggml types iqkq does not have (other helpers keep adding types)."""
    return next(c for c in candidates if c.lower() not in _HAVE_LOWER)


LACKING = _lacking("q4_K", "iq2_ks", "iq2_k", "iq5_k", "iq6_k", "iq2_kt", "iq3_kt")
RAW_ONLY = _lacking("iq2_k", "iq5_k", "iq6_k", "iq2_kt", "iq3_kt", "iq4_kt")
E, H, FF, FF0, V = 4, 256, 512, 320, 64  # experts, hidden, ffn, ffn of block 0 (K=320 for its ffn_down), vocab


def _bf16_bits(a):
    # round-to-nearest-even float32 -> bf16 bits
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return r


def _weights(rng, shape, scale=0.05):
    return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)


def _tensor_specs():
    """(name, shape numpy order, dtype: 'bf16' | 'f16' | 'f32') of the test model, in file order."""
    s = [("token_embd.weight", (V, H), "f16")]
    for b in range(2):
        ff = FF0 if b == 0 else FF
        s += [
            (f"blk.{b}.attn_norm.weight", (H,), "f32"),
            (f"blk.{b}.attn_q.weight", (H, H), "bf16"),
            (f"blk.{b}.attn_k.weight", (H, H), "bf16"),
            (f"blk.{b}.attn_v.weight", (H, H), "bf16"),
            (f"blk.{b}.attn_output.weight", (H, H), "bf16"),
            (f"blk.{b}.ffn_norm.weight", (H,), "f32"),
        ]
        if b == 0:
            s += [("blk.0.ffn_up.weight", (ff, H), "bf16"), ("blk.0.ffn_gate.weight", (ff, H), "bf16"),
                  ("blk.0.ffn_down.weight", (H, ff), "bf16")]
        else:
            s += [("blk.1.ffn_gate_inp.weight", (E, H), "f32"),
                  ("blk.1.ffn_up_exps.weight", (E, 128, H), "bf16"),
                  ("blk.1.ffn_gate_exps.weight", (E, 128, H), "bf16"),
                  ("blk.1.ffn_down_exps.weight", (E, H, 128), "bf16")]
    s += [("output_norm.weight", (H,), "f32"), ("output.weight", (V, H), "f32")]
    return s


def write_model(path, *, alignment=64, extra=None, seed=0):
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment != 32:
        w.add_custom_alignment(alignment)
    w.add_name("cook-test")
    w.add_block_count(2)                                   # UINT32
    w.add_context_length(4096)
    w.add_embedding_length(H)
    w.add_feed_forward_length(FF)
    w.add_head_count(4)
    w.add_rope_freq_base(5e5)                               # FLOAT32
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(E)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_BF16))    # UINT32 32
    w.add_key_value("test.i64", -5, gguf.GGUFValueType.INT64)
    w.add_key_value("test.u64", 2**40, gguf.GGUFValueType.UINT64)
    w.add_key_value("test.f64", 0.125, gguf.GGUFValueType.FLOAT64)
    w.add_key_value("test.i8", -3, gguf.GGUFValueType.INT8)
    w.add_key_value("test.u16", 7, gguf.GGUFValueType.UINT16)
    w.add_key_value("test.flag", True, gguf.GGUFValueType.BOOL)
    w.add_key_value("test.floats", [0.5, 1.5], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.FLOAT32)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(V)])           # ARRAY[STRING]
    w.add_token_types([1] * V)                              # ARRAY[INT32]
    w.add_token_scores([0.0] * V)                           # ARRAY[FLOAT32]
    w.add_key_value("split.count", 1, gguf.GGUFValueType.UINT16)  # removed by the cook, as llama-quantize does
    for name, shape, dt in _tensor_specs():
        a = _weights(rng, shape, 1.0 if "norm" in name else 0.05)
        if dt == "bf16":
            w.add_tensor(name, _bf16_bits(a), raw_dtype=gguf.GGMLQuantizationType.BF16)
        elif dt == "f16":
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, a)
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("cook") / "model-bf16.gguf")


def _sums_counts(seed=1):
    """Per-entry sums of squared activations and counts, for both imatrix formats."""
    rng = np.random.default_rng(seed)
    sums, counts = {}, {}
    for name, shape, _ in _tensor_specs():
        if len(shape) < 2 or "norm" in name or "gate_inp" in name or name in ("token_embd.weight", "output.weight"):
            continue
        if "gate" in name and "exps" not in name:
            continue  # ffn_gate uses ffn_up's entry (llama-quantize's lookup)
        if name == "blk.1.ffn_gate_exps.weight":
            continue  # -> ffn_up_exps
        n_mat = shape[0] if len(shape) == 3 else 1
        K = shape[-1]
        c = rng.integers(100, 1000, n_mat).astype(np.float32)
        sums[name] = (np.exp(rng.standard_normal((n_mat, K))).astype(np.float32) * c[:, None]).astype(np.float32)
        counts[name] = c
    return sums, counts


def _expected_imatrix(sums, counts):
    return {k: (sums[k] / counts[k][:, None]).astype(np.float32).reshape(-1) for k in sums}


@pytest.fixture(scope="module")
def imatrix_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("imatrix")
    sums, counts = _sums_counts()
    ref = _expected_imatrix(sums, counts)
    # legacy: values = sum / count * ncall, ncall per entry; reading divides by ncall
    legacy = d / "imatrix.dat"
    blob = bytearray(struct.pack("<i", len(sums)))
    for name in sums:
        ncall = 10
        nb = name.encode()
        vals = (ref[name] * np.float32(ncall)).astype("<f4")
        blob += struct.pack("<i", len(nb)) + nb + struct.pack("<ii", ncall, vals.size) + vals.tobytes()
    ds = b"calibration.txt"
    blob += struct.pack("<ii", 42, len(ds)) + ds
    legacy.write_bytes(bytes(blob))
    # GGUF (mainline llama-imatrix), written with gguf-py: keys, then NAME.in_sum2 (ne = K, n_mat) and
    # NAME.counts (ne = 1, n_mat), F32, names sorted
    g = d / "imatrix.gguf"
    w = gguf.GGUFWriter(str(g), "llama")
    w.kv_data[0].pop("general.architecture", None)  # llama-imatrix writes none
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["wiki.train.raw", "code.txt"])
    w.add_uint32("imatrix.chunk_count", 17)
    w.add_uint32("imatrix.chunk_size", 512)
    for name in sorted(sums):
        w.add_tensor(f"{name}.in_sum2", sums[name])
        w.add_tensor(f"{name}.counts", counts[name].reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # iqkq's writer gives the same file
    g2 = d / "imatrix-iqkq.gguf"
    write_gguf(g2, sums, counts, datasets=["wiki.train.raw", "code.txt"], chunk_count=17, chunk_size=512)
    return {"legacy": legacy, "gguf": g, "gguf_iqkq": g2, "ref": ref}


def _src(model):
    return iqkq.gguf.read(model)


def _quantize_ref(f, name, qtype, im=None):
    t = f.tensor(name)
    return iqkq.quantize(t, qtype, imatrix=im).data


def _out_bytes(path):
    f = iqkq.gguf.read(path)
    return f, {ti.name: f.tensor_bytes(ti) for ti in f.tensors}


RULES = "ffn_down=q8_0,attn_[qk]\\.=iq3_xxs,attn_v=q8_0_r8,blk\\.1\\.=iq4_ks_r4,attn=q8_k_r8"


# ----------------------------------------------------------------------------- rules
def test_parse_rules_and_recipe(tmp_path):
    rs = cook.parse_rules("a=q8_0, b.*=iq4_ks ,c=Q8_0")
    assert [(r.pattern, r.type) for r in rs] == [("a", "q8_0"), ("b.*", "iq4_ks"), ("c", "Q8_0")]
    assert cook.parse_rules({"x": "q8_0"})[0].matches("blk.x.y")
    assert cook.parse_rules([("x", "q8_0"), "y=iq4_ks"])[1].type == "iq4_ks"
    rec = tmp_path / "recipe.txt"
    rec.write_text("# a comment\n\nffn_(up|gate)=iq4_ks\n  attn_v\\.weight=q8_0   \n# end\nx{1,2}=q8_0\n")
    rs = cook.load_recipe(rec)
    assert [(r.pattern, r.type) for r in rs] == [("ffn_(up|gate)", "iq4_ks"), ("attn_v\\.weight", "q8_0"),
                                                  ("x{1,2}", "q8_0")]
    assert rs[2].where == "recipe.txt:6"
    for bad, what in [("a(=q8_0", "bad regular expression"), ("a=q9_9", "unknown type 'q9_9'"),
                      ("novalue", "not a regex=type rule"), ("a=", "no type")]:
        with pytest.raises(cook.CookError, match=what):
            cook.parse_rules(bad)
    with pytest.raises(cook.CookError, match=r"rule recipe.txt:2 b=nope: unknown type"):
        rec.write_text("a=q8_0\nb=nope\n")
        cook.load_recipe(rec)
    with pytest.raises(cook.CookError, match="no such file|No such file"):
        cook.load_recipe(tmp_path / "missing.txt")


def test_plan_rules_first_match_and_llama_quantize_selection(model):
    p = cook.plan(model, RULES, default="iq4_ks")
    by = {e.name: e for e in p.entries}
    assert [e.name for e in p.entries] == [s[0] for s in _tensor_specs()]  # source order
    # llama-quantize's selection: 1-D tensors, norms, ffn_gate_inp stay
    for n in ("blk.0.attn_norm.weight", "output_norm.weight", "blk.1.ffn_gate_inp.weight"):
        assert by[n].action == "copy" and by[n].dst_type == by[n].src_type
    assert by["blk.0.attn_norm.weight"].reason == "1-D"
    assert by["blk.1.ffn_gate_inp.weight"].reason == "expert gating"
    # first match wins, in order
    assert by["blk.0.attn_q.weight"].dst_type == "iq3_xxs"           # rule 2 before rule 5
    assert by["blk.1.attn_q.weight"].dst_type == "iq3_xxs"           # rule 2 before rule 4
    assert by["blk.0.attn_v.weight"].dst_type == "q8_0_r8"
    assert by["blk.0.attn_output.weight"].dst_type == "q8_k_r8"      # rule 5
    assert by["blk.1.attn_output.weight"].dst_type == "iq4_ks_r4"    # rule 4 before rule 5
    assert by["blk.1.ffn_down_exps.weight"].dst_type == "q8_0"       # rule 1 before rule 4
    assert by["blk.1.ffn_up_exps.weight"].dst_type == "iq4_ks_r4"
    assert by["blk.0.ffn_up.weight"].dst_type == "iq4_ks" and by["blk.0.ffn_up.weight"].rule is None  # default
    assert by["output.weight"].dst_type == "iq4_ks"
    # token embeddings: an interleaved type becomes its plain twin (as llama-quantize)
    p2 = cook.plan(model, "token_embd=q8_0_r8")
    assert {e.name: e for e in p2.entries}["token_embd.weight"].dst_type == "q8_0"
    # no default: unmatched tensors are copied
    assert {e.name: e for e in p2.entries}["blk.0.attn_q.weight"].action == "copy"
    # rows not a multiple of the interleave -> the plain type
    p3 = cook.plan(model, "blk.1.ffn_gate_inp=q8_0_r8,output=q8_0_r8,token_embd=iq4_ks_r4")
    assert {e.name: e for e in p3.entries}["token_embd.weight"].dst_type == "iq4_ks"


def test_change_type_table_by_name():
    assert cook.change_type_if_necessary("iq4_ks", 320) == ("iq4_nl", "K=320 is not a multiple of 256")
    assert cook.change_type_if_necessary("q4_K", 320)[0] == "q5_0"
    assert cook.change_type_if_necessary("q5_K", 320)[0] == "q6_0"
    assert cook.change_type_if_necessary("q6_K", 320)[0] == "q8_0"
    assert cook.change_type_if_necessary("q8_k_r8", 320)[0] == "q8_0"
    assert cook.change_type_if_necessary("iq3_xxs_r4", 512) == ("iq3_xxs_r4", None)
    assert cook.change_type_if_necessary("q8_0", 320) == ("q8_0", None)
    with pytest.raises(cook.CookError, match="no fallback"):
        cook.change_type_if_necessary("iq2_bn", 96)


# ----------------------------------------------------------------------------- bytes, metadata
def test_cook_bytes_metadata_and_layout(model, imatrix_files, tmp_path):
    out = tmp_path / "out.gguf"
    buf = io.StringIO()
    rep = iqkq.quantize_model(model, out, RULES, default="iq4_ks", imatrix=imatrix_files["legacy"], threads=2,
                              file=buf)
    src = _src(model)
    dst, data = _out_bytes(out)
    ref = dict(read_imatrix(imatrix_files["legacy"]))  # the values llama-quantize uses (sum / ncall)
    assert [t.name for t in dst.tensors] == [t.name for t in src.tensors]
    assert dst.alignment == 64 and all(t.offset % 64 == 0 for t in dst.tensors)
    by = {e.name: e for e in rep.plan.entries}
    for ti in src.tensors:
        e = by[ti.name]
        assert dst.tensor_info(ti.name).type_name == e.dst_type
        if not e.quantized:
            assert np.array_equal(data[ti.name], src.tensor_bytes(ti)), ti.name
            continue
        key = {"blk.0.ffn_gate.weight": "blk.0.ffn_up.weight",
               "blk.1.ffn_gate_exps.weight": "blk.1.ffn_up_exps.weight"}.get(ti.name, ti.name)
        im = ref.get(key)
        if im is not None and len(ti.shape) == 3:
            im = im.reshape(ti.shape[0], ti.shape[-1])
        assert e.imatrix_key == (key if im is not None else None), ti.name
        assert np.array_equal(data[ti.name], _quantize_ref(src, ti.name, e.dst_type, im)), ti.name
    # the per-expert imatrix matters (bytes differ from a cook without one)
    e3 = "blk.1.ffn_up_exps.weight"
    assert not np.array_equal(data[e3], _quantize_ref(src, e3, "iq4_ks_r4"))
    # K = 320 with iq4_ks default: ffn_down is q8_0 by rule 1 (no fallback needed for q8_0)
    assert by["blk.0.ffn_down.weight"].dst_type == "q8_0" and not by["blk.0.ffn_down.weight"].fallback
    # metadata: everything copied with its type; llama-quantize's keys set
    sm, dm = src.metadata, dst.metadata
    changed = {"general.file_type", "general.quantization_version", "quantize.imatrix.file",
               "quantize.imatrix.dataset", "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count",
               "split.count"}
    for k, v in sm.typed_items():
        if k not in changed:
            assert dm.typed(k) == v, k
    assert "split.count" not in dm
    assert [k for k in dm if k in sm] == [k for k in sm if k in dm]  # order kept
    assert dm.typed("general.file_type") == iqkq.gguf.GGUFValue(145, "UINT32")  # LLAMA_FTYPE_MOSTLY_IQ4_KS
    assert list(dm).index("general.file_type") == list(sm).index("general.file_type")  # set in place
    assert dm.typed("general.quantization_version") == iqkq.gguf.GGUFValue(2, "UINT32")
    assert dm.typed("quantize.imatrix.file") == iqkq.gguf.GGUFValue(str(imatrix_files["legacy"]), "STRING")
    assert dm.typed("quantize.imatrix.dataset") == iqkq.gguf.GGUFValue("calibration.txt", "STRING")
    assert dm.typed("quantize.imatrix.entries_count") == iqkq.gguf.GGUFValue(len(ref), "INT32")
    assert dm.typed("quantize.imatrix.chunks_count") == iqkq.gguf.GGUFValue(42, "INT32")
    assert os.path.getsize(out) == rep.out_size
    assert dst.is_canonical
    # progress: a line per tensor, the fallback-free summary
    log = buf.getvalue()
    n = len(src.tensors)
    assert f"[ 1/{n}] token_embd.weight f16 → iq4_ks {H}×{V}" in log
    assert f"blk.0.attn_norm.weight f32 → f32 {H} " in log and "copied (1-D)" in log
    assert "blk.0.attn_q.weight bf16 → iq3_xxs 256×256" in log
    assert "no imatrix entry" in log  # output.weight / token_embd have none
    assert f"cooked {n} tensors" in log
    # a q8_0 cook reads back in gguf-py with the same values
    out2 = tmp_path / "q8.gguf"
    iqkq.quantize_model(model, out2, default="q8_0", progress=False)
    r = gguf.GGUFReader(str(out2))
    t = next(t for t in r.tensors if t.name == "blk.1.attn_q.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
    q = iqkq.gguf.read(out2).tensor("blk.1.attn_q.weight")
    assert np.array_equal(gguf.quants.dequantize(t.data, t.tensor_type), iqkq.dequantize(q))
    assert int(r.fields["general.file_type"].parts[-1][0]) == 7


def test_fallback(model, tmp_path):
    # q8_k_r8 needs K % 256: ffn_down (K = 320) falls back to q8_0, logged and counted
    out = tmp_path / "fb.gguf"
    buf = io.StringIO()
    rep = iqkq.quantize_model(model, out, "ffn_down\\.=q8_k_r8", file=buf)
    e = {e.name: e for e in rep.plan.entries}["blk.0.ffn_down.weight"]
    assert (e.wanted, e.dst_type, e.fallback) == ("q8_k_r8", "q8_0", True)
    src, (_, data) = _src(model), _out_bytes(out)
    assert np.array_equal(data[e.name], _quantize_ref(src, e.name, "q8_0"))
    assert rep.n_fallback == 1
    log = buf.getvalue()
    assert "fallback q8_k_r8 → q8_0: K=320 is not a multiple of 256" in log
    assert "1 of 1 tensor(s) required fallback quantization" in log
    # iq4_ks with K = 320 falls back to iq4_nl: cooked when iqkq has iq4_nl, else a plan-time error
    out2 = tmp_path / "fb2.gguf"
    if "iq4_nl" in HAVE:
        rep = iqkq.quantize_model(model, out2, "ffn_down\\.=iq4_ks", progress=False)
        e = {e.name: e for e in rep.plan.entries}["blk.0.ffn_down.weight"]
        assert (e.wanted, e.dst_type, e.fallback) == ("iq4_ks", "iq4_nl", True)
        assert np.array_equal(_out_bytes(out2)[1][e.name], _quantize_ref(src, e.name, "iq4_nl"))
    else:
        with pytest.raises(cook.CookError) as ei:
            iqkq.quantize_model(model, out2, "ffn_down\\.=iq4_ks", progress=False)
        msg = str(ei.value)
        assert "'blk.0.ffn_down.weight'" in msg and "ffn_down\\.=iq4_ks" in msg and "iq4_nl" in msg
        assert not out2.exists() and os.listdir(tmp_path) == [out.name]


def test_imatrix_formats_agree(model, imatrix_files, tmp_path):
    a, b = read_imatrix(imatrix_files["legacy"]), read_imatrix(imatrix_files["gguf"])
    assert (a.format, b.format) == ("legacy", "gguf")
    assert set(a) == set(b) == set(imatrix_files["ref"])
    for k, v in imatrix_files["ref"].items():
        np.testing.assert_allclose(a[k], v, rtol=1e-6)
        assert np.array_equal(b[k], v)
    assert (b.datasets, b.chunk_count, b.chunk_size) == (["wiki.train.raw", "code.txt"], 17, 512)
    assert iqkq.gguf.read(imatrix_files["gguf"]).metadata["general.type"] == "imatrix"
    assert "general.architecture" not in iqkq.gguf.read(imatrix_files["gguf"]).metadata
    assert imatrix_files["gguf_iqkq"].read_bytes() == imatrix_files["gguf"].read_bytes()
    assert (a.datasets, a.chunk_count) == (["calibration.txt"], 42)
    # gguf: counts of 0 give 1.0 (mainline's partial data rule)
    g2 = tmp_path / "partial.gguf"
    write_gguf(g2, {"w": np.full((2, 4), 3.0, np.float32)}, {"w": np.array([3.0, 0.0], np.float32)}, datasets=["d"])
    assert read_imatrix(g2)["w"].tolist() == [1.0] * 8
    # cook with the GGUF imatrix: bytes from its values; metadata from its keys
    out = tmp_path / "g.gguf"
    rep = iqkq.quantize_model(model, out, "ffn_up_exps=iq4_ks,ffn_down=q8_0", default="iq3_xxs", imatrix=imatrix_files["gguf"],
                              progress=False)
    src, (dst, data) = _src(model), _out_bytes(out)
    n = "blk.1.ffn_up_exps.weight"
    assert np.array_equal(data[n], _quantize_ref(src, n, "iq4_ks", b[n].reshape(E, H)))
    n = "blk.1.ffn_gate_exps.weight"  # no entry of its own: ffn_up_exps' (llama-quantize's lookup)
    assert {e.name: e for e in rep.plan.entries}[n].imatrix_key == "blk.1.ffn_up_exps.weight"
    assert np.array_equal(data[n], _quantize_ref(src, n, "iq3_xxs", b["blk.1.ffn_up_exps.weight"].reshape(E, H)))
    m = dst.metadata
    assert m.typed("quantize.imatrix.dataset") == iqkq.gguf.GGUFValue("wiki.train.raw", "STRING")
    assert m.typed("quantize.imatrix.chunks_count") == iqkq.gguf.GGUFValue(17, "INT32")
    assert m.typed("general.file_type").value == 23  # LLAMA_FTYPE_MOSTLY_IQ3_XXS
    # writer / reader round trip of the legacy format
    p = tmp_path / "rt.dat"
    write_legacy(p, IMatrix({"x": np.arange(4, dtype=np.float32)}, datasets=["ds"], chunk_count=3), ncall=5)
    r = read_imatrix(p)
    assert r["x"].tolist() == [0, 1, 2, 3] and r.datasets == ["ds"] and r.chunk_count == 3


def test_requantize_and_pass_through(tmp_path):
    rng = np.random.default_rng(3)
    q = iqkq.quantize(_weights(rng, (32, 256)), "q8_0")
    nb = iqkq.gguf.ggml_type(RAW_ONLY).nbytes((32, 256))
    raw = iqkq.RawTensor(rng.integers(0, 255, nb, dtype=np.uint8), RAW_ONLY, (32, 256))
    src = tmp_path / "mixed.gguf"
    iqkq.gguf.save(src, {"a.weight": q, "b.weight": raw, "c.weight": _weights(rng, (32, 256))},
                   {"general.architecture": "llama"})
    out = tmp_path / "o.gguf"
    with pytest.warns(UserWarning, match="a.weight: re-quantizing q8_0 → iq4_ks"):
        rep = iqkq.quantize_model(src, out, default="iq4_ks", progress=False)
    by = {e.name: e for e in rep.plan.entries}
    assert by["a.weight"].action == "requantize" and by["b.weight"].action == "copy"
    assert f"cannot convert {RAW_ONLY}" in by["b.weight"].reason
    f, data = _out_bytes(out)
    assert np.array_equal(data["a.weight"], iqkq.quantize(iqkq.dequantize(q), "iq4_ks").data)
    assert np.array_equal(data["b.weight"], raw.data)
    assert f.tensor_info("b.weight").type_name == RAW_ONLY
    # a tensor already of the target type is copied
    rep = iqkq.quantize_model(src, tmp_path / "o2.gguf", default="q8_0", progress=False)
    assert {e.name: e for e in rep.plan.entries}["a.weight"].reason == "already q8_0"


def test_same_metadata_and_tensors_as_ik_llama_quantize(tmp_path):
    # tests/data/gguf/ik_llama_quantize_iq4_ks.gguf is `llama-quantize small-f32.gguf out.gguf IQ4_KS` of
    # ik_llama.cpp @ 8337e4cd (see its README): rebuild its f32 source (same keys, N(0, 0.02) weights drawn
    # from default_rng(0) in file order, norms 1) and cook it with iq4_ks
    ik = iqkq.gguf.read(os.path.join(os.path.dirname(__file__), "data", "gguf", "ik_llama_quantize_iq4_ks.gguf"))
    meta = iqkq.gguf.GGUFMetadata([(k, v) for k, v in ik.kv if k != "general.quantization_version"])
    meta["general.file_type"] = iqkq.gguf.GGUFValue(0, "UINT32")  # LLAMA_FTYPE_ALL_F32
    rng = np.random.default_rng(0)
    tensors = {t.name: (np.ones(t.shape, np.float32) if len(t.shape) == 1 else
                        rng.normal(0, 0.02, t.shape).astype(np.float32)) for t in ik.tensors}
    src = tmp_path / "small-f32.gguf"
    iqkq.gguf.save(src, tensors, meta)
    out = tmp_path / "out.gguf"
    # ik's IQ4_KS mixture gives attn_v iq5_k and output q6_K (iqkq has neither): rules for those two
    iqkq.quantize_model(src, out, "attn_v=q8_0,^output\\.=q8_0", default="iq4_ks", progress=False)
    o = iqkq.gguf.read(out)
    assert o.metadata == ik.metadata  # every key, value, type and position, file_type 145 in place, version last
    assert [(t.name, t.shape) for t in o.tensors] == [(t.name, t.shape) for t in ik.tensors]
    for a, b in zip(o.tensors, ik.tensors):
        if b.name in ("blk.0.attn_v.weight", "output.weight"):
            continue
        assert a.type_name == b.type_name, a.name
        x, y = o.tensor_bytes(a), ik.tensor_bytes(b)
        if a.type_name == "f32":
            assert np.array_equal(x, y), a.name
        else:
            # ik's file comes from a -march=native build (the oracle vectors, which iqkq reproduces bit for
            # bit, from -ffp-contract=off): the low bytes of some float32 row scales (and a few quants that
            # follow from them) differ, as FMA contraction would make them; the rest is identical
            assert (x == y).mean() > 0.98, a.name


# ----------------------------------------------------------------------------- dry run, progress, errors
def test_dry_run_and_quiet(model, tmp_path, capsys):
    out = tmp_path / "dry.gguf"
    buf = io.StringIO()
    rep = iqkq.quantize_model(model, out, RULES, default="iq4_ks", dry_run=True, file=buf)
    assert not out.exists() and os.listdir(tmp_path) == []
    lines = buf.getvalue().splitlines()
    assert len(lines) == len(rep.plan.entries) + 1
    assert "blk.0.attn_q.weight" in lines[2] and "bf16 → iq3_xxs" in lines[2] and "0.131 MB →  0.025 MB" in lines[2]
    assert lines[-1].endswith(f"output file {cook._mb(rep.out_size)} ({rep.out_size} bytes)")
    iqkq.quantize_model(model, out, RULES, default="iq4_ks", progress=False)
    assert os.path.getsize(out) == rep.out_size
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("kw, what", [
    (dict(rules="attn=q8_0,ffn=iq9_xx"), "rule --custom-q rule 2 ffn=iq9_xx: unknown type 'iq9_xx'"),
    (dict(rules="attn(=q8_0"), "bad regular expression"),
    (dict(default="nope"), "unknown type 'nope'"),
    (dict(rules=f"ffn_up={LACKING}"), f"tensor 'blk.0.ffn_up.weight' (rule --custom-q rule 1 ffn_up={LACKING}, "
                                      f"asked for {LACKING}): iqkq has no type {LACKING}"),
    (dict(imatrix="missing.dat"), "imatrix missing.dat: no such file"),
    (dict(imatrix={"blk.0.attn_q.weight": np.ones(100, np.float32)}, default="q8_0"),
     "imatrix entry 'blk.0.attn_q.weight' has 100 values, but tensor 'blk.0.attn_q.weight'"),
])
def test_errors_before_any_work(model, tmp_path, kw, what, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "x.gguf"
    with pytest.raises(cook.CookError) as ei:
        iqkq.quantize_model(model, out, **kw, progress=False)
    assert what in str(ei.value)
    assert os.listdir(tmp_path) == []


def test_error_while_cooking_leaves_nothing(tmp_path):
    rng = np.random.default_rng(5)
    bad = _weights(rng, (8, 256))
    bad[3, 7] = np.nan
    src = tmp_path / "nan.gguf"
    iqkq.gguf.save(src, {"a.weight": _weights(rng, (8, 256)), "b.weight": bad}, {"general.architecture": "llama"})
    out = tmp_path / "o.gguf"
    out.write_bytes(b"old")
    with pytest.raises(cook.CookError, match="tensor 'b.weight': .*NaN or infinite.*nothing was written"):
        iqkq.quantize_model(src, out, default="iq4_ks", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["nan.gguf", "o.gguf"] and out.read_bytes() == b"old"
    # an imatrix given as a mapping: no file to name, the other keys are set
    rep = iqkq.quantize_model(src, out, "a=q8_0", imatrix={"a.weight": np.ones(256, np.float32)}, progress=False)
    m = iqkq.gguf.read(out).metadata
    assert "quantize.imatrix.file" not in m and m.typed("quantize.imatrix.entries_count").value == 1
    assert m.typed("general.file_type").value == 7 and rep.n_quantized == 1


def test_missing_source_and_folder(model, tmp_path):
    with pytest.raises(cook.CookError, match="no such file"):
        iqkq.quantize_model(tmp_path / "nope.gguf", tmp_path / "x.gguf", default="q8_0")
    with pytest.raises(cook.CookError, match="does not exist"):
        iqkq.quantize_model(model, tmp_path / "no" / "x.gguf", default="q8_0", progress=False)
    with pytest.raises(cook.CookError, match="replace the input"):
        iqkq.quantize_model(model, model, default="q8_0", progress=False)


def test_cli(model, imatrix_files, tmp_path, capsys):
    rec = tmp_path / "recipe.txt"
    rec.write_text("# experts\nffn_down_exps=q8_0_r8\nexps=iq4_ks\n\nattn_v=q8_0\n")
    out = tmp_path / "cli.gguf"
    rc = main(["quantize", str(model), str(out), "--recipe", str(rec), "--custom-q", "ffn_down=q8_0",
               "--default", "iq3_xxs", "--imatrix", str(imatrix_files["gguf"]), "--threads", "1", "--quiet"])
    assert rc == 0 and capsys.readouterr() == ("", "")
    lib = tmp_path / "lib.gguf"
    iqkq.quantize_model(model, lib, cook.load_recipe(rec) + cook.parse_rules("ffn_down=q8_0"), default="iq3_xxs",
                        imatrix=imatrix_files["gguf"], progress=False)
    assert out.read_bytes() == lib.read_bytes()
    # --recipe rules come first, then --custom-q: ffn_down_exps=q8_0_r8 wins over ffn_down=q8_0
    assert iqkq.gguf.read(out).tensor_info("blk.1.ffn_down_exps.weight").type_name == "q8_0_r8"
    assert iqkq.gguf.read(out).tensor_info("blk.1.ffn_up_exps.weight").type_name == "iq4_ks"
    # dry run prints the plan on stdout and writes nothing
    rc = main(["quantize", str(model), str(tmp_path / "d.gguf"), "--default", "q8_0", "--dry-run"])
    o, e = capsys.readouterr()
    assert rc == 0 and "blk.0.ffn_up.weight" in o and "output file" in o and not (tmp_path / "d.gguf").exists()
    # errors: one line, no traceback, non-zero
    for args, what in [(["--custom-q", "a=zz"], "unknown type 'zz'"),
                       (["--custom-q", "a(=q8_0"], "bad regular expression"),
                       (["--recipe", str(tmp_path / "none.txt")], "recipe"),
                       (["--imatrix", str(tmp_path / "none.dat")], "no such file"),
                       (["--dask", "local:x"], "local[:WORKERS]")]:
        rc = main(["quantize", str(model), str(tmp_path / "e.gguf"), "--default", "q8_0", *args])
        o, e = capsys.readouterr()
        assert rc != 0 and what in e and "Traceback" not in e and len(e.strip().splitlines()) == 1, (args, e)
        assert not (tmp_path / "e.gguf").exists()
    rc = main(["quantize", str(tmp_path / "none.gguf"), str(tmp_path / "e.gguf"), "--default", "q8_0"])
    o, e = capsys.readouterr()
    assert rc != 0 and "no such file" in e and len(e.strip().splitlines()) == 1


def test_cli_subprocess_error_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "iqkq", "quantize", str(tmp_path / "none.gguf"),
                        str(tmp_path / "o.gguf"), "--custom-q", "x=q8_0"], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- streaming memory
_RSS_SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    import numpy as np, psutil, iqkq
    src, dst, qtype = sys.argv[1], sys.argv[2], sys.argv[3]
    proc = psutil.Process()

    def hwm():  # peak resident set since the last reset (Linux: VmHWM)
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmHWM:"))

    try:  # reset the peak so that what the imports used does not count (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    base = proc.memory_info().rss
    sampled, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            sampled.append(proc.memory_info().rss)
            time.sleep(0.002)

    th = threading.Thread(target=sample)
    th.start()
    rep = iqkq.quantize_model(src, dst, default=qtype, threads=2, progress=False)
    done.set()
    th.join()
    peak = max(max(sampled), hwm() if reset else 0)
    print(json.dumps({"base": base, "peak": peak, "reset": reset, "src": rep.src_bytes, "s": rep.seconds}))
""")


@pytest.mark.parametrize("qtype", ["q8_0", "iq4_ks"])
def test_peak_rss_is_bounded(tmp_path, qtype):
    # a 96 MiB BF16 model of 24 tensors of 4 MiB (8 MiB as float32); allowed growth of the peak RSS:
    # 4 x the largest tensor as float32 = 32 MiB, a third of the model
    rows, K, n = 2048, 1024, 24
    rng = np.random.default_rng(0)
    base = _bf16_bits(_weights(rng, (rows, K)))
    src = tmp_path / "big.gguf"
    decl = [(f"blk.{i}.ffn_up.weight", (rows, K), "bf16") for i in range(n)]
    with iqkq.gguf.GGUFStreamWriter(src, {"general.architecture": "llama"}, decl) as w:
        for i in range(n):
            w.write(decl[i][0], np.roll(base, i, axis=1).view(np.uint8))
    env = dict(os.environ)
    if "ASAN_OPTIONS" in env or "asan" in env.get("LD_PRELOAD", ""):
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0"  # freed memory is returned
    r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(src), str(tmp_path / "out.gguf"), qtype],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    import json

    m = json.loads(r.stdout.strip().splitlines()[-1])
    largest_f32 = rows * K * 4
    allowed = 4 * largest_f32
    assert m["src"] == n * rows * K * 2 and m["src"] >= 3 * allowed  # the model is several times the bound
    assert m["peak"] - m["base"] < allowed, ((m["peak"] - m["base"]) / 2**20, m)


# ----------------------------------------------------------------------------- Dask
def test_dask_local_cluster_same_bytes(model, imatrix_files, tmp_path):
    pytest.importorskip("distributed")
    ref = tmp_path / "threads.gguf"
    iqkq.quantize_model(model, ref, RULES, default="iq4_ks", imatrix=imatrix_files["legacy"], progress=False)
    out = tmp_path / "dask.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # distributed's own deprecation / resource warnings
        rep = iqkq.quantize_model(model, out, RULES, default="iq4_ks", imatrix=imatrix_files["legacy"],
                                  scheduler="local:2", threads=1, progress=False, max_in_flight=3)
    assert rep.workers == 2 and rep.scheduler == "dask LocalCluster, 2 workers"
    assert out.read_bytes() == ref.read_bytes()


def test_large_tensors_quantize_in_row_chunks_with_the_same_bytes(model, imatrix_files, tmp_path, monkeypatch):
    """Tensors above the chunk size are converted and quantized a few rows at a time (never
    across experts, whole row groups of interleaved types): the file is byte-identical."""
    import iqkq.cook as cook

    whole = tmp_path / "whole.gguf"
    iqkq.quantize_model(model, whole, RULES, default="iq4_ks", imatrix=imatrix_files["legacy"], threads=2,
                        progress=False)
    monkeypatch.setattr(cook, "_CHUNK_F32_BYTES", 8 * 4 * 256)  # 8 rows of 256 floats
    assert list(cook._row_chunks(2, 20, 256, 8)) == [(0, 0, 8), (0, 8, 8), (0, 16, 4), (1, 0, 8), (1, 8, 8), (1, 16, 4)]
    assert list(cook._row_chunks(1, 16, 256, 4)) == [(0, 0, 8), (0, 8, 8)]
    chunked = tmp_path / "chunked.gguf"
    iqkq.quantize_model(model, chunked, RULES, default="iq4_ks", imatrix=imatrix_files["legacy"], threads=2,
                        progress=False)
    assert whole.read_bytes() == chunked.read_bytes()
