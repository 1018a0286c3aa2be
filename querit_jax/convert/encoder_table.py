"""BERT / XLM-RoBERTa <-> transformers: config.json fields and the weight-name table of our
encoders.

BertModel / XLMRobertaModel tensors live under `bert.` / `roberta.` inside the
sequence-classification classes and at the top level in bare checkpoints (sentence-transformers
models such as all-MiniLM-L6-v2). Heads: BertForSequenceClassification's `bert.pooler.dense` +
`classifier`, XLMRobertaForSequenceClassification's `classifier.dense` + `classifier.out_proj`, both
the same computation (dense, tanh, one-label linear), stored in our `dense` / `out_proj`.
"""

from typing import Any

from querit_jax.convert.qwen3 import (
    Entry,
    _heads_bias,
    _heads_in,
    _heads_out,
    _identity,
    _transpose,
)
from querit_jax.models.encoder_config import EncoderConfig


def config_to_hf(cfg: EncoderConfig) -> dict[str, Any]:
    return {
        "model_type": "bert" if cfg.family == "bert" else "xlm-roberta",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "hidden_act": cfg.hidden_act,
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
    }


def config_from_hf(hf: dict[str, Any], **overrides) -> EncoderConfig:
    model_type = hf.get("model_type")
    if model_type not in ("bert", "xlm-roberta", "roberta"):
        raise ValueError(
            f"model_type {model_type!r} is not an encoder this importer reads (bert, xlm-roberta)."
        )
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"position_embedding_type={hf['position_embedding_type']!r}; only 'absolute' is "
            "implemented."
        )
    roberta = model_type != "bert"
    pad = hf.get("pad_token_id", 1 if roberta else 0)
    fields = dict(
        family="xlm_roberta" if roberta else "bert",
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        hidden_act=hf.get("hidden_act", "gelu"),
        position_offset=(pad + 1) if roberta else 0,
        pad_token_id=pad,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
    )
    return EncoderConfig(**{**fields, **overrides})


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
