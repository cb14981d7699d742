"""Malformed GGUF files: every one raises a ValueError that names the problem -- never
struct.error, IndexError, ZeroDivisionError, RecursionError, a crash or an absurd allocation."""
import struct
import tracemalloc

import numpy as np
import pytest

import iqkq
from iqkq.gguf import GGUFFile
from test_gguf import MANY_KV, gguf_py_write, many_tensors


def parse(data: bytes) -> GGUFFile:
    return GGUFFile._from_buffer(data, "<test>")


def s(b) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def kv_u32(key, v):
    return s(key) + struct.pack("<II", 4, v)


def tinfo(name, ne, tid, off):
    return s(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", tid, off)


def gguf_bytes(kvs=(), tinfos=(), data=b"", *, version=3, n_kv=None, n_tensors=None, align=32):
    head = b"GGUF" + struct.pack("<IQQ", version, len(tinfos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(tinfos)
    head += bytes((-len(head)) % align)
    return head + data


def bad(data: bytes, match: str):
    with pytest.raises(ValueError, match=match):
        f = parse(data)
        for ti in f.tensors:
            f.tensor(ti)


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("corrupt") / "g.gguf"
    gguf_py_write(p, many_tensors()[:3], MANY_KV)
    return p.read_bytes()


def test_every_truncation_is_a_value_error(sample_file):
    f = parse(sample_file)
    data_end = max(t.offset + t.nbytes for t in f.tensors)
    cuts = list(range(0, f.data_offset + 64)) + list(range(f.data_offset + 64, data_end, 97)) + [data_end - 1]
    for n in cuts:
        with pytest.raises(ValueError, match="corrupt GGUF|not a GGUF"):
            parse(sample_file[:n])
    # only the trailing padding may go: the data are all still there
    assert [t.name for t in parse(sample_file[:data_end]).tensors] == [t.name for t in f.tensors]


def test_random_byte_flips_never_escape_as_other_errors(sample_file):
    r = np.random.default_rng(0)
    f = parse(sample_file)
    n_ok = n_bad = 0
    for _ in range(400):
        b = bytearray(sample_file)
        for pos in r.integers(0, f.data_offset, r.integers(1, 4)):
            b[pos] = r.integers(0, 256)
        try:
            g = parse(bytes(b))
            for ti in g.tensors:
                g.tensor(ti)
            n_ok += 1
        except ValueError:
            n_bad += 1
    assert n_bad > 50 and n_ok > 10  # both outcomes happen; nothing else was raised


def test_header_errors():
    bad(b"", "bad magic")
    bad(b"GGU", "bad magic")
    bad(b"NOPE" + bytes(64), "bad magic")
    bad(b"GGUF" + struct.pack("<I", 1) + bytes(16), "version 1")
    bad(b"GGUF" + struct.pack("<I", 7) + bytes(16), "unsupported GGUF version 7")
    bad(b"GGUF" + struct.pack(">I", 3) + bytes(16), "big-endian")
    bad(b"GGUF" + struct.pack("<I", 3) + bytes(7), "truncated")


@pytest.mark.parametrize("n_kv, n_t", [(2**63, 0), (2**64 - 1, 0), (0, 2**64 - 1), (10**6, 10**6), (5, 0)])
def test_huge_counts_no_allocation(n_kv, n_t):
    data = gguf_bytes([kv_u32("a", 1)], n_kv=n_kv, n_tensors=n_t)
    tracemalloc.start()
    try:
        bad(data, "claims|truncated")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_value_errors():
    huge_str = s("k")[:0] + struct.pack("<Q", 1) + b"k" + struct.pack("<IQ", 8, 2**62)
    bad(gguf_bytes([huge_str]), "truncated")
    huge_arr = s("k") + struct.pack("<IIQ", 9, 4, 2**61)
    tracemalloc.start()
    try:
        bad(gguf_bytes([huge_arr]), "claims")
        assert tracemalloc.get_traced_memory()[1] < 2**20
    finally:
        tracemalloc.stop()
    bad(gguf_bytes([s("k") + struct.pack("<IIQ", 9, 8, 2**40)]), "claims")  # 2**40 strings
    bad(gguf_bytes([s("k") + struct.pack("<I", 13)]), "unknown value type 13")
    bad(gguf_bytes([s("k") + struct.pack("<IIQ", 9, 99, 1)]), "unknown value type 99")
    bad(gguf_bytes([s("k") + struct.pack("<IB", 7, 2)]), "BOOL must be 0 or 1")
    bad(gguf_bytes([s("k") + struct.pack("<IIQ", 9, 7, 2) + b"\x01\x05"]), "BOOL items")
    bad(gguf_bytes([kv_u32("a", 1), kv_u32("a", 2)]), "duplicate key 'a'")
    # arrays nested far deeper than anything real: refused, no RecursionError
    deep = s("k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 5000 + struct.pack("<IQ", 4, 0)
    bad(gguf_bytes([deep]), "nested more than 64")


@pytest.mark.parametrize("value, match", [
    (struct.pack("<II", 4, 0), "not a power of two"),
    (struct.pack("<II", 4, 48), "not a power of two"),
    (struct.pack("<II", 4, 2**32 - 1), "not a power of two"),
    (struct.pack("<Ii", 5, -32), "must be a UINT32, got INT32"),
    (struct.pack("<IQ", 10, 64), "must be a UINT32, got UINT64"),
    (struct.pack("<I", 8) + s("32"), "must be a UINT32, got STRING"),
])
def test_bad_alignment(value, match):
    bad(gguf_bytes([s("general.alignment") + value], [tinfo("w", [4], 0, 0)], bytes(16)), match)


def test_tensor_info_errors():
    d = bytes(4096)
    bad(gguf_bytes([], [tinfo("w", [4, 1, 1, 1, 1], 0, 0)], d), "5 dimensions")
    bad(gguf_bytes([], [s("w") + struct.pack("<I", 2**32 - 1)], d), "dimensions")
    bad(gguf_bytes([], [tinfo("w", [2**63], 0, 0)], d), "2..63")
    bad(gguf_bytes([], [tinfo("w", [2**40, 2**40], 0, 0)], d), "elements")
    bad(gguf_bytes([], [tinfo("w", [2**40, 2**20], 0, 0)], d), "runs past the end")
    bad(gguf_bytes([], [tinfo("w", [4], 0, 2**64 - 32)], d), "runs past the end")
    bad(gguf_bytes([], [tinfo("w", [4], 0, 16)], d), "not a multiple of the alignment 32")
    bad(gguf_bytes([], [tinfo("w", [4], 0, 0), tinfo("w", [4], 0, 32)], d), "duplicate tensor name 'w'")
    bad(gguf_bytes([], [tinfo("w", [33, 2], 8, 0)], d), "blocks")      # q8_0 row of 33 values
    bad(gguf_bytes([], [tinfo("w", [], 8, 0)], d), "blocks")           # 0-dim q8_0: one value
    bad(gguf_bytes([], [tinfo("w", [32, 3], 208, 0)], d), "multiple of 8")  # q8_0_r8 with 3 rows
    bad(gguf_bytes([], [tinfo("w", [256, 4], 12, 0)], bytes(100)), "runs past the end")  # q4_K
    bad(gguf_bytes([], [tinfo("w", [4], 777, 4096)], bytes(64)), "past the end")   # unknown type
    bad(b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + s("w") + struct.pack("<IQ", 1, 4) + bytes(8), "truncated")


def test_valid_edge_cases_load():
    """What is not malformed loads: empty tensors, 0-dim f32, K=0 rows, no tensors at all."""
    f = parse(gguf_bytes([], [tinfo("e", [0, 5], 8, 0), tinfo("s", [], 0, 0), tinfo("z", [4, 0], 0, 32)], bytes(64)))
    e, sc, z = (f.tensor(t) for t in f.tensors)
    assert isinstance(e, iqkq.RawTensor) and e.shape == (5, 0) and e.nbytes == 0
    assert sc.shape == () and z.shape == (0, 4)
    assert iqkq.dequantize(iqkq.RawTensor(b"", "q8_0", (0, 32))).shape == (0, 32)
    f = parse(gguf_bytes([kv_u32("general.alignment", 1)], align=1))
    assert f.alignment == 1 and f.tensors == [] and f.is_canonical
    assert not parse(gguf_bytes([kv_u32("general.alignment", 1)], align=32)).is_canonical  # 31 stray bytes


def test_files_on_disk(tmp_path):
    p = tmp_path / "e.gguf"
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        iqkq.gguf.load(p)
    p.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ValueError, match="truncated"):
        iqkq.gguf.load(p)
    with pytest.raises(ValueError, match="truncated"):
        iqkq.gguf.load(p, mmap=False)
    good = tmp_path / "good.gguf"
    iqkq.gguf.save(good, {"w": iqkq.quantize(np.ones((8, 256)), "q8_0")})
    data = good.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="past the end"):
        iqkq.gguf.load(p)
    with pytest.raises(FileNotFoundError):
        iqkq.gguf.load(tmp_path / "missing.gguf")
