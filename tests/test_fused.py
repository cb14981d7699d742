"""Fused up+gate (dense and MoE): ik_llama.cpp's fused oracle vectors, agreement with iqkq's
own matmul composition, rejection of mismatched inputs, routing properties, threads."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import iqkq
from iqkq import _core
from conftest import ISAS, TYPE_NAMES, load, oracle_cases, rng, with_isa

OPS = {"silu": 10, "gelu": 15, "relu": 6}


def qt(z, key, tname, shape):
    return iqkq.QuantizedTensor(z[key], tname, shape)


@pytest.mark.parametrize("path", oracle_cases(kind="fused"))
def test_fused_oracle(path, isa):
    z = load(path)
    tname, op, kind = str(z["type_name"]), str(z["op"]), str(z["kind"])
    shape = z["up_w"].shape
    up, gate = qt(z, "up_q", tname, shape), qt(z, "gate_q", tname, shape)
    for tag in z["subcases"]:
        x, yo = z[f"x_{tag}"], z[f"y_{tag}"]
        if kind == "dense":
            y = iqkq.fused_up_gate(up, gate, x, act=op, threads=2)
        else:
            y = iqkq.moe_up_gate(up, gate, x, z[f"ids_{tag}"], act=op, threads=2)
        assert y.shape == yo.shape
        scale = float(np.abs(yo).max())
        assert float(np.abs(y - yo).max()) <= 1e-4 * scale, tag
        # iqkq reproduces ik_llama.cpp's kernels, tile rule and 8-lane exp: bit-identical
        np.testing.assert_array_equal(y.view(np.uint32), yo.view(np.uint32), err_msg=str(tag))


@pytest.mark.parametrize("path", oracle_cases(kind="fused"))
def test_fused_equals_composition_and_oracle_parts(path, isa):
    """gate/up products equal iqkq.matmul (and ik's g, u); y = act(g) * u to float rounding."""
    z = load(path)
    tname, op, kind = str(z["type_name"]), str(z["op"]), str(z["kind"])
    shape = z["up_w"].shape
    up, gate = qt(z, "up_q", tname, shape), qt(z, "gate_q", tname, shape)
    for tag in z["subcases"]:
        x = z[f"x_{tag}"]
        if kind == "dense":
            g, u = iqkq.matmul(gate, x), iqkq.matmul(up, x)
            y = iqkq.fused_up_gate(up, gate, x, act=op)
        else:
            ids = z[f"ids_{tag}"]
            E = shape[0]
            g = np.zeros(ids.shape + (shape[1],), np.float32)
            u = np.zeros_like(g)
            for e in range(E):
                t_idx, s_idx = np.nonzero(ids == e)
                if t_idx.size:
                    g[t_idx, s_idx] = iqkq.matmul(iqkq.ops._expert(gate, e), x[t_idx])
                    u[t_idx, s_idx] = iqkq.matmul(iqkq.ops._expert(up, e), x[t_idx])
            y = iqkq.moe_up_gate(up, gate, x, ids, act=op)
        np.testing.assert_array_equal(g, z[f"g_{tag}"])
        np.testing.assert_array_equal(u, z[f"u_{tag}"])
        g64, u64 = g.astype(np.float64), u.astype(np.float64)
        if op == "silu":
            ref = g64 / (1 + np.exp(-g64)) * u64
        elif op == "gelu":
            ref = 0.5 * g64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (g64 + 0.044715 * g64**3))) * u64
        else:
            ref = np.maximum(g64, 0) * u64
        assert (np.abs(y - ref) <= 2e-6 * np.abs(ref) + 1e-6 * np.abs(u64) + 1e-30).all()


def make_pair(qtype, nff=32, K=256, E=None, seed=0):
    r = rng(seed)
    shape = (nff, K) if E is None else (E, nff, K)
    return (iqkq.quantize(r.standard_normal(shape).astype(np.float32), qtype),
            iqkq.quantize(r.standard_normal(shape).astype(np.float32), qtype))


