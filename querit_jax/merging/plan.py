"""Which interpolation factor each tensor gets: mergekit's scalar / gradient / filtered parameters.

A `t` spec is given the way mergekit's YAML gives it (a number, a gradient over depth, or filter
rules; see querit_jax/config_lib/merge.py, where `parse_t` turns it into `Rule`s).

A gradient is read at the tensor's relative depth: layer i of n sits at i / (n - 1) (a single layer
at 1), everything before the layers (embeddings) at 0 and everything after them (final norm, scoring
or LM head) at 1, exactly as mergekit's `MergePlanner.plan_slice` computes it. Filters are
substrings of our parameter names, which mirror Hugging Face's
(`model.layers.3.self_attn.q_proj.kernel`, `model.layers.3.mlp.gate_proj`), so mergekit recipes keep
their meaning.
"""

import math
import re
from collections.abc import Sequence

from querit_jax.config_lib import Rule
from querit_jax.errors import ConfigError

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


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
