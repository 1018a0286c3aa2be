"""MIRACL layout: per-language topics and qrels TSV files, corpus as JSONL(.gz) shards with `docid`.

    ROOT/topics/topics.miracl-v1.0-{lang}-{split}.tsv      qid <TAB> query
    ROOT/qrels/qrels.miracl-v1.0-{lang}-{split}.tsv        qid Q0 docid relevance   (TREC qrels)
    ROOT/corpus/*.jsonl[.gz]                               {"docid", "title", "text"}

(the layout of the MIRACL release; file names are matched by language and split). Loaded into the
same `BeirDataset` as BEIR, with the same file:line errors.
"""

from querit_jax import storage
from querit_jax.data.beir import BeirDataset, load_corpus
from querit_jax.data.io import ReadReport, open_text
from querit_jax.errors import DataFormatError


def _one(directory: str, pattern: str, what: str) -> str:
    found = storage.glob(directory, pattern)
    if len(found) != 1:
        raise FileNotFoundError(
            f"MIRACL {what}: expected one file matching {storage.join(directory, pattern)}, "
            f"found {len(found)}."
        )
    return found[0]


def corpus_files(root: str) -> list[str]:
    corpus = storage.join(root, "corpus")
    files = sorted(storage.glob(corpus, "*.jsonl") + storage.glob(corpus, "*.jsonl.gz"))
    if not files:
        raise FileNotFoundError(f"{root}/corpus: no *.jsonl(.gz) corpus files.")
    return files


def load_miracl_corpus(root: str, strict: bool = True, report: ReadReport | None = None) -> dict:
    report = report if report is not None else ReadReport()
    corpus: dict = {}
    for path in corpus_files(root):
        part = load_corpus(path, strict, report)
        clash = set(part) & set(corpus)
        if clash:
            report.skip(
                path,
                f"document ids {sorted(clash)[:3]} already seen in an earlier corpus file.",
                strict,
            )
        corpus.update({k: v for k, v in part.items() if k not in corpus})
    return corpus


def load_miracl(root: str, lang: str, split: str = "dev", strict: bool = True) -> BeirDataset:
    report = ReadReport()
    corpus = load_miracl_corpus(root, strict, report)
    topics = _one(storage.join(root, "topics"), f"*{lang}*{split}*.tsv", "topics")
    queries = {}
    with open_text(topics) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            qid, sep, text = line.rstrip("\n").partition("\t")
            if not sep or not text.strip():
                report.skip(f"{topics}:{lineno}", "expected 'query-id<TAB>query text'.", strict)
                continue
            queries[qid] = text
    qrels_path = _one(storage.join(root, "qrels"), f"*{lang}*{split}*.tsv", "qrels")
    qrels: dict = {}
    with open_text(qrels_path) as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            where = f"{qrels_path}:{lineno}"
            if len(parts) != 4 or not parts[3].lstrip("-").isdigit():
                report.skip(where, "expected 'query-id Q0 doc-id relevance'.", strict)
                continue
            qid, _, did, rel = parts
            if qid not in queries:
                report.skip(where, f"query id {qid!r} is not in {topics}.", strict)
            elif did not in corpus:
                report.skip(where, f"document id {did!r} is not in the corpus.", strict)
            else:
                qrels.setdefault(qid, {})[did] = int(rel)
    if not qrels:
        raise DataFormatError(f"{qrels_path}: no relevance judgements.")
    return BeirDataset(f"miracl-{lang}", corpus, {q: queries[q] for q in qrels}, qrels, report)
