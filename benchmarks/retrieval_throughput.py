"""Dense first-stage throughput: querit_jax (JAX) vs sentence-transformers (PyTorch), same model,
same machine.

  python benchmarks/retrieval_throughput.py [--model=../shared/models/all-MiniLM-L6-v2]
  [--repeats=3]

Encodes the same corpus (XQuAD-R sentences, all bundled languages) and the same queries with both
frameworks, each at its standard setting (ours: `loading.embedding_function`, what `retrieve`, the
dense first stage and mining's corpus index run: several texts packed per row, and for comparison
one text per length-bucketed row; sentence-transformers: length-sorted dynamic padding), then runs
exact top-100 search (ours: `ShardedCorpus`; PyTorch:
`sentence_transformers.util.semantic_search`). Prints docs/s and queries/s per framework and the
ratio JAX / PyTorch, each the median of `--repeats` interleaved runs after a warm-up (encoding
and search alike). Not a test:
timings on shared 2-core machines vary; only the ratio measured in one run means something.
"""

import glob
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "../shared/models/all-MiniLM-L6-v2", "Embedder directory.")
_DATA = flags.DEFINE_string("data", "data/xquad_r", "Root of BEIR directories to take texts from.")
_DOCS = flags.DEFINE_integer("docs", 2000, "Corpus size.")
_QUERIES = flags.DEFINE_integer("queries", 1000, "Number of queries.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Texts per forward pass (both frameworks).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats per measurement (median reported).")


def _texts(root, name, n):
    out = []
    for path in sorted(glob.glob(os.path.join(root, "**", f"{name}.jsonl"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            out += [json.loads(line)["text"] for line in f]
    return out[:: max(1, len(out) // n)][:n]


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv):
    del argv
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer, util

    from querit_jax.loading import embedding_function, load_model
    from querit_jax.retrieval.topk import ShardedCorpus

    docs, queries = (
        _texts(_DATA.value, "corpus", _DOCS.value),
        _texts(_DATA.value, "queries", _QUERIES.value),
    )
    max_length = load_model(_MODEL.value).spec.max_length
    embed = embedding_function(_MODEL.value, batch_size=_BATCH.value)  # packed: the shipped path
    embed_unpacked = embedding_function(_MODEL.value, batch_size=_BATCH.value, pack=False)
    st = SentenceTransformer(_MODEL.value, device="cpu")
    st.max_seq_length = max_length
    torch.set_num_threads(os.cpu_count())

    def jax_encode():
        return embed(docs, "document")

    def jax_encode_unpacked():
        return embed_unpacked(docs, "document")

    def torch_encode():
        return st.encode(docs, batch_size=_BATCH.value, convert_to_numpy=True)

    jax_encode(), jax_encode_unpacked(), torch_encode()  # warm-up (compilation, allocator)
    results = {}
    enc_j, enc_u, enc_t = [], [], []
    for _ in range(_REPEATS.value):  # interleaved, so load changes hit all three
        enc_j.append(_median_time(jax_encode, 1))
        enc_u.append(_median_time(jax_encode_unpacked, 1))
        enc_t.append(_median_time(torch_encode, 1))
    results["encode docs/s"] = (
        len(docs) / statistics.median(enc_j),
        len(docs) / statistics.median(enc_t),
    )
    results["encode docs/s, one text per row (pack=False)"] = (
        len(docs) / statistics.median(enc_u),
        len(docs) / statistics.median(enc_t),
    )

    corpus = jax_encode()
    differ = float(np.abs(corpus - jax_encode_unpacked()).max())
    qemb = embed(queries, "query")
    sharded = ShardedCorpus(corpus)
    tc, tq = torch.from_numpy(corpus), torch.from_numpy(qemb)
    search_j = lambda: sharded.search(qemb, 100)  # noqa: E731
    search_t = lambda: util.semantic_search(tq, tc, top_k=100)  # noqa: E731
    search_j(), search_t()
    sj, stt = [], []
    for _ in range(_REPEATS.value):  # interleaved too
        sj.append(_median_time(search_j, 1))
        stt.append(_median_time(search_t, 1))
    results["top-100 queries/s"] = (
        len(queries) / statistics.median(sj),
        len(queries) / statistics.median(stt),
    )
    same = np.mean(
        [
            set(a) == {h["corpus_id"] for h in b}
            for a, b in zip(sharded.search(qemb, 10)[1], util.semantic_search(tq, tc, top_k=10))
        ]
    )

    print(
        f"model {_MODEL.value}; {len(docs)} docs, {len(queries)} queries, batch {_BATCH.value}, "
        f"max_length {max_length}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    )
    print(
        "| measurement | querit_jax (JAX) | sentence-transformers (PyTorch) | ratio JAX/PyTorch |"
    )
    print("|---|---|---|---|")
    for name, (j, t) in results.items():
        print(f"| {name} | {j:.1f} | {t:.1f} | {j / t:.2f} |")
    print(f"top-10 agreement between the two frameworks: {same:.3f} of queries identical")
    print(f"packed vs one text per row: embeddings differ by at most {differ:.1e}")


if __name__ == "__main__":
    app.run(main)
