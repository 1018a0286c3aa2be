"""The `merge` section: a merge recipe (method, inputs, t specs or weights, sharding while merging).

A `t` is given the way mergekit's YAML gives it:

    t = 0.5                                   # everywhere
    t = [0.0, 0.5, 1.0]                       # a gradient over depth (piecewise linear)
    t = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
         {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
         {"value": 0.5}]                      # per-name rules, first match wins

`parse_t` turns one into `Rule`s; which t each tensor gets is querit_jax/merging/plan.py's business.
"""

import dataclasses
import math
from collections.abc import Mapping

from querit_jax.config_lib.parse import parsed_field, require
from querit_jax.config_lib.sharding import MeshConfig, ShardingConfig
from querit_jax.errors import ConfigError

METHODS = ("slerp", "sequential_slerp", "multislerp")
VOCAB_POLICIES = ("refuse", "rectify")
# The merge's default placement: every device on the fsdp axis.
_ALL_DEVICES_FSDP = ShardingConfig(mesh=MeshConfig(data=1, fsdp=-1))


@dataclasses.dataclass(frozen=True)
class Rule:
    """One entry of a t spec: tensors whose name contains `filter` ("" = all) get `value`."""

    filter: str
    value: float | tuple[float, ...]  # a scalar or a gradient over depth

    def to_json(self):
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"filter": self.filter, "value": value} if self.filter else {"value": value}


def _number(x, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ConfigError(f"{where}={x!r} must be a number in [0, 1].")
    if not 0.0 <= x <= 1.0:
        raise ConfigError(
            f"{where}={x!r} is outside [0, 1]; t=0 keeps the base, t=1 the other model."
        )
    return float(x)


def _value(v, where: str) -> float | tuple[float, ...]:
    if isinstance(v, (list, tuple)):
        if not v:
            raise ConfigError(f"{where}: an empty gradient; give at least one number.")
        return tuple(_number(x, f"{where}[{i}]") for i, x in enumerate(v))
    return _number(v, where)


def parse_t(spec, where: str = "merge.t") -> tuple[Rule, ...]:
    """Validates a t spec (scalar, gradient list or list of {filter, value} rules) into Rules.

    Raises:
      ConfigError: naming the entry, for a value outside [0, 1], an empty list, a rule without
        `value`, an unknown rule key or a list mixing numbers and rules.
    """
    if isinstance(spec, Mapping):
        spec = [spec]
    if not isinstance(spec, (list, tuple)):
        return (Rule("", _value(spec, where)),)
    if not spec:
        raise ConfigError(f"{where}: empty; give a number, a gradient list or filter rules.")
    kinds = {isinstance(e, Mapping) for e in spec}
    if kinds == {False}:
        return (Rule("", _value(spec, where)),)
    if kinds != {True}:
        raise ConfigError(
            f"{where}: mixes numbers and {{filter, value}} rules; use one gradient list or a list "
            "of rules."
        )
    rules = []
    for i, entry in enumerate(spec):
        entry = dict(entry)
        unknown = set(entry) - {"filter", "value"}
        if unknown:
            raise ConfigError(
                f"{where}[{i}]: unknown key(s) {sorted(unknown)}; use filter and value."
            )
        if "value" not in entry:
            raise ConfigError(f"{where}[{i}]: missing 'value'.")
        name_filter = entry.get("filter") or ""
        if not isinstance(name_filter, str):
            raise ConfigError(f"{where}[{i}].filter={name_filter!r} must be a string.")
        rules.append(Rule(name_filter, _value(entry["value"], f"{where}[{i}].value")))
    return tuple(rules)


def _parse_step_t(value, where: str) -> tuple[tuple[Rule, ...], ...]:
    """sequential_slerp's list of t specs, one per step (`merge.step_t[i]` in messages)."""
    return tuple(parse_t(s, f"{where}[{i}]") for i, s in enumerate(value or ()))


def _parse_weights(value, where: str) -> tuple[float, ...]:
    """multislerp's weights: numbers >= 0 (how many, and their sum, are checked in validate)."""
    weights = tuple(value or ())
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights):
        raise ConfigError(f"{where}={list(weights)} must be numbers >= 0.")
    return tuple(float(w) for w in weights)


