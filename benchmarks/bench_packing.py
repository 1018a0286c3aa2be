"""B3 useful pairs/s on the XQuAD-R length mix (PyTorch at its best standard setting vs ours packed)
and B5 packing efficiency (share of real tokens), measured where packing runs.

  XLA_FLAGS= python benchmarks/bench_packing.py [--pairs=2048] [--timed_pairs=1024] [--rounds=3]
  XLA_FLAGS= python benchmarks/bench_packing.py --nostepwise --rounds=3   # B3 without B5's steps
  python benchmarks/bench_packing.py --nob3 [--steps=300]      # B5 only (deterministic, no timing)

B5, step by step on the shipped code: for configs/general_relevance.py:demo and :minilm with
data.pack=True, (1) every training step of the trainer's own input pipeline
(`training.inputs.input_pipeline`: mining, ArrayRecord, grain, `data.packing.pack_train_dataset`),
on this machine's devices, next to what the previous packing (one row count, the first 8 batches'
most + 15%, rows of max_length) gave the same steps, and the shares of an 8-device mesh (row counts
in multiples of 8) at the config's batch and at 8x its pairs per step (the config's batch on each
device, the pairs drawn at random from the same steps'); (2) every forward call of the evaluation
scorer (`Scorer.packed_layout`, as `Scorer.run` lays them out) on the demo's evaluation pool (BM25
top-20 of six XQuAD-R test sets, in `eval.rerank`'s chunks), next to the previous layout (rows of
the length bucket, calls padded to powers of two). Also the share of all `--pairs` pairs packed at
once against padding to max length, dynamic padding and length buckets (budget `--max_length`).

Pairs for the all-at-once shares and B3: XQuAD-R questions (8 languages) with their answer sentence
and 7 random sentences of the same language, rendered with the qwen3_pair template and the demo
tokenizer, budget `--max_length` tokens. B3 scores the same `--timed_pairs` pairs with the same
~30M Qwen3 weights in both frameworks: PyTorch with dynamic padding per batch of `--batch` pairs (in
input order, and sorted by length; the faster is its best), ours with `Scorer(pack=True)` (and, for
reference, its unpacked length buckets). Rounds are interleaved; ratios are medians of per-round
ratios.
"""

import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common as bc
from absl import app, flags

_PAIRS = flags.DEFINE_integer("pairs", 2048, "Pairs for the B5 token shares.")
_TIMED = flags.DEFINE_integer("timed_pairs", 1024, "Pairs scored per timed pass (B3).")
_COMPILE = flags.DEFINE_bool(
    "torch_compile", True, "B3: also time torch.compile(model) (inductor, dynamic shapes)."
)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved timed rounds.")
_BATCH = flags.DEFINE_integer("batch", 32, "Pairs per call (PyTorch batches, our runner's budget).")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 256, "Token budget per pair (template included).")
_MAX_PAIRS = flags.DEFINE_integer("max_pairs", 16, "Pairs per packed row at most.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps measured per config (B5).")
_B3 = flags.DEFINE_bool("b3", True, "Time B3 (pairs/s) after the B5 shares.")
_STEPWISE = flags.DEFINE_bool(
    "stepwise", True, "B5: measure the training and evaluation shares step by step (slow)."
)
CONFIGS = ("demo", "minilm")  # configs/general_relevance.py variants, trained with data.pack=True


