"""Weight-name table between transformers' Qwen3 classes and `DecoderCrossEncoder` parameters.

torch `nn.Linear.weight` is [out, in]; our kernels are [in, out] with head axes kept separate:
q_proj [H, N, D], k_proj/v_proj [H, K, D], o_proj [N, D, H]. Every entry carries both directions of
its transform so that import followed by export reproduces the original tensors bit for bit.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from querit_jax.models.config import DecoderConfig
from querit_jax.models.heads import HeadConfig


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
    """A sparse layer: router `mlp.gate.weight` [E, H] and per-expert `mlp.experts.{e}.*` (the layout
    transformers writes to disk; its in-memory fused `gate_up_proj` is handled by `unfuse_experts`)."""
    out: list = [Entry(f"{hf}mlp.gate.weight", (*ours, "mlp", "gate"), _transpose, _transpose)]
    for proj in ("gate_proj", "up_proj", "down_proj"):
        names = tuple(f"{hf}mlp.experts.{e}.{proj}.weight" for e in range(cfg.num_experts))
        out.append(StackEntry(names, (*ours, "mlp", proj)))
    return out


def unfuse_experts(weights: dict, cfg: DecoderConfig) -> dict:
    """Rewrites fused expert tensors (transformers v5: `experts.gate_up_proj` [E, 2I, H], first I rows
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
