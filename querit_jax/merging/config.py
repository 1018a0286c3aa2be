"""The `merge` section of a config: ConfigDict at the edge, a frozen validated MergeConfig inside."""

import dataclasses
from typing import Any

import ml_collections

from querit_jax.config_lib import MeshConfig
from querit_jax.errors import ConfigError
from querit_jax.merging.plan import Rule, parse_t
from querit_jax.sharding import rules as rules_lib

METHODS = ("slerp", "sequential_slerp", "multislerp")
VOCAB_POLICIES = ("refuse", "rectify")
_ALL_DEVICES_FSDP = MeshConfig(data=1, fsdp=-1)  # every device on the fsdp axis


@dataclasses.dataclass(frozen=True)
class MergeConfig:
    """A validated merge recipe (see configs/merge_slerp.py for what every field means)."""

    method: str
    models: tuple[str, ...]
    output: str
    t: tuple[Rule, ...] = (Rule("", 0.5),)
    step_t: tuple[tuple[Rule, ...], ...] = ()  # sequential_slerp: one spec per step
    weights: tuple[float, ...] = ()  # multislerp
    base_model: str = ""  # multislerp: origin of the task vectors
    normalize_weights: bool = True
    vocab_policy: str = "refuse"
    sharding_preset: str = "fsdp"
    mesh: MeshConfig = _ALL_DEVICES_FSDP
    flush_mb: int = 256
    progress: bool = True
    raw: dict = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )  # the section as given

    def rules(self):
        return rules_lib.resolve_rules(self.sharding_preset)

    def step_specs(self) -> tuple[tuple[Rule, ...], ...]:
        """The t spec of each pairwise step: one for slerp, len(models) - 1 for sequential_slerp."""
        steps = len(self.models) - 1 if self.method == "sequential_slerp" else 1
        return self.step_t or (self.t,) * steps


def _plain(value: Any) -> Any:
    """ConfigDicts and tuples inside lists -> dicts and lists (what JSON and the parser expect)."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _paths(value, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    paths = tuple(str(v).strip() for v in value if str(v).strip())
    if not paths:
        raise ConfigError(f"{field}: no checkpoints given.")
    return paths


def merge_from_config_dict(config) -> MergeConfig:
    """The `merge` section of a config file -> MergeConfig.

    Raises:
      ConfigError: naming the field, for unknown fields and every invalid value.
    """
    values = _plain(config)
    if "merge" not in values:
        raise ConfigError("config: no `merge` section.")
    m = dict(values["merge"])
    known = {f.name for f in dataclasses.fields(MergeConfig)} - {"raw", "sharding_preset", "mesh"}
    unknown = set(m) - known - {"sharding"}
    if unknown:
        raise ConfigError(
            f"config.merge: unknown field(s) {sorted(unknown)}; known: {sorted(known | {'sharding'})}."
        )
    method = m.get("method", "slerp")
    if method not in METHODS:
        raise ConfigError(
            f"merge.method={method!r} is not a merge method; choose one of {METHODS}."
        )
    models = _paths(m.get("models", ()), "merge.models")
    if method == "slerp" and len(models) != 2:
        raise ConfigError(
            f"merge.models: slerp merges exactly 2 checkpoints (the first is the base, t=0), got "
            f"{len(models)}; use sequential_slerp or multislerp for more."
        )
    if method == "sequential_slerp" and len(models) < 2:
        raise ConfigError("merge.models: sequential_slerp needs at least 2 checkpoints.")
    output = str(m.get("output", "")).strip()
    if not output:
        raise ConfigError("merge.output: empty; give the directory to write the merged model to.")
    t = parse_t(m.get("t", 0.5), "merge.t")
    step_t = tuple(parse_t(s, f"merge.step_t[{i}]") for i, s in enumerate(m.get("step_t") or ()))
    if step_t and method != "sequential_slerp":
        raise ConfigError("merge.step_t: only sequential_slerp reads it; use merge.t instead.")
    if step_t and len(step_t) != len(models) - 1:
        raise ConfigError(
            f"merge.step_t: {len(step_t)} entries for {len(models)} checkpoints; sequential_slerp "
            f"folds them in {len(models) - 1} steps, one t spec each."
        )
    weights = tuple(m.get("weights") or ())
    if method == "multislerp":
        weights = weights or (1.0,) * len(models)
        if len(weights) != len(models):
            raise ConfigError(
                f"merge.weights: {len(weights)} weights for {len(models)} checkpoints; give one each."
            )
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights):
            raise ConfigError(f"merge.weights={list(weights)} must be numbers >= 0.")
        if sum(weights) <= 0:
            raise ConfigError("merge.weights: all zero; at least one checkpoint needs a weight.")
    elif weights:
        raise ConfigError("merge.weights: only multislerp reads weights; slerp uses merge.t.")
    base_model = str(m.get("base_model", "") or "").strip()
    if base_model and method != "multislerp":
        raise ConfigError(
            "merge.base_model: only multislerp takes a separate base (task vectors); for slerp the "
            "first of merge.models is the base."
        )
    vocab_policy = m.get("vocab_policy", "refuse")
    if vocab_policy not in VOCAB_POLICIES:
        raise ConfigError(f"merge.vocab_policy={vocab_policy!r}; choose one of {VOCAB_POLICIES}.")
    sharding = dict(m.get("sharding") or {})
    preset = sharding.get("preset", "fsdp")
    mesh_values = dict(sharding.get("mesh") or {"data": 1, "fsdp": -1})
    try:
        mesh = MeshConfig(**{k: int(v) for k, v in mesh_values.items()})
        rules_lib.resolve_rules(preset)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"merge.sharding: {e}") from None
    flush_mb = int(m.get("flush_mb", 256))
    if flush_mb < 1:
        raise ConfigError(f"merge.flush_mb={flush_mb} must be >= 1.")
    return MergeConfig(
        method=method,
        models=models,
        output=output,
        t=t,
        step_t=step_t,
        weights=tuple(float(w) for w in weights),
        base_model=base_model,
        normalize_weights=bool(m.get("normalize_weights", True)),
        vocab_policy=vocab_policy,
        sharding_preset=preset,
        mesh=mesh,
        flush_mb=flush_mb,
        progress=bool(m.get("progress", True)),
        raw=m,
    )
