"""Importance-matrix files of llama.cpp / ik_llama.cpp: read (and write, for tests and tools).

Two formats exist (``docs/imatrix.md`` describes both byte by byte):

* the **legacy binary** ``imatrix.dat`` that ik_llama.cpp's ``llama-imatrix`` writes and its
  ``llama-quantize`` reads (and mainline llama.cpp with ``--output-format dat``): per entry a
  name, the number of calls ``ncall`` and ``nval`` floats (``sum / count * ncall``); an optional
  trailer with the number of chunks and the dataset file name. The importance weights are the
  floats divided by ``ncall``.
* mainline llama.cpp's **GGUF imatrix**: per weight tensor ``<name>.in_sum2`` (F32, ggml shape
  ``(K, n_mat)``: sums of squared activations, one row per expert) and ``<name>.counts`` (F32,
  ``(1, n_mat)``: activations summed per row), keys ``imatrix.datasets`` (array of strings),
  ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (UINT32). The importance weights are
  ``in_sum2 / counts`` per row; rows with count 0 are 1.0 (as mainline's ``llama-quantize``).

:func:`read` detects the format by the GGUF magic. An entry's ``values`` are flat float32 of
``n_mat * K`` weights: ``K`` for a 2-D tensor, ``n_expert * K`` (expert-major) for a 3-D expert
tensor; :meth:`IMatrix.for_tensor` reshapes them to ``(K,)`` or ``(n_expert, K)``, which is what
``iqkq.quantize`` takes.

Example:
    >>> im = iqkq.imatrix.IMatrix({"blk.0.ffn_up.weight": np.ones(256, np.float32)}, datasets=["wiki.txt"], chunk_count=10)
    >>> iqkq.imatrix.write_legacy("im.dat", im)
    >>> back = iqkq.imatrix.read("im.dat")
    >>> back.format, back.datasets, back.chunk_count, back["blk.0.ffn_up.weight"].shape
    ('legacy', ['wiki.txt'], 10, (256,))
"""
from __future__ import annotations

import os
import struct
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

__all__ = ["IMatrix", "read", "read_legacy", "read_gguf", "write_legacy", "write_gguf"]

KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"


class IMatrix(Mapping):
    """An importance matrix: tensor name -> flat float32 importance weights, plus provenance.

    Attributes:
        datasets: names of the calibration data sets (legacy files hold at most one).
        chunk_count: chunks the matrix was computed on (0 when the file does not say).
        chunk_size: tokens per chunk (GGUF files only; else None).
        format: ``"legacy"``, ``"gguf"`` or None (built in memory).
        path: the file it was read from, or None.
        ncalls: legacy files: each entry's ``ncall``; GGUF files: the largest count of each entry.
    """

    def __init__(self, data: Mapping[str, np.ndarray], *, datasets: Iterable[str] = (), chunk_count: int = 0,
                 chunk_size: Optional[int] = None, format: Optional[str] = None, path: Optional[str] = None,
                 ncalls: Optional[Mapping[str, int]] = None):
        self._d: Dict[str, np.ndarray] = {}
        for k, v in data.items():
            a = np.ascontiguousarray(np.asarray(v, dtype=np.float32).reshape(-1))
            self._d[str(k)] = a
        self.datasets: List[str] = list(datasets)
        self.chunk_count = int(chunk_count)
        self.chunk_size = chunk_size
        self.format = format
        self.path = path
        self.ncalls = dict(ncalls or {})

    def __getitem__(self, name: str) -> np.ndarray:
        return self._d[name]

    def __iter__(self):
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def lookup(self, name: str) -> Optional[str]:
        """The entry llama-quantize (ik_llama.cpp @ 8337e4cd) uses for tensor ``name``: the
        exact name, else its fallbacks: ``ffn_up_exps`` / ``ffn_gate_exps`` -> the merged
        ``ffn_gate_up_exps``, then ``ffn_up_exps``; ``ffn_gate_up_exps`` -> ``ffn_up_exps``;
        ``ffn_gate`` -> ``ffn_up`` (same activations); ``attn_v_b`` <-> ``attn_kv_b`` (MLA).
        None when there is none."""
        if name in self._d:
            return name
        cands: List[str] = []
        p1, p2 = name.find("ffn_up_exps.weight"), name.find("ffn_gate_exps.weight")
        if p1 >= 0 or p2 >= 0:
            pos = p1 if p1 >= 0 else p2
            cands = [name[:pos] + "ffn_gate_up_exps.weight", name[:pos] + "ffn_up_exps.weight"]
        elif name.find("ffn_gate_up_exps.weight") >= 0:
            pos = name.find("ffn_gate_up_exps.weight")
            cands = [name[:pos] + "ffn_up_exps.weight"]
        elif name.find("ffn_gate.weight") >= 0:
            pos = name.find("ffn_gate.weight")
            cands = [name[:pos] + "ffn_up.weight"]
        else:
            alts = (".attn_v_b.weight", ".attn_kv_b.weight")
            for j, a in enumerate(alts):
                pos = name.find(a)
                if pos >= 0:
                    cands = [name[:pos] + alts[(j + 1) % 2]]
                    break
        for c in cands:
            if c in self._d:
                return c
        return None

    def for_tensor(self, name: str, shape) -> Tuple[Optional[str], Optional[np.ndarray]]:
        """``(entry name, weights)`` for a weight tensor of ``shape`` (numpy order), shaped as
        ``iqkq.quantize`` takes them: ``(K,)`` for 2-D, ``(n_expert, K)`` for 3-D tensors
        (an entry of K values for a 3-D tensor is used for every expert). ``(None, None)``
        when there is no entry.

        Raises:
            ValueError: the entry's length is not ``K * n_expert`` (llama-quantize's check),
            naming the tensor and both sizes.
        """
        key = self.lookup(name)
        if key is None:
            return None, None
        v = self._d[key]
        K = int(shape[-1])
        E = int(shape[0]) if len(shape) == 3 else 1
        if v.size == K * E:
            return key, (v.reshape(E, K) if len(shape) == 3 else v)
        raise ValueError(f"imatrix entry {key!r} has {v.size} values, but tensor {name!r} of shape "
                         f"{'x'.join(str(s) for s in reversed(tuple(shape)))} needs {K * E}"
                         f" (K={K}" + (f" x {E} experts)" if len(shape) == 3 else ")"))

    def __repr__(self) -> str:
        return (f"IMatrix({len(self)} entries, format={self.format!r}, datasets={self.datasets!r}, "
                f"chunk_count={self.chunk_count})")


