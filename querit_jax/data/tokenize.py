"""Tokenisation with templates: pairs for rerankers, single texts for embedders, and padding.

Text templates are rendered and tokenised as one string (offsets kept). When the result is too long,
every token that touches the template's own text is kept, the query is cut to `max_query_tokens` and
the document to what remains, so the suffix -- the token that is scored -- always survives
(sentence-transformers #3787: a truncated suffix makes causal rerankers score garbage). Native
templates use the tokenizer's own special tokens and "longest_first" truncation, as transformers and
sentence-transformers do. Hugging Face fast tokenizers are not safe to call from several threads at
once (their truncation state is mutable), so every call holds a lock; grain's reader threads share
one encoder.
"""

import threading
from collections.abc import Sequence

import numpy as np

from querit_jax.models.templates import EmbedTemplate, Template

# Slack for tokens that merge across template boundaries when the parts are rendered together.
BOUNDARY_SLACK = 4


def _check_vocab(sequences, vocab_size):
    if vocab_size is None or not sequences:
        return
    top = max(max(ids) for ids in sequences if ids)
    if top >= vocab_size:
        raise ValueError(
            f"Token id {top} is outside the model's {vocab_size}-row embedding: the tokenizer does "
            "not "
            "belong to this model."
        )


def _keep_template_tokens(offsets, spans, budgets, max_length) -> np.ndarray:
    """Which tokens to keep. `spans` = [(start, end)] of the variable parts in order, `budgets`
    their
    token limits (None = what remains); tokens touching text outside the spans are always kept."""
    starts = np.array([o[0] for o in offsets])
    ends = np.maximum(np.array([o[1] for o in offsets]), starts + 1)  # zero-width -> one char
    owner = np.full(len(offsets), -1)
    for i, (a, b) in enumerate(spans):
        inside = (starts >= a) & (ends <= b)
        owner[inside] = i
    keep = np.ones(len(offsets), bool)
    for i, limit in enumerate(budgets):
        if limit is not None:
            keep[np.flatnonzero(owner == i)[limit:]] = False
    for i, limit in enumerate(budgets):
        if limit is None:
            room = max_length - int(keep.sum() - (owner == i).sum())
            if room < 0:
                raise ValueError(
                    f"The template and fixed parts need {max_length - room} tokens; "
                    f"max_length={max_length}."
                )
            keep[np.flatnonzero(owner == i)[room:]] = False
    return keep


class PairEncoder:
    """Tokenises (query, document) pairs with a template, a total budget and a query budget.

    Raises (at construction):
      ValueError: when the template plus a full-length query leaves no room for a document.
    """

    def __init__(
        self,
        tokenizer,
        template: Template,
        max_length: int,
        max_query_tokens: int = 64,
        vocab_size: int | None = None,
    ):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("PairEncoder needs a fast (Rust) tokenizer for offset mappings.")
        self.tokenizer, self.template = tokenizer, template
        self.max_length, self.max_query_tokens, self.vocab_size = (
            max_length,
            max_query_tokens,
            vocab_size,
        )
        self._lock = threading.Lock()
        if template.kind == "text":
            parts = template.prefix + template.middle + template.suffix
            fixed = len(tokenizer(parts, add_special_tokens=False)["input_ids"])
            if fixed + max_query_tokens + BOUNDARY_SLACK >= max_length:
                raise ValueError(
                    f"Template {template.name!r} takes {fixed} tokens and queries up to "
                    f"{max_query_tokens}: "
                    f"max_length={max_length} leaves no room for the document. Raise max_length or "
                    "lower "
                    "max_query_tokens."
                )

    def __call__(self, queries: Sequence[str], documents: Sequence[str]) -> list[list[int]]:
        """One list of token ids per pair, each at most `max_length` long."""
        return self.encode(queries, documents)[0]

    def encode(self, queries: Sequence[str], documents: Sequence[str]):
        """(ids, token_type_ids or None): token types only for native pair templates."""
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries but {len(documents)} documents.")
        if not queries:
            return [], None
        with self._lock:
            if self.template.kind == "pair":
                enc = self.tokenizer(
                    list(queries), list(documents), truncation=True, max_length=self.max_length
                )
                ids, types = [list(x) for x in enc["input_ids"]], enc.get("token_type_ids")
                types = [list(x) for x in types] if types is not None else None
            else:
                ids, types = self._encode_text(queries, documents), None
        _check_vocab(ids, self.vocab_size)
        return ids, types

    def _encode_text(self, queries, documents):
        t = self.template
        cap = (
            self.max_length * 32
        )  # a kept token never spans more characters; skips tokenising books
        texts, spans = [], []
        for q, d in zip(queries, documents):
            q, d = q[:cap], d[:cap]
            q0 = len(t.prefix)
            d0 = q0 + len(q) + len(t.middle)
            texts.append(t.prefix + q + t.middle + d + t.suffix)
            spans.append([(q0, q0 + len(q)), (d0, d0 + len(d))])
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for ids, offsets, span in zip(enc["input_ids"], enc["offset_mapping"], spans):
            if len(ids) > self.max_length:
                keep = _keep_template_tokens(
                    offsets, span, [self.max_query_tokens, None], self.max_length
                )
                ids = [i for i, k in zip(ids, keep) if k]
            out.append(list(ids))
        return out


