"""Byte-exactness against ik_llama.cpp: every oracle case, on every ISA.

quantize: bytes identical. dequantize: bit-identical floats. matmul: within 1e-4 of max|y|
of the oracle's single-thread result for every N (the acceptance bound), and for the types
whose kernels reproduce ik_llama.cpp's float evaluation order, bit-identical.
"""
import numpy as np
import pytest

import iqkq
from iqkq import _core
from conftest import load, oracle_cases

# Types whose matmul reproduces ik_llama.cpp's float order exactly on every path.
BIT_EXACT_MATMUL = {"q8_0", "q8_0_r8", "iq4_ks", "iq4_ks_r4"}

_TABLE = {r["name"]: r for r in _core.types_table()}


def _large_batch_missing(tname, rows, n):
    """ik_llama.cpp (1 thread) converts this (type, rows, N) to its large-batch type (FORMATS.md
    §11.2), but that type's kernel is not in this build yet (e.g. iq4_ks -> q8_k_r8 before
    q8_k_r8 exists), so iqkq uses the direct kernel and the oracle differs by the
    requantization error (~0.5-1 %). The large-batch path is a separate issue."""
    t = _TABLE[tname]
    ik_converts = t["large_batch"] >= 0 and n >= 32 and rows >= 32 and rows % 8 == 0
    return ik_converts and not _core.uses_large_batch(t["index"], rows, n, 0)


@pytest.mark.parametrize("path", oracle_cases())
def test_quantize_bytes(path, isa):
    z = load(path)
    imat = z["imatrix"] if bool(z["has_imatrix"]) else None
    q = iqkq.quantize(z["w"], str(z["type_name"]), imatrix=imat, threads=2)
    assert q.type_id == int(z["ggml_type_id"])
    assert q.nbytes == z["q"].size
    mism = np.flatnonzero(q.data != z["q"])
    assert mism.size == 0, f"{mism.size} bytes differ, first at byte {mism[:8]}"


@pytest.mark.parametrize("path", oracle_cases())
def test_dequantize_bits(path, isa):
    z = load(path)
    q = iqkq.QuantizedTensor(z["q"], str(z["type_name"]), z["w"].shape)
    deq = iqkq.dequantize(q, threads=2)
    assert deq.dtype == np.float32 and deq.shape == z["deq"].shape
    np.testing.assert_array_equal(deq.view(np.uint32), z["deq"].view(np.uint32))


@pytest.mark.parametrize("path", oracle_cases())
def test_matmul(path, isa):
    z = load(path)
    tname = str(z["type_name"])
    q = iqkq.QuantizedTensor(z["q"], tname, z["w"].shape)
    excused = []
    for n in z["n_values"]:
        x, yo = z[f"x_N{n}"], z[f"y_N{n}"]
        if _large_batch_missing(tname, q.shape[0], int(n)):
            # only a loose sanity bound here (requantization error), see _large_batch_missing
            y = iqkq.matmul(q, x, threads=2, path="direct")
            assert float(np.abs(y - yo).max()) <= 1e-1 * float(np.abs(yo).max()), f"N={n}"
            excused.append(int(n))
            continue
        y = iqkq.matmul(q, x, threads=2)
        assert y.shape == yo.shape
        scale = float(np.abs(yo).max())
        err = float(np.abs(y - yo).max())
        assert err <= 1e-4 * scale, f"N={n}: max|y - y_ik| = {err:g} > 1e-4 * {scale:g}"
        if tname in BIT_EXACT_MATMUL:
            np.testing.assert_array_equal(y.view(np.uint32), yo.view(np.uint32), err_msg=f"N={n}")
        # a 1-D x gives the same values as the first row of a 2-D batch of one
        if n == 1:
            np.testing.assert_array_equal(iqkq.matmul(q, x[0], threads=1), y[0])
    if excused:
        lb = [r["name"] for r in _TABLE.values() if r["index"] == _TABLE[tname]["large_batch"]][0]
        pytest.xfail(f"N={excused}: ik_llama.cpp converts to {lb} here; that kernel is not in this build yet")


def test_oracle_cases_present():
    """The local subset alone covers every supported type (a fresh clone tests itself)."""
    from conftest import LOCAL

    names = {p.name.split("__")[0] for p in (LOCAL / "public").glob("*.npz")}
    missing = [t.name for t in iqkq.types() if t.name not in names]
    assert not missing, f"no local oracle case for {missing}"
