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
    """Tokenises (query, document) pairs with a template, a total budget and a query budget.

    Raises (at construction):
      ValueError: when the template plus a full-length query leaves no room for a document.
    """

    # Slack for tokens that merge across template boundaries when the parts are rendered together.
    BOUNDARY_SLACK = 4

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
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.max_query_tokens = max_query_tokens
        self.vocab_size = vocab_size
        if template.kind == "text":
            parts = template.prefix + template.middle + template.suffix
            fixed = len(tokenizer(parts, add_special_tokens=False)["input_ids"])
            if fixed + max_query_tokens + self.BOUNDARY_SLACK >= max_length:
                raise ValueError(
                    f"Template {template.name!r} takes {fixed} tokens and queries up to {max_query_tokens}: "
                    f"max_length={max_length} leaves no room for the document. Raise max_length or lower "
                    "max_query_tokens."
                )

    def __call__(self, queries: Sequence[str], documents: Sequence[str]) -> list[list[int]]:
        """Returns one list of token ids per pair, each at most `max_length` long."""
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries but {len(documents)} documents.")
        if not queries:
            return []
        if self.template.kind == "pair":
            out = self._encode_native_pairs(queries, documents)
        else:
            out = self._encode_text(queries, documents)
        if self.vocab_size is not None:
            top = max(max(ids) for ids in out)
            if top >= self.vocab_size:
                raise ValueError(
                    f"Token id {top} is outside the model's {self.vocab_size}-row embedding: the tokenizer "
                    "does not belong to this model."
                )
        return out

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
        )  # a kept token never spans more; saves tokenising whole books
        texts, spans = [], []
        for q, d in zip(queries, documents):
            q, d = q[:char_cap], d[:char_cap]
            q0 = len(t.prefix)
            d0 = q0 + len(q) + len(t.middle)
            texts.append(t.prefix + q + t.middle + d + t.suffix)
            spans.append((q0, q0 + len(q), d0, d0 + len(d)))
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [
            list(ids) if len(ids) <= self.max_length else self._truncate(ids, offsets, span)
            for ids, offsets, span in zip(enc["input_ids"], enc["offset_mapping"], spans)
        ]

    def _truncate(self, ids, offsets, span):
        q0, q1, d0, d1 = span
        starts = np.array([o[0] for o in offsets])
        ends = np.maximum(np.array([o[1] for o in offsets]), starts + 1)  # zero-width -> one char
        # Any token touching the prefix, middle or suffix belongs to the template and is kept (a BPE
        # token may merge the end of the query with the start of the middle); the others are query or
        # document tokens by where they start.
        template = (starts < q0) | ((starts < d0) & (ends > q1)) | (ends > d1)
        query = ~template & (starts < q1)
        document = ~template & ~query
        keep = np.ones(len(ids), bool)
        keep[np.flatnonzero(query)[self.max_query_tokens :]] = False
        budget = self.max_length - int(keep.sum() - document.sum())
        if budget < 0:
            raise ValueError(
                f"Template and query need {self.max_length - budget} tokens; max_length={self.max_length}."
            )
        keep[np.flatnonzero(document)[budget:]] = False
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