def _fail(path, msg):
    raise ValueError(f"{path}: not a valid imatrix file: {msg}")


def read(path) -> IMatrix:
    """Read an imatrix file of either format (GGUF if it starts with the GGUF magic)."""
    path = os.fspath(path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        return read_gguf(path)
    return read_legacy(path)


def read_legacy(path) -> IMatrix:
    """Read a legacy binary ``imatrix.dat`` (ik_llama.cpp's ``llama-imatrix`` output).

    Values are divided by the entry's ``ncall`` when it is positive, as llama-quantize does.
    The trailer (chunk count, dataset name) is optional, as in old files."""
    path = os.fspath(path)
    with open(path, "rb") as fh:
        buf = fh.read()
    pos = 0

    def take(n, what):
        nonlocal pos
        if pos + n > len(buf):
            _fail(path, f"truncated while reading {what} (at byte {pos}, file has {len(buf)})")
        b = buf[pos:pos + n]
        pos += n
        return b

    def i32(what):
        return struct.unpack("<i", take(4, what))[0]

    n_entries = i32("the entry count") if len(buf) >= 4 else _fail(path, "empty file")
    if n_entries < 1:
        _fail(path, f"no data (entry count {n_entries})")
    if n_entries > len(buf) // 12:
        _fail(path, f"entry count {n_entries} is larger than the file can hold")
    data: Dict[str, np.ndarray] = {}
    ncalls: Dict[str, int] = {}
    for i in range(n_entries):
        ln = i32(f"the name length of entry {i}")
        if ln < 0 or ln > len(buf):
            _fail(path, f"entry {i} has name length {ln}")
        name = take(ln, f"the name of entry {i}").split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        ncall = i32(f"ncall of {name!r}")
        nval = i32(f"nval of {name!r}")
        if nval < 1:
            _fail(path, f"entry {name!r} has {nval} values")
        v = np.frombuffer(take(4 * nval, f"the {nval} values of {name!r}"), dtype="<f4").astype(np.float32)
        if ncall > 0:
            v = v / np.float32(ncall)
        data[name] = v
        ncalls[name] = ncall
    chunks, datasets = 0, []
    if pos < len(buf):
        chunks = i32("the chunk count")
        dl = i32("the dataset name length")
        if dl < 0:
            _fail(path, f"dataset name length {dl}")
        ds = take(dl, "the dataset name").decode("utf-8", "surrogateescape")
        if ds:
            datasets = [ds]
    for name, v in data.items():
        if not np.isfinite(v).all():
            raise ValueError(f"{path}: imatrix entry {name!r} contains non-finite values")
    return IMatrix(data, datasets=datasets, chunk_count=chunks, format="legacy", path=path, ncalls=ncalls)


def read_gguf(path) -> IMatrix:
    """Read a GGUF imatrix file (mainline llama.cpp's ``llama-imatrix`` default output).

    ``<name>.in_sum2`` / ``<name>.counts`` pairs become entries (other tensors, such as
    ``<name>.in_sum``, are ignored); values are ``in_sum2 / count`` per row, 1.0 where the
    count is 0. ``imatrix.datasets``, ``imatrix.chunk_count`` and ``imatrix.chunk_size`` are
    required, as mainline's llama-quantize requires them."""
    from . import gguf as G

    path = os.fspath(path)
    try:
        f = G.read(path)
    except ValueError as e:
        raise ValueError(f"not a valid GGUF imatrix file: {e}") from None
    with f:
        meta = f.metadata
        missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in meta]
        if missing:
            _fail(path, f"missing imatrix metadata {', '.join(missing)}")
        sums: Dict[str, object] = {}
        counts: Dict[str, object] = {}
        for ti in f.tensors:
            if ti.name.endswith(".in_sum2"):
                sums[ti.name[:-8]] = ti
            elif ti.name.endswith(".counts"):
                counts[ti.name[:-7]] = ti
        if not sums and not counts:
            _fail(path, "no <name>.in_sum2 / <name>.counts tensors")
        data: Dict[str, np.ndarray] = {}
        ncalls: Dict[str, int] = {}
        for name in sorted(set(sums) | set(counts)):
            s, c = sums.get(name), counts.get(name)
            if s is None or c is None:
                _fail(path, f"mismatched sums and counts for {name!r}")
            if s.type_id != 0 or c.type_id != 0:
                _fail(path, f"{name!r}: in_sum2 and counts must be F32")
            sv = np.asarray(f.tensor(s), dtype=np.float32)
            cv = np.asarray(f.tensor(c), dtype=np.float32).reshape(-1)
            n_mat = cv.size
            if n_mat == 0 or sv.size % n_mat:
                _fail(path, f"{name!r}: {sv.size} sums do not split into {n_mat} rows")
            rows = sv.reshape(n_mat, sv.size // n_mat)
            out = np.ones_like(rows)
            pos = cv > 0
            out[pos] = rows[pos] / cv[pos, None]
            if not np.isfinite(out).all():
                raise ValueError(f"{path}: imatrix entry {name!r} contains non-finite values")
            data[name] = out.reshape(-1)
            ncalls[name] = int(cv.max()) if cv.size else 0
        ds = meta[KEY_DATASETS]
        datasets = list(ds) if isinstance(ds, list) else []
        chunk_count = int(meta[KEY_CHUNK_COUNT])
        chunk_size = int(meta[KEY_CHUNK_SIZE])
    return IMatrix(data, datasets=datasets, chunk_count=chunk_count, chunk_size=chunk_size, format="gguf",
                   path=path, ncalls=ncalls)


def write_legacy(path, im: Mapping[str, np.ndarray], *, ncall: int = 1, chunk_count: Optional[int] = None,
                 dataset: Optional[str] = None, trailer: bool = True) -> None:
    """Write a legacy ``imatrix.dat``: every entry with ``ncall`` and its values times ``ncall``
    (so that reading gives ``im`` back), then (``trailer``) the chunk count and dataset name
    (taken from ``im`` when it is an :class:`IMatrix` and not given)."""
    if chunk_count is None:
        chunk_count = getattr(im, "chunk_count", 0)
    if dataset is None:
        ds = getattr(im, "datasets", [])
        dataset = ds[0] if ds else ""
    out = bytearray(struct.pack("<i", len(im)))
    for name, v in im.items():
        nb = name.encode("utf-8", "surrogateescape")
        a = np.asarray(v, dtype=np.float32).reshape(-1)
        out += struct.pack("<i", len(nb)) + nb + struct.pack("<ii", ncall, a.size)
        out += (a * np.float32(ncall)).astype("<f4").tobytes() if ncall > 0 else a.astype("<f4").tobytes()
    if trailer:
        db = dataset.encode("utf-8", "surrogateescape")
        out += struct.pack("<ii", int(chunk_count), len(db)) + db
    with open(path, "wb") as fh:
        fh.write(out)


def write_gguf(path, sums: Mapping[str, np.ndarray], counts: Mapping[str, np.ndarray], *,
               datasets: Iterable[str] = (), chunk_count: int = 0, chunk_size: int = 512) -> None:
    """Write a GGUF imatrix as mainline's ``llama-imatrix`` does: ``general.type = "imatrix"``,
    the three ``imatrix.*`` keys, and per entry (sorted by name) ``<name>.in_sum2`` of numpy shape
    ``(n_mat, K)`` and ``<name>.counts`` of shape ``(n_mat, 1)``, both F32."""
    from . import gguf as G

    meta = G.GGUFMetadata()
    meta["general.type"] = "imatrix"
    meta[KEY_DATASETS] = G.GGUFValue(list(datasets), "ARRAY", "STRING")
    meta[KEY_CHUNK_COUNT] = G.GGUFValue(int(chunk_count), "UINT32")
    meta[KEY_CHUNK_SIZE] = G.GGUFValue(int(chunk_size), "UINT32")
    tensors = {}
    for name in sorted(sums):
        c = np.asarray(counts[name], dtype=np.float32).reshape(-1)
        s = np.asarray(sums[name], dtype=np.float32).reshape(c.size, -1)
        tensors[f"{name}.in_sum2"] = np.ascontiguousarray(s)
        tensors[f"{name}.counts"] = np.ascontiguousarray(c.reshape(c.size, 1))
    G.save(path, tensors, meta)
