"""Synthetic-query generators behind one interface.

    generator.generate(prompts, documents, seeds) -> raw generations (one string per document)

Every generation is expected to hold queries between `<|begin_of_query|>` and `<|end_of_query|>`
(`prompts.parse_queries`). Implementations:
  * `HeuristicGenerator`: no LLM. Inverse-cloze and salient-span pseudo-queries: contiguous spans of
    the document around its rarest words (IDF over the target corpus), the classic unsupervised
    stand-in for real queries (Lee et al. 2019's ICT; salient-span masking, Guu et al. 2020);
  * `jax_sampler.JaxSampler`: any imported Qwen3 causal LM, sampled in JAX with a KV cache;
  * `openai_client.OpenAIChatGenerator`: an OpenAI-compatible chat-completions server (vLLM, TGI).
"""

import dataclasses
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

import numpy as np

from querit_jax.data.prompts import BEGIN, END
from querit_jax.retrieval.analyzers import UNSEGMENTED


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings shared by the LLM generators."""

    max_new_tokens: int = 256
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.95
    stop: tuple[str, ...] = ()


_CJK = UNSEGMENTED
_UNSEGMENTED = re.compile(f"[{_CJK}]")
_UNIT = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]", re.UNICODE)


def _units(text: str) -> list[str]:
    """Words, punctuation marks, and single characters of scripts written without spaces."""
    return _UNIT.findall(text)


def _key(unit: str) -> str:
    return unicodedata.normalize("NFKC", unit).casefold()


def _join(units: Sequence[str]) -> str:
    text = ""
    for u in units:
        glue = (
            ""
            if not text
            or _UNSEGMENTED.match(u)
            or _UNSEGMENTED.match(text[-1])
            or not u[0].isalnum()
            else " "
        )
        text += glue + u
    return text


class HeuristicGenerator:
    """Inverse-cloze / salient-span pseudo-queries, deterministic per (document, seed).

    Query i of a document alternates: salient span (a window of `min_len`..`max_len` units centred on
    one of the document's highest-IDF words) and inverse cloze (a random window). Words are counted
    across the corpus given at construction, so "rare" means rare in the target collection.
    """

    name = "heuristic"

    def __init__(
        self, corpus: Sequence[str], num_queries: int = 3, min_len: int = 4, max_len: int = 10
    ):
        if min_len < 1 or max_len < min_len:
            raise ValueError(f"Need 1 <= min_len <= max_len, got {min_len}, {max_len}.")
        self.num_queries, self.min_len, self.max_len = num_queries, min_len, max_len
        df = Counter()
        for doc in corpus:
            df.update({_key(u) for u in _units(doc) if u[0].isalnum()})
        self.n = max(len(corpus), 1)
        self.df = df

    def idf(self, unit: str) -> float:
        return math.log((self.n + 1) / (self.df.get(_key(unit), 0) + 1))

    def queries_for(self, document: str, seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        units = _units(document)
        words = [i for i, u in enumerate(units) if u[0].isalnum()]
        if not words:
            return []
        salient = sorted(words, key=lambda i: (-self.idf(units[i]), i))
        out = []
        for q in range(self.num_queries):
            length = int(rng.integers(self.min_len, self.max_len + 1))
            if q % 2 == 0:  # salient span around the (q/2)-th rarest word
                centre = salient[(q // 2) % len(salient)]
                start = max(0, centre - int(rng.integers(0, length)))
            else:  # inverse cloze: any window
                start = int(rng.integers(0, max(1, len(units) - length + 1)))
            span = [u for u in units[start : start + length]]
            while span and not span[-1][0].isalnum():
                span.pop()
            while span and not span[0][0].isalnum():
                span.pop(0)
            if span:
                out.append(_join(span))
        return out

    def generate(
        self, prompts: Sequence[str], documents: Sequence[str], seeds: Sequence[int]
    ) -> list[str]:
        del prompts  # no LLM: the prompt cannot be followed, only the document is read
        return [
            "".join(f"{BEGIN}{q}{END}" for q in self.queries_for(d, s))
            for d, s in zip(documents, seeds)
        ]
