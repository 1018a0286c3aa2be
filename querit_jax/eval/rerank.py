"""The BEIR reranking protocol: rerank the top-k of a first-stage run with a cross-encoder.

`score_fn(queries, documents) -> scores` is any pair scorer: `functools.partial(scorer.score, params)`
for a model being trained, a `Teacher.score` for a reference model.

As `beir/reranking/rerank.py`: candidates are the first stage's k best documents per query, the text is
`(title + " " + text).strip()`, the reranked run holds only those k documents with the model's scores.
"""

from querit_jax.data.beir import BeirDataset
from querit_jax.eval import metrics as metrics_lib
from querit_jax.eval.metrics import Run


def judged_queries(dataset: BeirDataset, max_queries: int = 0) -> list[str]:
    """The evaluated queries: every judged query (the first `max_queries` by id if > 0)."""
    qids = sorted(q for q in dataset.qrels if q in dataset.queries)
    return qids[:max_queries] if max_queries else qids


def candidate_pairs(dataset: BeirDataset, run: Run, top_k: int, qids: list[str]):
    """(query ids, doc ids, query texts, doc texts) for the top-k candidates of each query in `qids`."""
    ranked = metrics_lib.top_k({q: run[q] for q in qids if q in run}, top_k)
    pq, pd, tq, td = [], [], [], []
    for q, docs in ranked.items():
        for d in docs:
            if d not in dataset.corpus:
                raise KeyError(
                    f"Run document {d!r} (query {q!r}) is not in the corpus of {dataset.name}."
                )
            pq.append(q)
            pd.append(d)
            tq.append(dataset.queries[q])
            td.append(dataset.doc_text(d))
    return pq, pd, tq, td


def rerank(score_fn, dataset: BeirDataset, run: Run, top_k: int, max_queries: int = 0) -> Run:
    """The reranked run: `score_fn(queries, documents)` for each judged query's top-k candidates."""
    pq, pd, tq, td = candidate_pairs(dataset, run, top_k, judged_queries(dataset, max_queries))
    scores = score_fn(tq, td)
    out: Run = {}
    for q, d, s in zip(pq, pd, scores):
        out.setdefault(q, {})[d] = float(s)
    return out


def evaluate_rerank(
    score_fn,
    dataset: BeirDataset,
    run: Run,
    top_k: int,
    metrics=metrics_lib.DEFAULT_METRICS,
    max_queries: int = 0,
) -> tuple[dict, Run]:
    """(metrics of the first stage and of the reranked run on the same queries, reranked run)."""
    qids = judged_queries(dataset, max_queries)
    qrels = {q: dataset.qrels[q] for q in qids}
    reranked = rerank(score_fn, dataset, run, top_k, max_queries)
    first, _ = metrics_lib.evaluate(qrels, {q: run[q] for q in qids if q in run}, metrics)
    ours, _ = metrics_lib.evaluate(qrels, reranked, metrics)
    summary = {
        "first_stage": first,
        "reranked": ours,
        "queries": len(qids),
        "top_k": top_k,
        "pairs": sum(len(v) for v in reranked.values()),
    }
    return summary, reranked
