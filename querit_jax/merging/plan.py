"""Which interpolation factor each tensor gets: mergekit's scalar / gradient / filtered parameters.

A `t` is given the way mergekit's YAML gives it:

    t = 0.5                                   # everywhere
    t = [0.0, 0.5, 1.0]                       # a gradient over depth (piecewise linear)
    t = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
         {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
         {"value": 0.5}]                      # per-name rules, first match wins

A gradient is read at the tensor's relative depth: layer i of n sits at i / (n - 1) (a single layer at
1), everything before the layers (embeddings) at 0 and everything after them (final norm, scoring or LM
head) at 1, exactly as mergekit's `MergePlanner.plan_slice` computes it. Filters are substrings of our parameter names, which mirror Hugging Face's
(`model.layers.3.self_attn.q_proj.kernel`, `model.layers.3.mlp.gate_proj`), so mergekit recipes keep
their meaning.
"""

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

from querit_jax.errors import ConfigError

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


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


def layer_index(name: str) -> int | None:
    """The decoder/encoder layer a parameter belongs to (`...layers.<i>.`), or None."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def tensor_position(name: str, num_layers: int) -> float:
    """Relative depth in [0, 1]: i / (n - 1) for layer i, 0 for embeddings, 1 for the rest.

    A model with a single layer puts it at 1, as mergekit's plan_slice does (`t = 1` when there is
    one layer), so a gradient recipe gives the same t here as there.
    """
    layer = layer_index(name)
    if layer is not None:
        return layer / (num_layers - 1) if num_layers > 1 else 1.0
    return 0.0 if "embed" in name else 1.0


def interpolate(value: float | Sequence[float], position: float) -> float:
    """Reads a gradient at `position` in [0, 1], linearly between its evenly spaced points."""
    if not isinstance(value, (list, tuple)):
        return float(value)
    scaled = position * (len(value) - 1)
    i0 = min(math.floor(scaled), len(value) - 1)
    i1 = min(i0 + 1, len(value) - 1)
    frac = scaled - i0
    return (1.0 - frac) * value[i0] + frac * value[i1]


def resolve(rules: Sequence[Rule], name: str, position: float, where: str = "merge.t"):
    """(t, filter) for one tensor: the first rule whose filter is in `name`, read at `position`.

    Raises:
      ConfigError: when no rule matches (a filtered spec needs a catch-all rule).
    """
    for rule in rules:
        if rule.filter in name:
            return interpolate(rule.value, position), rule.filter
    raise ConfigError(
        f"{where}: no rule matches parameter {name}; add a catch-all entry such as "
        '{"value": 0.5} at the end.'
    )
