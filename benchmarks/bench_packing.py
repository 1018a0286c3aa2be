"""B3 useful pairs/s on the XQuAD-R length mix (PyTorch at its best standard setting vs ours packed)
and B5 packing efficiency (share of real tokens: packed vs padded to max vs bucketed).

  XLA_FLAGS= python benchmarks/bench_packing.py [--pairs=2048] [--timed_pairs=64] [--rounds=3]

Pairs: XQuAD-R questions (8 languages) with their answer sentence and 7 random sentences of the same
language, rendered with the qwen3_pair template and the demo tokenizer, budget `--max_length`
tokens. B3 scores the same `--timed_pairs` pairs with the same ~30M Qwen3 weights in both
frameworks: PyTorch with dynamic padding per batch of `--batch` pairs (in input order, and sorted by
length; the faster is its best), ours with `Scorer(pack=True)` (and, for reference, its unpacked
length buckets). Rounds are interleaved; ratios are medians of per-round ratios.
"""

import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common as bc
from absl import app, flags

_PAIRS = flags.DEFINE_integer("pairs", 2048, "Pairs for the B5 token shares.")
_TIMED = flags.DEFINE_integer("timed_pairs", 64, "Pairs scored per timed pass (B3).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved timed rounds.")
_BATCH = flags.DEFINE_integer("batch", 32, "Pairs per call (PyTorch batches, our runner's budget).")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 256, "Token budget per pair (template included).")
_MAX_PAIRS = flags.DEFINE_integer("max_pairs", 16, "Pairs per packed row at most.")


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


def main(argv):
    del argv
    bc.check_flags()
    import numpy as np
    import torch

    from querit_jax.data.tokenize import PairEncoder
    from querit_jax.inference.runners import Scorer

    torch.set_num_threads(os.cpu_count())
    bc.header("B3/B5: XQuAD-R length mix, packing")
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = bc.make_models(tmp)
    encoder = PairEncoder(ours.tokenizer, ours.spec.template, _MAX_LENGTH.value, 64)
    queries, docs = bc.xquad_pairs(_PAIRS.value)
    seqs, _ = encoder.encode(queries, docs)
    lengths = np.array([len(s) for s in seqs])
    print(
        f"{len(seqs)} pairs: mean {lengths.mean():.0f} tokens, p95 "
        f"{np.percentile(lengths, 95):.0f}, "
        f"max {lengths.max()} (budget {_MAX_LENGTH.value})"
    )

    print(f"\nB5 share of real tokens (batches of {_BATCH.value} pairs; target packed >= 0.93)")
    for name, share in token_shares(
        lengths, _MAX_LENGTH.value, _BATCH.value, _MAX_PAIRS.value
    ).items():
        print(f"  {name:<46}{share:>6.3f}")

    # ----- B3: useful pairs/s -----
    rng = np.random.default_rng(0)
    timed = [seqs[i] for i in rng.choice(len(seqs), _TIMED.value, replace=False)]
    pad = ours.tokenizer.pad_token_id
    batch = _BATCH.value

    def torch_pass(order):
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
                    hf(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, 0].numpy()
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
    times = bc.interleave(
        {
            "torch, dynamic padding": lambda: torch_pass(in_order),
            "torch, dynamic padding sorted": lambda: torch_pass(by_length),
            "jax, packed": lambda: runners[True].score_tokens(ours.params, timed),
            "jax, sorted buckets (unpacked)": lambda: runners[False].score_tokens(
                ours.params, timed
            ),
        },
        _ROUNDS.value,
    )
    print(f"\nB3 useful pairs/s ({len(timed)} pairs per pass, {_ROUNDS.value} interleaved rounds)")
    for name, ts in times.items():
        print(f"  {name:<34}{len(timed) / statistics.median(ts):>8.1f} pairs/s")
    best_torch = min(
        ("torch, dynamic padding", "torch, dynamic padding sorted"),
        key=lambda k: statistics.median(times[k]),
    )
    med, lo, hi = bc.median_ratio(times[best_torch], times["jax, packed"])
    print(
        f"B3 ratio jax packed / best torch ({best_torch}): {med:.2f}x (IQR {lo:.2f}-{hi:.2f}; "
        "target >= 2.5)"
    )


if __name__ == "__main__":
    app.run(main)
