"""Training groups: FlagEmbedding-compatible JSONL, and mining them from a BEIR dataset.

A group is `{"query": str, "pos": [str, ...], "neg": [str, ...], "pos_scores"?: [float],
"neg_scores"?: [float], "prompt"?: str, "lang"?: str, "qid"?: str}` (the format of FlagEmbedding's
reranker fine-tuning; mined soft-label data adds a teacher score for every document). Mined
groups (`data.mined`) name their documents instead, `"pos_ids"` and `"neg_ids"` in place of
`"pos"` and `"neg"`: their texts are joined from the mining run's docstore. Negatives for a BEIR
dataset come from BM25 (hard negatives: the top-ranked non-relevant documents) or uniformly at
random.
"""

import random

from querit_jax.data.beir import BeirDataset
from querit_jax.data.io import ReadReport, iter_jsonl

OPTIONAL_TEXT = ("prompt", "lang", "qid")


def _is_text_list(x) -> bool:
    return isinstance(x, list) and all(isinstance(t, str) and t.strip() for t in x)


def validate_group(row: dict, ids: bool = False) -> str | None:
    """Returns why `row` is not a valid group, or None.

    Args:
      ids: whether the group may name its documents (`pos_ids`/`neg_ids`, a mined group read with
        its docstore) instead of carrying their texts.
    """
    if not isinstance(row.get("query"), str) or not row["query"].strip():
        return "'query' must be a non-empty string."
    pos, neg = ("pos_ids", "neg_ids") if "pos" not in row and "pos_ids" in row else ("pos", "neg")
    if pos == "pos_ids" and not ids:
        return (
            "the group names its documents ('pos_ids'/'neg_ids') but has no texts ('pos'/'neg'): "
            "such groups are read from their mining output (data.train=<mining.output>), whose "
            "docstore holds the texts."
        )
    if not _is_text_list(row.get(pos)) or not row[pos]:
        return f"'{pos}' must be a non-empty list of non-empty strings."
    if not _is_text_list(row.get(neg, [])):
        return f"'{neg}' must be a list of non-empty strings."
    if not row.get(neg):
        return f"'{neg}' is empty; a listwise group needs at least one negative."
    for key, docs in (("pos_scores", pos), ("neg_scores", neg)):
        if key in row:
            scores = row[key]
            if not isinstance(scores, list) or len(scores) != len(row[docs]):
                return f"'{key}' must be a list with one number per entry of '{docs}'."
            if not all(isinstance(s, (int, float)) and s == s for s in scores):
                return f"'{key}' must contain finite numbers."
    for key in OPTIONAL_TEXT:
        if key in row and not isinstance(row[key], str):
            return f"'{key}' must be a string."
    return None


def read_groups(
    path: str, strict: bool = True, report: ReadReport | None = None, ids: bool = False
) -> list[dict]:
    """Reads and validates a groups JSONL file (errors name file and line; `ids`: as in
    `validate_group`)."""
    report = report if report is not None else ReadReport()
    groups = []
    for lineno, row in iter_jsonl(path, report, strict):
        reason = validate_group(row, ids)
        if reason:
            report.skip(f"{path}:{lineno}", reason, strict)
            continue
        groups.append(row)
    return groups


def mine_groups(
    dataset: BeirDataset,
    num_negatives: int,
    method: str = "bm25",
    retriever=None,
    depth: int = 50,
    seed: int = 0,
    lang: str = "",
) -> list[dict]:
    """One group per query with a positive: its positives and `num_negatives` negatives.

    Args:
      method: "bm25" takes the best `num_negatives` non-relevant documents among BM25's top `depth`
        (hard negatives), topped up at random if there are fewer; "random" samples uniformly.
      retriever: a first stage over `dataset`'s corpus with `search_texts` (a
        `retrieval.Retriever`; required for "bm25").
    """
    if method not in ("bm25", "random"):
        raise ValueError(f"Unknown negative mining method {method!r}; use 'bm25' or 'random'.")
    rng = random.Random(seed)
    doc_ids = sorted(dataset.corpus)
    qids = sorted(q for q in dataset.queries if dataset.positives(q))
    hits = {}
    if method == "bm25":
        if retriever is None:
            raise ValueError("BM25 negatives need a retriever.")
        results = retriever.search_texts([dataset.queries[q] for q in qids], depth + 10)
        hits = dict(zip(qids, results))
    groups = []
    for qid in qids:
        pos = dataset.positives(qid)
        judged = set(dataset.qrels[qid])
        if method == "bm25":
            negs = [d for d, _ in hits[qid][:depth] if d not in judged][:num_negatives]
        else:
            negs = []
        if len(negs) < num_negatives:  # top up (random method, or too few BM25 hits)
            pool = [d for d in doc_ids if d not in judged and d not in negs]
            negs += rng.sample(pool, min(num_negatives - len(negs), len(pool)))
        if not negs:
            continue
        groups.append(
            {
                "qid": qid,
                "query": dataset.queries[qid],
                "pos": [dataset.doc_text(d) for d in pos],
                "neg": [dataset.doc_text(d) for d in negs],
                "lang": lang,
            }
        )
    return groups