class TextEncoder:
    """Tokenises single queries or documents for an embedder (`role` = "query" or "document")."""

    def __init__(
        self, tokenizer, template: EmbedTemplate, max_length: int, vocab_size: int | None = None
    ):
        self.tokenizer, self.template, self.max_length, self.vocab_size = (
            tokenizer,
            template,
            max_length,
            vocab_size,
        )
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str], role: str) -> list[list[int]]:
        if role not in ("query", "document"):
            raise ValueError(f"role must be 'query' or 'document', got {role!r}.")
        t = self.template
        prefix = t.query_prefix if role == "query" else t.document_prefix
        with self._lock:
            if t.kind == "native":
                enc = self.tokenizer(
                    [prefix + x for x in texts], truncation=True, max_length=self.max_length
                )
                out = [list(ids) for ids in enc["input_ids"]]
            else:
                cap = self.max_length * 32
                rendered = [prefix + x[:cap] + t.suffix for x in texts]
                spans = [[(len(prefix), len(prefix) + len(x[:cap]))] for x in texts]
                enc = self.tokenizer(
                    rendered, add_special_tokens=False, return_offsets_mapping=True
                )
                out = []
                for ids, offsets, span in zip(enc["input_ids"], enc["offset_mapping"], spans):
                    if len(ids) > self.max_length:
                        keep = _keep_template_tokens(offsets, span, [None], self.max_length)
                        ids = [i for i, k in zip(ids, keep) if k]
                    out.append(list(ids))
        _check_vocab(out, self.vocab_size)
        return out


def pad_batch(
    sequences: Sequence[Sequence[int]],
    length: int,
    pad_id: int,
    left: bool = False,
    types: Sequence[Sequence[int]] | None = None,
):
    """Pads to `[N, length]`; returns (input_ids, segment_ids, token_type_ids), segment 1 = real
    token.

    Raises:
      ValueError: when a sequence is longer than `length` or empty.
    """
    ids = np.full((len(sequences), length), pad_id, np.int32)
    seg = np.zeros((len(sequences), length), np.int32)
    tt = np.zeros((len(sequences), length), np.int32)
    for i, s in enumerate(sequences):
        n = len(s)
        if n == 0 or n > length:
            raise ValueError(f"Sequence {i} has {n} tokens; expected 1..{length}.")
        sl = slice(length - n, length) if left else slice(0, n)
        ids[i, sl] = s
        seg[i, sl] = 1
        if types is not None:
            tt[i, sl] = types[i]
    return ids, seg, tt
