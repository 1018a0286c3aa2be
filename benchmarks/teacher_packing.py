"""Teacher scoring during mining, packed (`mining.teacher_pack`, the default) against one text per
padded row: the same teacher, the same inputs, interleaved rounds.

  XLA_FLAGS= python benchmarks/teacher_packing.py [--teacher=DIR] [--shard_docs=106] [--rounds=5]

The teacher is loaded as the miner loads it (`loading.load_teacher` on this process's devices, with
`mining.teacher_batch_size`'s default of 64) and asked what a mining shard asks it: the embedder
scores `Teacher.score` computes for queries and their candidates. Inputs: the XQuAD-R Spanish test
questions and documents (a shard's worth of distinct documents, `--shard_docs`, as the tiny adapt
config's shards of 8 source documents x 3 queries x 8 candidates have ~100). Prints texts/s for each
mode, the median of per-round ratios and the largest difference between the two modes' scores.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
from absl import app, flags

_TEACHER = flags.DEFINE_string(
    "teacher", "../shared/models/all-MiniLM-L6-v2", "Teacher location (reranker or embedder)."
)
_DOCS = flags.DEFINE_integer("shard_docs", 106, "Distinct documents per timed call.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
_DATA = "data/xquad_r/es/test"


def main(_):
    from querit_jax.data import beir
    from querit_jax.loading import load_teacher

    ds = beir.load_beir(_DATA, "test")
    doc_ids = sorted(ds.corpus)[: _DOCS.value]
    queries = [ds.queries[q] for q in sorted(ds.queries)][: len(doc_ids)]
    documents = [ds.doc_text(d) for d in doc_ids]
    teachers = {
        pack: load_teacher(_TEACHER.value, devices=jax.local_devices(), pack=pack)
        for pack in (False, True)
    }
    scores, rates = {}, {False: [], True: []}
    for pack, teacher in teachers.items():  # compiles every shape the timed calls use
        scores[pack] = teacher.score(queries, documents)
    for _ in range(_ROUNDS.value):
        for pack, teacher in teachers.items():
            start = time.perf_counter()
            teacher.score(queries, documents)
            rates[pack].append(2 * len(documents) / (time.perf_counter() - start))
    ratios = [p / u for p, u in zip(rates[True], rates[False])]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    print(
        f"teacher {_TEACHER.value} on {jax.local_device_count()} {jax.devices()[0].platform} "
        f"device(s); {len(documents)} documents + {len(queries)} queries per call"
    )
    for pack in (False, True):
        print(
            f"  {'packed' if pack else 'one text per padded row'}: "
            f"{statistics.median(rates[pack]):.1f} texts/s"
        )
    print(
        f"  packed / unpacked: {statistics.median(ratios):.2f}x (IQR {q[0]:.2f}-{q[2]:.2f}); "
        f"max |score difference| {np.abs(scores[True] - scores[False]).max():.1e}"
    )


if __name__ == "__main__":
    app.run(main)