def test_rejects_mismatched_types():
    others = [n for n in TYPE_NAMES if n != "q8_0"]
    up, _ = make_pair("q8_0", nff=64)
    for other in others:
        _, gate = make_pair(other, nff=64)
        with pytest.raises(TypeError) as e:
            iqkq.fused_up_gate(up, gate, np.ones(256, np.float32))
        msg = str(e.value)
        assert "q8_0" in msg and other in msg and "same" in msg and "repack" in msg
    upE, _ = make_pair("q8_0", nff=64, E=2)
    _, gateE = make_pair("q8_0_r8", nff=64, E=2)
    with pytest.raises(TypeError, match="q8_0_r8"):
        iqkq.moe_up_gate(upE, gateE, np.ones((2, 256), np.float32), np.zeros((2, 1), int))


def test_rejects_mismatched_shapes_and_bad_input():
    up, _ = make_pair("q8_0", nff=32)
    _, gate = make_pair("q8_0", nff=64)
    with pytest.raises(ValueError) as e:
        iqkq.fused_up_gate(up, gate, np.ones(256, np.float32))
    assert "(32, 256)" in str(e.value) and "(64, 256)" in str(e.value)
    up, gate = make_pair("q8_0")
    with pytest.raises(ValueError, match="K=256"):
        iqkq.fused_up_gate(up, gate, np.ones(128, np.float32))
    with pytest.raises(ValueError, match="act"):
        iqkq.fused_up_gate(up, gate, np.ones(256, np.float32), act="tanh")
    with pytest.raises(ValueError, match="limit"):
        iqkq.fused_up_gate(up, gate, np.ones(256, np.float32), limit=-1.0)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        iqkq.fused_up_gate(np.ones((32, 256)), gate, np.ones(256, np.float32))
    with pytest.raises(ValueError, match="moe_up_gate"):
        upE, gateE = make_pair("q8_0", E=2)
        iqkq.fused_up_gate(upE, gateE, np.ones(256, np.float32))


def test_moe_rejects_bad_ids_and_shapes():
    up, gate = make_pair("q8_0", E=4)
    x = np.ones((3, 256), np.float32)
    for bad in (4, -2, 100):
        ids = np.array([[0, 1], [2, bad], [3, 0]])
        with pytest.raises(ValueError) as e:
            iqkq.moe_up_gate(up, gate, x, ids)
        assert str(bad) in str(e.value) and "[-1, 4)" in str(e.value)
    with pytest.raises(TypeError, match="integer"):
        iqkq.moe_up_gate(up, gate, x, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="T, n_used"):
        iqkq.moe_up_gate(up, gate, x, np.zeros(3, int))
    with pytest.raises(ValueError, match="shape"):
        iqkq.moe_up_gate(up, gate, np.ones((4, 256), np.float32), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="3-D"):
        u2, g2 = make_pair("q8_0")
        iqkq.moe_up_gate(u2, g2, x, np.zeros((3, 2), int))


def dense_reference(up, gate, x, act):
    """The fused result for x computed with iqkq's dense fused op (already oracle-checked)."""
    return iqkq.fused_up_gate(up, gate, x, act=act)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), qtype=st.sampled_from(TYPE_NAMES), T=st.integers(1, 50),
       n_used=st.integers(1, 3), E=st.integers(1, 5), act=st.sampled_from(sorted(OPS)),
       routing=st.sampled_from(["random", "one_expert", "with_neg", "per_slot_x"]))
def test_moe_matches_dense_per_expert(seed, qtype, T, n_used, E, act, routing):
    """Each pair's output equals the dense fused op on the tokens routed to that expert."""
    t = iqkq.type_info(qtype)
    nff = 8 * t.interleave if t.interleave > 1 else 24
    K = 256
    up, gate = make_pair(qtype, nff=nff, K=K, E=E, seed=seed)
    r = rng(seed + 1)
    ids = r.integers(0, E, (T, n_used))
    if routing == "one_expert":
        ids[:] = E - 1
    elif routing == "with_neg":
        ids[r.random((T, n_used)) < 0.3] = -1
    x = r.standard_normal((T, n_used, K) if routing == "per_slot_x" else (T, K)).astype(np.float32)
    y = iqkq.moe_up_gate(up, gate, x, ids, act=act)
    assert y.shape == (T, n_used, nff)
    for e in range(E):
        t_idx, s_idx = np.nonzero(ids == e)
        if not t_idx.size:
            continue
        xe = x[t_idx, s_idx] if x.ndim == 3 else x[t_idx]
        ref = dense_reference(iqkq.ops._expert(up, e), iqkq.ops._expert(gate, e), xe, act)
        np.testing.assert_array_equal(y[t_idx, s_idx], ref)
    assert (y[ids == -1] == 0).all()


