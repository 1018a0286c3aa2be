"""Runs: {query id: {doc id: score}}, and their files: TREC (`qid Q0 docid rank score tag`) or
JSON."""

import json

from querit_jax import storage
from querit_jax.data.io import open_text
from querit_jax.errors import DataFormatError

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def top_k(run: Run, k: int) -> Run:
    """Keeps the k best documents per query (score descending, then doc id ascending)."""
    return {
        q: dict(sorted(docs.items(), key=lambda x: (-x[1], x[0]))[:k]) for q, docs in run.items()
    }


def read_run(path: str) -> Run:
    """Reads a TREC or JSON run. Raises DataFormatError naming file and line for malformed rows."""
    if not storage.isfile(path):
        raise FileNotFoundError(f"{path}: no such run file.")
    if path.endswith(".json"):
        with open_text(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{e.lineno}: invalid JSON run ({e.msg}).") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise DataFormatError(f"{path}: a JSON run must be {{query id: {{doc id: score}}}}.")
        try:
            return {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in data.items()}
        except (TypeError, ValueError) as e:
            raise DataFormatError(f"{path}: non-numeric score in JSON run ({e}).") from None
    run: Run = {}
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise DataFormatError(
                    f"{path}:{lineno}: expected 6 whitespace-separated fields (qid Q0 docid rank "
                    f"score tag), got {len(parts)}."
                )
            qid, _, doc, rank, score, _ = parts
            try:
                int(rank)
                value = float(score)
            except ValueError:
                raise DataFormatError(
                    f"{path}:{lineno}: rank {rank!r} or score {score!r} is not a number."
                ) from None
            if value != value:
                raise DataFormatError(f"{path}:{lineno}: score is NaN.")
            run.setdefault(qid, {})[doc] = value
    if not run:
        raise DataFormatError(f"{path}: the run is empty.")
    return run


def write_trec(run: Run, path: str, tag: str = "querit_jax") -> None:
    """Writes a TREC run, ranked by score (ties by doc id), atomically."""
    with storage.atomic_writer(path) as f:
        for qid in sorted(run):
            ranked = top_k({qid: run[qid]}, len(run[qid]))[qid]
            for rank, (doc, score) in enumerate(ranked.items(), start=1):
                f.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")
