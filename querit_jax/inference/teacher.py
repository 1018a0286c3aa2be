"""Teacher scores for (query, candidate) pairs.

A teacher is any loaded model: a reranker (its raw score) or an embedder (the inner product of the
query and document embeddings, i.e. cosine for normalised ones), batched and sharded like every
other inference here; or a weighted mix of such models and the first stage's own scores
(`TeacherMix`, `"stage1/model:0.6,bm25:0.4"`), each normalised per query.
`querit_jax.loading.load_teacher` builds either from its spec.
"""

import numpy as np

from querit_jax.inference.runners import embedder_for, scorer_for
from querit_jax.models.spec import LoadedModel


class Teacher:
    def __init__(
        self,
        model: LoadedModel,
        batch_size: int = 64,
        max_length: int | None = None,
        path: str | None = None,
        pack: bool = True,
    ):
        """`pack`: several pairs (texts) per row; the same scores, a fraction of the padding."""
        self.model, self.path = model, path or model.path  # path: as the user gave it
        self.kind = "embedder" if self.model.spec.head.kind == "embed" else "reranker"
        make = scorer_for if self.kind == "reranker" else embedder_for
        self.runner = make(self.model, batch_size=batch_size, max_length=max_length, pack=pack)

    def describe(self) -> dict:
        spec = self.model.spec
        return {"path": self.path, "kind": self.kind, "family": spec.family, "head": spec.head.kind}

    def score(self, queries: list[str], documents: list[str]) -> np.ndarray:
        """One float score per (query, document) pair."""
        if not queries:
            return np.zeros((0,), np.float32)
        if self.kind == "reranker":
            return self.runner.score(self.model.params, queries, documents)
        uq, qi = np.unique(np.asarray(queries, dtype=object), return_inverse=True)
        ud, di = np.unique(np.asarray(documents, dtype=object), return_inverse=True)
        q = self.runner.embed(self.model.params, list(uq), "query")
        d = self.runner.embed(self.model.params, list(ud), "document")
        return np.einsum("nd,nd->n", q[qi], d[di]).astype(np.float32)

    needs_first_stage = False

    def score_groups(self, queries, documents, sizes=None, first_stage=None) -> np.ndarray:
        """As `TeacherMix.score_groups`: a single teacher's raw scores (no normalisation)."""
        del sizes, first_stage
        return self.score(queries, documents)


# ----- weighted combinations ---------------------------------------------------------------------
FIRST_STAGE = "bm25"  # a mix component: the first stage's own scores of the candidates


def parse_mix(spec: str) -> list[tuple[str, float]] | None:
    """`"PATH:0.6,bm25:0.4"` -> [("PATH", 0.6), ("bm25", 0.4)]; a plain location -> None.

    A component is a model location (reranker or embedder; gs:// and Hub ids too) or `bm25`, the
    first stage's own scores, each with a weight after its last colon. Weights are > 0 (they need
    not sum to 1: they are normalised). A single location without a weight is not a mix: its raw
    scores are the teacher's.

    Raises:
      ValueError: a component without a numeric weight, a weight <= 0, a repeated component, or
        only `bm25` (a teacher that never looks at the text adds nothing).
    """
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) == 1 and not _weight_of(parts[0])[1]:
        return None
    mix = []
    for part in parts:
        name, weight = _weight_of(part)
        if weight is None:
            raise ValueError(
                f"teacher component {part!r} has no weight; write LOCATION:WEIGHT or bm25:WEIGHT."
            )
        if not weight > 0:
            raise ValueError(f"teacher component {part!r}: the weight must be > 0.")
        if name in [n for n, _ in mix]:
            raise ValueError(f"teacher component {name!r} is given twice.")
        mix.append((name, weight))
    if all(name == FIRST_STAGE for name, _ in mix):
        raise ValueError("a teacher mix needs a model component besides bm25.")
    total = sum(w for _, w in mix)
    return [(name, w / total) for name, w in mix]


def _weight_of(part: str) -> tuple[str, float | None]:
    name, sep, tail = part.rpartition(":")
    if not sep or not name:
        return part, None
    try:
        return name, float(tail)
    except ValueError:
        return part, None  # a colon inside the location (gs://..., hf://...)


def minmax_groups(scores: np.ndarray, sizes) -> np.ndarray:
    """Scores min-max normalised to [0, 1] within consecutive groups of `sizes` (a group whose
    scores are all equal maps to 0)."""
    out = np.zeros(len(scores), np.float32)
    offset = 0
    for n in sizes:
        s = np.asarray(scores[offset : offset + n], np.float64)
        if n:
            span = s.max() - s.min()
            out[offset : offset + n] = (s - s.min()) / span if span > 0 else 0.0
        offset += n
    return out


class TeacherMix:
    """A weighted combination of teachers and the first stage: each component's scores min-max
    normalised per query (a group: the source and its candidates), then weighted and summed. Scores
    are in [0, 1] (pick `train.teacher_temperature` accordingly, e.g. 0.1)."""

    def __init__(self, components: list[tuple[str, float, "Teacher | None"]]):
        self.components = components  # (name, weight, teacher; None for the first stage)

    @property
    def needs_first_stage(self) -> bool:
        return any(t is None for _, _, t in self.components)

    def describe(self) -> dict:
        return {
            "kind": "mix",
            "normalisation": "min-max per query",
            "components": [
                {"weight": w, **(t.describe() if t is not None else {"path": FIRST_STAGE})}
                for _, w, t in self.components
            ],
        }

    def score_groups(self, queries, documents, sizes, first_stage=None) -> np.ndarray:
        """Combined scores of pairs laid out as consecutive groups (`sizes`), one group per query;
        `first_stage`: the first stage's score of each pair (needed with a bm25 component)."""
        total = np.zeros(len(queries), np.float32)
        for _, weight, teacher in self.components:
            if teacher is None:
                if first_stage is None:
                    raise ValueError("a bm25 teacher component needs the first stage's scores.")
                raw = np.asarray(first_stage, np.float32)
            else:
                raw = teacher.score(queries, documents)
            total += weight * minmax_groups(raw, sizes)
        return total
