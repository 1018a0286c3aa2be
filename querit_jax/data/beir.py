"""BEIR-layout datasets: corpus.jsonl (`_id`, `title`, `text`), queries.jsonl (`_id`, `text`),
qrels/<split>.tsv (header; query-id, corpus-id, score).

Conventions follow BEIR (`beir/datasets/data_loader.py`, `beir/reranking/rerank.py`): a document's
text for scoring is `(title + " " + text).strip()`; qrels with score <= 0 are kept for metrics
(pytrec_eval ignores them for gain) but never used as positives.
"""

import csv
import dataclasses
import json
from collections.abc import Iterator

from querit_jax import storage
from querit_jax.data.io import ReadReport, iter_jsonl, open_text
from querit_jax.errors import DataFormatError


@dataclasses.dataclass
class BeirDataset:
    """An in-memory BEIR dataset for one split."""

    name: str
    corpus: dict[str, dict[str, str]]  # doc id -> {"title", "text"}
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}
    report: ReadReport = dataclasses.field(default_factory=ReadReport)

    def doc_text(self, doc_id: str) -> str:
        doc = self.corpus[doc_id]
        return doc_text(doc.get("title", ""), doc.get("text", ""))

    def positives(self, query_id: str) -> list[str]:
        return [d for d, rel in self.qrels.get(query_id, {}).items() if rel > 0]


def _find(root: str, *names: str) -> str:
    for name in names:
        path = storage.join(root, name)
        if storage.exists(path):
            return path
    raise FileNotFoundError(
        f"{root}: none of {names} found; is this a BEIR-layout dataset directory?"
    )


def iter_corpus(
    path: str, strict: bool = True, report: ReadReport | None = None, stream=None
) -> Iterator[tuple[str, str, str, str]]:
    """Streams corpus.jsonl(.gz): (doc id, title, text, "path:line") per usable document, one line
    in
    memory at a time. A document without an id, with non-string fields or with neither title nor
    text is skipped (strict: DataFormatError naming file:line). Duplicate ids are left to the caller
    (it alone knows what it has seen). `stream`: an already opened text stream of `path`."""
    report = report if report is not None else ReadReport()
    rows = (
        iter_jsonl(path, report, strict) if stream is None else _jsonl(stream, path, report, strict)
    )
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        doc_id = row.get("_id", row.get("docid"))
        if doc_id is None or str(doc_id) == "":
            report.skip(where, "document has no '_id'.", strict)
            continue
        doc_id = str(doc_id)
        title, text = row.get("title") or "", row.get("text") or ""
        if not isinstance(title, str) or not isinstance(text, str):
            report.skip(where, f"document {doc_id!r}: 'title' and 'text' must be strings.", strict)
            continue
        if not (title.strip() or text.strip()):
            report.skip(where, f"document {doc_id!r} is empty (no title and no text).", strict)
            continue
        yield doc_id, title, text, where


def _jsonl(stream, path: str, report: ReadReport, strict: bool):
    """`io.iter_jsonl` over an already opened text stream (same errors, naming `path`)."""
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            report.skip(f"{path}:{lineno}", f"invalid JSON ({e.msg} at column {e.colno}).", strict)
            continue
        if not isinstance(obj, dict):
            report.skip(
                f"{path}:{lineno}", f"expected a JSON object, got {type(obj).__name__}.", strict
            )
            continue
        report.rows += 1
        yield lineno, obj


def load_corpus(
    path: str, strict: bool = True, report: ReadReport | None = None
) -> dict[str, dict[str, str]]:
    """Reads corpus.jsonl(.gz) into memory. Raises DataFormatError (file:line) for a missing id, a
    duplicate id or an empty document. (Corpora too large for memory: `data.docstore`.)"""
    report = report if report is not None else ReadReport()
    corpus = {}
    for doc_id, title, text, where in iter_corpus(path, strict, report):
        if doc_id in corpus:
            report.skip(where, f"duplicate document id {doc_id!r}.", strict)
            continue
        corpus[doc_id] = {"title": title, "text": text}
    if not corpus:
        raise DataFormatError(f"{path}: the corpus has no documents.")
    return corpus


def doc_text(title: str, text: str) -> str:
    """A document's text for scoring and generation, as BEIR joins it."""
    return f"{title} {text}".strip()


def load_queries(
    path: str, strict: bool = True, report: ReadReport | None = None
) -> dict[str, str]:
    """Reads queries.jsonl(.gz): `_id` and non-empty `text`."""
    report = report if report is not None else ReadReport()
    queries = {}
    for lineno, row in iter_jsonl(path, report, strict):
        where = f"{path}:{lineno}"
        qid, text = row.get("_id"), row.get("text")
        if qid is None or str(qid) == "":
            report.skip(where, "query has no '_id'.", strict)
            continue
        if not isinstance(text, str) or not text.strip():
            report.skip(where, f"query {qid!r} has no text.", strict)
            continue
        if str(qid) in queries:
            report.skip(where, f"duplicate query id {qid!r}.", strict)
            continue
        queries[str(qid)] = text
    return queries


def load_qrels(
    path: str,
    queries: dict[str, str] | None = None,
    corpus: dict | None = None,
    strict: bool = True,
    report: ReadReport | None = None,
) -> dict[str, dict[str, int]]:
    """Reads a qrels TSV (header row, then query-id, corpus-id, score).

    Raises:
      DataFormatError: `path:line` for a short row, a non-integer score, or (when `queries`/`corpus`
        are given) a row naming a query or document that does not exist.
    """
    report = report if report is not None else ReadReport()
    qrels: dict[str, dict[str, int]] = {}
    with open_text(path) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for lineno, row in enumerate(reader, start=1):
            where = f"{path}:{lineno}"
            if not row or not "".join(row).strip():
                continue
            if lineno == 1 and not _is_int(row[-1]):
                continue  # header
            if len(row) < 3:
                report.skip(
                    where,
                    "expected 3 tab-separated columns (query-id, corpus-id, score), got "
                    f"{len(row)}.",
                    strict,
                )
                continue
            qid, did, score = row[0], row[1], row[-1]
            if not _is_int(score):
                report.skip(where, f"relevance score {score!r} is not an integer.", strict)
                continue
            if queries is not None and qid not in queries:
                report.skip(where, f"query id {qid!r} is not in queries.jsonl.", strict)
                continue
            if corpus is not None and did not in corpus:
                report.skip(where, f"document id {did!r} is not in the corpus.", strict)
                continue
            qrels.setdefault(qid, {})[did] = int(score)
    return qrels


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def load_beir(root: str, split: str = "test", strict: bool = True) -> BeirDataset:
    """Loads a BEIR-layout directory for one qrels split; only queries with qrels are kept."""
    report = ReadReport()
    corpus = load_corpus(_find(root, "corpus.jsonl", "corpus.jsonl.gz"), strict, report)
    queries = load_queries(_find(root, "queries.jsonl", "queries.jsonl.gz"), strict, report)
    qrels_path = _find(storage.join(root, "qrels"), f"{split}.tsv")
    qrels = load_qrels(qrels_path, queries, corpus, strict, report)
    if not qrels:
        raise DataFormatError(f"{qrels_path}: no relevance judgements.")
    queries = {q: queries[q] for q in qrels}
    return BeirDataset(storage.basename(root), corpus, queries, qrels, report)
