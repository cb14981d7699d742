"""iqkq.limits: the machine-limit microkernels compute what they claim (checksums), release the
GIL, refuse what the CPU lacks; bench fractions use them. No test asserts a speed."""
import doctest
import threading

import numpy as np
import pytest

import iqkq
import iqkq.limits as L
from iqkq import _bench, _core

from conftest import ISAS


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_read_loop_reads_every_word_once(isa_name, threads):
    # Odd length: whole 256-byte blocks for the SIMD loop, a scalar tail, and 5 bytes left over
    # (not a whole 64-bit word) that are not part of the count.
    rng = np.random.default_rng(1)
    n = 3 * 1048576 + 8 * 37 + 5
    buf = rng.integers(0, 256, n, dtype=np.uint8)
    seconds, nbytes, checksum = _core.limits_read(isa_name, buf, threads)
    words = buf[: n // 8 * 8].view(np.uint64)
    assert nbytes == n // 8 * 8
    assert checksum == int(np.sum(words, dtype=np.uint64))
    assert seconds > 0


@pytest.mark.parametrize("threads", [1, 2])
def test_int8_chains_do_the_counted_work(threads):
    # Each task runs iters // 8 iterations; every lane of every chain accumulates a known
    # value per iteration, so the checksum pins the number of chains and lanes, i.e. the
    # operation count the GOPS figure is computed from.
    iters = 8 * 1000
    per_task, ntasks = iters // 8, 8 * threads
    expect = {
        # 4 chains, lane 0: maddubs(3, -2) summed over 2 pairs = -12, madd with ones: -24
        "avx2": (-24 * 4 * per_task) % 2**32,
        # 16 chains x 16 lanes, each vpdpbusd adds 4 * (3 * -2) = -24
        "avx512": (-24 * 16 * 16 * per_task) % 2**32,
    }
    # amx: 4 TDPBSSD chains over tiles A = B = bytes (i % 7 - 3), i < 1024; B in the VNNI
    # layout (row k // 4 holds 4 bytes of each of the 16 columns)
    src = (np.arange(1024) % 7 - 3).astype(np.int64)
    A = src.reshape(16, 64)
    B = src.reshape(16, 16, 4).transpose(1, 0, 2).reshape(16, 64)  # B[n, k] = src[k // 4, 4 n + k % 4]
    expect["amx"] = (4 * per_task * int((A @ B.T).sum())) % 2**32
    ops_per_iter = {"avx2": 4 * 32 * 2, "avx512": 16 * 64 * 2, "amx": 4 * 16 * 16 * 64 * 2}
    for s in L.kernel_sets():
        seconds, ops, checksum = _core.limits_int8(s, iters, threads)
        assert checksum == expect[s] * ntasks % 2**64
        assert ops == ops_per_iter[s] * per_task * ntasks
        assert seconds > 0


def test_peaks_and_bandwidth_positive():
    assert L.read_bandwidth(1, nbytes=8 << 20, repeats=1) > 0
    for s in L.kernel_sets():
        assert L.int8_peak(s, seconds=0.002, repeats=1) > 0
        assert L.fma_peak(s, threads=2, seconds=0.002, repeats=1) > 0


def test_read_pass():
    assert L.read_pass(np.ones(4 << 20, np.uint8), 2) > 0
    with pytest.raises(TypeError, match="uint8"):
        L.read_pass(np.ones(1024, np.float32))


def test_limits_errors():
    with pytest.raises(ValueError, match="scalar kernel set has no int8"):
        L.int8_peak("scalar")
    with pytest.raises(ValueError, match="unknown kernel set"):
        L.fma_peak("sse9")
    with pytest.raises(ValueError, match="threads"):
        L.read_bandwidth(0, nbytes=1 << 20)
    with pytest.raises(ValueError, match="at least 4096"):
        L.read_bandwidth(1, nbytes=100)
    with pytest.raises(ValueError, match="no int8 peak kernel"):
        _core.limits_int8("scalar", 10, 1)
    if not _core.isa_supported("avx512"):  # this CPU lacks it: the native check refuses
        with pytest.raises(ValueError, match="does not support"):
            _core.limits_int8("avx512", 10, 1)


def test_limit_kernels_release_the_gil():
    s = L.kernel_sets()[-1] if L.kernel_sets() else None
    if s is None:
        fn = lambda: _core.limits_read("scalar", np.ones(64 << 20, np.uint8), 1)  # noqa: E731
    else:
        iters = 20000
        sec = _core.limits_int8(s, iters, 1)[0]
        iters = int(iters * 0.15 / max(sec, 1e-6))  # about 0.15 s
        fn = lambda: _core.limits_int8(s, iters, 1)  # noqa: E731
    t = threading.Thread(target=fn)
    count = 0
    t.start()
    while t.is_alive():
        count += 1
    t.join()
    # With the GIL held for the whole call this loop would not run while the kernel does.
    assert count > 100


def test_measure_and_lines():
    lim = L.measure([1, 2], nbytes=8 << 20, repeats=2, seconds=0.002)
    assert set(lim.read_gbps) == {1, 2} and all(v > 0 for v in lim.read_gbps.values())
    assert lim.read_gbps_median[1] <= lim.read_gbps[1]
    assert set(lim.int8_gops) == set(L.kernel_sets())
    d = lim.as_dict()
    assert d["read_gbps"].keys() == {"1", "2"} and d["buffer_bytes"] == 8 << 20
    text = "\n".join(lim.lines())
    assert "streaming read" in text and (not L.kernel_sets() or "int8 peak" in text)
    assert lim.int8(iqkq.isa(), 1) == lim.int8_gops.get(iqkq.isa(), {}).get(1)
    assert L.buffer_bytes(1 << 20) <= max(1 << 20, 64 << 20)


def test_matmul_sweep_fractions_of_limits():
    lim = L.measure([1], nbytes=8 << 20, repeats=1, seconds=0.002, fma=False)
    res = _bench.matmul_sweep(["q8_0"], [1, 32], [1], 64, 256, cold_bytes=1 << 20, min_time=0, log=None, limits=lim)
    cells = {(r["mode"], r["N"]): r for r in res}
    assert cells[("hot", 1)]["frac_of_limit"] is None  # small hot batches have no limit here
    assert cells[("cold", 1)]["frac_of_limit"] == pytest.approx(cells[("cold", 1)]["iqkq_gbps"] / lim.read_gbps[1])
    peak = lim.int8(iqkq.isa(), 1)
    if peak is None:
        assert cells[("hot", 32)]["frac_of_limit"] is None  # scalar set: no int8 peak kernel
    else:
        assert cells[("hot", 32)]["frac_of_limit"] == pytest.approx(cells[("hot", 32)]["iqkq_gflops"] / peak)


def test_cold_copies_are_distinct_and_large_enough():
    q = iqkq.quantize(np.ones((64, 256), np.float32), "q8_0")
    cs = _bench.cold_copies(q, 100_000)
    assert len(cs) >= 2 and sum(c.nbytes for c in cs) > 100_000
    assert not any(np.shares_memory(a.data, b.data) for i, a in enumerate(cs) for b in cs[i + 1:])
    assert all(c == q for c in cs)


def test_numpy_cold_copies_are_copies():
    wT = np.ones((256, 64), np.float32)
    cs = _bench.numpy_cold_copies(wT, 200_000)
    assert len(cs) >= 2 and sum(c.nbytes for c in cs) > 200_000
    assert not any(np.shares_memory(a, b) for i, a in enumerate([wT] + cs) for b in ([wT] + cs)[i + 1:])
    assert all(c.flags.c_contiguous and np.array_equal(c, wT) for c in cs)


def test_doctests():
    r = doctest.testmod(L, extraglobs={"iqkq": iqkq, "np": np})
    assert r.attempted > 0 and r.failed == 0
