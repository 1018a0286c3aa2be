"""The `sharding` section: a rule preset with overrides, and the device mesh it maps onto.

Training and merging both read one (`sharding`, `merge.sharding`). The checks here need no devices;
the mesh shape is resolved against the device count in `experiment.validate_for_devices` (training)
or when the merge builds its mesh.
"""

import dataclasses
from typing import Any

from querit_jax.config_lib.parse import require
from querit_jax.errors import ConfigError
from querit_jax.sharding import axes
from querit_jax.sharding import rules as rules_lib


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    expert: int = 1
    # Multislice: the data axis spans this many TPU slices (over DCN); the rest stays in a slice.
    dcn_data: int = 1

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.data, self.fsdp, self.tensor, self.expert)


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    preset: str = "fsdp"
    mesh: MeshConfig = MeshConfig()
    rule_overrides: tuple[tuple[str, Any], ...] = ()

    def rules(self):
        return rules_lib.resolve_rules(self.preset, dict(self.rule_overrides))

    def validate(self) -> None:
        """The preset and overrides resolve, and every mesh axis of size != 1 is used by a rule."""
        try:
            used = rules_lib.mesh_axes_used(dict(self.rules()))
        except ValueError as err:
            raise ConfigError(f"sharding: {err}") from None
        for axis, size in zip(axes.MESH_AXES, self.mesh.shape):
            require(
                size == 1 or axis in used,
                f"sharding.mesh.{axis}",
                f"size {size} but preset {self.preset!r} maps nothing to '{axis}'; those devices "
                "would only repeat work.",
            )
