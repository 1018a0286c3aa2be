"""MoE dispatch strategies on this machine, and MoE FLOPs: XLA's count vs the active-parameter
formula.

  python benchmarks/moe_dispatch.py [--repeats=5]

For each (experts, top-k, tokens) the same routed batch goes through:
  * grouped: sort token copies by expert + `jax.lax.ragged_dot` (dropless; the default path);
  * dense: every expert on every token, masked combine (the reference path; E/k times the work);
  * one-hot: GShard-style dispatch/combine einsums into an [E, capacity] buffer (capacity factor
    1.25, so it may drop tokens: its drop rate is printed).
Times are medians of interleaved jitted runs (forward only); the table prints speedups of grouped
over the others. FLOPs: `compiled.cost_analysis()` of each strategy vs 2*N*H*E (router) + k*N*6*H*I
(experts) -- XLA on CPU lowers ragged_dot to a zero-padded dense dot (openxla PR 45996), so its
count shows what the CPU really executes. Not a test; ratios only mean something within one run.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per strategy (median).")
_HIDDEN = flags.DEFINE_integer("hidden", 256, "Model width H.")
_INTER = flags.DEFINE_integer("inter", 512, "Expert width I.")


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from querit_jax.models import moe

    def one_hot_dispatch(x, weights, experts, wg, wu, wd, capacity_factor=1.25):
        n, k = experts.shape
        e = wg.shape[0]
        cap = int(np.ceil(n * k / e * capacity_factor))
        mask = jax.nn.one_hot(experts, e, dtype=x.dtype)  # [N, k, E]
        position = (jnp.cumsum(mask.reshape(n * k, e), axis=0).reshape(n, k, e) - 1) * mask
        keep = (position < cap) * mask
        dispatch = keep[..., None] * jax.nn.one_hot(position, cap, dtype=x.dtype)  # [N, k, E, C]
        xe = jnp.einsum("nkec,nh->ech", dispatch, x)
        out = jnp.einsum(
            "eci,eih->ech",
            jax.nn.silu(jnp.einsum("ech,ehi->eci", xe, wg)) * jnp.einsum("ech,ehi->eci", xe, wu),
            wd,
        )
        combine = dispatch * weights[..., None, None]
        return jnp.einsum("nkec,ech->nh", combine, out), 1.0 - keep.sum() / (n * k)

    strategies = {
        "grouped": jax.jit(moe.experts_grouped),
        "dense": jax.jit(moe.experts_dense),
        "one-hot": jax.jit(lambda *a: one_hot_dispatch(*a)[0]),
    }
    h, i = _HIDDEN.value, _INTER.value
    print(
        f"H={h}, I={i}, fp32, {os.cpu_count()} CPU cores, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}"
    )
    print(
        "| experts | top-k | tokens | grouped ms | dense ms | one-hot ms | dense/grouped | "
        "one-hot/grouped | one-hot drop rate | XLA GFLOP grouped / dense / formula |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for e, k, n in ((8, 2, 2048), (16, 2, 2048), (32, 4, 2048), (8, 2, 8192)):
        x = jnp.asarray(rng.standard_normal((n, h)).astype(np.float32))
        router = jnp.asarray(rng.standard_normal((h, e)).astype(np.float32) * 0.1)
        ws = [
            jnp.asarray(rng.standard_normal(s).astype(np.float32) * 0.05)
            for s in ((e, h, i), (e, h, i), (e, i, h))
        ]
        _, weights, experts = moe.route(x, router, k, True)
        args = (x, weights, experts, *ws)
        times = {name: [] for name in strategies}
        for fn in strategies.values():
            fn(*args).block_until_ready()
        for _ in range(_REPEATS.value):
            for name, fn in strategies.items():
                start = time.perf_counter()
                fn(*args).block_until_ready()
                times[name].append((time.perf_counter() - start) * 1e3)
        med = {name: statistics.median(t) for name, t in times.items()}
        flops = {
            name: strategies[name].lower(*args).compile().cost_analysis()["flops"] / 1e9
            for name in ("grouped", "dense")
        }
        formula = (2 * n * h * e + k * n * 6 * h * i) / 1e9
        drop = float(jax.jit(lambda *a: one_hot_dispatch(*a)[1])(*args))
        print(
            f"| {e} | {k} | {n} | {med['grouped']:.1f} | {med['dense']:.1f} | {med['one-hot']:.1f} "
            "| "
            f"{med['dense'] / med['grouped']:.2f} | {med['one-hot'] / med['grouped']:.2f} | "
            f"{drop:.3f} | "
            f"{flops['grouped']:.2f} / {flops['dense']:.2f} / {formula:.2f} |"
        )


if __name__ == "__main__":
    app.run(main)
