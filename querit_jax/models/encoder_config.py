"""Frozen configurations and presets for the BERT / XLM-RoBERTa encoder family.

Field names follow transformers' `BertConfig` / `XLMRobertaConfig` numbers; `position_offset` is
where positions start (0 for BERT, padding_idx + 1 = 2 for XLM-RoBERTa, whose position ids are
`padding_idx + 1 + index` for real tokens).
"""

import dataclasses
from typing import Any

from querit_jax.models.attention import ATTENTION_IMPLS
from querit_jax.models.decoder_config import dtype_of
from querit_jax.models.layers import remat_name

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu")
ENCODER_FAMILIES = ("bert", "xlm_roberta")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture of a post-LayerNorm BERT-style encoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    family: str = "bert"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_offset: int = 0
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool | str = False  # False/"none", True/"full" or a layers.REMAT_POLICIES name
    scan_layers: bool = False  # jax.lax.scan over the layers (see DecoderConfig.scan_layers)
    attention_impl: str = "auto"  # attention kernel (see DecoderConfig.attention_impl)

    def __post_init__(self):
        if self.family not in ENCODER_FAMILIES:
            raise ValueError(
                f"Unknown encoder family {self.family!r}; choose one of {ENCODER_FAMILIES}."
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}."
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not supported; choose one of {ACTIVATIONS}."
            )
        dtype_of(self.dtype)
        dtype_of(self.param_dtype)
        remat_name(self.remat)
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl={self.attention_impl!r}; choose one of {ATTENTION_IMPLS}."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    # ----- presets -------------------------------------------------------------------------------
    @classmethod
    def tiny_bert(cls, **overrides) -> "EncoderConfig":
        base = dict(
            vocab_size=1024, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4
        )
        return cls(**{**base, **overrides})

    @classmethod
    def minilm_l6(cls, **overrides) -> "EncoderConfig":
        """sentence-transformers/all-MiniLM-L6-v2 and cross-encoder/ms-marco-MiniLM-L6-v2."""
        base = dict(
            vocab_size=30522, hidden_size=384, intermediate_size=1536, num_layers=6, num_heads=12
        )
        return cls(**{**base, **overrides})

    @classmethod
    def bert_base(cls, **overrides) -> "EncoderConfig":
        base = dict(
            vocab_size=30522, hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12
        )
        return cls(**{**base, **overrides})

    @classmethod
    def tiny_xlm_roberta(cls, **overrides) -> "EncoderConfig":
        base = dict(
            family="xlm_roberta",
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            max_position_embeddings=514,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            position_offset=2,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def xlm_roberta_base(cls, **overrides) -> "EncoderConfig":
        return cls.tiny_xlm_roberta(
            **{
                "vocab_size": 250002,
                "hidden_size": 768,
                "intermediate_size": 3072,
                "num_layers": 12,
                "num_heads": 12,
                **overrides,
            }
        )

    @classmethod
    def bge_reranker_v2_m3(cls, **overrides) -> "EncoderConfig":
        """BAAI/bge-reranker-v2-m3: XLM-RoBERTa large with 8192-token positions (a common
        teacher)."""
        return cls.tiny_xlm_roberta(
            **{
                "vocab_size": 250002,
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_layers": 24,
                "num_heads": 16,
                "max_position_embeddings": 8194,
                **overrides,
            }
        )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "EncoderConfig":
        if name not in ENCODER_PRESETS:
            raise ValueError(
                f"Unknown encoder preset {name!r}; choose one of {sorted(ENCODER_PRESETS)}."
            )
        return getattr(cls, name)(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown EncoderConfig fields {sorted(unknown)}.")
        return cls(**d)


ENCODER_PRESETS = (
    "tiny_bert",
    "minilm_l6",
    "bert_base",
    "tiny_xlm_roberta",
    "xlm_roberta_base",
    "bge_reranker_v2_m3",
)
