"""Rule presets: logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated).

A preset is plain data so that a config can name one and override single entries. Every logical axis
of `axes.ALL_AXES` has an entry in every preset, so an unknown name is a bug caught by
`resolve_rules`.
"""

from collections.abc import Mapping

from querit_jax.sharding import axes

MeshAxes = str | tuple[str, ...] | None

_REPLICATED: dict[str, MeshAxes] = {name: None for name in axes.ALL_AXES}

PRESETS: dict[str, dict[str, MeshAxes]] = {
    # Pure data parallelism: parameters replicated, batch split over `data`.
    "dp": {**_REPLICATED, axes.BATCH: "data"},
    # Fully sharded data parallelism (ZeRO-3 style): weights split along their model width over
    # `fsdp`, activations split over the batch on both data axes.
    "fsdp": {**_REPLICATED, axes.BATCH: ("data", "fsdp"), axes.EMBED: "fsdp"},
    # fsdp + Megatron-style tensor parallelism over `tensor`: heads and the MLP width are split, so
    # the attention and MLP blocks each need one reduction. The vocabulary stays whole (Qwen3 vocab
    # sizes such as 151669 are odd).
    "fsdp+tp": {
        **_REPLICATED,
        axes.BATCH: ("data", "fsdp"),
        axes.EMBED: "fsdp",
        axes.MLP: "tensor",
        axes.HEADS: "tensor",
        axes.KV_HEADS: "tensor",
        axes.ACT_HEADS: "tensor",
        axes.ACT_KV_HEADS: "tensor",
        axes.ACT_MLP: "tensor",
    },
    # fsdp + expert parallelism: experts are split over `expert`, tokens over every data-like axis
    # (expert included: each expert group holds different tokens and exchanges them all-to-all).
    "fsdp+ep": {
        **_REPLICATED,
        axes.BATCH: ("data", "fsdp", "expert"),
        axes.EMBED: "fsdp",
        axes.EXPERT: "expert",
    },
}


def mesh_axes_used(rules: Mapping[str, MeshAxes]) -> set[str]:
    """Mesh axes that at least one logical axis maps to."""
    used = set()
    for target in rules.values():
        if target is None:
            continue
        used.update((target,) if isinstance(target, str) else target)
    return used


def resolve_rules(
    preset: str, overrides: Mapping[str, MeshAxes] | None = None
) -> tuple[tuple[str, MeshAxes], ...]:
    """Returns the preset (with overrides) as the tuple of pairs flax's `logical_axis_rules` takes.

    Raises:
      ValueError: unknown preset, unknown logical axis or unknown mesh axis in an override.
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown sharding preset {preset!r}; choose one of {sorted(PRESETS)}.")
    rules = dict(PRESETS[preset])
    for name, target in (overrides or {}).items():
        if name not in rules:
            raise ValueError(
                f"Sharding rule override names unknown logical axis {name!r}; "
                f"known axes: {sorted(rules)}."
            )
        if isinstance(target, list):
            target = tuple(target)
        rules[name] = target
    unknown = mesh_axes_used(rules) - set(axes.MESH_AXES)
    if unknown:
        raise ValueError(
            f"Sharding rules name unknown mesh axes {sorted(unknown)}; mesh axes are "
            f"{axes.MESH_AXES}."
        )
    return tuple(rules.items())
