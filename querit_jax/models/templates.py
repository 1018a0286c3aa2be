"""Templates: how a (query, document) pair, or a single query or document, becomes one string.

Pair templates (rerankers):
  * `text`: `prefix + query + middle + document + suffix` tokenised as one string without the
    tokenizer's special tokens: exactly what a Hugging Face chat template producing the same string
    gives (the exported `chat_template.jinja`, read by sentence-transformers' CrossEncoder).
  * `pair`: the tokenizer's own pair encoding (`[CLS] q [SEP] d [SEP]` for BERT-style encoders).

Single-text templates (embedders): `EmbedTemplate`, with a query prefix (the task instruction of
Qwen3-Embedding, "query: " of E5), a document prefix and a suffix (the end token a decoder embedder
reads); `native` ones let the tokenizer add its special tokens ([CLS] ... [SEP]).

Tokenisation and truncation live in `querit_jax.data.tokenize`.
"""

import dataclasses

QWEN3_RERANKER_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. "
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
        return {"type": "pair", **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class EmbedTemplate:
    """How a single query or document becomes one token sequence (embedders)."""

    name: str
    kind: str = "text"  # "text" (no special tokens added) or "native" (the tokenizer adds them)
    query_prefix: str = ""
    document_prefix: str = ""
    suffix: str = ""

    def __post_init__(self):
        if self.kind not in ("text", "native"):
            raise ValueError(f"EmbedTemplate kind must be 'text' or 'native', got {self.kind!r}.")

    def render(self, text: str, role: str) -> str:
        prefix = self.query_prefix if role == "query" else self.document_prefix
        return f"{prefix}{text}{self.suffix}"

    def to_dict(self) -> dict:
        return {"type": "embed", **dataclasses.asdict(self)}


def template_from_dict(d: dict) -> Template | EmbedTemplate:
    d = dict(d)
    kind = d.pop("type", "pair")
    return EmbedTemplate(**d) if kind == "embed" else Template(**d)


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


def qwen3_embedding(
    instruction: str = DEFAULT_INSTRUCTION, end_token: str = "<|endoftext|>"
) -> EmbedTemplate:
    """Qwen3-Embedding: `Instruct: {task}\\nQuery:{query}` for queries, documents as they are, both
    closed by the end token that is read as the embedding."""
    return EmbedTemplate(
        name="qwen3_embedding", query_prefix=f"Instruct: {instruction}\nQuery:", suffix=end_token
    )


def encoder_text(query_prefix: str = "", document_prefix: str = "") -> EmbedTemplate:
    """Native single-text encoding ([CLS] text [SEP]) with optional prefixes (E5's "query: ")."""
    return EmbedTemplate(
        name="encoder_text",
        kind="native",
        query_prefix=query_prefix,
        document_prefix=document_prefix,
    )


TEMPLATES = {
    "qwen3_reranker": qwen3_reranker,
    "qwen3_pair": qwen3_pair,
    "encoder_pair": encoder_pair,
}
EMBED_TEMPLATES = {"qwen3_embedding": qwen3_embedding, "encoder_text": encoder_text}


def make_template(name: str, **kwargs) -> Template | EmbedTemplate:
    table = {**TEMPLATES, **EMBED_TEMPLATES}
    if name not in table:
        raise ValueError(f"Unknown template {name!r}; choose one of {sorted(table)}.")
    return table[name](**{k: v for k, v in kwargs.items() if v is not None})
