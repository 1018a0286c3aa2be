"""MTEB (>= 2.26) integration: a querit_jax reranker as an MTEB cross-encoder, and local reranking
tasks.

`MtebCrossEncoder` implements MTEB's `CrossEncoderProtocol` (`predict(inputs1, inputs2, ...)` over
two aligned dataloaders of queries and documents, plus `mteb_model_meta`): MTEB wraps it in its
`SearchCrossEncoderWrapper`, which scores each query's `top_ranked` candidates, and computes the
metrics with pytrec_eval as for any reranker. Scoring goes through our JAX model, loaded from a
checkpoint, a training workdir or an exported Hugging Face directory; MTEB's text for a document is
`(title + " " + text).strip()`, the same as our BEIR protocol.

`beir_reranking_task` builds an MTEB reranking task from a BEIR-layout directory (e.g. XQuAD-R
converted by `querit_jax.data.xquad_r`) and a first-stage run, entirely offline:

    task = beir_reranking_task("data/xquad_r/es/test", run, top_k=20)
    results = mteb.evaluate(MtebCrossEncoder("workdirs/x"), task, cache=None)

Needs the `mteb` extra (`pip install -e .[mteb]`).
"""

import numpy as np

from querit_jax import storage
from querit_jax.data import beir
from querit_jax.eval import metrics as metrics_lib
from querit_jax.eval.fusion import Fusion
from querit_jax.eval.rerank import judged_queries

# MTEB names languages ISO 639-3 + script.
MTEB_LANGUAGES = {
    "ar": "ara-Arab",
    "de": "deu-Latn",
    "el": "ell-Grek",
    "en": "eng-Latn",
    "es": "spa-Latn",
    "hi": "hin-Deva",
    "ru": "rus-Cyrl",
    "th": "tha-Thai",
    "tr": "tur-Latn",
    "vi": "vie-Latn",
    "zh": "zho-Hans",
}


def _texts(loader) -> list[str]:
    return [text for batch in loader for text in batch["text"]]


class MtebCrossEncoder:
    """A querit_jax reranker behind MTEB's CrossEncoderProtocol.

    Args:
      model_name: checkpoint, training workdir or exported Hugging Face directory.
      batch_size: pairs per forward pass (MTEB's `encode_kwargs["batch_size"]` does not apply: our
        scorer buckets pairs by length itself).
    """

    def __init__(
        self,
        model_name: str,
        revision: str | None = None,
        device: str | None = None,
        batch_size: int = 64,
        max_length: int | None = None,
        fusion: Fusion | str = "none",
        first_stage_scores: dict[tuple[str, str], float] | None = None,
        **kwargs,
    ):
        from mteb.models import ModelMeta

        from querit_jax.inference.runners import scorer_for
        from querit_jax.loading import load_model

        del device, kwargs  # the JAX default backend decides
        self.model = load_model(model_name)
        if fusion == "model":
            fusion = Fusion.from_dict(self.model.metadata.get("fusion"))
        self.fusion = fusion if isinstance(fusion, Fusion) else Fusion(method=fusion)
        if self.fusion.active and not first_stage_scores:
            raise ValueError(
                "Fusing with the first stage needs its scores: pass first_stage_scores "
                "(see first_stage_scores_of)."
            )
        self.first_stage_scores = first_stage_scores or {}
        self.scorer = scorer_for(self.model, batch_size=batch_size, max_length=max_length)
        name = storage.basename(model_name)
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites=dict(
                name=f"querit_jax/{name}",
                revision=revision,
                loader=MtebCrossEncoder,
                framework=["JAX"],
                max_tokens=self.model.spec.max_length,
            )
        )

    def predict(self, inputs1, inputs2, *, task_metadata, hf_split, hf_subset, **kwargs):
        """Scores of the aligned (query, document) pairs of two dataloaders."""
        queries, documents = _texts(inputs1), _texts(inputs2)
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries but {len(documents)} documents to pair.")
        if not queries:
            return np.zeros((0,), np.float32)
        scores = np.asarray(self.scorer.score(self.model.params, queries, documents), np.float32)
        if not self.fusion.active:
            return scores
        # MTEB hands over text pairs: a query's candidates are the pairs with its text.
        first, reranked = {}, {}
        for i, (q, d, s) in enumerate(zip(queries, documents, scores)):
            if (q, d) not in self.first_stage_scores:
                raise KeyError(f"No first-stage score for the pair ({q[:40]!r}, {d[:40]!r}).")
            first.setdefault(q, {})[str(i)] = self.first_stage_scores[q, d]
            reranked.setdefault(q, {})[str(i)] = float(s)
        fused = self.fusion.apply(first, reranked)
        return np.asarray([fused[q][str(i)] for i, q in enumerate(queries)], np.float32)


