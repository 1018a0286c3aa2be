"""Weight-name table between transformers' BERT / XLM-RoBERTa classes and our encoder modules.

BertModel / XLMRobertaModel tensors live under `bert.` / `roberta.` inside the sequence-classification
classes and at the top level in bare checkpoints (sentence-transformers models such as all-MiniLM-L6-v2).
Heads: BertForSequenceClassification's `bert.pooler.dense` + `classifier`, XLMRobertaForSequenceClassification's
`classifier.dense` + `classifier.out_proj`, both the same computation (dense, tanh, one-label linear),
stored in our `dense` / `out_proj`.
"""

from querit_jax.convert.qwen3 import (
    Entry,
    _heads_bias,
    _heads_in,
    _heads_out,
    _identity,
    _transpose,
)
from querit_jax.models.encoder_config import EncoderConfig

# Tensors some checkpoints carry that are not parameters of ours.
IGNORED_SUFFIXES = ("embeddings.position_ids",)


def backbone_entries(cfg: EncoderConfig, prefix: str, root: tuple = ("encoder",)) -> list[Entry]:
    n, d = cfg.num_heads, cfg.head_dim
    out = []
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        out.append(
            Entry(
                f"{prefix}embeddings.{name}.weight",
                (*root, "embeddings", name, "embedding"),
                _identity,
                _identity,
            )
        )
    out += [
        Entry(
            f"{prefix}embeddings.LayerNorm.weight",
            (*root, "embeddings", "LayerNorm", "scale"),
            _identity,
            _identity,
        ),
        Entry(
            f"{prefix}embeddings.LayerNorm.bias",
            (*root, "embeddings", "LayerNorm", "bias"),
            _identity,
            _identity,
        ),
    ]
    for i in range(cfg.num_layers):
        hf, ours = f"{prefix}encoder.layer.{i}.", (*root, "layers", i)
        for name in ("query", "key", "value"):
            fwd, back = _heads_in(n, d)
            bf, bb = _heads_bias(n, d)
            out.append(
                Entry(
                    f"{hf}attention.self.{name}.weight",
                    (*ours, "attention", name, "kernel"),
                    fwd,
                    back,
                )
            )
            out.append(
                Entry(f"{hf}attention.self.{name}.bias", (*ours, "attention", name, "bias"), bf, bb)
            )
        fwd, back = _heads_out(n, d)
        out += [
            Entry(
                f"{hf}attention.output.dense.weight",
                (*ours, "attention", "output", "kernel"),
                fwd,
                back,
            ),
            Entry(
                f"{hf}attention.output.dense.bias",
                (*ours, "attention", "output", "bias"),
                _identity,
                _identity,
            ),
            Entry(
                f"{hf}attention.output.LayerNorm.weight",
                (*ours, "attention", "LayerNorm", "scale"),
                _identity,
                _identity,
            ),
            Entry(
                f"{hf}attention.output.LayerNorm.bias",
                (*ours, "attention", "LayerNorm", "bias"),
                _identity,
                _identity,
            ),
            Entry(
                f"{hf}intermediate.dense.weight",
                (*ours, "intermediate", "kernel"),
                _transpose,
                _transpose,
            ),
            Entry(
                f"{hf}intermediate.dense.bias",
                (*ours, "intermediate", "bias"),
                _identity,
                _identity,
            ),
            Entry(f"{hf}output.dense.weight", (*ours, "output", "kernel"), _transpose, _transpose),
            Entry(f"{hf}output.dense.bias", (*ours, "output", "bias"), _identity, _identity),
            Entry(
                f"{hf}output.LayerNorm.weight", (*ours, "LayerNorm", "scale"), _identity, _identity
            ),
            Entry(f"{hf}output.LayerNorm.bias", (*ours, "LayerNorm", "bias"), _identity, _identity),
        ]
    return out


def head_entries(cfg: EncoderConfig) -> list[Entry]:
    """The one-label classification head of the family's *ForSequenceClassification."""
    dense = "bert.pooler.dense" if cfg.family == "bert" else "classifier.dense"
    out_proj = "classifier" if cfg.family == "bert" else "classifier.out_proj"
    return [
        Entry(f"{dense}.weight", ("dense", "kernel"), _transpose, _transpose),
        Entry(f"{dense}.bias", ("dense", "bias"), _identity, _identity),
        Entry(f"{out_proj}.weight", ("out_proj", "kernel"), _transpose, _transpose),
        Entry(f"{out_proj}.bias", ("out_proj", "bias"), _identity, _identity),
    ]


def model_prefix(cfg: EncoderConfig) -> str:
    return "bert." if cfg.family == "bert" else "roberta."


ARCHITECTURES = {
    "bert": ("BertForSequenceClassification", "BertModel"),
    "xlm_roberta": ("XLMRobertaForSequenceClassification", "XLMRobertaModel"),
}
