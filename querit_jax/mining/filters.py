"""Filters for synthetic queries, each counting what it keeps and drops (the counts go to the
manifest).

* length: queries outside [min_chars, max_chars] characters;
* copied: queries whose normalised words are mostly a contiguous copy of the document
  (InPars' `skip_questions_copied_from_context`), above `max_copy_overlap` of the query's words;
* round trip (Promptagator): the source document must be in the first stage's top-k for its query
  (applied after retrieval, in the miner);
* dedupe: the same query after `normalize` (NFKC, case folding, punctuation and spacing removed),
  across the whole mined set (in the miner too: only queries that become groups count as seen, so a
  resumed run rebuilds the same set from the written shards).
"""

import dataclasses
import re
import unicodedata
from collections import Counter

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


def normalize(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def longest_common_run(query_words: list[str], doc_words: list[str]) -> int:
    """Length of the longest run of consecutive query words that appears consecutively in the
    document."""
    best = 0
    positions: dict[str, list[int]] = {}
    for i, w in enumerate(doc_words):
        positions.setdefault(w, []).append(i)
    prev: dict[int, int] = {}
    for w in query_words:
        cur = {}
        for j in positions.get(w, ()):
            cur[j] = prev.get(j - 1, 0) + 1
            best = max(best, cur[j])
        prev = cur
    return best


@dataclasses.dataclass
class QueryFilter:
    """The per-query filters; `counts` records keep/drop per filter."""

    min_chars: int = 3
    max_chars: int = 300
    max_copy_overlap: float = 1.0  # 1.0 disables the copy filter
    counts: Counter = dataclasses.field(default_factory=Counter)

    def keep(self, query: str, document: str) -> bool:
        norm = normalize(query)
        if not self.min_chars <= len(query) <= self.max_chars or not norm:
            self.counts["dropped_length"] += 1
            return False
        if self.max_copy_overlap < 1.0:
            words = norm.split()
            run = longest_common_run(words, normalize(document).split())
            if run / max(len(words), 1) > self.max_copy_overlap:
                self.counts["dropped_copied"] += 1
                return False
        self.counts["kept"] += 1
        return True
