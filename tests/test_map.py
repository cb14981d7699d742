"""The quant map (iqkq.quant_map, `python -m iqkq map` / `bench`): records and their schema,
sane accuracy values, JSON / CSV / PNG output, the Pareto marks, the numpy peer row, shape
skipping, GGUF / imatrix input, and CLI errors as messages. Tiny shapes and near-zero timing
budgets: nothing here asserts a speed."""
import csv
import doctest
import json
import statistics
import subprocess
import sys

import numpy as np
import pytest

import iqkq
import iqkq.limits as L
from iqkq import __main__ as cli
from iqkq import qmap

FAST = dict(min_time=0.0, cold_bytes=1 << 20, cold_rounds=1, pp_n=32)
CLI_FAST = ["--min-time", "0", "--cold-mib", "1", "--limits-mib", "8", "--pp-n", "32", "--no-progress", "--quick"]


@pytest.fixture(scope="module")
def tiny_limits():
    return L.measure([1, 2], nbytes=8 << 20, repeats=1, seconds=0.002, fma=False)


@pytest.fixture(scope="module")
def full_map(tiny_limits):
    events = []
    m = iqkq.quant_map(None, qmap.synthetic_weights(64, 512), threads=2, hot_ns=[2], limits=tiny_limits,
                       on_row=lambda r: events.append(r["type"]), **FAST)
    return m, events


def _dominates(b, a, keys):
    ge = all((b[k] >= a[k]) if k in ("tg_tok_s", "pp_gflops") else (b[k] <= a[k]) for k in keys)
    gt = any((b[k] > a[k]) if k in ("tg_tok_s", "pp_gflops") else (b[k] < a[k]) for k in keys)
    return ge and gt


def test_map_covers_every_type_with_sane_values(full_map):
    m, events = full_map
    names = {t.name for t in iqkq.types()}
    assert {r["type"] for r in m.records} | {s["type"] for s in m.skipped} == names
    assert not m.skipped  # 64 x 512 suits every type iqkq has today
    assert events == [r["type"] for r in m.records]  # every row reported, in table order
    bpws = [r["bpw"] for r in m.records]
    assert bpws == sorted(bpws)
    by = {r["type"]: r for r in m.records}
    for r in m.records:
        assert set(r) == set(qmap.FIELDS)
        t = iqkq.type_info(r["type"])
        assert r["bpw"] == pytest.approx(t.bpw(512)) and r["bytes"] == t.row_bytes(512) * 64
        assert 0 < r["rms_rel"] < 0.5 and 0 < r["matmul_err_tg"] < 0.5 and 0 < r["matmul_err_pp"] < 0.5
        for k in ("tg_gbps", "tg_tok_s", "tg_numpy_gbps", "pp_gflops", "pp_numpy_gflops", "tg_frac_bw",
                  "tg_read_gbps"):
            assert r[k] > 0 and np.isfinite(r[k])
        assert r["tg_model_gb"] == pytest.approx(8e9 * r["bpw"] / 8 / 1e9)
        assert r["tg_tok_s"] == pytest.approx(r["tg_gbps"] / r["tg_model_gb"])
        # the limits a fraction refers to: never below the figure measured at start
        assert r["tg_read_gbps"] >= m.machine["limits"]["read_gbps"]["2"]
        assert r["tg_frac_bw"] == pytest.approx(r["tg_gbps"] / r["tg_read_gbps"])
        if iqkq.isa() != "scalar":
            assert r["pp_peak_gops"] >= m.machine["limits"]["int8_gops"][iqkq.isa()]["2"]
            assert r["pp_frac_peak"] == pytest.approx(r["pp_gflops"] / r["pp_peak_gops"])
        assert r["pp_tok_s_per_bparam"] == pytest.approx(r["pp_gflops"] / 2)
        assert r["pp_vs_numpy"] == pytest.approx(r["pp_gflops"] / r["pp_numpy_gflops"])
        assert set(r["hot"]) == {"2"} and r["hot"]["2"] > 0
        assert all(isinstance(r[k], bool) for k in ("pareto_tg", "pareto_pp", "pareto_size"))
    assert by["q8_0"]["rms_rel"] < by["iq4_ks"]["rms_rel"] < by["iq3_xxs"]["rms_rel"]
    assert by["q8_0"]["matmul_err_pp"] < by["iq4_ks"]["matmul_err_pp"] < by["iq3_xxs"]["matmul_err_pp"]
    # interleaved twins are byte permutations: the same values
    assert by["q8_0_r8"]["rms_rel"] == by["q8_0"]["rms_rel"]
    assert by["iq4_ks_r4"]["rms_rel"] == by["iq4_ks"]["rms_rel"]
    # the smallest type is never dominated in the size / accuracy plane
    assert m.records[0]["pareto_size"] is True
    assert m.machine["kernel_set"] == iqkq.isa() and m.machine["threads"] == 2 and "limits" in m.machine


