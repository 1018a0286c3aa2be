"""Frozen model configurations and presets for the Qwen3 decoder family.

Field names follow the numbers of transformers' `Qwen3Config` , so that import and export are a
small, checked mapping (`convert.qwen3`). Presets name the published models: use
`DecoderConfig.qwen3_0p6b()` and friends, override a few fields with `dataclasses.replace`.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp

from querit_jax.models.attention import ATTENTION_IMPLS
from querit_jax.models.layers import remat_name

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str) -> Any:
    """Maps a dtype name used in configs to the jnp dtype."""
    if name not in _DTYPES:
        raise ValueError(f"Unknown dtype {name!r}; choose one of {sorted(_DTYPES)}.")
    return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Architecture of a Qwen3-style decoder (GQA, q/k RMSNorm, half-split RoPE, SwiGLU)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int  # explicit: Qwen3-4B has 32 heads x 128 = 4096 != hidden 2560
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # Qwen3 has none; kept for Qwen2-style checkpoints
    # Token ids the tokenizer uses; exported into config.json.
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Numerics: parameters are stored in `param_dtype`, matmuls run in `dtype`; softmax and norm
    # statistics are always float32.
    dtype: str = "float32"
    param_dtype: str = "float32"
    # Rematerialise each decoder layer in the backward pass (saves activation memory): False/"none",
    # True/"full", or a policy of layers.REMAT_POLICIES ("dots_saveable", ...).
    remat: bool | str = False
    # Run the layers with jax.lax.scan (each run of identical consecutive layers is compiled once;
    # compile time flat in depth) instead of a Python loop; costs one stacked copy of the layer
    # weights during the step. The parameter layout (layers.0, layers.1, ...) does not change.
    scan_layers: bool = False
    # Attention kernel (models/attention.py): "auto" (cuDNN flash attention on GPU in bf16/fp16,
    # Pallas splash attention on TPU, XLA elsewhere), "xla", "cudnn", "splash" or "reference".
    attention_impl: str = "auto"
    # Sparse MoE (Qwen3-MoE): layer i is sparse iff num_experts > 0, i not in mlp_only_layers and
    # (i + 1) % decoder_sparse_step == 0; dense layers keep the SwiGLU of `intermediate_size`.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False  # renormalise the top-k router probabilities (HF semantics)
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    router_aux_loss_coef: float = 0.001  # load-balancing loss weight in training
    router_z_loss_coef: float = 0.0  # optional router z-loss weight
    # How experts run: "dense" (reference: every expert on every token), "grouped" (sort +
    # ragged_dot on each device's own tokens, dropless) or "ep" (expert parallel: shard_map
    # all-to-all over the `expert` mesh axis).
    moe_impl: str = "grouped"
    # ep: slots per expert = ceil(capacity_factor * token copies per device / num_experts); copies
    # over capacity are dropped (padding first) and their share is reported. <= 0: dropless, with
    # worst-case buffers ep times larger (for exactness checks).
    moe_capacity_factor: float = 0.0
    family: str = "qwen3"

    def is_sparse(self, layer: int) -> bool:
        return (
            self.num_experts > 0
            and layer not in self.mlp_only_layers
            and (layer + 1) % self.decoder_sparse_step == 0
        )

    def __post_init__(self):
        object.__setattr__(self, "mlp_only_layers", tuple(int(i) for i in self.mlp_only_layers))
        object.__setattr__(self, "family", "qwen3_moe" if self.num_experts > 0 else "qwen3")
        if self.num_experts > 0:
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                raise ValueError(
                    f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, num_experts="
                    f"{self.num_experts}]."
                )
            if self.moe_intermediate_size < 1:
                raise ValueError("A sparse model needs moe_intermediate_size >= 1.")
            if self.decoder_sparse_step < 1:
                raise ValueError(f"decoder_sparse_step={self.decoder_sparse_step} must be >= 1.")
        if self.moe_impl not in ("dense", "grouped", "ep"):
            raise ValueError(f"moe_impl={self.moe_impl!r}; choose dense, grouped or ep.")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl={self.attention_impl!r}; choose one of {ATTENTION_IMPLS}."
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads} (GQA)."
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings.")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        dtype_of(self.dtype)
        dtype_of(self.param_dtype)
        remat_name(self.remat)

    # ----- presets -------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides) -> "DecoderConfig":
        """A ~1M-parameter model (plus embeddings) for tests and the CPU demo."""
        base = dict(
            vocab_size=1024,
            hidden_size=128,
            intermediate_size=384,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=32,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def tiny_demo(cls, **overrides) -> "DecoderConfig":
        """The CPU demo's model: `tiny` at width 64 on the 16384-token XQuAD-R BPE vocabulary."""
        base = dict(
            vocab_size=16384,
            hidden_size=64,
            intermediate_size=192,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
        )
        return cls.tiny(**{**base, **overrides})

    @classmethod
    def qwen3_0p6b(cls, **overrides) -> "DecoderConfig":
        """Qwen/Qwen3-0.6B (28 layers, 16 q heads, 8 kv heads, head_dim 128)."""
        base = dict(
            vocab_size=151936,
            hidden_size=1024,
            intermediate_size=3072,
            num_layers=28,
            num_heads=16,
            num_kv_heads=8,
            head_dim=128,
            max_position_embeddings=40960,
            tie_word_embeddings=True,
            bos_token_id=151643,
            eos_token_id=151645,
            pad_token_id=151643,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def qwen3_embedding_0p6b(cls, **overrides) -> "DecoderConfig":
        """Qwen/Qwen3-Embedding-0.6B: the 0.6B backbone with the trimmed 151669-row vocabulary."""
        return cls.qwen3_0p6b(
            **{"vocab_size": 151669, "max_position_embeddings": 32768, **overrides}
        )

    @classmethod
    def qwen3_reranker_0p6b(cls, **overrides) -> "DecoderConfig":
        """Qwen/Qwen3-Reranker-0.6B (a Qwen3ForCausalLM scored by logit[yes] - logit[no])."""
        return cls.qwen3_0p6b(**{"vocab_size": 151669, **overrides})

    @classmethod
    def qwen3_4b(cls, **overrides) -> "DecoderConfig":
        """Qwen/Qwen3-4B (36 layers, 32 q heads x 128 on a 2560 width, 8 kv heads)."""
        base = dict(
            vocab_size=151936,
            hidden_size=2560,
            intermediate_size=9728,
            num_layers=36,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            max_position_embeddings=40960,
            tie_word_embeddings=True,
            bos_token_id=151643,
            eos_token_id=151645,
            pad_token_id=151643,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def qwen3_embedding_4b(cls, **overrides) -> "DecoderConfig":
        """Qwen/Qwen3-Embedding-4B (the initialisation of Querit-4B): vocabulary of 151665 rows."""
        return cls.qwen3_4b(**{"vocab_size": 151665, "max_position_embeddings": 32768, **overrides})

    @classmethod
    def qwen3_reranker_4b(cls, **overrides) -> "DecoderConfig":
        """Qwen/Qwen3-Reranker-4B: vocabulary of 151669 rows."""
        return cls.qwen3_4b(**{"vocab_size": 151669, **overrides})

    @classmethod
    def tiny_moe(cls, **overrides) -> "DecoderConfig":
        """A tiny Qwen3-MoE (8 experts, top-2) for tests and CPU runs."""
        base = dict(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            norm_topk_prob=True,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def tiny_moe_demo(cls, **overrides) -> "DecoderConfig":
        """`tiny_moe` on the CPU demo's 16384-token XQuAD-R BPE vocabulary."""
        return cls.tiny_moe(**{"vocab_size": 16384, **overrides})

    @classmethod
    def qwen3_moe_a0p4b(cls, **overrides) -> "DecoderConfig":
        """The paper's compact backbone size: ~4.95B total, ~0.41B active, 24 layers, 16 heads.

        The Querit MoE card gives 4.92B-A0.43B, 4.79B non-embedding, 24 layers, 16 heads and no
        config; this preset is sized to those counts (width 896 as in Qwen2.5-0.5B, 128 experts of
        576, top-6).
        """
        base = dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_layers=24,
            num_heads=16,
            num_kv_heads=4,
            head_dim=64,
            max_position_embeddings=131072,
            tie_word_embeddings=True,
            num_experts=128,
            num_experts_per_tok=6,
            moe_intermediate_size=576,
            norm_topk_prob=True,
            bos_token_id=151643,
            eos_token_id=151645,
            pad_token_id=151643,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def qwen3_30b_a3b(cls, **overrides) -> "DecoderConfig":
        """Qwen/Qwen3-30B-A3B (48 layers, 128 experts, top-8, 768 per expert)."""
        base = dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            num_layers=48,
            num_heads=32,
            num_kv_heads=4,
            head_dim=128,
            max_position_embeddings=40960,
            tie_word_embeddings=False,
            num_experts=128,
            num_experts_per_tok=8,
            moe_intermediate_size=768,
            norm_topk_prob=True,
            bos_token_id=151643,
            eos_token_id=151645,
            pad_token_id=151643,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DecoderConfig":
        """Builds a named preset; `overrides` replace single fields."""
        if name not in DECODER_PRESETS:
            raise ValueError(
                f"Unknown model preset {name!r}; choose one of {sorted(DECODER_PRESETS)}."
            )
        return getattr(cls, name)(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DecoderConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown DecoderConfig fields {sorted(unknown)}.")
        return cls(**{k: tuple(v) if k == "mlp_only_layers" else v for k, v in d.items()})


DECODER_PRESETS = (
    "tiny",
    "tiny_demo",
    "tiny_moe",
    "tiny_moe_demo",
    "qwen3_moe_a0p4b",
    "qwen3_30b_a3b",
    "qwen3_0p6b",
    "qwen3_embedding_0p6b",
    "qwen3_reranker_0p6b",
    "qwen3_4b",
    "qwen3_embedding_4b",
    "qwen3_reranker_4b",
)