def first_stage_scores_of(data: str, run: metrics_lib.Run, split: str = "test") -> dict:
    """{(query text, document text): first-stage score} for a BEIR directory and its run: what
    `MtebCrossEncoder(fusion=...)` reads, since MTEB passes texts, not ids."""
    ds = beir.load_beir(data, split)
    return {
        (ds.queries[q], ds.doc_text(d)): float(s)
        for q, docs in run.items()
        if q in ds.queries
        for d, s in docs.items()
        if d in ds.corpus
    }


def beir_reranking_task(
    data: str,
    run: metrics_lib.Run,
    top_k: int = 100,
    split: str = "test",
    max_queries: int = 0,
    language: str | None = None,
    name: str | None = None,
):
    """An MTEB reranking task (AbsTaskRetrieval, type Reranking) over a BEIR directory and a run.

    The candidates of each judged query are its `top_k` first-stage documents (ties by doc id, as in
    `querit_jax.eval.rerank`); queries are the judged ones (`max_queries` > 0: the first N by id).
    `language`: ISO 639-1 code (default: guessed from the directory names, e.g. xquad_r/es/test).
    """
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata

    ds = beir.load_beir(data, split)
    qids = [q for q in judged_queries(ds, max_queries) if q in run]
    if not qids:
        raise ValueError(f"No judged query of {data} has first-stage candidates in the run.")
    top = metrics_lib.top_k({q: run[q] for q in qids}, top_k)
    parts = storage.absolute(data).rstrip("/").split("/")
    language = language or next((p for p in reversed(parts) if p in MTEB_LANGUAGES), None)
    if language not in MTEB_LANGUAGES:
        raise ValueError(
            f"Unknown language {language!r} for {data}; pass language= one of "
            f"{sorted(MTEB_LANGUAGES)}."
        )
    doc_ids = sorted({d for docs in top.values() for d in docs})
    split_data = {
        "corpus": Dataset.from_dict(
            {
                "id": doc_ids,
                "title": [ds.corpus[d].get("title", "") or "" for d in doc_ids],
                "text": [ds.corpus[d].get("text", "") or "" for d in doc_ids],
            }
        ),
        "queries": Dataset.from_dict({"id": qids, "text": [ds.queries[q] for q in qids]}),
        "relevant_docs": {q: dict(ds.qrels[q]) for q in qids},
        "top_ranked": {q: list(top[q]) for q in qids},
    }
    task_name = name or f"QueritBeirReranking_{'_'.join(parts[-2:])}"

    class BeirReranking(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name=task_name,
            description=f"Reranking the top-{top_k} first-stage candidates of {data} ({split}).",
            reference=None,
            dataset={"path": storage.absolute(data), "revision": "local"},
            type="Reranking",
            category="t2t",
            modalities=["text"],
            eval_splits=[split],
            eval_langs=[MTEB_LANGUAGES[language]],
            main_score="ndcg_at_10",
            date=None,
            domains=None,
            task_subtypes=None,
            license=None,
            annotations_creators=None,
            dialect=None,
            sample_creation=None,
            bibtex_citation="",
        )

        def load_data(self, num_proc=None, **kwargs):
            if self.data_loaded:
                return
            self.dataset = {"default": {split: dict(split_data)}}
            self.data_loaded = True

    return BeirReranking()


def mteb_scores(model, task) -> dict[str, float]:
    """MTEB's scores of `model` on `task` (offline, no result cache), for the task's one split."""
    import mteb

    result = mteb.evaluate(model, task, cache=None, show_progress_bar=False)
    task_result = result.task_results[0]
    split = task.metadata.eval_splits[0]
    return dict(task_result.scores[split][0])
