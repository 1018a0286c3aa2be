"""Combining a reranker with its first stage: what a user deploys is the pair, not the reranker
alone.

Two standard combinations over each query's reranked candidates:

  * interpolation: `alpha * norm(reranker) + (1 - alpha) * norm(first stage)`, scores min-max
    normalised per query (the scales of a cross-encoder and of BM25 have nothing in common); alpha =
    1 is the reranker alone, alpha = 0 the first stage alone;
  * reciprocal-rank fusion (Cormack et al., SIGIR 2009): `sum over runs of 1 / (k + rank)`, k = 60.

The weight is chosen label-free (`choose_alpha` on held-out synthetic queries, never on real test
questions) and travels with the model (`Fusion.to_dict` in model.json, the model card's usage
notes).
"""

import dataclasses

import numpy as np

from querit_jax.data.runs import Qrels, Run, top_k
from querit_jax.eval import metrics as metrics_lib

METHODS = ("none", "interpolate", "rrf")


@dataclasses.dataclass(frozen=True)
class Fusion:
    """How reranker scores combine with the first stage's."""

    method: str = "none"  # none | interpolate | rrf
    alpha: float = 1.0  # interpolate: the reranker's weight
    rrf_k: int = 60  # rrf: rank offset
    chosen_on: str = ""  # where alpha was chosen (e.g. "synthetic dev queries of ...")

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"fusion method {self.method!r}; choose one of {METHODS}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"fusion alpha={self.alpha} must be in [0, 1].")
        if self.rrf_k < 1:
            raise ValueError(f"fusion rrf_k={self.rrf_k} must be >= 1.")

    @property
    def active(self) -> bool:
        return self.method != "none"

    def label(self) -> str:
        if self.method == "interpolate":
            return f"fused α={self.alpha:.2f}"
        return f"RRF k={self.rrf_k}" if self.method == "rrf" else "reranker"

    def apply(self, first: Run, reranked: Run) -> Run:
        """The fused run over the reranked candidates (`reranked` itself when inactive)."""
        if self.method == "interpolate":
            return interpolate(first, reranked, self.alpha)
        if self.method == "rrf":
            return rrf([{q: {d: first[q][d] for d in docs} for q, docs in reranked.items()},
                        reranked], self.rrf_k)  # fmt: skip
        return reranked

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Fusion":
        return cls(**(d or {}))


def minmax(scores: dict[str, float]) -> dict[str, float]:
    """Scores mapped to [0, 1] for one query (all equal -> all 0)."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    span = hi - lo
    return {d: (s - lo) / span if span > 0 else 0.0 for d, s in scores.items()}


def interpolate(first: Run, reranked: Run, alpha: float) -> Run:
    """alpha * minmax(reranker) + (1 - alpha) * minmax(first stage), over each query's candidates.

    A candidate the first stage did not score (it cannot happen for a reranked top-k) counts as the
    query's lowest first-stage score.
    """
    out: Run = {}
    for q, docs in reranked.items():
        base = first.get(q, {})
        floor = min(base.values()) if base else 0.0
        a = minmax(docs)
        b = minmax({d: base.get(d, floor) for d in docs})
        out[q] = {d: alpha * a[d] + (1.0 - alpha) * b[d] for d in docs}
    return out


def rrf(runs: list[Run], k: int = 60) -> Run:
    """Reciprocal-rank fusion: sum over runs of 1 / (k + rank), ranks from 1 (ties by doc id)."""
    out: Run = {}
    for run in runs:
        for q, docs in top_k(run, max((len(d) for d in run.values()), default=0)).items():
            fused = out.setdefault(q, {})
            for rank, d in enumerate(docs, start=1):
                fused[d] = fused.get(d, 0.0) + 1.0 / (k + rank)
    return out


ALPHA_GRID = tuple(np.round(np.arange(0.0, 1.0001, 0.05), 2))


def choose_alpha(
    first: Run, reranked: Run, qrels: Qrels, metric: str = "ndcg@10", grid=ALPHA_GRID
) -> tuple[float, dict[float, float]]:
    """The interpolation weight with the best `metric` on (synthetic) judged queries.

    Returns (best alpha, {alpha: value}); ties go to the larger alpha (more reranker), so that a
    reranker no worse than the first stage is used.
    """
    values = {}
    for alpha in grid:
        means, _ = metrics_lib.evaluate(qrels, interpolate(first, reranked, float(alpha)), [metric])
        values[float(alpha)] = means[metric]
    best = max(values, key=lambda a: (round(values[a], 10), a))
    return best, values
