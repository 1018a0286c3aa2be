"""Pair templates and tokenisation with document-only truncation that keeps the template's suffix.

A `text` template renders `prefix + query + middle + document + suffix` and tokenises the whole string
at once (`add_special_tokens=False`), so the ids are exactly what a Hugging Face chat template producing
the same string gives (the exported `chat_template.jinja`, read by sentence-transformers' CrossEncoder).
When the result is too long, tokens are classified by where they start (prefix / query / middle /
document / suffix); the query is cut to `max_query_tokens`, then the document is cut to what remains,
and the prefix, middle and suffix are always kept (sentence-transformers #3787: a truncated suffix
makes causal rerankers score garbage). The pooled token is therefore always the template's last token.

A `pair` template uses the tokenizer's own pair encoding (`[CLS] q [SEP] d [SEP]` for BERT-style
encoders) with its "longest_first" truncation, as transformers and sentence-transformers do.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

QWEN3_RERANKER_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


@dataclasses.dataclass(frozen=True)
class Template:
    """How a (query, document) pair becomes one token sequence."""

    name: str
    kind: str = "text"  # "text" or "pair"
    prefix: str = ""
    middle: str = ""
    suffix: str = ""

    def __post_init__(self):
        if self.kind not in ("text", "pair"):
            raise ValueError(f"Template kind must be 'text' or 'pair', got {self.kind!r}.")

    def render(self, query: str, document: str) -> str:
        return f"{self.prefix}{query}{self.middle}{document}{self.suffix}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Template":
        return cls(**d)


def qwen3_reranker(instruction: str = DEFAULT_INSTRUCTION) -> Template:
    """The Qwen3-Reranker prompt (model card), read at the last token by the yes/no head."""
    return Template(
        name="qwen3_reranker",
        prefix=(
            f"<|im_start|>system\n{QWEN3_RERANKER_SYSTEM}<|im_end|>\n<|im_start|>user\n"
            f"<Instruct>: {instruction}\n<Query>: "
        ),
        middle="\n<Document>: ",
        suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    )


def qwen3_pair(end_token: str = "<|endoftext|>", instruction: str | None = None) -> Template:
    """A compact cross-encoder template ending in the tokenizer's end token (the Qwen3-Embedding
    convention: `<|endoftext|>` is appended and read as the pooled token)."""
    prefix = f"Instruct: {instruction}\nQuery: " if instruction else "Query: "
    return Template(name="qwen3_pair", prefix=prefix, middle="\nDocument: ", suffix=end_token)


def encoder_pair() -> Template:
    """Native tokenizer pair encoding ([CLS] query [SEP] document [SEP])."""
    return Template(name="encoder_pair", kind="pair")


TEMPLATES = {
    "qwen3_reranker": qwen3_reranker,
    "qwen3_pair": qwen3_pair,
    "encoder_pair": encoder_pair,
}


def make_template(name: str, **kwargs) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"Unknown template {name!r}; choose one of {sorted(TEMPLATES)}.")
    return TEMPLATES[name](**{k: v for k, v in kwargs.items() if v is not None})


class PairEncoder:
    """Tokenises (query, document) pairs with a template, a total budget and a query budget."""

    def __init__(self, tokenizer, template: Template, max_length: int, max_query_tokens: int = 64):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("PairEncoder needs a fast (Rust) tokenizer for offset mappings.")
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.max_query_tokens = max_query_tokens
        if template.kind == "text":
            fixed = len(
                tokenizer(
                    template.prefix + template.middle + template.suffix, add_special_tokens=False
                )["input_ids"]
            )
            if fixed + 2 > max_length:
                raise ValueError(
                    f"Template {template.name!r} alone takes {fixed} tokens; max_length={max_length} "
                    "leaves no room for query and document."
                )

    def __call__(self, queries: Sequence[str], documents: Sequence[str]) -> list[list[int]]:
        """Returns one list of token ids per pair, each at most `max_length` long."""
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries but {len(documents)} documents.")
        if not queries:
            return []
        if self.template.kind == "pair":
            return self._encode_native_pairs(queries, documents)
        return self._encode_text(queries, documents)

    def _encode_native_pairs(self, queries, documents):
        # The tokenizer's own pair encoding and "longest_first" truncation: exactly what
        # transformers / sentence-transformers give for the exported model.
        enc = self.tokenizer(
            list(queries), list(documents), truncation=True, max_length=self.max_length
        )
        return [list(ids) for ids in enc["input_ids"]]

    def _encode_text(self, queries, documents):
        t = self.template
        char_cap = (
            self.max_length * 32
        )  # tokens never span more chars than this; saves tokenising novels
        texts, spans = [], []
        for q, d in zip(queries, documents):
            d = d[:char_cap]
            q = q[:char_cap]
            q0 = len(t.prefix)
            q1 = q0 + len(q)
            d0 = q1 + len(t.middle)
            d1 = d0 + len(d)
            texts.append(t.prefix + q + t.middle + d + t.suffix)
            spans.append((q0, q1, d0, d1))
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for ids, offsets, span in zip(enc["input_ids"], enc["offset_mapping"], spans):
            if len(ids) <= self.max_length:
                out.append(list(ids))
            else:
                out.append(self._truncate(ids, offsets, span))
        return out

    def _truncate(self, ids, offsets, span):
        q0, q1, d0, d1 = span
        starts = np.array([o[0] for o in offsets])
        ends = np.array([o[1] for o in offsets])
        # Region of each token by its start offset; zero-width tokens (specials) by their end.
        pos = np.where(ends > starts, starts, np.maximum(ends - 1, 0))
        region = np.select(
            [pos < q0, pos < q1, pos < d0, pos < d1], [0, 1, 2, 3], default=4
        )  # 0 prefix, 1 query, 2 middle, 3 document, 4 suffix
        keep = np.ones(len(ids), bool)
        q_idx = np.flatnonzero(region == 1)
        keep[q_idx[self.max_query_tokens :]] = False
        budget = self.max_length - int(keep.sum() - (region == 3).sum())
        d_idx = np.flatnonzero(region == 3)
        if budget < 0:
            raise ValueError(
                f"Template and query need {self.max_length - budget} tokens; max_length={self.max_length}."
            )
        keep[d_idx[budget:]] = False
        return [int(i) for i, k in zip(ids, keep) if k]


def pad_batch(
    sequences: Sequence[Sequence[int]], length: int, pad_id: int, left: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Pads to `[N, length]`; returns (input_ids, segment_ids) with segment 1 on real tokens.

    Raises:
      ValueError: when a sequence is longer than `length` or empty.
    """
    ids = np.full((len(sequences), length), pad_id, np.int32)
    seg = np.zeros((len(sequences), length), np.int32)
    for i, s in enumerate(sequences):
        n = len(s)
        if n == 0 or n > length:
            raise ValueError(f"Sequence {i} has {n} tokens; expected 1..{length}.")
        sl = slice(length - n, length) if left else slice(0, n)
        ids[i, sl] = s
        seg[i, sl] = 1
    return ids, seg
