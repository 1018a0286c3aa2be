"""Synthetic-query diagnostics in the mining report (`<output>/diagnostics.{json,md}`).

For the mined queries (training groups and dev queries alike): length distributions (terms and
characters), and overlap with the source document (share of the query's terms found in it; 1 =
every term is copied). With a sample of real queries (`mining.real_queries`: a BEIR directory or a
queries.jsonl, read for this report only, never for training or selection): the same statistics for
them, the lexical overlap between the two sets (share of each set's term occurrences whose term
occurs in the other set's vocabulary) and, with `mining.diagnostics_embedder`, embedding similarity:
the cosine of the two sets' mean embeddings and the mean cosine of each synthetic query to its
nearest real one (next to the real queries' own nearest-other-real cosine, as a yardstick).
"""

import numpy as np

from querit_jax import storage
from querit_jax.data.io import iter_jsonl, write_json
from querit_jax.data.mined import open_docstore, shard_files
from querit_jax.mining.devset import DEV_SHARD
from querit_jax.retrieval.analyzers import UnicodeAnalyzer

_TERMS = UnicodeAnalyzer()


def distribution(values) -> dict:
    v = np.asarray(values, np.float64)
    if not len(v):
        return {"count": 0}
    q = np.percentile(v, [5, 25, 50, 75, 95])
    return {"count": len(v), "mean": round(float(v.mean()), 3),
            **{f"p{p}": round(float(x), 3) for p, x in zip((5, 25, 50, 75, 95), q)}}  # fmt: skip


def _read_queries(location: str, sample: int, seed: int = 0) -> list[str]:
    path = location if location.endswith(".jsonl") else storage.join(location, "queries.jsonl")
    texts = [row["text"] for _, row in iter_jsonl(path) if isinstance(row.get("text"), str)]
    if sample and len(texts) > sample:
        keep = np.random.default_rng(seed).permutation(len(texts))[:sample]
        texts = [texts[i] for i in sorted(keep)]
    return texts


def _mined(output: str, shards: int) -> list[tuple[str, str]]:
    """(query, source text) of every mined training group and dev query."""
    pairs, store = [], open_docstore(output)  # groups name their source; its text is there
    for path in shard_files(output):
        pairs += [(g["query"], store.text(store.row(g["source_doc"]))) for _, g in iter_jsonl(path)]
    return pairs, [
        g["query"]
        for i in range(shards)
        if storage.exists(storage.join(output, DEV_SHARD.format(i)))
        for _, g in iter_jsonl(storage.join(output, DEV_SHARD.format(i)))
    ]


def lexical(queries: list[str]) -> dict:
    terms = _TERMS(queries)
    return {"terms": distribution([len(t) for t in terms]),
            "chars": distribution([len(q) for q in queries])}  # fmt: skip


def overlap_with_source(pairs) -> dict:
    shares = []
    for q, doc in pairs:
        qt, dt = _TERMS([q, doc])
        if qt:
            shares.append(sum(t in set(dt) for t in qt) / len(qt))
    return distribution(shares)


def vocabulary_overlap(a: list[str], b: list[str]) -> float:
    """Share of `a`'s term occurrences whose term occurs somewhere in `b`."""
    vocab = {t for terms in _TERMS(b) for t in terms}
    occurrences = [t for terms in _TERMS(a) for t in terms]
    return round(sum(t in vocab for t in occurrences) / max(len(occurrences), 1), 4)


def embedding_similarity(embed, synthetic: list[str], real: list[str]) -> dict:
    s = np.asarray(embed(synthetic, "query"), np.float32)
    r = np.asarray(embed(real, "query"), np.float32)
    s /= np.linalg.norm(s, axis=1, keepdims=True) + 1e-9
    r /= np.linalg.norm(r, axis=1, keepdims=True) + 1e-9
    ms, mr = s.mean(0), r.mean(0)
    rr = r @ r.T
    np.fill_diagonal(rr, -np.inf)
    return {
        "mean_embedding_cosine": round(
            float(ms @ mr / (np.linalg.norm(ms) * np.linalg.norm(mr))), 4
        ),
        "synthetic_to_nearest_real": round(float((s @ r.T).max(1).mean()), 4),
        "real_to_nearest_other_real": round(float(rr.max(1).mean()), 4) if len(r) > 1 else None,
    }


def build(cfg, shards: int, embed=None) -> dict:
    pairs, dev = _mined(cfg.output, shards)
    synthetic = [q for q, _ in pairs] + dev
    report = {
        "synthetic": {"queries": len(synthetic), **lexical(synthetic)},
        "overlap_with_source": overlap_with_source(pairs),
    }
    if cfg.real_queries:
        real = _read_queries(cfg.real_queries, cfg.diagnostics_sample, cfg.seed)
        report["real"] = {"location": cfg.real_queries, "queries": len(real), **lexical(real)}
        report["synthetic_vs_real"] = {
            "synthetic_terms_in_real_vocabulary": vocabulary_overlap(synthetic, real),
            "real_terms_in_synthetic_vocabulary": vocabulary_overlap(real, synthetic),
        }
        if embed is not None and synthetic and real:
            report["synthetic_vs_real"].update(embedding_similarity(embed, synthetic, real))
    return report


def markdown(report: dict) -> str:
    def row(name, d):
        return (f"| {name} | {d.get('count', 0)} | {d.get('mean', '')} | {d.get('p5', '')} | "
                f"{d.get('p50', '')} | {d.get('p95', '')} |")  # fmt: skip

    lines = ["# Synthetic-query diagnostics", "", "| distribution | n | mean | p5 | median | p95 |",
             "|---|---|---|---|---|---|",
             row("synthetic query terms", report["synthetic"]["terms"]),
             row("synthetic query characters", report["synthetic"]["chars"]),
             row("share of query terms in the source", report["overlap_with_source"])]  # fmt: skip
    if "real" in report:
        lines += [row("real query terms", report["real"]["terms"]),
                  row("real query characters", report["real"]["chars"]), "",
                  "| synthetic vs real | value |", "|---|---|"]  # fmt: skip
        lines += [f"| {k} | {v} |" for k, v in report["synthetic_vs_real"].items()]
    return "\n".join(lines) + "\n"


def write_report(cfg, shards: int, log=print) -> dict:
    """Process 0, once the run is complete: diagnostics.json and diagnostics.md in the output."""
    embed = None
    if cfg.real_queries and cfg.diagnostics_embedder:
        from querit_jax.loading import embedding_function

        embed = embedding_function(cfg.diagnostics_embedder, batch_size=64)
    report = build(cfg, shards, embed)
    write_json(storage.join(cfg.output, "diagnostics.json"), report)
    storage.write_text(storage.join(cfg.output, "diagnostics.md"), markdown(report))
    log(markdown(report))
    return report
