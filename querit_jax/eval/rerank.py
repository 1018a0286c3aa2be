"""The BEIR reranking protocol: rerank the top-k of a first-stage run with a cross-encoder.

`score_fn(queries, documents) -> scores` is any pair scorer: `functools.partial(scorer.score,
params)` for a model being trained, a `Teacher.score` for a reference model.

As `beir/reranking/rerank.py`: candidates are the first stage's k best documents per query, the text
is `(title + " " + text).strip()`, the reranked run holds only those k documents with the model's
scores.
"""

from querit_jax.data.beir import BeirDataset
from querit_jax.eval import metrics as metrics_lib
from querit_jax.eval.fusion import Fusion
from querit_jax.eval.metrics import Run
from querit_jax.logs import Progress


def judged_queries(dataset: BeirDataset, max_queries: int = 0) -> list[str]:
    """The evaluated queries: every judged query (the first `max_queries` by id if > 0)."""
    qids = sorted(q for q in dataset.qrels if q in dataset.queries)
    return qids[:max_queries] if max_queries else qids


def candidate_pairs(dataset: BeirDataset, run: Run, top_k: int, qids: list[str]):
    """(query ids, doc ids, query texts, doc texts) for the top-k candidates of each query in
    `qids`."""
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


CHUNK = 4096  # pairs scored per call: a progress line between calls


def rerank(
    score_fn, dataset: BeirDataset, run: Run, top_k: int, max_queries: int = 0, log=None
) -> Run:
    """The reranked run: `score_fn(queries, documents)` for each judged query's top-k candidates,
    with a progress line (pairs/s, ETA) through `log` (the project logger by default)."""
    pq, pd, tq, td = candidate_pairs(dataset, run, top_k, judged_queries(dataset, max_queries))
    progress = Progress(len(tq), f"reranking {dataset.name}", log=log)
    scores = []
    for start in range(0, len(tq), CHUNK):
        chunk = slice(start, start + CHUNK)
        scores.extend(float(s) for s in score_fn(tq[chunk], td[chunk]))
        progress.update(len(tq[chunk]))
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
    fusion: Fusion | None = None,
) -> tuple[dict, Run]:
    """(metrics of the first stage and of the reranked run on the same queries, reranked run).

    With an active `fusion`, the summary also holds the metrics of the reranker fused with the first
    stage ("fused") and the fusion used ("fusion").
    """
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
    if fusion is not None and fusion.active:
        summary["fused"], _ = metrics_lib.evaluate(qrels, fusion.apply(run, reranked), metrics)
        summary["fusion"] = fusion.to_dict()
    return summary, reranked
