"""Public API surface: type table, QuantizedTensor wrapping, numpy interop, threads, ISA."""
import numpy as np
import pytest

import iqkq
from conftest import TYPE_NAMES, rng


def test_all_exports():
    for name in iqkq.__all__:
        assert hasattr(iqkq, name)
    for name in ("quantize", "dequantize", "matmul", "repack", "types", "isa", "set_num_threads",
                 "get_num_threads", "QuantizedTensor"):
        assert name in iqkq.__all__


def test_types_table():
    ts = iqkq.types()
    assert [t.name for t in ts][:2] == ["q8_0", "q8_0_r8"]
    by = {t.name: t for t in ts}
    q8 = by["q8_0"]
    assert (q8.ggml_id, q8.block_size, q8.type_size, q8.row_meta_size, q8.interleave, q8.act_format,
            q8.needs_imatrix) == (8, 32, 34, 0, 1, "q8_2_x4", False)
    r8 = by["q8_0_r8"]
    assert (r8.ggml_id, r8.interleave, r8.base) == (208, 8, "q8_0")
    assert q8.interleaved == "q8_0_r8"
    for t in ts:
        assert iqkq.type_info(t.name) is t
        assert iqkq.type_info(t.name.upper()) is t
        assert iqkq.type_info(t.ggml_id) is t
        assert iqkq.type_info(np.int32(t.ggml_id)) is t
        assert t.row_bytes(4096) == t.row_meta_size + t.type_size * 4096 // t.block_size


def test_types_match_oracle_traits():
    """Every trait agrees with ik_llama.cpp's own table (types.jsonl, written by the oracle
    build; a copy lives in tests/data)."""
    import json
    from conftest import LOCAL

    rows = {}
    # types_extra.jsonl: the same traits, read from ik_llama.cpp's source, for types the
    # oracle's types.jsonl does not list (each row names its source)
    for name in ("types.jsonl", "types_extra.jsonl"):
        path = LOCAL / name
        for line in (path.read_text().splitlines() if path.exists() else []):
            if line.strip():
                r = json.loads(line)
                rows.setdefault(r["name"], r)
    for t in iqkq.types():
        if t.name == "q8_1_r8":  # no ik_llama.cpp type (its internal large-batch form of q4_K / q5_K)
            continue
        r = rows[t.name]
        assert t.ggml_id == r["id"]
        assert (t.block_size, t.type_size, t.row_meta_size, t.interleave) == (
            r["blck_size"], r["type_size"], r["row_meta_size"], r["packed_rows"])
        assert t.act_format == r["vec_dot_type"] or (t.name == "iq4_ks_r4" and r["vec_dot_type"] == "q8_K32")
        assert t.needs_imatrix == r["requires_imatrix"]
        assert t.row_bytes(4096) == r["row_size_4096"] and t.row_bytes(256) == r["row_size_256"]


def test_quantized_tensor_wraps_without_copy():
    w = rng(0).standard_normal((16, 64)).astype(np.float32)
    q = iqkq.quantize(w, "q8_0")
    rows2d = q.data.reshape(16, -1)  # gguf's (rows, row_bytes) convention
    q2 = iqkq.QuantizedTensor(rows2d, "Q8_0", (16, 64))
    assert np.shares_memory(q2.data, q.data)
    assert q2 == q and q2.qtype == "q8_0" and q2.type_id == 8 and q2.shape == (16, 64)
    assert q2.nbytes == 16 * 68 and q2.bpw == 8.5 and q2.row_bytes == 68
    assert q2.rows_view().shape == (16, 68)
    q3 = iqkq.QuantizedTensor(q.data.tobytes(), 8, [16, 64])
    assert q3 == q
    q4 = iqkq.QuantizedTensor(memoryview(q.data.tobytes()), "q8_0", (16, 64))
    np.testing.assert_array_equal(iqkq.dequantize(q4), iqkq.dequantize(q))
    assert "q8_0" in repr(q)