def token_shares(lengths, max_length, batch, max_pairs):
    """{setting: share of real tokens among the tokens computed}."""
    import numpy as np

    from querit_jax.data import packing
    from querit_jax.inference.runners import length_buckets

    lengths = np.asarray(lengths)
    real = lengths.sum()

    def batched(order, pad_to):
        return real / sum(
            len(b) * pad_to(lengths[b]) for b in np.array_split(order, -(-len(order) // batch))
        )

    buckets = length_buckets(max_length)
    sorted_order = np.argsort(lengths, kind="stable")
    rows = packing.rows_needed(lengths, max_length, max_pairs)
    return {
        "padded to max_length": real / (len(lengths) * max_length),
        "dynamic padding per batch": batched(np.arange(len(lengths)), np.max),
        "dynamic padding, sorted": batched(sorted_order, np.max),
        "sorted + power-of-2 buckets (ours unpacked)": batched(
            sorted_order, lambda x: next(b for b in buckets if b >= x.max())
        ),
        f"packed, rows of {max_length} (ours)": real / (rows * max_length),
    }


def demo_config(variant: str):
    """configs/general_relevance.py:VARIANT with data.pack=True, as an ExperimentConfig."""
    import importlib.util

    from querit_jax import config_lib

    path = os.path.join(bc.ROOT, "configs", "general_relevance.py")
    spec = importlib.util.spec_from_file_location("general_relevance", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    config.data.pack = True
    return config_lib.from_config_dict(config)


def pair_lengths(segment_ids):
    """Pair lengths of packed rows [R, L] (tokens per segment id of each row)."""
    import numpy as np

    counts = [np.bincount(row[row > 0]) for row in segment_ids]
    return np.concatenate([c[c > 0] for c in counts])


def training_shares(cfg, tokenizer, workdir: str, steps: int) -> dict:
    """Real-token share of each step of the trainer's own packed input pipeline, and of the same
    steps packed as before this change (one row count: the first 8 batches' most + 15%, rows of
    max_length; a step needing more stopped the run)."""
    import jax
    import numpy as np

    from querit_jax.data import packing
    from querit_jax.training import inputs, memory

    lines = []
    spec, _ = memory.planned_spec(cfg)
    it, _, _ = inputs.input_pipeline(cfg, spec, tokenizer, workdir, lines.append)
    shares, shapes, lengths = [], set(), []
    d = cfg.data
    for _ in range(steps):
        seg = next(it)["segment_ids"]
        shares.append(float((seg > 0).mean()))
        shapes.add(seg.shape)
        lengths.append(pair_lengths(seg))
    tokens = np.array([x.sum() for x in lengths])
    needed = np.array([packing.rows_needed(x, d.max_length, d.pack_max_pairs) for x in lengths])
    multiple = jax.device_count()
    old_rows = -(-int(np.ceil(max(needed[:8]) * 1.15)) // multiple) * multiple
    # The same steps through the same functions with rows in multiples of 8 (an 8-device mesh),
    # as `pack_train_dataset` chooses the shapes (from the first 32 batches).
    eight, rows8 = eight_device_rows(lengths, d)
    # An 8-device mesh with the demo's batch on each device (8x the pairs per step, as a pod run
    # scales its global batch with its devices): steps of 8x the pairs drawn at random from the
    # same steps' pairs (a packed batch keeps its pairs' lengths, not their groups; packing needs
    # only the lengths).
    pool = np.concatenate(lengths)
    draw = np.random.default_rng(0)
    size = 8 * len(lengths[0])
    wide = [draw.choice(pool, size, replace=size > len(pool)) for _ in range(steps)]
    wide_shapes, wide_rows = eight_device_rows(wide, d)
    # The same wide steps on 4 hosts of 2 devices: each packs its own quarter of the pairs, and the
    # step takes the rows of the host that needs most (`packing.step_rows`, as `AgreeRows` agrees).
    hosts_shapes, hosts_rows = eight_device_rows(wide, d, processes=4)
    return {
        "log": [x for x in lines if x.startswith("Packed steps")],
        "shares": np.array(shares),
        "shapes": sorted(shapes),
        "old": tokens / (old_rows * d.max_length),
        "old_rows": old_rows,
        "old_stops": int(np.sum(needed > old_rows)),
        "eight": tokens / (np.array(rows8) * eight.row_length),
        "eight_shapes": eight,
        "wide": np.array([x.sum() for x in wide]) / (np.array(wide_rows) * wide_shapes.row_length),
        "wide_shapes": wide_shapes,
        "hosts": np.array([x.sum() for x in wide])
        / (np.array(hosts_rows) * hosts_shapes.row_length),
        "hosts_shapes": hosts_shapes,
    }


def eight_device_rows(lengths: list, d, processes: int = 1) -> tuple:
    """(StepShapes, rows of each step) for steps of these pair lengths on an 8-device mesh (`d`: the
    data config) of `processes` hosts, each packing its share of the pairs, the shapes chosen from
    the first 32 steps as `packing.pack_train_dataset` does."""
    from querit_jax.data import packing

    shapes, _ = packing.choose_shapes(
        lengths[:32],
        d.max_length,
        d.pack_max_pairs,
        8,
        getattr(d, "pack_length", 0),
        d.pack_rows,
        processes,
    )
    m = d.pack_max_pairs
    needed = [packing.step_rows(x, shapes.row_length, m, processes) for x in lengths]
    return shapes, [shapes.rows_for(n) for n in needed]


def eval_shares(cfg, eval_cfg, tokenizer, cache: str) -> dict:
    """Real-token share of every forward call the evaluation scorer makes on `eval_cfg`'s pool
    (BM25 top-k of its datasets, in `eval.rerank`'s chunks), and of the previous layout."""
    import numpy as np

    from querit_jax import sharding
    from querit_jax.eval import rerank
    from querit_jax.eval.suite import EvalSuite
    from querit_jax.inference.runners import Scorer
    from querit_jax.models.spec import abstract_params
    from querit_jax.training import memory

    spec, _ = memory.planned_spec(cfg)
    mesh, rules = sharding.make_mesh((-1, 1, 1, 1)), cfg.sharding.rules()
    graphdef, _ = abstract_params(spec, mesh, rules)
    d = cfg.data
    scorer = Scorer(
        spec,
        graphdef,
        tokenizer,
        mesh,
        rules,
        cfg.eval.batch_size,
        d.max_length,
        d.max_query_tokens,
        pack=True,
    )
    suite = EvalSuite(eval_cfg, "unicode", cache, log=lambda *a: None)
    calls, old_calls, shapes = [], [], set()
    for name, ds in suite.datasets.items():
        qids = rerank.judged_queries(ds, eval_cfg.max_queries)
        _, _, tq, td = rerank.candidate_pairs(ds, suite.runs[name], eval_cfg.top_k, qids)
        for start in range(0, len(tq), rerank.CHUNK):
            chunk = slice(start, start + rerank.CHUNK)
            seqs, types = scorer.encoder.encode(tq[chunk], td[chunk])
            packed, layout = scorer.packed_layout(seqs, types)
            length = packed.input_ids.shape[1]
            for first, k, size in layout:
                seg = packed.segment_ids[first : first + k]
                calls.append(((seg > 0).sum(), size * length))
                shapes.add((size, length))
            old_calls += previous_eval_calls(scorer, seqs)
    real, computed = np.array(calls).T
    old_real, old_computed = np.array(old_calls).T
    return {
        "share": real.sum() / computed.sum(),
        "per_call": real / computed,
        "shapes": sorted(shapes),
        "old": old_real.sum() / old_computed.sum(),
    }


def previous_eval_calls(scorer, seqs) -> list[tuple[int, int]]:
    """(real, computed) tokens per forward call of the scorer's layout before this change: rows of
    the length bucket, `pack_rows` rows per call, the last call padded to a power of two."""
    from querit_jax.data import packing

    length = next(b for b in scorer.buckets if b >= max(map(len, seqs)))
    packed = packing.pack_sequences(seqs, length, scorer.max_pairs, 0)
    out, rows, split = [], packed.placement.num_rows, scorer._split
    for start in range(0, rows, scorer.pack_rows):
        k = min(scorer.pack_rows, rows - start)
        size = min(scorer.pack_rows, -(-(1 << (k - 1).bit_length()) // split) * split)
        out.append((int((packed.segment_ids[start : start + k] > 0).sum()), size * length))
    return out


def step_by_step() -> None:
    """B5 on the shipped paths: training steps and evaluation calls of the demo configs."""
    import jax
    from transformers import AutoTokenizer

    demo_eval = demo_config("demo").eval  # BM25 top-20 of six XQuAD-R test sets
    print(
        f"B5 share of real tokens, step by step ({jax.device_count()} device(s); rows split over "
        "them; target >= 0.93)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for variant in CONFIGS:
            cfg = demo_config(variant)
            d = cfg.data
            tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or cfg.model.init_from)
            train = training_shares(cfg, tokenizer, os.path.join(tmp, variant), _STEPS.value)
            ev = eval_shares(cfg, demo_eval, tokenizer, os.path.join(tmp, f"{variant}-eval"))
            t, old = train["shares"], train["old"]
            print(
                f"  {variant}: {d.batch_size} groups x {d.group_size} pairs, max_length "
                f"{d.max_length}; {train['log'][0]}"
            )
            print(
                f"    training, {len(t)} steps: mean {t.mean():.3f}, min {t.min():.3f}; "
                f"{len(train['shapes'])} step shapes {train['shapes']}"
            )
            e = train["eight"]
            w = train["wide"]
            print(
                f"    training, rows in multiples of 8 (8 devices): mean {e.mean():.3f}, min "
                f"{e.min():.3f} ({train['eight_shapes']}); with {d.batch_size} groups' pairs per "
                f"device ({8 * d.batch_size * d.group_size} pairs per step, drawn from the same "
                f"steps): mean {w.mean():.3f}, min {w.min():.3f} ({train['wide_shapes']})"
            )
            h = train["hosts"]
            print(
                f"    the same wide steps on 4 hosts x 2 devices, each packing its own quarter: "
                f"mean {h.mean():.3f}, min {h.min():.3f} ({train['hosts_shapes']})"
            )
            print(
                f"    training before (one size of {train['old_rows']} rows of {d.max_length}): "
                f"mean {old.mean():.3f}, min {old.min():.3f}; {train['old_stops']} of {len(old)} "
                "steps needed more rows (each stopped the run)"
            )
            print(
                f"    evaluation, {len(ev['per_call'])} forward calls: {ev['share']:.3f} of all "
                f"tokens (per call mean {ev['per_call'].mean():.3f}, min "
                f"{ev['per_call'].min():.3f}); {len(ev['shapes'])} call shapes; before "
                f"{ev['old']:.3f}"
            )


def main(argv):
    del argv
    bc.check_flags()
    import numpy as np
    import torch

    from querit_jax.data.tokenize import PairEncoder
    from querit_jax.inference.runners import Scorer

    torch.set_num_threads(os.cpu_count())
    bc.header("B3/B5: XQuAD-R length mix, packing")
    if _STEPWISE.value:
        step_by_step()
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = bc.make_models(tmp)
    encoder = PairEncoder(ours.tokenizer, ours.spec.template, _MAX_LENGTH.value, 64)
    queries, docs = bc.xquad_pairs(_PAIRS.value)
    seqs, _ = encoder.encode(queries, docs)
    lengths = np.array([len(s) for s in seqs])
    print(
        f"\n{len(seqs)} pairs: mean {lengths.mean():.0f} tokens, p95 "
        f"{np.percentile(lengths, 95):.0f}, "
        f"max {lengths.max()} (budget {_MAX_LENGTH.value})"
    )

    print(f"B5 share of real tokens, all {len(seqs)} pairs at once (batches of {_BATCH.value})")
    for name, share in token_shares(
        lengths, _MAX_LENGTH.value, _BATCH.value, _MAX_PAIRS.value
    ).items():
        print(f"  {name:<46}{share:>6.3f}")
    if not _B3.value:
        return

    # ----- B3: useful pairs/s -----
    rng = np.random.default_rng(0)
    timed = [seqs[i] for i in rng.choice(len(seqs), _TIMED.value, replace=False)]
    pad = ours.tokenizer.pad_token_id
    batch = _BATCH.value

    def torch_pass(order, model=hf):
        out = np.zeros(len(timed), np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                width = max(len(timed[i]) for i in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : len(timed[i])] = torch.tensor(timed[i])
                    mask[row, : len(timed[i])] = 1
                out[idx] = (
                    model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, 0].numpy()
                )
        return out

    in_order = np.arange(len(timed))
    by_length = np.argsort([len(s) for s in timed], kind="stable")
    runners = {
        packed: Scorer(
            ours.spec,
            ours.graphdef,
            ours.tokenizer,
            ours.mesh,
            ours.logical_rules,
            batch,
            _MAX_LENGTH.value,
            pack=packed,
            max_pairs=_MAX_PAIRS.value,
        )
        for packed in (True, False)
    }
    ref = torch_pass(by_length)
    got = runners[True].score_tokens(ours.params, timed)
    print(
        f"\nparity: max |packed jax - torch| = {np.abs(got - ref).max():.2e} over {len(timed)} "
        "pairs"
    )
    fns = {
        "torch, dynamic padding": lambda: torch_pass(in_order),
        "torch, dynamic padding sorted": lambda: torch_pass(by_length),
        "jax, packed": lambda: runners[True].score_tokens(ours.params, timed),
        "jax, sorted buckets (unpacked)": lambda: runners[False].score_tokens(ours.params, timed),
    }
    if _COMPILE.value:
        done = bc.torch_compiled(hf, lambda m: torch_pass(by_length, m), dynamic=True)
        if done is not None:
            compiled, got_c, seconds = done
            print(
                f"torch.compile: first pass (compiling) {seconds:.0f} s, max |compiled - eager| = "
                f"{np.abs(got_c - ref).max():.2e}"
            )
            fns["torch.compile, dynamic padding sorted"] = lambda: torch_pass(by_length, compiled)
    times = bc.interleave(fns, _ROUNDS.value)
    print(f"\nB3 useful pairs/s ({len(timed)} pairs per pass, {_ROUNDS.value} interleaved rounds)")
    for name, ts in times.items():
        print(f"  {name:<34}{len(timed) / statistics.median(ts):>8.1f} pairs/s")
    best_torch = min(
        (k for k in times if k.startswith("torch")),
        key=lambda k: statistics.median(times[k]),
    )
    med, lo, hi = bc.median_ratio(times[best_torch], times["jax, packed"])
    print(
        f"B3 ratio jax packed / best torch ({best_torch}): {med:.2f}x (IQR {lo:.2f}-{hi:.2f}; "
        "target >= 2.5)"
    )


if __name__ == "__main__":
    app.run(main)
