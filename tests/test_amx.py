"""The amx kernel set (docs/formats.md §18): large-batch int8 products of q8_k_r8 and q8_0_r8
(and every type converted to them) on AMX-INT8 tiles, bit-identical to the avx512 and scalar
sets. The oracle and generic tests already run once per supported set (conftest's ``isa``
fixture); these add the shapes where the tile kernel hands parts to the AVX-512 kernels
(columns past a multiple of 16, a lone last 8-row group, fewer than 16 rows or columns), the
fused ops, several threads, and the set's detection.

On a CPU without AMX-TILE/AMX-INT8 (or whose OS refuses the tile state) the amx set is not
supported and the tests that need it are skipped, saying so.
"""
import numpy as np
import pytest

import iqkq
from iqkq import _core
from conftest import with_isa

HAVE_AMX = _core.isa_supported("amx")
needs_amx = pytest.mark.skipif(not HAVE_AMX, reason="this CPU (or its OS) offers no AMX-INT8 tiles: amx kernel set not supported")

# Types whose large-batch products run on the tile kernels: the two targets and a few that convert.
TYPES = ["q8_k_r8", "q8_0_r8", "q8_0", "iq4_ks", "iq3_xxs", "q4_K", "q6_K", "iq4_xs", "q5_0"]
# (rows, K, N): remainders on both axes, exact tiles, below the tile minimum.
SHAPES = [(16, 256, 16), (24, 512, 17), (40, 768, 45), (64, 256, 33), (8, 512, 64), (32, 1024, 15), (48, 256, 100)]


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


def test_amx_listed_and_default():
    names = _core.constants()["isas"]
    assert "amx" in names
    supported = [n for n in names if _core.isa_supported(n)]
    # The best supported set is the default (unless IQKQ_ISA chose another at import).
    import os
    if "IQKQ_ISA" not in os.environ:
        assert iqkq.isa() == supported[-1]
    if not HAVE_AMX:
        with pytest.raises(ValueError, match="amx"):
            iqkq.set_isa("amx")


@needs_amx
@pytest.mark.parametrize("tname", TYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_amx_bit_identical(tname, shape):
    rows, K, N = shape
    rng = np.random.default_rng(rows * 1000 + K + N)
    w = rng.standard_normal((rows, K)).astype(np.float32)
    try:
        q = iqkq.quantize(w, tname)
    except ValueError as e:  # a shape the type does not take (e.g. K not a multiple of 256)
        pytest.skip(f"{tname} does not take {rows}x{K}: {e}")
    x = rng.standard_normal((N, K)).astype(np.float32)
    x[N // 2] *= 40.0  # one large-scale row
    ref = with_isa("avx512", iqkq.matmul, q, x)
    assert np.array_equal(_bits(with_isa("scalar", iqkq.matmul, q, x)), _bits(ref))
    for threads in (1, 2, 3):
        got = with_isa("amx", iqkq.matmul, q, x, threads=threads)
        assert np.array_equal(_bits(got), _bits(ref)), (tname, shape, threads)


@needs_amx
def test_amx_nonfinite_rows():
    rng = np.random.default_rng(5)
    q = iqkq.quantize(rng.standard_normal((64, 512)).astype(np.float32), "q8_k_r8")
    x = rng.standard_normal((48, 512)).astype(np.float32)
    x[3, 7] = np.nan
    x[20, 0] = np.inf
    got = with_isa("amx", iqkq.matmul, q, x)
    ref = with_isa("avx512", iqkq.matmul, q, x)
    assert np.isnan(got[3]).all() and np.isnan(got[20]).all()
    assert np.array_equal(_bits(got), _bits(ref))


@needs_amx
@pytest.mark.parametrize("tname", ["q8_0", "iq4_ks", "q4_K"])
def test_amx_fused_ops(tname):
    rng = np.random.default_rng(11)
    nff, K, N = 64, 512, 48
    up = iqkq.quantize(rng.standard_normal((nff, K)).astype(np.float32), tname)
    gate = iqkq.quantize(rng.standard_normal((nff, K)).astype(np.float32), tname)
    x = rng.standard_normal((N, K)).astype(np.float32)
    ref = with_isa("avx512", iqkq.fused_up_gate, up, gate, x)
    got = with_isa("amx", iqkq.fused_up_gate, up, gate, x)
    assert np.array_equal(_bits(got), _bits(ref))


@needs_amx
def test_amx_int8_peak_kernel():
    import iqkq.limits as L
    assert "amx" in L.kernel_sets()
    amx = L.int8_peak("amx", seconds=0.005, repeats=1)
    assert amx > 0