def _parse_path(value, where: str) -> str:
    """A path with surrounding blanks removed (None = "")."""
    return str(value or "").strip()


@dataclasses.dataclass(frozen=True)
class MergeConfig:
    """A validated merge recipe (see configs/merge_slerp.py for what every field means)."""

    method: str = "slerp"
    models: tuple[str, ...] = ()
    output: str = parsed_field(_parse_path, default="")
    t: tuple[Rule, ...] = parsed_field(parse_t, default=(Rule("", 0.5),))
    # sequential_slerp: one spec per step.
    step_t: tuple[tuple[Rule, ...], ...] = parsed_field(_parse_step_t, default=())
    # multislerp: one per model (empty = equal weights).
    weights: tuple[float, ...] = parsed_field(_parse_weights, default=())
    # multislerp: origin of the task vectors.
    base_model: str = parsed_field(_parse_path, default="")
    normalize_weights: bool = True
    vocab_policy: str = "refuse"
    sharding: ShardingConfig = _ALL_DEVICES_FSDP  # where tensors live while merging
    flush_mb: int = 256
    progress: bool = True
    # The section as given (set by merge_from_config_dict, not a config field).
    raw: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        """multislerp without weights weighs every model equally."""
        if self.method == "multislerp" and not self.weights:
            object.__setattr__(self, "weights", (1.0,) * len(self.models))

    def step_specs(self) -> tuple[tuple[Rule, ...], ...]:
        """The t spec of each pairwise step: one for slerp, len(models) - 1 for sequential_slerp."""
        steps = len(self.models) - 1 if self.method == "sequential_slerp" else 1
        return self.step_t or (self.t,) * steps

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"merge.method={self.method!r} is not a merge method; choose one of {METHODS}."
            )
        self._validate_models()
        self._validate_steps()
        self._validate_weights()
        require(
            not self.base_model or self.method == "multislerp",
            "merge.base_model",
            "only multislerp takes a separate base (task vectors); for slerp the first of "
            "merge.models is the base.",
        )
        if self.vocab_policy not in VOCAB_POLICIES:
            raise ConfigError(
                f"merge.vocab_policy={self.vocab_policy!r}; choose one of {VOCAB_POLICIES}."
            )
        if self.flush_mb < 1:
            raise ConfigError(f"merge.flush_mb={self.flush_mb} must be >= 1.")

    def _validate_models(self) -> None:
        n = len(self.models)
        require(n > 0, "merge.models", "no checkpoints given.")
        require(
            self.method != "slerp" or n == 2,
            "merge.models",
            f"slerp merges exactly 2 checkpoints (the first is the base, t=0), got {n}; use "
            "sequential_slerp or multislerp for more.",
        )
        require(
            self.method != "sequential_slerp" or n >= 2,
            "merge.models",
            "sequential_slerp needs at least 2 checkpoints.",
        )
        require(
            bool(self.output),
            "merge.output",
            "empty; give the directory to write the merged model to.",
        )

    def _validate_steps(self) -> None:
        if not self.step_t:
            return
        require(
            self.method == "sequential_slerp",
            "merge.step_t",
            "only sequential_slerp reads it; use merge.t instead.",
        )
        steps = len(self.models) - 1
        require(
            len(self.step_t) == steps,
            "merge.step_t",
            f"{len(self.step_t)} entries for {len(self.models)} checkpoints; sequential_slerp "
            f"folds them in {steps} steps, one t spec each.",
        )

    def _validate_weights(self) -> None:
        if self.method != "multislerp":
            require(
                not self.weights,
                "merge.weights",
                "only multislerp reads weights; slerp uses merge.t.",
            )
            return
        require(
            len(self.weights) == len(self.models),
            "merge.weights",
            f"{len(self.weights)} weights for {len(self.models)} checkpoints; give one each.",
        )
        require(
            sum(self.weights) > 0,
            "merge.weights",
            "all zero; at least one checkpoint needs a weight.",
        )
