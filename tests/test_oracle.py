"""Byte-exactness against ik_llama.cpp: every oracle case, on every ISA.

quantize: bytes identical. dequantize: bit-identical floats. matmul: within 1e-4 of max|y|
of the oracle's single-thread result for every N (the acceptance bound), and for the types
whose kernels reproduce ik_llama.cpp's float evaluation order, bit-identical.
"""
import numpy as np
import pytest

import iqkq
from conftest import load, oracle_cases

# Types whose matmul reproduces ik_llama.cpp's float order exactly on every path (all of them,
# the large-batch conversions included).
BIT_EXACT_MATMUL = {"q8_0", "q8_0_r8", "q8_k_r8", "iq4_ks", "iq4_ks_r4", "iq3_xxs", "iq3_xxs_r4",
                    "q4_0", "q4_0_r8", "q5_0", "q5_0_r4", "q6_0", "q6_0_r4", "iq4_nl", "iq4_nl_r4",
                    "iq4_xs", "iq4_xs_r8",
                    "q4_K", "q5_K", "q6_K", "q4_k_r4", "q5_k_r4", "q6_k_r4"}


def matmul_cases():
    """One param per (oracle case, N), so a failure names the batch size."""
    out = []
    for p in oracle_cases():
        path = p.values[0]
        with np.load(path) as z:
            ns = [int(v) for v in z["n_values"]]
        for n in ns:
            out.append(pytest.param(path, n, id=f"{path.stem}-N{n}"))
    return out


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


@pytest.mark.parametrize("path,n", matmul_cases())
def test_matmul(path, n, isa):
    z = load(path)
    tname = str(z["type_name"])
    q = iqkq.QuantizedTensor(z["q"], tname, z["w"].shape)
    x, yo = z[f"x_N{n}"], z[f"y_N{n}"]
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


def test_oracle_cases_present():
    """The local subset alone covers every supported type (a fresh clone tests itself)."""
    from conftest import LOCAL

    names = {p.name.split("__")[0] for p in (LOCAL / "public").glob("*.npz")}
    # q8_1_r8 has no ik_llama.cpp type (it is ik's internal large-batch form of q4_K / q5_K,
    # covered by their oracle cases).
    missing = [t.name for t in iqkq.types() if t.name not in names and t.name != "q8_1_r8"]
    assert not missing, f"no local oracle case for {missing}"
