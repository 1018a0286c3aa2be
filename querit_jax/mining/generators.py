"""Synthetic-query generators behind one interface.

    generator.generate(prompts, documents, seeds) -> raw generations (one string per document)

Every generation is expected to hold queries between `<|begin_of_query|>` and `<|end_of_query|>`
(`prompts.parse_queries`). Implementations:
  * `HeuristicGenerator`: no LLM. Inverse-cloze and salient-span pseudo-queries: contiguous spans of
    the document around its rarest words (IDF over the target corpus), the classic unsupervised
    stand-in for real queries (Lee et al. 2019's ICT; salient-span masking, Guu et al. 2020). The
    document frequencies are a `WordFrequencies` table, built once per corpus by streaming it;
  * `jax_sampler.JaxSampler`: any imported Qwen3 causal LM, sampled in JAX with a KV cache;
  * `openai_client.OpenAIChatGenerator`: an OpenAI-compatible chat-completions server (vLLM, TGI).

Reasoning models may think before answering: `strip_thinking` drops `<think>...</think>` (and an
unfinished `<think>...`) before the queries are parsed, and the LLM generators render chat templates
with thinking switched off (`enable_thinking=False`, Qwen3's switch) unless asked otherwise.
"""

import dataclasses
import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from querit_jax import storage
from querit_jax.data.io import read_json
from querit_jax.data.prompts import BEGIN, END
from querit_jax.retrieval.analyzers import UNSEGMENTED


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings shared by the LLM generators."""

    max_new_tokens: int = 256
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.95  # 1 = off
    stop: tuple[str, ...] = ()
    top_k: int = 0  # 0 = off


_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


def strip_thinking(text: str) -> str:
    """`text` without its `<think>...</think>` blocks (an unclosed one runs to the end)."""
    return _THINK.sub("", text)


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


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


class WordFrequencies:
    """Document frequencies of words (the heuristic's units, NFKC + case folded) over a corpus, as a
    table of 64-bit key hashes (sorted) and counts: built by streaming the corpus once, saved as two
    arrays, read by every process without re-reading the corpus."""

    MARKER = "words.json"

    def __init__(self, hashes: np.ndarray, counts: np.ndarray, documents: int):
        self.hashes, self.counts, self.documents = hashes, counts, documents

    @classmethod
    def build(cls, chunks: Iterable[Sequence[str]]) -> "WordFrequencies":
        df, n = Counter(), 0
        for texts in chunks:
            for doc in texts:
                df.update({_key(u) for u in _units(doc) if u[0].isalnum()})
            n += len(texts)
        hashes = np.fromiter((_hash(k) for k in df), np.uint64, len(df))
        counts = np.fromiter(df.values(), np.int64, len(df))
        order = np.argsort(hashes, kind="stable")
        return cls(hashes[order], counts[order], n)

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """Document frequency of each key (0 for unseen ones)."""
        if not len(self.hashes):
            return np.zeros(len(keys), np.int64)
        h = np.fromiter((_hash(k) for k in keys), np.uint64, len(keys))
        i = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        return np.where(self.hashes[i] == h, self.counts[i], 0)

    def save(self, location: str, describe: dict) -> None:
        storage.save_array(storage.join(location, "hashes.npy"), self.hashes)
        storage.save_array(storage.join(location, "counts.npy"), self.counts)
        meta = {**describe, "documents": self.documents, "words": len(self.hashes)}
        storage.write_text(storage.join(location, self.MARKER), json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, location: str) -> "WordFrequencies":
        meta = read_json(storage.join(location, cls.MARKER))
        return cls(
            storage.load_array(storage.join(location, "hashes.npy")),
            storage.load_array(storage.join(location, "counts.npy")),
            meta["documents"],
        )


class HeuristicGenerator:
    """Inverse-cloze / salient-span pseudo-queries, deterministic per (document, seed).

    Query i of a document alternates: salient span (a window of `min_len`..`max_len` units centred
    on one of the document's highest-IDF words) and inverse cloze (a random window). Words are
    counted across the target corpus (`corpus` texts, or a prebuilt `frequencies` table), so "rare"
    means rare in the target collection.
    """

    name = "heuristic"

    def __init__(
        self,
        corpus: Sequence[str] | None = None,
        num_queries: int = 3,
        min_len: int = 4,
        max_len: int = 10,
        frequencies: WordFrequencies | None = None,
    ):
        if min_len < 1 or max_len < min_len:
            raise ValueError(f"Need 1 <= min_len <= max_len, got {min_len}, {max_len}.")
        self.num_queries, self.min_len, self.max_len = num_queries, min_len, max_len
        self.frequencies = frequencies or WordFrequencies.build([list(corpus or [])])
        self.n = max(self.frequencies.documents, 1)

    def idf(self, units: Sequence[str]) -> np.ndarray:
        """log((N + 1) / (df + 1)) of each unit."""
        df = self.frequencies.lookup([_key(u) for u in units])
        return np.log((self.n + 1) / (df + 1))

    def queries_for(self, document: str, seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        units = _units(document)
        words = [i for i, u in enumerate(units) if u[0].isalnum()]
        if not words:
            return []
        idf = self.idf([units[i] for i in words])
        salient = [words[j] for j in np.lexsort((np.arange(len(words)), -idf))]
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


def build_generator(cfg, words, num_queries: int, devices, process_index: int):
    """The generator `cfg` (`config_lib.MiningConfig`) names, for one process's devices."""
    if cfg.generator == "heuristic":
        return HeuristicGenerator(
            None, num_queries, cfg.heuristic_min_len, cfg.heuristic_max_len, frequencies=words
        )
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p, top_k=cfg.top_k)
    if cfg.generator == "jax":
        from querit_jax.mining.jax_sampler import JaxSampler

        return JaxSampler(
            cfg.generator_model,
            sampling,
            batch_size=cfg.generator_batch_size,
            devices=devices,
            check_every=cfg.generator_check_every,
            enable_thinking=cfg.enable_thinking,
            model_sharding=cfg.model_sharding,
            prompt_buckets=(cfg.generator_prompt_min, cfg.generator_prompt_step),
        )
    from querit_jax.mining.openai_client import OpenAIChatGenerator

    return OpenAIChatGenerator(
        cfg.endpoint_list(),
        cfg.generator_model,
        sampling,
        api_key_env=cfg.api_key_env,
        concurrency=cfg.concurrency,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        process_index=process_index,
        enable_thinking=cfg.enable_thinking,
    )
