"""Library functions behind the `rerank` and `evaluate` commands (the entry points only parse flags)."""

import functools
import os

from querit_jax.data import beir
from querit_jax.data.io import DataFormatError, iter_jsonl, write_jsonl
from querit_jax.eval.rerank import evaluate_rerank
from querit_jax.eval.runs import read_run
from querit_jax.eval.scoring import scorer_for
from querit_jax.eval.suite import bm25_run
from querit_jax.models import api


def read_pairs(path: str) -> list[dict]:
    """Reads {"query", "document"[, "id"]} JSONL (errors name file and line)."""
    rows = []
    for lineno, row in iter_jsonl(path):
        for key in ("query", "document"):
            if not isinstance(row.get(key), str):
                raise DataFormatError(f"{path}:{lineno}: '{key}' must be a string.")
        rows.append(row)
    if not rows:
        raise DataFormatError(f"{path}: no pairs to score.")
    return rows


def rerank_file(
    model_path: str,
    input_path: str,
    output_path: str,
    batch_size: int = 64,
    max_length: int | None = None,
) -> list[float]:
    """Scores every pair of `input_path`; writes {"score"[, "id"]} lines in input order."""
    rows = read_pairs(input_path)
    model = api.load_model(model_path)
    scorer = scorer_for(model, batch_size=batch_size, max_length=max_length)
    scores = scorer.score(model.params, [r["query"] for r in rows], [r["document"] for r in rows])
    write_jsonl(
        output_path,
        [
            ({"id": r["id"]} if "id" in r else {}) | {"score": float(s)}
            for r, s in zip(rows, scores)
        ],
    )
    return [float(s) for s in scores]


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
    """Reranks a first stage (a run file, or "bm25") on a BEIR dataset. Returns (summary, reranked run)."""
    dataset = beir.load_beir(data, split)
    model = api.load_model(model_path)
    first = bm25_run(dataset, model.tokenizer, max(top_k, 100)) if run == "bm25" else read_run(run)
    scorer = scorer_for(model, batch_size=batch_size, max_length=max_length)
    summary, reranked = evaluate_rerank(
        functools.partial(scorer.score, model.params),
        dataset,
        first,
        top_k,
        max_queries=max_queries,
    )
    summary = {
        "model": os.path.abspath(model_path),
        "data": os.path.abspath(data),
        "split": split,
        "first_stage_run": run,
        **summary,
    }
    return summary, reranked
