"""A model file as people download them: a llama.cpp Q4_K_M-style mix (mostly q5_0 where the
rows are not a multiple of 256, q4_K, q6_K for attn_v / ffn_down, q8_0 for the embedding, f32
norms), Gemma-3-shaped (n_embd 640, so several tensors need the 32-block fallbacks), written with
gguf-py's GGUFWriter. Every quantized tensor loads as a QuantizedTensor (through gguf-py's reader
and through iqkq.gguf), dequantizes bit for bit like gguf.quants.dequantize, and multiplies."""
import gguf
import numpy as np
import pytest

import iqkq

Q = gguf.GGMLQuantizationType
N_EMBD, N_FF, N_HEAD, HD, VOCAB = 640, 2048, 4, 256, 512


def _mix():
    """(name, numpy shape, iqkq type or None for f32), as llama-quantize's Q4_K_M makes it for
    this architecture (q4_K -> q5_0 and q6_K -> q8_0 where K = 640 is not a multiple of 256)."""
    out = [("token_embd.weight", (VOCAB, N_EMBD), "q8_0")]
    for b in range(2):
        p = f"blk.{b}."
        out += [(p + "attn_norm.weight", (N_EMBD,), None),
                (p + "attn_q.weight", (N_HEAD * HD, N_EMBD), "q5_0"),
                (p + "attn_k.weight", (HD, N_EMBD), "q5_0"),
                (p + "attn_v.weight", (HD, N_EMBD), "q8_0"),
                (p + "attn_output.weight", (N_EMBD, N_HEAD * HD), "q4_K"),
                (p + "ffn_gate.weight", (N_FF, N_EMBD), "q5_0"),
                (p + "ffn_up.weight", (N_FF, N_EMBD), "q5_0"),
                (p + "ffn_down.weight", (N_EMBD, N_FF), "q6_K"),
                (p + "ffn_norm.weight", (N_EMBD,), None)]
    out += [("output_norm.weight", (N_EMBD,), None)]
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("real") / "gemma3-q4_k_m.gguf"
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_embedding_length(N_EMBD)
    w.add_block_count(2)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    src = {}
    for name, shape, qt in _mix():
        a = (rng.standard_t(5, size=shape) * 0.02).astype(np.float32)
        src[name] = a
        if qt is None:
            w.add_tensor(name, a)
        else:
            q = iqkq.quantize(a, qt)
            w.add_tensor(name, q.data.reshape(shape[0], -1), raw_shape=q.data.reshape(shape[0], -1).shape,
                         raw_dtype=Q(q.type_id))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, src


def test_every_tensor_loads_dequantizes_like_gguf_py_and_multiplies(model):
    path, src = model
    reader = gguf.GGUFReader(str(path))
    kinds = {}
    x = np.random.default_rng(1).standard_normal((3, 4096)).astype(np.float32)
    for t in reader.tensors:
        if t.tensor_type == Q.F32:
            continue
        q = iqkq.gguf.from_reader_tensor(t)
        assert isinstance(q, iqkq.QuantizedTensor) and q.shape == src[t.name].shape, t.name
        kinds[q.qtype] = kinds.get(q.qtype, 0) + 1
        ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(q.shape)
        deq = iqkq.dequantize(q)
        np.testing.assert_array_equal(deq.view(np.uint32), ref.astype(np.float32).view(np.uint32), err_msg=t.name)
        K = q.shape[-1]
        y = iqkq.matmul(q, x[:, :K])
        y_ref = x[:, :K].astype(np.float64) @ deq.astype(np.float64).T
        assert np.linalg.norm(y - y_ref) <= 2e-2 * np.linalg.norm(y_ref), t.name
        # the bytes are what iqkq.quantize writes (byte-exact with ik_llama.cpp's quantizer)
        assert q == iqkq.quantize(src[t.name], q.qtype), t.name
    assert kinds == {"q8_0": 3, "q5_0": 8, "q4_K": 2, "q6_K": 2}
    # iqkq's own reader gives the same tensors
    f = iqkq.gguf.read(path)
    for ti in f.tensors:
        if ti.type_name != "f32":
            assert f.tensor(ti.name) == iqkq.gguf.from_reader_tensor(reader.get_tensor([t.name for t in reader.tensors].index(ti.name)))
