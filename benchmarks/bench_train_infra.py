"""B6 checkpoint save time blocking the step / step time (async Orbax saves) and B7 input pipeline
rate / train-step rate, with the trainer's own pieces: the grain pipeline (sample groups -> tokenise
-> pack), the jitted, donated train step and `training.checkpointing.Checkpointer`.

  XLA_FLAGS= python benchmarks/bench_train_infra.py [--steps=9] [--save_every=3]

Model: the ~30M Qwen3 of bench_common, AdamW state (~400 MB with the moments). Data: XQuAD-R questions
with their answer sentence and 15 random sentences, `--groups` groups of `--group_size` per step,
packed into rows of `--max_length` tokens. B7 times the pipeline alone (a fresh iterator, `--batches`
batches) and the step alone, and also reports how long the training loop waited in `next()`.
"""

import os
import random
import statistics
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common as bc
from absl import app, flags, logging

_STEPS = flags.DEFINE_integer("steps", 9, "Train steps timed.")
_SAVE_EVERY = flags.DEFINE_integer("save_every", 3, "Save a checkpoint every this many steps.")
_GROUPS = flags.DEFINE_integer("groups", 4, "Query groups per step.")
_GROUP_SIZE = flags.DEFINE_integer("group_size", 8, "Pairs per group.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 128, "Token budget per pair.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Batches pulled to time the pipeline alone.")


def xquad_groups(n_groups: int, negatives: int = 15, seed: int = 0) -> list[dict]:
    """Training records in the layout of the ArrayRecord groups the trainer reads."""
    queries, docs = bc.xquad_pairs(n_groups * (negatives + 1), group=negatives + 1, seed=seed)
    rng = random.Random(seed)
    out = []
    for start in range(0, len(queries), negatives + 1):
        out.append(
            {
                "query": queries[start],
                "pos": [docs[start]],
                "neg": docs[start + 1 : start + negatives + 1],
                "pos_scores": [0.0],
                "neg_scores": [rng.random() for _ in range(negatives)],
                "has_scores": False,
            }
        )
    return out


def main(argv):
    del argv
    bc.check_flags()
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    import jax
    import jax.numpy as jnp
    import optax

    from querit_jax.data import packing, pipeline
    from querit_jax.data.tokenize import PairEncoder
    from querit_jax.training import steps
    from querit_jax.training.checkpointing import Checkpointer
    from querit_jax.training.state import TrainState

    bc.header("B6/B7: checkpoint blocking time and input pipeline rate vs the train step")
    with tempfile.TemporaryDirectory() as tmp:
        _, ours = bc.make_models(tmp)
    pad = ours.tokenizer.pad_token_id
    encoder = PairEncoder(ours.tokenizer, ours.spec.template, _MAX_LENGTH.value, 48)
    data_cfg = types.SimpleNamespace(pack_rows=0, max_length=_MAX_LENGTH.value, pack_max_pairs=8)

    def dataset():
        ds = pipeline.train_dataset(
            xquad_groups(256), encoder, pad, _GROUPS.value, _GROUP_SIZE.value, seed=0
        )
        return packing.pack_train_dataset(ds, data_cfg, pad, 1)

    ds, rows = dataset()
    print(
        f"{_GROUPS.value}x{_GROUP_SIZE.value} pairs per step packed into {rows} rows of {_MAX_LENGTH.value}"
    )

    # ----- B7 (a): the pipeline alone -----
    it = pipeline.make_iterator(ds, num_threads=2)
    next(it)  # start the reader threads
    t = time.perf_counter()
    for _ in range(_BATCHES.value):
        next(it)
    pipe_rate = _BATCHES.value / (time.perf_counter() - t)

    # ----- the train step, with saves (B6) -----
    tx = optax.adamw(1e-5, weight_decay=0.01)
    step = jax.jit(
        steps.make_train_step(ours.graphdef, tx, optax.constant_schedule(1e-5), 1.0),
        donate_argnums=(0,),
    )
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=ours.params, opt_state=tx.init(ours.params)
    )
    it = pipeline.make_iterator(ds, num_threads=2)
    state, m = step(state, jax.device_put(next(it)))  # compile
    m["loss"].block_until_ready()
    step_times, save_times, waits = [], [], []
    with tempfile.TemporaryDirectory() as ckpt_dir:
        ckpt = Checkpointer(ckpt_dir, keep=2, async_save=True)
        for i in range(1, _STEPS.value + 1):
            t0 = time.perf_counter()
            local = next(it)
            waits.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            state, m = step(state, jax.device_put(local))
            m["loss"].block_until_ready()
            step_times.append(time.perf_counter() - t1)
            if i % _SAVE_EVERY.value == 0:
                t2 = time.perf_counter()
                ckpt.save(i, state, it, {"bench": True})
                save_times.append(time.perf_counter() - t2)
        t3 = time.perf_counter()
        ckpt.wait()
        final_wait = time.perf_counter() - t3
    step_s = statistics.median(step_times)
    print()
    print(f"train step: median {1e3 * step_s:.0f} ms over {len(step_times)} steps")
    print(
        f"B6 save blocking: median {1e3 * statistics.median(save_times):.0f} ms over {len(save_times)} "
        f"saves (max {1e3 * max(save_times):.0f}); / step = {statistics.median(save_times) / step_s:.3f} "
        f"(target <= 0.1); wait for the last save at exit {1e3 * final_wait:.0f} ms"
    )
    print(
        f"B7 pipeline {pipe_rate:.1f} batches/s alone vs {1 / step_s:.2f} steps/s: "
        f"{pipe_rate * step_s:.1f}x (target >= 3); the loop waited in next() "
        f"{100 * sum(waits) / (sum(waits) + sum(step_times)):.1f}% of its time"
    )


if __name__ == "__main__":
    app.run(main)
