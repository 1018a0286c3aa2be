"""IR metrics with pytrec-eval-terrier under BEIR conventions.

* nDCG uses trec_eval's linear gain (BEIR, MTEB); MRR@k is the reciprocal rank within the top k;
  Recall@k and MAP@k come from trec_eval's `recall_k` / `map_cut_k`.
* `ignore_identical_ids=True` drops a retrieved document whose id equals the query id (BEIR's
  default; it matters for ArguAna and Quora).
* Means are over every query that has relevance judgements: a query missing from the run scores 0.
"""

from collections.abc import Iterable

import numpy as np
import pytrec_eval

from querit_jax.data.runs import Qrels, Run, top_k

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100")
_TREC = {
    "ndcg": ("ndcg_cut", "ndcg_cut_{k}"),
    "recall": ("recall", "recall_{k}"),
    "map": ("map_cut", "map_cut_{k}"),
    "precision": ("P", "P_{k}"),
}


def parse_metric(name: str) -> tuple[str, int]:
    try:
        base, k = name.lower().split("@")
        k = int(k)
    except ValueError:
        raise ValueError(
            f"Metric {name!r} must look like ndcg@10, mrr@10, recall@100, map@100 or precision@10."
        ) from None
    if base not in (*_TREC, "mrr") or k < 1:
        raise ValueError(
            f"Unknown metric {name!r}; supported: ndcg, mrr, recall, map, precision (with @k)."
        )
    return base, k


def _untie(run: Run) -> Run:
    """Replaces scores by strictly decreasing ones in our tie order, so trec_eval cannot reorder."""
    ranked = top_k(run, max((len(d) for d in run.values()), default=0))
    return {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in ranked.items()}


def evaluate(
    qrels: Qrels,
    run: Run,
    metrics: Iterable[str] = DEFAULT_METRICS,
    ignore_identical_ids: bool = True,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Returns (mean per metric, per-query values per metric)."""
    metrics = tuple(metrics)
    if ignore_identical_ids:
        run = {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}
    qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items() if docs}
    run = _untie(
        {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in qrels}
    )
    per_query: dict[str, dict[str, float]] = {m: {q: 0.0 for q in qrels} for m in metrics}
    parsed = {m: parse_metric(m) for m in metrics}
    measures = {f"{_TREC[b][0]}.{k}" for b, k in parsed.values() if b in _TREC}
    if measures and run:
        results = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
        for m, (base, k) in parsed.items():
            if base in _TREC:
                key = _TREC[base][1].format(k=k)
                for q, vals in results.items():
                    per_query[m][q] = vals[key]
    for m, (base, k) in parsed.items():
        if base == "mrr" and run:
            results = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top_k(run, k))
            for q, vals in results.items():
                per_query[m][q] = vals["recip_rank"]
    means = {m: float(np.mean(list(v.values()))) if v else 0.0 for m, v in per_query.items()}
    return means, per_query