def test_moe_merged_tensor_equals_separate():
    r = rng(11)
    E, nff, K = 3, 32, 512
    gw = r.standard_normal((E, nff, K)).astype(np.float32)
    uw = r.standard_normal((E, nff, K)).astype(np.float32)
    for qtype in TYPE_NAMES:
        merged = iqkq.quantize(np.concatenate([gw, uw], axis=1), qtype)
        up, gate = iqkq.quantize(uw, qtype), iqkq.quantize(gw, qtype)
        ids = r.integers(-1, E, (40, 2))
        x = r.standard_normal((40, K)).astype(np.float32)
        np.testing.assert_array_equal(iqkq.moe_up_gate(merged, None, x, ids), iqkq.moe_up_gate(up, gate, x, ids))


@pytest.mark.parametrize("qtype", TYPE_NAMES)
def test_thread_count_determinism(qtype, isa):
    t = iqkq.type_info(qtype)
    nff = 40 if t.interleave == 1 else 48  # N_ff % 8 != 0 exercises the libm tail for q8_0
    up, gate = make_pair(qtype, nff=nff, K=512)
    upE, gateE = make_pair(qtype, nff=nff, K=512, E=4)
    x = rng(5).standard_normal((70, 512)).astype(np.float32)
    ids = rng(6).integers(-1, 4, (70, 2))
    ref = None
    for th in (1, 2, 3, 4):
        # n <= 4 (and the small MoE) take the gate-then-up schedule of GEMV-like batches
        out = [iqkq.fused_up_gate(up, gate, x[:n], act=a, threads=th) for n in (1, 4, 5, 8, 40, 70) for a in OPS]
        out.append(iqkq.moe_up_gate(upE, gateE, x, ids, threads=th))
        out.append(iqkq.moe_up_gate(upE, gateE, x[:3], ids[:3], threads=th))
        if ref is None:
            ref = out
        for a, b in zip(ref, out):
            np.testing.assert_array_equal(a, b)


def test_limit_clamps():
    up, gate = make_pair("q8_0", nff=64)
    x = rng(3).standard_normal((5, 256)).astype(np.float32) * 3
    g, u = iqkq.matmul(gate, x), iqkq.matmul(up, x)
    for act in OPS:
        y0 = iqkq.fused_up_gate(up, gate, x, act=act)
        y = iqkq.fused_up_gate(up, gate, x, act=act, limit=2.0)
        t = y0 / np.where(u == 0, 1, u)  # act(g)
        expect = np.clip(u, -2, 2) * np.minimum(t, 2.0)
        np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)
        assert (np.abs(y) <= 4.0 + 1e-5).all()
    assert g.shape == (5, 64)


@pytest.mark.skipif(len(ISAS) < 2, reason="CPU has no AVX2: only the scalar kernels exist")
@pytest.mark.parametrize("op", sorted(OPS))
def test_activation_scalar_avx2_agree(op):
    """The 8-lane exp and activation formulas agree bit for bit on extreme arguments."""
    g = np.concatenate([np.linspace(-120, 120, 4001), [0.0, -0.0, 1e-30, -1e-30, 87.0, 88.7, 89.0, -87.0, -88.0, -89.0,
                        -103.0, -104.0, -150.0, 150.0, 200.0, -200.0, 3e38, -3e38, np.inf, -np.inf, 10.0, 10.000001,
                        -5.0, -4.0, 5.0]]).astype(np.float32)
    g = np.concatenate([g, rng(1).standard_normal(4000).astype(np.float32) * 30])
    u = rng(2).standard_normal(g.size).astype(np.float32)
    n = g.size
    res = {}
    for name in ISAS:
        res[name] = with_isa(name, lambda: [_core.fused_act(g, u, n, n - 13, OPS[op], lim) for lim in (0.0, 7.0)])
    for name in ISAS[1:]:
        for a, b in zip(res["scalar"], res[name]):
            np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32), err_msg=name)
    # and the 8-lane formulas are accurate
    y = res["scalar"][0][: n - 13].astype(np.float64)
    g64, u64 = g[: n - 13].astype(np.float64), u[: n - 13].astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if op == "silu":
            ref = g64 / (1 + np.exp(-g64)) * u64
        elif op == "gelu":
            ref = 0.5 * g64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (g64 + 0.044715 * g64**3))) * u64
        else:
            ref = np.maximum(g64, 0) * u64
    ok = np.isfinite(ref) & (np.abs(g64) < 1e30)
    assert (np.abs(y[ok] - ref[ok]) <= 1e-5 * np.abs(ref[ok]) + 1e-6 * np.abs(u64[ok])).all()


