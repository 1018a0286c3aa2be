"""The `model` section: which backbone (family, preset, overrides) or checkpoint, head and
template."""

import dataclasses
from typing import Any

from querit_jax.config_lib.parse import require
from querit_jax.errors import ConfigError
from querit_jax.models.decoder_config import DECODER_PRESETS, DecoderConfig, dtype_of
from querit_jax.models.encoder_config import ENCODER_PRESETS, EncoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.models.layers import remat_name
from querit_jax.models.templates import TEMPLATES, make_template

FAMILY_NAMES = ("qwen3", "qwen3_moe", "bert", "xlm_roberta")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str = "qwen3"
    preset: str = "tiny"
    overrides: tuple[tuple[str, Any], ...] = ()
    init_from: str = ""  # checkpoint dir or Hugging Face dir; "" = random initialisation
    head: str = "score"
    yes_token: str = "yes"
    no_token: str = "no"
    tokenizer: str = ""  # "" = the tokenizer stored with init_from
    template: str = "qwen3_pair"
    instruction: str = ""
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    # With remat: full | dots_saveable | dots_with_no_batch_dims_saveable.
    remat_policy: str = "full"
    # Run the layers with jax.lax.scan: compile one layer instead of N, for one extra stacked copy
    # of the layer weights during the step. The parameter layout is unchanged.
    scan_layers: bool = False
    seed: int = 0

    @property
    def is_decoder(self) -> bool:
        return self.family in ("qwen3", "qwen3_moe")

    @property
    def remat_mode(self) -> bool | str:
        """The backbone's `remat` value: False, or the policy name."""
        return self.remat and self.remat_policy

    def backbone_config(self, **extra):
        """The preset's DecoderConfig (qwen3) or EncoderConfig (bert, xlm_roberta) with
        overrides."""
        fields = {
            **dict(self.overrides),
            "dtype": self.dtype,
            "param_dtype": self.param_dtype,
            "remat": self.remat_mode,
            "scan_layers": self.scan_layers,
            **extra,
        }
        if self.is_decoder:
            return DecoderConfig.from_preset(self.preset, **fields)
        return EncoderConfig.from_preset(self.preset, **{"family": self.family, **fields})

    def validate(self) -> None:
        """Family, preset, head and template agree; dtypes, remat policy and overrides are valid."""
        require(
            self.family in FAMILY_NAMES,
            "model.family",
            f"unknown family {self.family!r}; choose from {FAMILY_NAMES}.",
        )
        presets = DECODER_PRESETS if self.is_decoder else ENCODER_PRESETS
        require(
            self.preset in presets,
            "model.preset",
            f"unknown {self.family} preset {self.preset!r}; choose from {presets}.",
        )
        heads = ("score", "yes_no") if self.is_decoder else ("score",)
        require(
            self.head in heads,
            "model.head",
            f"a {self.family} reranker has a head in {heads}, not {self.head!r}.",
        )
        self._validate_template()
        self._validate_numerics()
        if not self.init_from:
            try:
                self.backbone_config()
            except (TypeError, ValueError) as err:
                raise ConfigError(f"model.overrides: {err}") from None
            require(
                bool(self.tokenizer),
                "model.tokenizer",
                "a randomly initialised model needs a tokenizer path.",
            )

    def _validate_template(self) -> None:
        require(
            self.template in TEMPLATES,
            "model.template",
            f"unknown template {self.template!r}; choose from {sorted(TEMPLATES)}.",
        )
        kind = "text" if self.is_decoder else "pair"
        require(
            make_template(self.template).kind == kind,
            "model.template",
            f"{self.family} models read {kind} templates; {self.template!r} is not one.",
        )

    def _validate_numerics(self) -> None:
        for field in ("dtype", "param_dtype"):
            try:
                dtype_of(getattr(self, field))
            except ValueError as err:
                raise ConfigError(f"model.{field}: {err}") from None
        try:
            remat_name(self.remat_policy)
        except ValueError as err:
            raise ConfigError(f"model.remat_policy: {err}") from None


def head_config(model: ModelConfig, tokenizer) -> HeadConfig:
    """The head of a freshly initialised model; yes/no ids come from the tokenizer."""
    if model.head == "score":
        return HeadConfig(kind="score")
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (model.yes_token, model.no_token)]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ConfigError(
            f"model.yes_token/no_token: {model.yes_token!r}/{model.no_token!r} are not single "
            "tokens."
        )
    return HeadConfig(kind="yes_no", yes_token_id=ids[0], no_token_id=ids[1])
