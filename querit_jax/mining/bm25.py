"""BM25 first stage with bm25s, with terms that work in every language.

Whitespace tokenisation fails for languages written without spaces (zh, ja, th). Two analysers:
`UnicodeAnalyzer` (built in: words, plus character uni/bigrams for unsegmented scripts) and
`SubwordAnalyzer` (any Hugging Face fast tokenizer, e.g. an XLM-R SentencePiece). Text is lower-cased.
Scores are bm25s' Lucene variant (k1=1.5, b=0.75), the BEIR/Pyserini default family.
"""

import logging
import re
import unicodedata
from collections.abc import Sequence

import bm25s

from querit_jax.mining.scripts import UNSEGMENTED

logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at INFO


class SubwordAnalyzer:
    """Lower-cases and splits text into subword strings with a Hugging Face tokenizer."""

    def __init__(self, tokenizer, batch_size: int = 1024):
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name_or_path = getattr(tokenizer, "name_or_path", "")

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        out = []
        for i in range(0, len(texts), self.batch_size):
            chunk = [t.lower() for t in texts[i : i + self.batch_size]]
            enc = self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
            out.extend(self.tokenizer.convert_ids_to_tokens(ids) for ids in enc)
        return out


class BM25Retriever:
    """Indexes a corpus once; returns top-k document ids and scores per query."""

    def __init__(
        self,
        doc_ids: Sequence[str],
        doc_texts: Sequence[str],
        analyzer: SubwordAnalyzer,
        k1: float = 1.5,
        b: float = 0.75,
    ):
        if not doc_ids:
            raise ValueError("BM25Retriever needs at least one document.")
        if len(doc_ids) != len(doc_texts):
            raise ValueError(f"{len(doc_ids)} document ids but {len(doc_texts)} texts.")
        self.doc_ids = list(doc_ids)
        self.analyzer = analyzer
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self._bm25.index(analyzer(list(doc_texts)), show_progress=False)

    def search(self, queries: Sequence[str], top_k: int) -> list[list[tuple[str, float]]]:
        """For each query, up to `top_k` (doc id, score) pairs by decreasing score (the order of
        tied scores is bm25s's, not guaranteed to follow document order)."""
        k = min(top_k, len(self.doc_ids))
        tokens = self.analyzer(list(queries))
        # bm25s rejects a query with no known token; give those an empty result.
        known = self._bm25.vocab_dict
        results: list[list[tuple[str, float]]] = [[] for _ in queries]
        todo = [i for i, t in enumerate(tokens) if any(tok in known for tok in t)]
        if todo:
            docs, scores = self._bm25.retrieve(
                [[tok for tok in tokens[i] if tok in known] for i in todo], k=k, show_progress=False
            )
            for row, i in enumerate(todo):
                results[i] = [
                    (self.doc_ids[int(d)], float(s))
                    for d, s in zip(docs[row], scores[row])
                    if s > 0
                ]
        return results

    def search_run(self, queries: dict[str, str], top_k: int) -> dict[str, dict[str, float]]:
        """A run {query id: {doc id: score}} for a dict of queries."""
        ids = list(queries)
        hits = self.search([queries[q] for q in ids], top_k)
        return {q: dict(h) for q, h in zip(ids, hits)}


# Scripts written without spaces between words: indexed as character unigrams and bigrams.
_UNSEGMENTED = UNSEGMENTED
_WORD = re.compile(rf"[{_UNSEGMENTED}]+|[^\W{_UNSEGMENTED}]+", re.UNICODE)
_CJK = re.compile(rf"[{_UNSEGMENTED}]")


class UnicodeAnalyzer:
    """Tokeniser-free BM25 terms for any language: NFKC + case folding, words split on non-word
    characters, and runs of unsegmented scripts (Chinese, Japanese, Thai, ...) as character unigrams
    plus bigrams (the usual CJK n-gram indexing)."""

    name_or_path = "unicode"

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        out = []
        for text in texts:
            terms = []
            for word in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
                if _CJK.match(word):
                    terms.extend(word)
                    terms.extend(word[i : i + 2] for i in range(len(word) - 1))
                else:
                    terms.append(word)
            out.append(terms)
        return out


def analyzer_for(spec) -> SubwordAnalyzer | UnicodeAnalyzer:
    """'unicode' (built in), a tokenizer directory, or an already loaded Hugging Face tokenizer."""
    if spec in (None, "", "unicode"):
        return UnicodeAnalyzer()
    if isinstance(spec, str):
        from transformers import AutoTokenizer

        return SubwordAnalyzer(AutoTokenizer.from_pretrained(spec))
    return SubwordAnalyzer(spec)