def test_stacked_matmul_and_dequantize():
    r = rng(4)
    w = r.standard_normal((3, 16, 256)).astype(np.float32)
    for qtype in TYPE_NAMES:
        q = iqkq.quantize(w, qtype)
        assert q.shape == (3, 16, 256)
        deq = iqkq.dequantize(q)
        assert deq.shape == (3, 16, 256)
        for e in range(3):
            qe = iqkq.quantize(w[e], qtype)
            np.testing.assert_array_equal(deq[e], iqkq.dequantize(qe))
        x = r.standard_normal((5, 256)).astype(np.float32)
        y = iqkq.matmul(q, x)
        assert y.shape == (3, 5, 16)
        for e in range(3):
            np.testing.assert_array_equal(y[e], iqkq.matmul(iqkq.quantize(w[e], qtype), x))
        xe = r.standard_normal((3, 4, 256)).astype(np.float32)
        ye = iqkq.matmul(q, xe)
        assert ye.shape == (3, 4, 16)
        np.testing.assert_array_equal(ye[1], iqkq.matmul(iqkq.quantize(w[1], qtype), xe[1]))
        with pytest.raises(ValueError, match="n_expert"):
            iqkq.matmul(q, r.standard_normal((2, 4, 256)))


def _act_ref(g, u, op):
    g64, u64 = g.astype(np.float64), u.astype(np.float64)
    if op == "silu":
        return g64 / (1 + np.exp(-g64)) * u64
    return np.maximum(g64, 0) * u64


@pytest.mark.parametrize("qtype", ["iq4_ks", "iq3_xxs"])
@pytest.mark.parametrize("nff,ny,expect", [(8, 32, "repack"), (16, 40, "repack"), (24, 31, "direct"),
                                           (12, 64, "direct"), (40, 33, "repack")])
def test_fused_large_batch_rule(qtype, nff, ny, expect):
    """ik_llama.cpp's fused op (iqk_moe_fused_up_gate) converts the weights whenever the batch
    reaches 32, whatever the number of rows (matmul needs >= 32 rows too); rows that are not a
    multiple of the target's interleave (ik aborts) use the direct kernels."""
    up, gate = make_pair(qtype, nff=nff, K=512, seed=nff + ny)
    x = rng(ny).standard_normal((ny, 512)).astype(np.float32)
    paths = ("direct", "repack") if nff % 8 == 0 else ("direct",)  # repack needs rows % 8 == 0
    parts = {p: (iqkq.matmul(gate, x, path=p), iqkq.matmul(up, x, path=p)) for p in paths}
    if len(paths) == 2:
        assert not np.array_equal(parts["direct"][0], parts["repack"][0])  # the two paths are distinguishable
    y = iqkq.fused_up_gate(up, gate, x, act="silu")
    for p, (g, u) in parts.items():
        ref = _act_ref(g, u, "silu")
        close = (np.abs(y - ref) <= 2e-6 * np.abs(ref) + 1e-6 * np.abs(u.astype(np.float64)) + 1e-30).all()
        assert close == (p == expect), f"fused result {'does not match' if p == expect else 'matches'} the {p} path"
    # the MoE op follows the same rule per expert
    ids = np.zeros((ny, 1), np.int32)
    up3 = iqkq.QuantizedTensor(up.data, qtype, (1, nff, 512))
    gate3 = iqkq.QuantizedTensor(gate.data, qtype, (1, nff, 512))
    np.testing.assert_array_equal(iqkq.moe_up_gate(up3, gate3, x, ids, act="silu")[:, 0], y)