def test_readonly_and_noncontiguous_inputs():
    w = rng(1).standard_normal((32, 128)).astype(np.float32)
    x = rng(2).standard_normal((5, 128)).astype(np.float32)
    q = iqkq.quantize(w, "q8_0")
    ref = iqkq.matmul(q, x)
    # read-only bytes (as from a memory-mapped GGUF)
    ro = q.data.copy()
    ro.flags.writeable = False
    qro = iqkq.QuantizedTensor(ro, "q8_0", (32, 128))
    np.testing.assert_array_equal(iqkq.matmul(qro, x), ref)
    # non-contiguous bytes are copied once
    big = np.zeros(q.nbytes * 2, np.uint8)
    big[::2] = q.data
    np.testing.assert_array_equal(iqkq.matmul(iqkq.QuantizedTensor(big[::2], "q8_0", (32, 128)), x), ref)
    # non-contiguous / read-only / other-dtype weights and activations
    wt = np.asfortranarray(w)
    assert iqkq.quantize(wt, "q8_0") == q
    wr = w.copy()
    wr.flags.writeable = False
    assert iqkq.quantize(wr, "q8_0") == q
    assert iqkq.quantize(w.astype(np.float64), "q8_0") == iqkq.quantize(w.astype(np.float64).astype(np.float32), "q8_0")
    xs = np.zeros((5, 256), np.float32)
    xs[:, ::2] = x
    np.testing.assert_array_equal(iqkq.matmul(q, xs[:, ::2]), ref)
    np.testing.assert_array_equal(iqkq.matmul(q, x.astype(np.float16).astype(np.float32)),
                                  iqkq.matmul(q, x.astype(np.float16)))
    np.testing.assert_array_equal(iqkq.matmul(q, x.tolist()), ref)
    np.testing.assert_array_equal(iqkq.matmul(q, np.ones(128, np.int64)), iqkq.matmul(q, np.ones(128, np.float32)))


def test_empty_and_tiny_shapes():
    q = iqkq.quantize(np.zeros((0, 64), np.float32), "q8_0")
    assert q.nbytes == 0 and iqkq.dequantize(q).shape == (0, 64)
    assert iqkq.matmul(q, np.ones((3, 64), np.float32)).shape == (3, 0)
    q = iqkq.quantize(np.ones((8, 32)), "q8_0")
    assert iqkq.matmul(q, np.zeros((0, 32), np.float32)).shape == (0, 8)


def test_threads_setting():
    n0 = iqkq.get_num_threads()
    assert n0 >= 1
    try:
        iqkq.set_num_threads(3)
        assert iqkq.get_num_threads() == 3
    finally:
        iqkq.set_num_threads(n0)


def test_isa_switch():
    assert iqkq.isa() in ("amx", "avx512", "avx2", "scalar")
    prev = iqkq.isa()
    try:
        iqkq.set_isa("scalar")
        assert iqkq.isa() == "scalar"
    finally:
        iqkq.set_isa(prev)


def test_isa_env_override(tmp_path):
    import subprocess, sys, os

    env = dict(os.environ, IQKQ_ISA="scalar", IQKQ_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", "import iqkq; print(iqkq.isa(), iqkq.get_num_threads())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["scalar", "3"]
    env["IQKQ_ISA"] = "sse9"
    out = subprocess.run([sys.executable, "-c", "import iqkq"], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "IQKQ_ISA" in out.stderr


def test_gil_released_concurrent_calls():
    """Calls from several Python threads run concurrently and give the single-call result."""
    import threading

    w = rng(3).standard_normal((512, 1024)).astype(np.float32)
    x = rng(4).standard_normal((40, 1024)).astype(np.float32)
    q = iqkq.quantize(w, "q8_0")
    ref = iqkq.matmul(q, x)
    out = [None] * 4

    def work(i):
        out[i] = iqkq.matmul(q, x, threads=2)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for o in out:
        np.testing.assert_array_equal(o, ref)


def test_pool_propagates_task_exceptions():
    """A failing task (e.g. an allocation failure) raises in Python instead of aborting, and
    the thread pool keeps working afterwards."""
    from iqkq import _core

    for threads in (1, 2, 3):
        with pytest.raises(RuntimeError, match="task 5 failed"):
            _core._pool_exception_check(threads, 64, 5)
        assert _core._pool_exception_check(threads, 64, -1) == 64
    q = iqkq.quantize(np.ones((64, 256)), "q8_0")
    assert iqkq.matmul(q, np.ones((40, 256)), threads=2).shape == (40, 64)
