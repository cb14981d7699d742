"""The README's example runs as written, and its command lines match .ci/run."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Example\s+```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["y"].shape == (8, 4096) and ns["hm"].shape == (2, 2, 512)
    assert ns["tensors"]["blk.0.ffn_up.weight"] == ns["q"]
    assert (tmp_path / "t.gguf").exists()


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = re.search(r"TEST_CMD='(.*)'", ci).group(1)
    assert cmd in readme
    assert "pip install . && python -m iqkq map" in readme
