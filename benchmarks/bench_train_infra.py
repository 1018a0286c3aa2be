"""B6 what a checkpoint save costs the training loop / step time (async Orbax saves: the save() call
plus the slowdown of the steps its background write overlaps, against the same steps without saves
run before and after) and B7 input pipeline rate / train-step rate, with the trainer's own pieces:
the grain pipeline (sample groups -> tokenise -> pack), the jitted, donated train step and
`training.checkpointing.Checkpointer`.

  XLA_FLAGS= python benchmarks/bench_train_infra.py [--steps=9] [--save_every=3]

Model: the ~30M Qwen3 of bench_common, AdamW state (~400 MB with the moments). Data: XQuAD-R
questions with their answer sentence and 15 random sentences, `--groups` groups of `--group_size`
per step, packed into rows of `--max_length` tokens. B7 times the pipeline alone (a fresh iterator,
`--batches` batches) and the step alone, and also reports how long the training loop waited in
`next()`.
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
        return packing.pack_train_dataset(ds, data_cfg, pad, 1)[:2]

    ds, rows = dataset()
    print(
        f"{_GROUPS.value}x{_GROUP_SIZE.value} pairs per step (max_length {_MAX_LENGTH.value}) "
        f"packed into {rows}"
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

    def run(ckpt):
        """`_STEPS` steps on the same batches every call (a new iterator over the same data),
        saving every `_SAVE_EVERY` with `ckpt` (None: no saves). Returns (step times, save() call
        times, waits in next(), the wait for the last save at the end)."""
        nonlocal state
        it = pipeline.make_iterator(ds, num_threads=2)
        step_times, save_times, waits = [], [], []
        for i in range(1, _STEPS.value + 1):
            t0 = time.perf_counter()
            local = next(it)
            waits.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            state, m = step(state, jax.device_put(local))
            m["loss"].block_until_ready()
            step_times.append(time.perf_counter() - t1)
            # No save after the last step: every save has following steps to write under, as in
            # a long run (the final save of a run is a once-per-run cost).
            if ckpt is not None and i % _SAVE_EVERY.value == 0 and i < _STEPS.value:
                t2 = time.perf_counter()
                ckpt.save(i, state, it, {"bench": True})
                save_times.append(time.perf_counter() - t2)
        t3 = time.perf_counter()
        if ckpt is not None:
            ckpt.wait()
        return step_times, save_times, waits, time.perf_counter() - t3

    run(None)  # compiles every packed shape these batches have
    # The same batches without saves, with them, and without again (drift in the machine's speed
    # cancels): the background write competes with the following steps for the CPU and memory
    # bandwidth, so the cost of a save is the save() call plus what the steps after it lost, step
    # by step against the same batch without saves, not the call alone.
    before = run(None)[0]
    with tempfile.TemporaryDirectory() as ckpt_dir:
        step_times, save_times, waits, final_wait = run(
            Checkpointer(ckpt_dir, keep=2, async_save=True)
        )
    after = run(None)[0]
    plain_times = [(a + b) / 2 for a, b in zip(before, after)]
    step_s = statistics.median(plain_times)
    slowdown = sum(step_times) - sum(plain_times)  # the steps' time lost to the writes
    per_save = (slowdown + sum(save_times) + final_wait) / len(save_times)
    noise = sum(abs(a - b) for a, b in zip(before, after)) / 2 / len(save_times)
    print()
    print(
        f"train step: median {1e3 * step_s:.0f} ms without saves (the same {_STEPS.value} batches "
        f"before and after), {1e3 * statistics.median(step_times):.0f} ms with a save every "
        f"{_SAVE_EVERY.value}"
    )
    print(
        f"B6 cost of a save: {1e3 * per_save:.0f} ms (save() call median "
        f"{1e3 * statistics.median(save_times):.0f} ms + the following steps' slowdown "
        f"{1e3 * slowdown / len(save_times):.0f} ms + the wait at exit {1e3 * final_wait:.0f} ms "
        f"/ {len(save_times)} saves); / step = {per_save / step_s:.3f} (target <= 0.1); "
        f"the call alone / step = {statistics.median(save_times) / step_s:.3f}; noise (before vs "
        f"after, per save) {1e3 * noise:.0f} ms"
    )
    print(
        f"B7 pipeline {pipe_rate:.1f} batches/s alone vs {1 / step_s:.2f} steps/s: "
        f"{pipe_rate * step_s:.1f}x (target >= 3); the loop waited in next() "
        f"{100 * sum(waits) / (sum(waits) + sum(step_times)):.1f}% of its time"
    )


if __name__ == "__main__":
    app.run(main)
