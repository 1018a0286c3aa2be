"""Library functions behind the `rerank` and `evaluate` commands (the entry points only parse
flags)."""

import functools

from querit_jax import storage
from querit_jax.data import beir
from querit_jax.data.io import iter_jsonl, write_jsonl
from querit_jax.data.runs import read_run
from querit_jax.data.sources import dataset_name
from querit_jax.errors import DataFormatError
from querit_jax.eval.fusion import Fusion
from querit_jax.eval.rerank import evaluate_rerank
from querit_jax.eval.suite import bm25_run
from querit_jax.inference.runners import scorer_for
from querit_jax.loading import load_model


def read_pairs(path: str) -> list[dict]:
    """Reads {"query", "document"[, "id", "qid", "first_stage_score"]} JSONL (errors name file and
    line). First-stage scores come on every line or on none."""
    rows = []
    for lineno, row in iter_jsonl(path):
        for key in ("query", "document"):
            if not isinstance(row.get(key), str):
                raise DataFormatError(f"{path}:{lineno}: '{key}' must be a string.")
        score = row.get("first_stage_score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise DataFormatError(f"{path}:{lineno}: 'first_stage_score' must be a number.")
        if rows and ("first_stage_score" in rows[0]) != (score is not None):
            raise DataFormatError(
                f"{path}:{lineno}: 'first_stage_score' is given on some lines only; give it on "
                "every "
                "line (to fuse the reranker with the first stage) or on none."
            )
        rows.append(row)
    if not rows:
        raise DataFormatError(f"{path}: no pairs to score.")
    return rows


def fuse_pairs(rows: list[dict], scores, fusion: Fusion) -> list[float]:
    """Fused scores of scored pairs that carry first-stage scores; a query's candidates are the
    lines
    with the same "qid" (or, without one, the same query text)."""
    first, reranked, keys = {}, {}, []
    for i, (row, score) in enumerate(zip(rows, scores)):
        q = str(row.get("qid", row["query"]))
        first.setdefault(q, {})[str(i)] = float(row["first_stage_score"])
        reranked.setdefault(q, {})[str(i)] = float(score)
        keys.append((q, str(i)))
    fused = fusion.apply(first, reranked)
    return [fused[q][i] for q, i in keys]


def rerank_file(
    model_path: str,
    input_path: str,
    output_path: str,
    batch_size: int = 64,
    max_length: int | None = None,
    fusion: Fusion | str = "model",
) -> list[float]:
    """Scores every pair of `input_path`; writes {"score"[, "fused_score"][, "id"]} lines in input
    order. "fused_score" (when the input carries first-stage scores): the reranker fused with the
    first stage, with `fusion` ("model": the fusion recorded with the model)."""
    rows = read_pairs(input_path)
    model = load_model(model_path)
    scorer = scorer_for(model, batch_size=batch_size, max_length=max_length)
    scores = scorer.score(model.params, [r["query"] for r in rows], [r["document"] for r in rows])
    out = [
        ({"id": r["id"]} if "id" in r else {}) | {"score": float(s)} for r, s in zip(rows, scores)
    ]
    fusion = Fusion.from_dict(model.metadata.get("fusion")) if fusion == "model" else fusion
    if "first_stage_score" in rows[0] and fusion.active:
        for line, fused in zip(out, fuse_pairs(rows, scores, fusion)):
            line["fused_score"] = fused
    write_jsonl(output_path, out)
    return [float(s) for s in scores]


def model_labels(model_paths: list[str]) -> list[str]:
    """Short distinct column names: the directory name (a workdir's for `<workdir>/model`)."""
    labels = []
    for path in model_paths:
        name = storage.basename(path)
        if name == "model":
            name = storage.basename(storage.dirname(path))
        labels.append(name if name not in labels else f"{name}#{len(labels) + 1}")
    return labels


def evaluate_models(
    model_paths: list[str],
    data_paths: list[str],
    runs: list[str] | str = "bm25",
    split: str = "test",
    top_k: int = 100,
    batch_size: int = 64,
    max_length: int | None = None,
    max_queries: int = 0,
    labels: list[str] | None = None,
    bm25_tokenizer: str = "unicode",
    fusion: Fusion | str | None = None,
) -> tuple[list[dict], dict]:
    """Reranks each dataset's first stage with each model, all models on the same candidates.

    Args:
      runs: "bm25", a run file, or one of those per dataset. BM25 is computed once per dataset, with
        an analyser that does not depend on the models (`bm25_tokenizer`, the Unicode one by
        default), so every model reranks the same candidates.
      labels: column names (default: `model_labels`).
      fusion: also report each model fused with the first stage: a `Fusion`, or "model" for the
        fusion recorded with each model (its label-free choice; none if it has none).
    Returns:
      (summaries, reranked runs). One summary per (model, dataset), model-major, carrying "label",
      "dataset", "model", "data", "split" and "first_stage_run"; reranked runs keyed by (label,
      dataset).
    """
    runs = [runs] * len(data_paths) if isinstance(runs, str) else list(runs)
    if len(runs) == 1 and len(data_paths) > 1:
        runs = runs * len(data_paths)
    if len(runs) != len(data_paths):
        raise DataFormatError(
            f"Got {len(runs)} first-stage runs for {len(data_paths)} datasets; give one run, or "
            "one per dataset."
        )
    labels = list(labels) if labels else model_labels(model_paths)
    if len(labels) != len(model_paths) or len(set(labels)) != len(labels):
        raise DataFormatError(
            f"Need {len(model_paths)} distinct model labels, got {labels}; fix --labels."
        )
    datasets = [beir.load_beir(d, split) for d in data_paths]
    names = [dataset_name(d, split) for d in data_paths]
    firsts: list = []
    summaries, reranked = [], {}
    for path, label in zip(model_paths, labels):
        model = load_model(path)
        if not firsts:
            depth = max(top_k, 100)
            firsts = [
                bm25_run(ds, bm25_tokenizer, depth) if run == "bm25" else read_run(run)
                for ds, run in zip(datasets, runs)
            ]
        fuse = Fusion.from_dict(model.metadata.get("fusion")) if fusion == "model" else fusion
        scorer = scorer_for(model, batch_size=batch_size, max_length=max_length)
        for data, name, ds, run, first in zip(data_paths, names, datasets, runs, firsts):
            summary, reranked[label, name] = evaluate_rerank(
                functools.partial(scorer.score, model.params),
                ds,
                first,
                top_k,
                max_queries=max_queries,
                fusion=fuse,
            )
            summaries.append(
                {
                    "label": label,
                    "dataset": name,
                    "model": storage.absolute(path),
                    "data": storage.absolute(data),
                    "split": split,
                    "first_stage_run": run,
                    **summary,
                }
            )
        del model, scorer
    return summaries, reranked


def evaluate_model(
    model_path: str,
    data: str,
    run: str = "bm25",
    split: str = "test",
    top_k: int = 100,
    batch_size: int = 64,
    max_length: int | None = None,
    max_queries: int = 0,
) -> tuple[dict, dict]:
    """Reranks a first stage (a run file, or "bm25") on a BEIR dataset. Returns (summary, reranked
    run)."""
    summaries, reranked = evaluate_models(
        [model_path], [data], [run], split, top_k, batch_size, max_length, max_queries
    )
    return summaries[0], next(iter(reranked.values()))