def test_pareto_marks_match_the_definition(full_map):
    m, _ = full_map
    for mark, keys in (("pareto_tg", ("bpw", "rms_rel", "tg_tok_s")), ("pareto_pp", ("bpw", "rms_rel", "pp_gflops")),
                       ("pareto_size", ("bpw", "rms_rel"))):
        for a in m.records:
            dominated = any(_dominates(b, a, keys) for b in m.records if b is not a)
            assert a[mark] == (not dominated), (mark, a["type"])


def test_pareto_function():
    recs = [{"bpw": 3, "rms_rel": 0.3, "s": 1.0}, {"bpw": 4, "rms_rel": 0.1, "s": 2.0},
            {"bpw": 4, "rms_rel": 0.1, "s": 1.0}, {"bpw": 8, "rms_rel": 0.01, "s": None}]
    assert qmap.pareto(recs, "s") == [True, True, False, None]
    assert qmap.pareto(recs, None) == [True, True, True, True]  # equal records do not dominate each other
    assert qmap.pareto(recs, "s", err_key=None) == [True, True, False, None]


def test_numpy_row_is_the_median_of_the_pairings(full_map):
    # `bench` used to print the numpy figure of the last pairing only, next to ratios from
    # each type's own pairing. Now each record keeps its paired figure and the row is their median.
    m, _ = full_map
    pp = m.numpy["pp_gflops"]
    assert pp["paired"] == [r["pp_numpy_gflops"] for r in m.records]
    assert pp["median"] == statistics.median(pp["paired"])
    assert pp["min"] <= pp["median"] <= pp["max"]
    assert m.numpy["tg_gbps"]["paired"] == [r["tg_numpy_gbps"] for r in m.records]
    assert m.numpy["hot_2"]["paired"] == [r["hot_numpy"]["2"] for r in m.records]
    line = [ln for ln in m.table().splitlines() if ln.startswith("numpy f32")][0]
    assert f"PP {pp['median']:.0f} GFLOPS" in line and f"median of its {len(m.records)} pairings" in line


