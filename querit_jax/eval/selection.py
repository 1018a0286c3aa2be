"""Label-free selection on synthetic dev queries: which checkpoint, which fusion weight, which
merge.

`dev_score` reranks every dataset of an `EvalSuite` (synthetic dev sets, each with its own
first-stage run) with one scorer, pools their queries, and chooses the interpolation weight alpha
(`fusion.choose_alpha`). Its `score` is the nDCG@10 of the reranker fused at that alpha, i.e. of
what would be deployed (alpha = 1 is the reranker alone, 0 the first stage alone), so a candidate
that does not help on dev scores as the first stage and is never preferred to one that does. Real
test questions never enter here.
"""

from querit_jax.errors import ConfigError
from querit_jax.eval import metrics as metrics_lib
from querit_jax.eval.fusion import Fusion, choose_alpha
from querit_jax.eval.rerank import judged_queries, rerank

METRIC = "ndcg@10"


def dev_score(suite, score_fn) -> dict:
    """{"score", "alpha", "reranked", "first_stage", "alphas", "queries"} over the pooled dev
    queries
    of every dataset in `suite` (query ids prefixed by the dataset's name)."""
    first, reranked, qrels = {}, {}, {}
    for name, ds in suite.datasets.items():
        run = rerank(score_fn, ds, suite.runs[name], suite.cfg.top_k, suite.cfg.max_queries)
        for q in judged_queries(ds, suite.cfg.max_queries):
            if q in run:
                key = f"{name}|{q}"
                reranked[key], qrels[key] = run[q], ds.qrels[q]
                first[key] = {d: suite.runs[name][q][d] for d in run[q]}
    alpha, values = choose_alpha(first, reranked, qrels, METRIC)
    base, _ = metrics_lib.evaluate(qrels, first, [METRIC])
    return {
        "score": values[alpha],
        "alpha": alpha,
        "reranked": values[1.0],
        "first_stage": base[METRIC],
        "alphas": {f"{a:.2f}": round(v, 4) for a, v in values.items()},
        "queries": len(qrels),
    }


def better(a: dict | None, b: dict) -> bool:
    """Whether dev result `b` beats `a`: the fused score, then the reranker alone (ties keep
    `a`)."""
    if a is None:
        return True
    return (round(b["score"], 6), round(b["reranked"], 6)) > (
        round(a["score"], 6),
        round(a["reranked"], 6),
    )


def fusion_of(result: dict, where: str) -> Fusion:
    """The interpolation recorded with a selected model (its label-free alpha)."""
    return Fusion("interpolate", float(result["alpha"]), chosen_on=where)


def reference_scorer(teacher) -> tuple:
    """(score_fn, fusion or None) that evaluate a teacher in a table beside its student: a single
    model's scores, or a mix of one model and the first stage as that model fused with the first
    stage at the model's weight (the same per-query min-max combination the miner uses).

    Raises:
      ConfigError: a mix of several models (evaluate its components one by one).
    """
    components = getattr(teacher, "components", None)
    if components is None:
        return teacher.score, None
    models = [(w, t) for _, w, t in components if t is not None]
    if len(models) != 1:
        raise ConfigError(
            "eval.reference_models: a teacher mix of several models cannot be evaluated as one "
            "reference; list its components instead."
        )
    weight, model = models[0]
    return model.score, Fusion("interpolate", round(float(weight), 6), chosen_on="teacher mix")
