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


def test_readme_gguf_interop_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## GGUF interop\s.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert capsys.readouterr().out.strip() == "GGUFValue(1, UINT32)"
    import iqkq

    src, meta = iqkq.gguf.load(tmp_path / "model-f32.gguf")
    q4, m4 = iqkq.gguf.load(tmp_path / "model-iq4_ks.gguf")
    assert m4 == meta and q4["blk.0.ffn_up.weight"] == iqkq.quantize(src["blk.0.ffn_up.weight"], "iq4_ks")
    q8, m8 = iqkq.gguf.load(tmp_path / "model-q8_0.gguf")
    assert m8.typed("general.file_type").type.name == "UINT32" and q8["blk.0.ffn_up.weight"].qtype == "q8_0"


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = re.search(r"TEST_CMD='(.*)'", ci).group(1)
    assert cmd in readme
    assert 'pip install ".[plot]" && python -m iqkq map --plot map.png' in readme
