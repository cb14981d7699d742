"""Shared fixtures: the ISA under test and the oracle vector cases.

Oracle cases come from two places: the compact subset committed in tests/data/vectors (so a
fresh clone tests itself), and the full sets in ../shared/vectors when that directory exists
(it does in CI); IQKQ_VECTORS overrides its location.
"""
import os
from pathlib import Path

import numpy as np
import pytest

import iqkq
from iqkq import _core

HERE = Path(__file__).resolve().parent
LOCAL = HERE / "data" / "vectors"
SHARED = Path(os.environ.get("IQKQ_VECTORS", HERE.parent.parent / "shared" / "vectors"))

ISAS = [name for name in _core.constants()["isas"] if _core.isa_supported(name)]
TYPE_NAMES = [t.name for t in iqkq.types()]


def oracle_files(kind="public"):
    """Oracle npz files by name: the shared set (if present) plus the local subset."""
    files = {}
    local = LOCAL / kind if (LOCAL / kind).is_dir() else None
    if local:
        for f in sorted(local.glob("*.npz")):
            files[f.name] = f
    shared = SHARED / kind
    if shared.is_dir():
        for f in sorted(shared.glob("*.npz")):
            files[f.name] = f
    return [files[k] for k in sorted(files)]


def oracle_cases(types=None, kind="public"):
    """pytest params for oracle files whose type iqkq supports (optionally restricted)."""
    out = []
    for f in oracle_files(kind):
        tname = f.name.split("__")[1 if kind == "fused" else 0]
        if tname in TYPE_NAMES and (types is None or tname in types):
            out.append(pytest.param(f, id=f.stem))
    return out


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test once per kernel set this CPU supports."""
    prev = iqkq.isa()
    iqkq.set_isa(request.param)
    try:
        yield request.param
    finally:
        iqkq.set_isa(prev)


def with_isa(name, fn, *args, **kw):
    """fn(*args, **kw) evaluated with the given kernel set active."""
    prev = iqkq.isa()
    iqkq.set_isa(name)
    try:
        return fn(*args, **kw)
    finally:
        iqkq.set_isa(prev)


def load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def rng(seed):
    return np.random.default_rng(seed)