def test_json_csv_png(full_map, tmp_path):
    m, _ = full_map
    m.to_json(str(tmp_path / "m.json"))
    d = json.loads((tmp_path / "m.json").read_text())
    assert set(d) == {"machine", "settings", "numpy", "records", "skipped", "notes"}
    assert [r["type"] for r in d["records"]] == [r["type"] for r in m.records]
    assert d["records"][0]["rms_rel"] == m.records[0]["rms_rel"]
    assert d["settings"]["pp_n"] == 32 and d["settings"]["threads"] == 2
    m.to_csv(str(tmp_path / "m.csv"))
    with open(tmp_path / "m.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["type"] for r in rows] == [r["type"] for r in m.records]
    for r, rec in zip(rows, m.records):
        assert float(r["bpw"]) == pytest.approx(rec["bpw"])
        assert float(r["rms_rel"]) == pytest.approx(rec["rms_rel"])
        assert float(r["hot_N2_gflops"]) == pytest.approx(rec["hot"]["2"])
        assert r["pareto_tg"] in ("True", "False")
    import matplotlib.image

    m.plot(str(tmp_path / "m.png"))
    img = matplotlib.image.imread(str(tmp_path / "m.png"))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 600
    assert img[..., :3].std() > 0.01  # not a blank canvas
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_rows_are_reported_as_they_complete(tiny_limits, monkeypatch):
    events = []
    real = qmap.quantize

    def spy(w, t, **kw):
        events.append(("quantize", iqkq.type_info(t).name))
        return real(w, t, **kw)

    monkeypatch.setattr(qmap, "quantize", spy)
    qmap.quant_map(["q8_0", "iq3_xxs", "iq4_ks"], qmap.synthetic_weights(32, 256), limits=False, speed=False,
                   on_row=lambda r: events.append(("row", r["type"])))
    assert events == [("quantize", "iq3_xxs"), ("row", "iq3_xxs"), ("quantize", "iq4_ks"), ("row", "iq4_ks"),
                      ("quantize", "q8_0"), ("row", "q8_0")]


def test_types_that_cannot_take_the_shape_are_skipped():
    skipped = []
    m = iqkq.quant_map(None, qmap.synthetic_weights(12, 640), limits=False,
                       on_skip=lambda n, why: skipped.append(n), **FAST)
    # K = 640: only the 32-blocks fit; 12 rows: not the 8-row interleave (4-row twins fit)
    fit = {t.name for t in iqkq.types() if t.block_size == 32 and 12 % t.interleave == 0}
    assert "q8_0" in fit and "q8_0_r8" not in fit
    assert sorted(r["type"] for r in m.records) == sorted(fit)
    reasons = {s["type"]: s["reason"] for s in m.skipped}
    assert set(skipped) == set(reasons) == {t.name for t in iqkq.types()} - fit
    assert "not a multiple of its block size 256" in reasons["iq4_ks"]
    assert "8-row interleave" in reasons["q8_0_r8"]


def test_imatrix_weights_the_error_and_is_checked(tmp_path):
    w = qmap.synthetic_weights(32, 256)
    im = np.linspace(0.1, 10, 256).astype(np.float32)
    plain = iqkq.quant_map(["iq4_ks"], w, speed=False, limits=False).records[0]
    weighted = iqkq.quant_map(["iq4_ks"], w, imatrix=im, speed=False, limits=False).records[0]
    q = iqkq.quantize(w, "iq4_ks", imatrix=im)
    d2 = ((iqkq.dequantize(q).astype(np.float64) - w) ** 2).sum(axis=0)
    expect = np.sqrt(d2 @ im / ((w.astype(np.float64) ** 2).sum(axis=0) @ im))
    assert weighted["rms_rel"] == pytest.approx(expect, rel=1e-9)
    assert weighted["rms_rel"] != plain["rms_rel"]
    np.save(tmp_path / "im.npy", im)
    assert np.array_equal(qmap.load_imatrix(str(tmp_path / "im.npy")), im)
    np.savez(tmp_path / "im.npz", **{"blk.0.w": im})
    assert np.array_equal(qmap.load_imatrix(str(tmp_path / "im.npz"))["blk.0.w"], im)
    with pytest.raises(ValueError, match="no matrix has K=100"):
        iqkq.quant_map(["q8_0"], w, imatrix=np.ones(100, np.float32), limits=False)
    with pytest.raises(ValueError, match="finite and >= 0"):
        iqkq.quant_map(["q8_0"], w, imatrix=-im, limits=False)
    # llama.cpp's imatrix files (legacy .dat and GGUF) are read with iqkq.imatrix, entries found
    # by tensor name (with llama-quantize's fallbacks: ffn_gate uses ffn_up's entry)
    from iqkq import imatrix as imx

    imx.write_legacy(tmp_path / "im.dat", {"blk.0.ffn_up.weight": im})
    imx.write_gguf(tmp_path / "im.gguf", {"blk.0.ffn_up.weight": (im * 4)[None]}, {"blk.0.ffn_up.weight": np.full((1, 1), 4.0, np.float32)})
    for f in ("im.dat", "im.gguf"):
        got = qmap.load_imatrix(str(tmp_path / f))
        np.testing.assert_allclose(got["blk.0.ffn_up.weight"], im, rtol=1e-6)
        rec = iqkq.quant_map(["iq4_ks"], {"blk.0.ffn_gate.weight": w}, imatrix=got, speed=False, limits=False).records[0]
        assert rec["rms_rel"] == pytest.approx(weighted["rms_rel"], rel=1e-6)
    (tmp_path / "bad.dat").write_bytes(b"\x01\x00")
    with pytest.raises(ValueError, match="bad.dat"):
        qmap.load_imatrix(str(tmp_path / "bad.dat"))


def test_gguf_weights(tmp_path, monkeypatch):
    w = qmap.synthetic_weights(64, 256)
    path = str(tmp_path / "m.gguf")
    iqkq.gguf.save(path, {"blk.0.attn_q.weight": iqkq.quantize(w, "q8_0"), "blk.0.ffn_up.weight": w[:32].copy(),
                          "blk.0.attn_norm.weight": np.ones(256, np.float32)}, {"general.architecture": "llama"})
    mats, notes = qmap.gguf_weights(path)
    assert list(mats) == ["blk.0.attn_q.weight", "blk.0.ffn_up.weight"]
    assert np.array_equal(mats["blk.0.attn_q.weight"], iqkq.dequantize(iqkq.quantize(w, "q8_0")))
    assert np.array_equal(mats["blk.0.ffn_up.weight"], w[:32])
    assert any("1-D" in n for n in notes)
    mats, notes = qmap.gguf_weights(path, "ffn_", max_rows=8)
    assert list(mats) == ["blk.0.ffn_up.weight"] and mats["blk.0.ffn_up.weight"].shape == (8, 256)
    with pytest.raises(ValueError, match="invalid regular expression"):
        qmap.gguf_weights(path, "([")
    with pytest.raises(ValueError, match="no usable weight matrix matches"):
        qmap.gguf_weights(path, "nothing")
    m = iqkq.quant_map(["q8_0", "iq4_ks"], mats, limits=False, **FAST)
    assert [r["type"] for r in m.records] == ["iq4_ks", "q8_0"]

    # What load returns for tensors it cannot give as floats is skipped with a note.
    fake = {"odd": object(), "bits": np.zeros((4, 256), np.uint16), "raw": np.zeros(210, np.uint8), "w": w,
            "norm": np.ones(256, np.float32)}
    monkeypatch.setattr(iqkq.gguf, "load", lambda p: (fake, {}))
    mats, notes = qmap.gguf_weights("any")
    assert list(mats) == ["w"]
    assert any("skipped 3 tensor(s)" in n and "odd" in n and "bits" in n and "raw" in n for n in notes)
    assert any(n.startswith("1 1-D tensor(s)") for n in notes)


def test_library_errors():
    w = qmap.synthetic_weights(32, 256)
    with pytest.raises(ValueError, match="unknown quantization type 'q2_K'"):
        iqkq.quant_map(["q2_K"], w, limits=False)
    with pytest.raises(ValueError, match="pp_n must be a positive integer"):
        iqkq.quant_map(["q8_0"], w, pp_n=0, limits=False)
    with pytest.raises(ValueError, match="hot N must be a positive integer"):
        iqkq.quant_map(["q8_0"], w, hot_ns=[0], limits=False)
    with pytest.raises(ValueError, match="nothing to measure"):
        iqkq.quant_map(["q8_0"], w, speed=False, accuracy=False, limits=False)
    with pytest.raises(ValueError, match="2-D float matrix"):
        iqkq.quant_map(["q8_0"], np.ones(256, np.float32), limits=False)
    with pytest.raises(ValueError, match="NaN"):
        iqkq.quant_map(["q8_0"], np.full((8, 256), np.nan, np.float32), limits=False)


# ----------------------------------------------------------------------------- CLI
def _run(capsys, *args):
    try:
        rc = cli.main(list(args))
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("args, message", [
    (["map", "--types", "q2_K"], "unknown quantization type 'q2_K'"),
    (["map", "--ns", "0"], "argument --ns: must be a positive integer (>= 1), got 0"),
    (["bench", "--threads", "0"], "argument --threads: must be a positive integer"),
    (["map", "--min-time", "-1"], "argument --min-time: must be a finite number >= 0"),
    (["map", "--gguf", "/nonexistent/x.gguf"], "--gguf: no such file"),
    (["map", "--tensor", "ffn"], "--tensor needs --gguf"),
    (["map", "--json", "/nonexistent/dir/m.json"], "--json: folder '/nonexistent/dir' does not exist"),
    (["map", "--speed-only", "--accuracy-only"], "exclude each other"),
    (["map", "--imatrix", "/nonexistent.npy"], "--imatrix: no such file"),
])
def test_cli_errors_are_messages(capsys, args, message):
    rc, out, err = _run(capsys, *args)
    assert rc == 2 and message in err and "Traceback" not in err


def test_cli_imatrix_mismatch_is_a_message(capsys, tmp_path):
    np.save(tmp_path / "im.npy", np.ones(100, np.float32))
    rc, out, err = _run(capsys, "map", "--imatrix", str(tmp_path / "im.npy"), "--rows", "8", "-K", "256",
                        "--accuracy-only", "--no-progress")
    assert rc == 2 and "no matrix has K=100" in err and "Traceback" not in err


def test_cli_plot_without_matplotlib_says_how_to_install(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc, out, err = _run(capsys, "map", "--plot", str(tmp_path / "m.png"))
    assert rc == 2 and 'pip install "iqkq[plot]"' in err


def test_cli_error_through_the_interpreter():
    p = subprocess.run([sys.executable, "-m", "iqkq", "map", "--types", "q2_K"], capture_output=True, text=True)
    assert p.returncode == 2 and "unknown quantization type 'q2_K'" in p.stderr and "Traceback" not in p.stderr


def test_cli_every_option_has_help():
    p = cli.build_parser()
    subs = p._subparsers._group_actions[0].choices
    assert {"map", "bench", "info"} <= set(subs)
    for name, sp in subs.items():
        for a in sp._actions:
            assert a.help, f"{name} {a.option_strings} has no help"


def test_cli_map_writes_outputs_and_skips_shapes(capsys, tmp_path):
    j, c, png = tmp_path / "m.json", tmp_path / "m.csv", tmp_path / "m.png"
    rc, out, err = _run(capsys, "map", "--rows", "64", "-K", "640", *CLI_FAST, "--ns", "2",
                        "--json", str(j), "--csv", str(c), "--plot", str(png))
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("# CPU: ") and any("streaming read" in ln for ln in lines[:4])
    assert any(ln.startswith("# kernel set: " + iqkq.isa()) for ln in lines)
    head = [ln for ln in lines if ln.startswith("type ")][0]
    assert "rms err" in head and "TG GB/s" in head and "PP GFLOPS" in head and "N=2" in head and "Pareto" in head
    assert any(ln.startswith("iq4_ks") and "skipped" in ln and "block size 256" in ln for ln in lines)
    assert any(ln.startswith("q8_0 ") for ln in lines) and any(ln.startswith("numpy f32") for ln in lines)
    d = json.loads(j.read_text())
    fit = {t.name for t in iqkq.types() if t.block_size == 32}  # K = 640: the 32-blocks
    assert {"q8_0", "q8_0_r8"} <= fit
    assert sorted(r["type"] for r in d["records"]) == sorted(fit)
    assert {s["type"] for s in d["skipped"]} == {t.name for t in iqkq.types()} - fit
    assert d["machine"]["limits"]["read_gbps"]
    assert c.read_text().startswith("type,")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_is_the_speed_columns(capsys):
    rc, out, err = _run(capsys, "bench", "--types", "q8_0", "--rows", "32", "-K", "256", *CLI_FAST)
    assert rc == 0
    head = [ln for ln in out.splitlines() if ln.startswith("type ")][0]
    assert "rms err" not in head and "TG GB/s" in head and "N=1" in head and "N=32" in head
    row = [ln for ln in out.splitlines() if ln.startswith("q8_0 ")][0]
    assert len(row.split()) >= 9


def test_doctests():
    r = doctest.testmod(qmap, extraglobs={"iqkq": iqkq, "np": np})
    assert r.attempted > 0 and r.failed == 0


def test_cli_gguf_and_imatrix(capsys, tmp_path):
    w = qmap.synthetic_weights(32, 256)
    path = tmp_path / "m.gguf"
    iqkq.gguf.save(str(path), {"blk.0.attn_q.weight": iqkq.quantize(w, "iq4_ks"), "blk.0.ffn_up.weight": w},
                   {"general.architecture": "llama"})
    np.save(tmp_path / "im.npy", np.linspace(1, 2, 256).astype(np.float32))
    rc, out, err = _run(capsys, "map", "--gguf", str(path), "--tensor", "attn", "--imatrix", str(tmp_path / "im.npy"),
                        "--types", "q8_0", "iq3_xxs", "--accuracy-only", "--no-progress")
    assert rc == 0, err
    assert "# weights: m.gguf: blk.0.attn_q.weight 32x256" in out and "imatrix: " + str(tmp_path / "im.npy") in out
    rows = [ln.split()[0] for ln in out.splitlines() if ln.startswith(("q8_0", "iq3_xxs"))]
    assert rows == ["iq3_xxs", "q8_0"]
    assert "(imatrix-weighted)" in out
