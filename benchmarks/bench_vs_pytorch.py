"""B1 scoring, B2 train step: our JAX model vs transformers' PyTorch Qwen3ForSequenceClassification;
B4: model FLOP/s of our train step / this machine's XLA matmul FLOP/s at the model's shapes (CPU
MFU).

  XLA_FLAGS= python benchmarks/bench_vs_pytorch.py [--rounds=10] [--groups=2] [--group_size=4]
      [--length=64] [--score_pairs=1024] [--notorch_compile]

Same tiny Qwen3 (~30M parameters, `bench_common.TINY_QWEN3`), same weights (the HF model is loaded
into ours with `api.load_model`), same right-padded batch (pair lengths uniform in [length/2,
length]), fp32, one process. The train step is AdamW + listwise softmax cross-entropy over [groups,
group_size] in both. Each framework's own best fp32 GEMM FLOP/s at the model's projection shapes is
printed alongside. PyTorch runs under `torch.inference_mode` with `use_cache=False` for scoring,
eager and `torch.compile`d (inductor; its compile time is printed, not timed); every measurement
of a benchmark is interleaved round by round with the others.
"""

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common as bc
from absl import app, flags

_ROUNDS = flags.DEFINE_integer(
    "rounds", 10, "Interleaved timed rounds (median of per-round ratios)."
)
_GROUPS = flags.DEFINE_integer("groups", 2, "Query groups per batch.")
_GROUP_SIZE = flags.DEFINE_integer("group_size", 4, "Pairs per group.")
_LENGTH = flags.DEFINE_integer("length", 64, "Padded length.")
_SCORE_PAIRS = flags.DEFINE_integer(
    "score_pairs", 1024, "B1: pairs scored per timed pass, in batches of groups x group_size."
)
_COMPILE = flags.DEFINE_bool(
    "torch_compile", True, "Also time torch.compile(model) (inductor) in B1 and B2."
)


