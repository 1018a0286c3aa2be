"""XLA CPU options vs our train step and scoring forward: is there a flag that makes B1/B2/B4
faster?

  XLA_FLAGS= python benchmarks/bench_xla_flags.py [--rounds=2]

Each flag set runs in its own child process (XLA reads XLA_FLAGS once, at start-up): the ~30M Qwen3
of bench_common, the B2 batch (2x4 pairs x 64 tokens), median of 3 train steps and 3 forwards after
compiling, plus XLA's best GEMM at the model's shapes. Rounds repeat every flag set in turn so load
drift shows; the table gives each set's median time relative to the default (< 1 = faster). Flags
that change numerics (fast math) are listed for information only: parity tests need the defaults.
"""

import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common as bc
from absl import app, flags

_ROUNDS = flags.DEFINE_integer("rounds", 2, "Times every flag set is run, interleaved.")
_SETS = flags.DEFINE_list("sets", [], "Names of FLAG_SETS to run (default: all).")
_CHILD = flags.DEFINE_boolean("child", False, "Internal: measure in this process and print JSON.")

FLAG_SETS = {
    "default": "",
    "no multi-thread eigen": "--xla_cpu_multi_thread_eigen=false",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn custom call": "--xla_cpu_experimental_onednn_custom_call=true",
    "fast math (numerics change)": "--xla_cpu_enable_fast_math=true",
}


def child() -> dict:
    import tempfile
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from querit_jax.training import steps
    from querit_jax.training.state import TrainState

    with tempfile.TemporaryDirectory() as tmp:
        _, ours = bc.make_models(tmp)
    q, g, t = 2, 4, 64
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": jnp.asarray(rng.integers(20, 16000, size=(q, g, t)).astype(np.int32)),
        "segment_ids": jnp.ones((q, g, t), jnp.int32),
    }
    tx = optax.adamw(1e-5)
    step = jax.jit(
        steps.make_train_step(ours.graphdef, tx, optax.constant_schedule(1e-5), 1.0),
        donate_argnums=(0,),
    )
    forward = jax.jit(lambda p, i, s: nnx.merge(ours.graphdef, p)(i, s)[:, 0])
    ids, seg = batch["input_ids"].reshape(q * g, t), batch["segment_ids"].reshape(q * g, t)
    forward(ours.params, ids, seg).block_until_ready()
    fwd = []
    for _ in range(3):
        t0 = time.perf_counter()
        forward(ours.params, ids, seg).block_until_ready()
        fwd.append(time.perf_counter() - t0)
    state = TrainState(jnp.zeros((), jnp.int32), ours.params, tx.init(ours.params))
    state, m = step(state, batch)
    m["loss"].block_until_ready()
    train = []
    for _ in range(3):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        m["loss"].block_until_ready()
        train.append(time.perf_counter() - t0)
    gemm = bc.jax_matmul_flops(bc.matmul_shapes(q * g * t), repeats=3)
    return {"forward": statistics.median(fwd), "train": statistics.median(train), "gemm": gemm}


def main(argv):
    del argv
    if _CHILD.value:
        print("RESULT " + json.dumps(child()))
        return
    bc.check_flags()
    print(f"== XLA CPU flags (cpus={os.cpu_count()}; shared machine: ratios only)")
    chosen = {k: v for k, v in FLAG_SETS.items() if not _SETS.value or k in _SETS.value}
    results = {k: [] for k in chosen}
    for r in range(_ROUNDS.value):
        for name, xla_flags in list(chosen.items())[:: 1 if r % 2 == 0 else -1]:
            env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
            proc = subprocess.run(
                [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True
            )
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(f"{name}: failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            results[name].append(json.loads(line[0][7:]))
    base = {k: statistics.median(r[k] for r in results["default"]) for k in ("forward", "train")}
    print(f"{'flags':<30}{'forward ms':>12}{'train ms':>10}{'vs default':>12}{'GEMM GFLOP/s':>14}")
    for name, rs in results.items():
        if not rs:
            continue
        fwd, train = (statistics.median(r[k] for r in rs) for k in ("forward", "train"))
        gemm = statistics.median(r["gemm"] for r in rs)
        print(
            f"{name:<30}{1e3 * fwd:>12.0f}{1e3 * train:>10.0f}"
            f"{train / base['train']:>11.2f}x{gemm / 1e9:>14.0f}"
        )


if __name__ == "__main__":
    app.run(main)
