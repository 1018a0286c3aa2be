"""Device mesh from config: axes (data, fsdp, tensor, expert), one of them may be -1 (all the rest).

Also the meshes a memory plan runs on (`querit_jax.plan`): an abstract mesh of any size (no devices
behind it) or N fake CPU devices, and the `--mesh=data=1,fsdp=64` flag syntax.
"""

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh

from querit_jax.errors import ConfigError
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
                f"Mesh shape {dict(zip(axes.MESH_AXES, shape))}: the fixed axes use {fixed} "
                "devices, "
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


def abstract_mesh(shape: tuple[int, ...]) -> AbstractMesh:
    """A mesh of `shape` over the axes (data, fsdp, tensor, expert) with no devices behind it."""
    return AbstractMesh(
        tuple(shape),
        axes.MESH_AXES,
        axis_types=(AxisType.Auto,) * len(axes.MESH_AXES),
    )


def mesh_shape_from_flag(text: str, base: tuple[int, ...]) -> tuple[int, ...]:
    """'data=1,fsdp=-1' over the config's mesh shape `base` (unnamed axes keep their values)."""
    sizes = dict(zip(axes.MESH_AXES, base))
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        if name not in sizes:
            raise ConfigError(f"--mesh: unknown axis {name!r}; axes are {axes.MESH_AXES}.")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ConfigError(f"--mesh: {part!r} is not axis=size.") from None
    return tuple(sizes[a] for a in axes.MESH_AXES)


def planning_mesh(shape: tuple[int, ...], num_devices: int | None, mode: str):
    """The mesh a plan is made on: abstract for "estimate" (no devices needed), else one of real
    devices; on CPU, `num_devices` fake devices when JAX has not started its backends yet.

    Raises:
      ConfigError: the mesh shape does not fit the device count, or too few devices for "compile".
    """
    fixed = math.prod(s for s in shape if s != -1)
    if num_devices is None:
        num_devices = fixed if -1 not in shape else jax.device_count()
    try:
        resolved = resolve_mesh_shape(shape, num_devices)
    except ValueError as err:
        raise ConfigError(f"--mesh/--num_devices: {err}") from None
    if mode == "estimate":
        return abstract_mesh(resolved)
    try:  # only possible before the first JAX operation: then the CPU backend gets the devices
        jax.config.update("jax_num_cpu_devices", num_devices)
        jax.config.update("jax_platforms", "cpu")
    except RuntimeError:
        pass
    if jax.device_count() < num_devices:
        raise ConfigError(
            f"--mode={mode} compiles on {num_devices} devices but JAX has {jax.device_count()}; "
            "use --mode=estimate to plan a mesh larger than this machine."
        )
    return make_mesh(resolved, jax.devices()[:num_devices])