def main(argv):
    del argv
    bc.check_flags()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch
    from flax import nnx

    from querit_jax.training import steps
    from querit_jax.training.state import TrainState

    torch.set_num_threads(os.cpu_count())
    bc.header("B1/B2/B4: JAX vs PyTorch, tiny Qwen3")
    q, g, t = _GROUPS.value, _GROUP_SIZE.value, _LENGTH.value
    n = q * g
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = bc.make_models(tmp)
    total, non_emb = bc.count_params(hf)
    print(
        f"model: {total / 1e6:.1f}M parameters ({non_emb / 1e6:.1f}M non-embedding); batch {q}x{g} "
        f"pairs x {t}"
    )

    rng = np.random.default_rng(0)
    pad = ours.tokenizer.pad_token_id
    lengths = rng.integers(t // 2, t + 1, size=n)
    vocab = ours.spec.backbone.vocab_size

    def random_ids(
        shape,
    ):  # never the pad id, so HF's pad-id pooling reads our segments' last token
        x = rng.integers(20, vocab, size=shape)
        return np.where(x == pad, pad + 1, x).astype(np.int32)

    ids = random_ids((n, t))
    seg = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(seg > 0, ids, pad).astype(np.int32)
    ids_t, mask_t = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(seg.astype(np.int64))

    # ----- B1: scoring (`--score_pairs` pairs in batches of n, fixed shape) -----
    forward = jax.jit(lambda p, i, s: nnx.merge(ours.graphdef, p)(i, s)[:, 0])
    ids_j, seg_j = jnp.asarray(ids), jnp.asarray(seg)
    with torch.inference_mode():
        ref = hf(input_ids=ids_t, attention_mask=mask_t, use_cache=False).logits[:, 0].numpy()
    diff = float(np.abs(np.asarray(forward(ours.params, ids_j, seg_j)) - ref).max())
    print(f"parity: max |score_jax - score_torch| = {diff:.2e} (fp32)")
    calls = max(1, -(-_SCORE_PAIRS.value // n))
    score_len = rng.integers(t // 2, t + 1, size=(calls, n))
    score_seg = (np.arange(t)[None, None] < score_len[..., None]).astype(np.int32)
    score_ids = np.where(score_seg > 0, random_ids((calls, n, t)), pad).astype(np.int32)
    batches_t = [
        (torch.from_numpy(i.astype(np.int64)), torch.from_numpy(m.astype(np.int64)))
        for i, m in zip(score_ids, score_seg)
    ]
    batches_j = [(jnp.asarray(i), jnp.asarray(m)) for i, m in zip(score_ids, score_seg)]

    def torch_score(model=hf):
        with torch.inference_mode():
            for i, m in batches_t:
                model(input_ids=i, attention_mask=m, use_cache=False)

    def jax_score():
        for i, m in batches_j:
            out = forward(ours.params, i, m)
        out.block_until_ready()

    def with_compiled(fns, torch_fn, label):
        """`fns` plus `torch_fn` run on torch.compile(hf) (when this machine compiles it)."""
        done = bc.torch_compiled(hf, torch_fn) if _COMPILE.value else None
        if done is not None:
            print(f"torch.compile ({label}): first call (compiling) {done[2]:.0f} s")
            fns["torch.compile"] = lambda: torch_fn(done[0])
        return fns

    b1 = bc.interleave(
        with_compiled({"torch": torch_score, "jax": jax_score}, torch_score, "B1"), _ROUNDS.value
    )

    # ----- B2: train step -----
    tx = optax.adamw(1e-5, weight_decay=0.01)
    step = jax.jit(
        steps.make_train_step(ours.graphdef, tx, optax.constant_schedule(1e-5), 1.0),
        donate_argnums=(0,),
    )
    params = jax.tree.map(jnp.copy, ours.params)
    state = [TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))]
    batch = {"input_ids": ids_j.reshape(q, g, t), "segment_ids": seg_j.reshape(q, g, t)}

    def jax_step():
        state[0], metrics = step(state[0], batch)
        metrics["loss"].block_until_ready()

    hf.train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-5, weight_decay=0.01)
    target = torch.zeros(q, dtype=torch.long)

    def torch_step(model=hf):
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=ids_t, attention_mask=mask_t, use_cache=False).logits.view(q, g)
        torch.nn.functional.cross_entropy(logits, target).backward()
        opt.step()

    # torch.compile in training mode: forward and backward graphs.
    b2 = bc.interleave(
        with_compiled({"torch": torch_step, "jax": jax_step}, torch_step, "B2"), _ROUNDS.value
    )

    # ----- B4: CPU MFU of our train step on full rows (what packing produces) -----
    full = {
        "input_ids": jnp.asarray(random_ids((q, g, t))),
        "segment_ids": jnp.ones((q, g, t), jnp.int32),
    }

    def jax_step_full():
        state[0], metrics = step(state[0], full)
        metrics["loss"].block_until_ready()

    shapes = bc.matmul_shapes(n * t)
    cfg = bc.TINY_QWEN3
    model_flops = (
        n
        * t
        * bc.flops_per_token(
            non_emb, cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["head_dim"], t, True
        )
    )
    jax_step_full()  # compile
    step_times, peaks_jax, peaks_torch, mfus = [], [], [], []
    for _ in range(_ROUNDS.value):  # the step and both GEMM peaks measured side by side per round
        t0 = time.perf_counter()
        jax_step_full()
        step_times.append(time.perf_counter() - t0)
        peaks_jax.append(bc.jax_matmul_flops(shapes, repeats=3))
        peaks_torch.append(bc.torch_matmul_flops(shapes, repeats=3))
        mfus.append(model_flops / step_times[-1] / peaks_jax[-1])
    step_s, peak_jax = statistics.median(step_times), statistics.median(peaks_jax)
    peak_torch, mfu = statistics.median(peaks_torch), statistics.median(mfus)

    print()
    print(f"{'benchmark':<42}{'torch ms':>10}{'jax ms':>10}{'torch/jax (IQR)':>24}")
    b1_name = f"B1 scoring ({calls * n} pairs, {calls} calls)"
    for name, times in ((b1_name, b1), ("B2 train step (AdamW)", b2)):
        for variant in ("torch", "torch.compile"):
            if variant not in times:
                continue
            med, lo, hi = bc.median_ratio(times[variant], times["jax"])
            label = name if variant == "torch" else f"{name}, torch.compile"
            print(
                f"{label:<42}{1e3 * statistics.median(times[variant]):>10.1f}"
                f"{1e3 * statistics.median(times['jax']):>10.1f}{med:>10.2f}x ({lo:.2f}-{hi:.2f})"
            )
    pairs_s = {k: calls * n / statistics.median(v) for k, v in b1.items()}
    print("B1 pairs/s: " + ", ".join(f"{k} {v:.0f}" for k, v in pairs_s.items()))
    print(
        f"matmul fp32 GFLOP/s at the model's shapes: torch {peak_torch / 1e9:.0f}, XLA "
        f"{peak_jax / 1e9:.0f}"
    )
    print(
        f"B4 train step on full rows: {1e3 * step_s:.1f} ms, model "
        f"{model_flops / step_s / 1e9:.1f} GFLOP/s "
        f"/ XLA matmul {peak_jax / 1e9:.0f} GFLOP/s = MFU {mfu:.2f} (median per round; target >= "
        "0.7)"
    )


if __name__ == "__main__":
    app.run(main)
