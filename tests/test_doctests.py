"""The examples in the docstrings of every iqkq module run and print what they show."""
import doctest
import importlib
import pkgutil

import gguf
import numpy as np
import pytest

import iqkq

MODULES = ["iqkq"] + sorted(
    f"iqkq.{m.name}" for m in pkgutil.iter_modules(iqkq.__path__) if m.name not in ("_core", "__main__")
)


def test_the_documented_modules_have_examples():
    counts = {}
    for name in MODULES:
        mod = importlib.import_module(name)
        counts[name] = sum(len(t.examples) for t in doctest.DocTestFinder().find(mod, name))
    for name in ("iqkq._types", "iqkq.ops", "iqkq.tensor", "iqkq.gguf", "iqkq._ggml"):
        assert counts[name] > 0, name


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, extraglobs={"np": np, "iqkq": iqkq, "gguf": gguf}, report=False,
                          optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0, f"{res.failed} of {res.attempted} doctest examples failed in {name}"


def test_every_public_gguf_function_has_an_example():
    g = iqkq.gguf
    for name in g.__all__:
        obj = getattr(g, name)
        if callable(obj) and getattr(obj, "__module__", "").startswith("iqkq"):
            assert ">>>" in (obj.__doc__ or ""), name
