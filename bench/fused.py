"""Fused up+gate against the unfused composition a user would write, measured in one run.

    python bench/fused.py [--types q8_0 ...] [--ns 1 32 512] [--threads 1 2] [--json out.json]

Dense: iqkq.fused_up_gate(up, gate, x) vs  g = iqkq.matmul(gate, x); u = iqkq.matmul(up, x);
silu(g) * u in numpy. MoE: iqkq.moe_up_gate on T tokens routed to n_used of E experts vs the
same per-expert loop of two iqkq.matmul calls plus numpy silu * mul and scatter. The two are
called alternately and the fastest time of each is reported, so drift of the machine's speed
cannot favour either.
"""
import _quiet_blas  # noqa: F401  (before numpy: see the module)
import argparse
import sys

import numpy as np

import iqkq
from iqkq._bench import interleaved_times, machine_summary, write_json


def silu_mul(g, u):
    with np.errstate(over="ignore"):  # exp(-g) overflows to inf for very negative g: silu -> -0
        return g / (1.0 + np.exp(-g)) * u


def unfused_dense(up, gate, x, th):
    return silu_mul(iqkq.matmul(gate, x, threads=th), iqkq.matmul(up, x, threads=th))


def unfused_moe(ups, gates, x, ids, th):
    T, n_used = ids.shape
    y = np.zeros((T, n_used, ups[0].shape[0]), np.float32)
    for e in range(len(ups)):
        t_idx, s_idx = np.nonzero(ids == e)
        if t_idx.size:
            xe = x[t_idx]
            y[t_idx, s_idx] = silu_mul(iqkq.matmul(gates[e], xe, threads=th), iqkq.matmul(ups[e], xe, threads=th))
    return y


def main(argv=None):
    default_types = [t for t in ("q8_0", "q8_0_r8", "iq4_ks", "iq4_ks_r4", "iq3_xxs", "iq3_xxs_r4")
                     if t in {x.name for x in iqkq.types()}]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", nargs="*", default=default_types)
    p.add_argument("--ns", nargs="*", type=int, default=[1, 32, 512])
    p.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    p.add_argument("--nff", type=int, default=4096)
    p.add_argument("-K", type=int, default=4096)
    p.add_argument("--moe", nargs=5, type=int, default=[64, 8, 2, 1408, 2048], metavar=("T", "E", "N_USED", "NFF", "K"))
    p.add_argument("--json")
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"# {machine_summary()}; dense N_ff x K = {a.nff} x {a.K}; MoE T,E,n_used,N_ff,K = {tuple(a.moe)}")
    res = []
    uw = rng.standard_normal((a.nff, a.K), dtype=np.float32)
    gw = rng.standard_normal((a.nff, a.K), dtype=np.float32)
    T, E, nu, mnff, mK = a.moe
    muw = rng.standard_normal((E, mnff, mK), dtype=np.float32)
    mgw = rng.standard_normal((E, mnff, mK), dtype=np.float32)
    mx = rng.standard_normal((T, mK), dtype=np.float32)
    mids = np.stack([rng.choice(E, nu, replace=False) for _ in range(T)])
    for name in a.types:
        up, gate = iqkq.quantize(uw, name), iqkq.quantize(gw, name)
        mup, mgate = iqkq.quantize(muw, name), iqkq.quantize(mgw, name)
        ups = [iqkq.ops._expert(mup, e) for e in range(E)]
        gates = [iqkq.ops._expert(mgate, e) for e in range(E)]
        for th in a.threads:
            for N in a.ns:
                x = rng.standard_normal((N, a.K), dtype=np.float32)
                tf, tu = interleaved_times([lambda: iqkq.fused_up_gate(up, gate, x, threads=th),
                                            lambda: unfused_dense(up, gate, x, th)])
                r = dict(type=name, kind="dense", N=N, threads=th, fused_s=tf, unfused_s=tu, speedup=tu / tf,
                         fused_gflops=4.0 * a.nff * a.K * N / tf / 1e9)
                res.append(r)
                print(f"{name:>10} dense N={N:<4d} t={th}  fused {tf * 1e3:8.3f} ms ({r['fused_gflops']:6.1f} GFLOPS)  "
                      f"unfused {tu * 1e3:8.3f} ms  speedup {r['speedup']:5.2f}x")
            tf, tu = interleaved_times([lambda: iqkq.moe_up_gate(mup, mgate, mx, mids, threads=th),
                                        lambda: unfused_moe(ups, gates, mx, mids, th)])
            r = dict(type=name, kind="moe", T=T, threads=th, fused_s=tf, unfused_s=tu, speedup=tu / tf)
            res.append(r)
            print(f"{name:>10} MoE   T={T:<4d} t={th}  fused {tf * 1e3:8.3f} ms  unfused {tu * 1e3:8.3f} ms  "
                  f"speedup {r['speedup']:5.2f}x")
    write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
