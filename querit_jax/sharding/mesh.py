"""Device mesh from config: axes (data, fsdp, tensor, expert), one of them may be -1 (all the rest)."""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from querit_jax.sharding import axes


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces a single -1 by whatever makes the product equal `num_devices`.

    Raises:
      ValueError: more than one -1, a size < 1, or sizes that do not multiply to the device count.
    """
    shape = [int(s) for s in shape]
    if len(shape) != len(axes.MESH_AXES):
        raise ValueError(f"Mesh shape {shape} must give one size per axis {axes.MESH_AXES}.")
    auto = [i for i, s in enumerate(shape) if s == -1]
    if len(auto) > 1:
        raise ValueError(
            f"Mesh shape {dict(zip(axes.MESH_AXES, shape))}: at most one axis may be -1."
        )
    if any(s < 1 for s in shape if s != -1):
        raise ValueError(
            f"Mesh shape {dict(zip(axes.MESH_AXES, shape))}: sizes must be >= 1 or -1."
        )
    fixed = int(np.prod([s for s in shape if s != -1]))
    if auto:
        if num_devices % fixed:
            raise ValueError(
                f"Mesh shape {dict(zip(axes.MESH_AXES, shape))}: the fixed axes use {fixed} devices, "
                f"which does not divide the {num_devices} available devices."
            )
        shape[auto[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"Mesh shape {dict(zip(axes.MESH_AXES, shape))} uses {fixed} devices but {num_devices} "
            "are available; set one axis to -1 to use all of them."
        )
    return tuple(shape)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the 4-axis mesh with auto (GSPMD) axis types."""
    devices = list(devices) if devices is not None else jax.devices()
    resolved = resolve_mesh_shape(shape, len(devices))
    return jax.make_mesh(
        resolved, axes.MESH_AXES, axis_types=(AxisType.Auto,) * len(resolved), devices=devices
    )


def single_device_mesh() -> Mesh:
    """A mesh over the first local device: what inference tools use when not told otherwise."""
    return make_mesh((1, 1, 1, 1), devices=jax.local_devices()[:1])
