"""Qwen3 <-> transformers: config.json fields and the weight-name table of `DecoderCrossEncoder`.

torch `nn.Linear.weight` is [out, in]; our kernels are [in, out] with head axes kept separate:
q_proj [H, N, D], k_proj/v_proj [H, K, D], o_proj [N, D, H]. Every entry carries both directions of
its transform so that import followed by export reproduces the original tensors bit for bit.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from querit_jax.models.decoder_config import DecoderConfig
from querit_jax.models.heads import HeadConfig


def config_to_hf(cfg: DecoderConfig) -> dict[str, Any]:
    """The architecture fields of a transformers `Qwen3Config` / `Qwen3MoeConfig`."""
    moe = {}
    if cfg.num_experts:
        moe = {
            "model_type": "qwen3_moe",
            # v5 reads num_local_experts (num_experts is its alias); older loaders read num_experts.
            "num_experts": cfg.num_experts,
            "num_local_experts": cfg.num_experts,
            "num_experts_per_tok": cfg.num_experts_per_tok,
            "moe_intermediate_size": cfg.moe_intermediate_size,
            "norm_topk_prob": cfg.norm_topk_prob,
            "decoder_sparse_step": cfg.decoder_sparse_step,
            "mlp_only_layers": list(cfg.mlp_only_layers),
            "router_aux_loss_coef": cfg.router_aux_loss_coef,
            "output_router_logits": False,
        }
    return {
        "model_type": "qwen3",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        **moe,
    }


def config_from_hf(hf: dict[str, Any], **overrides) -> DecoderConfig:
    """Reads a transformers Qwen3 config.json dict.

    Raises:
      ValueError: for settings this implementation does not reproduce (sliding window, rope
        scaling, a non-SiLU activation), instead of silently computing something else.
    """
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if rope else "default"
    if rope_type not in ("default", None):
        raise ValueError(
            f"config.json uses rope type {rope_type!r}; only the default RoPE is implemented."
        )
    if hf.get("use_sliding_window"):
        raise ValueError(
            "config.json enables use_sliding_window; sliding-window attention is not implemented."
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(
            f"config.json hidden_act={hf['hidden_act']!r}; only 'silu' (SwiGLU) is implemented."
        )
    theta = rope.get("rope_theta", hf.get("rope_theta", 1_000_000.0))
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    fields = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        rope_theta=float(theta),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=hf.get("max_position_embeddings", 40960),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos,
        pad_token_id=hf.get("pad_token_id"),
    )
    if hf.get("model_type") == "qwen3_moe":
        fields.update(
            num_experts=int(hf.get("num_local_experts") or hf.get("num_experts")),
            num_experts_per_tok=int(hf["num_experts_per_tok"]),
            moe_intermediate_size=int(hf["moe_intermediate_size"]),
            norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            decoder_sparse_step=int(hf.get("decoder_sparse_step", 1)),
            mlp_only_layers=tuple(hf.get("mlp_only_layers") or ()),
            router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),
        )
    return DecoderConfig(**{**fields, **overrides})


@dataclasses.dataclass(frozen=True)
class Entry:
    hf_name: str
    path: tuple  # path in the pure parameter dict
    to_jax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _identity(x):
    return x


def _transpose(x):
    return np.ascontiguousarray(x.T)


def _heads_in(n: int, d: int):
    """[n*d, H] -> [H, n, d] and back."""
    return (
        lambda w: np.ascontiguousarray(w.reshape(n, d, -1).transpose(2, 0, 1)),
        lambda k: np.ascontiguousarray(k.transpose(1, 2, 0).reshape(n * d, -1)),
    )


def _heads_bias(n: int, d: int):
    return (lambda b: b.reshape(n, d), lambda b: b.reshape(n * d))


def _heads_out(n: int, d: int):
    """o_proj [H, n*d] -> [n, d, H] and back."""
    return (
        lambda w: np.ascontiguousarray(w.reshape(-1, n, d).transpose(1, 2, 0)),
        lambda k: np.ascontiguousarray(k.transpose(2, 0, 1).reshape(k.shape[2], n * d)),
    )


def backbone_entries(cfg: DecoderConfig, prefix: str = "model.") -> list[Entry]:
    """Entries of Qwen3Model (HF names under `prefix`) for the `model` subtree."""
    n, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    out = [
        Entry(
            f"{prefix}embed_tokens.weight",
            ("model", "embed_tokens", "embedding"),
            _identity,
            _identity,
        ),
        Entry(f"{prefix}norm.weight", ("model", "norm", "scale"), _identity, _identity),
    ]
    for i in range(cfg.num_layers):
        hf = f"{prefix}layers.{i}."
        ours = ("model", "layers", i)
        for name, heads in (("q_proj", n), ("k_proj", kv), ("v_proj", kv)):
            fwd, back = _heads_in(heads, d)
            out.append(
                Entry(
                    f"{hf}self_attn.{name}.weight", (*ours, "self_attn", name, "kernel"), fwd, back
                )
            )
            if cfg.attention_bias:
                bf, bb = _heads_bias(heads, d)
                out.append(
                    Entry(f"{hf}self_attn.{name}.bias", (*ours, "self_attn", name, "bias"), bf, bb)
                )
        fwd, back = _heads_out(n, d)
        out.append(
            Entry(
                f"{hf}self_attn.o_proj.weight", (*ours, "self_attn", "o_proj", "kernel"), fwd, back
            )
        )
        for norm in ("q_norm", "k_norm"):
            out.append(
                Entry(
                    f"{hf}self_attn.{norm}.weight",
                    (*ours, "self_attn", norm, "scale"),
                    _identity,
                    _identity,
                )
            )
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out.append(Entry(f"{hf}{norm}.weight", (*ours, norm, "scale"), _identity, _identity))
        if cfg.is_sparse(i):
            out += moe_entries(cfg, hf, ours)
            continue
        for proj in ("gate_proj", "up_proj", "down_proj"):
            out.append(
                Entry(
                    f"{hf}mlp.{proj}.weight", (*ours, "mlp", proj, "kernel"), _transpose, _transpose
                )
            )
    return out


@dataclasses.dataclass(frozen=True)
class StackEntry:
    """Many HF tensors (one per expert, torch [out, in]) <-> one stacked parameter [E, in, out]."""

    hf_names: tuple[str, ...]
    path: tuple

    def to_jax(self, arrays: list[np.ndarray]) -> np.ndarray:
        return np.stack([np.ascontiguousarray(a.T) for a in arrays])

    def to_hf(self, array: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(a.T) for a in array]


def moe_entries(cfg: DecoderConfig, hf: str, ours: tuple) -> list:
    """A sparse layer: router `mlp.gate.weight` [E, H] and per-expert `mlp.experts.{e}.*` (the
    layout
    transformers writes to disk; its in-memory fused `gate_up_proj` is handled by
    `unfuse_experts`)."""
    out: list = [Entry(f"{hf}mlp.gate.weight", (*ours, "mlp", "gate"), _transpose, _transpose)]
    for proj in ("gate_proj", "up_proj", "down_proj"):
        names = tuple(f"{hf}mlp.experts.{e}.{proj}.weight" for e in range(cfg.num_experts))
        out.append(StackEntry(names, (*ours, "mlp", proj)))
    return out


def unfuse_experts(weights: dict, cfg: DecoderConfig) -> dict:
    """Rewrites fused expert tensors (transformers v5: `experts.gate_up_proj` [E, 2I, H], first I
    rows
    gate, and `experts.down_proj` [E, H, I]) into the per-expert names `moe_entries` reads."""
    fused = [
        k for k in weights if k.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj"))
    ]
    if not fused:
        return weights
    weights = dict(weights)
    inter = cfg.moe_intermediate_size
    for key in fused:
        prefix = (
            key[: -len("gate_up_proj")]
            if key.endswith("gate_up_proj")
            else key[: -len("down_proj")]
        )
        tensor = np.asarray(weights.pop(key))
        for e in range(tensor.shape[0]):
            if key.endswith("gate_up_proj"):
                weights[f"{prefix}{e}.gate_proj.weight"] = tensor[e, :inter]
                weights[f"{prefix}{e}.up_proj.weight"] = tensor[e, inter:]
            else:
                weights[f"{prefix}{e}.down_proj.weight"] = tensor[e]
    return weights


def head_entries(cfg: DecoderConfig, head: HeadConfig) -> list[Entry]:
    """Entries of the head: `score.weight` (seq-cls) or `lm_head.weight` (untied causal LM)."""
    if head.kind == "score":
        return [Entry("score.weight", ("score", "kernel"), _transpose, _transpose)]
    if not cfg.tie_word_embeddings:
        return [Entry("lm_head.weight", ("lm_head", "kernel"), _transpose, _transpose)]
    return []


# Keys transformers may write that carry no parameters of ours.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
