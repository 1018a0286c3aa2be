"""Multislice meshes: the data axis spans slices (data-centre network), everything else stays inside
one.

Several TPU slices talk over DCN, which is much slower than the ICI links inside a slice, so only
the data axis (one gradient all-reduce per step) crosses slices: `sharding.mesh.dcn_data=N` splits
the data axis into N slice groups, each laid out over its own slice's topology
(`create_device_mesh`), and fsdp/tensor/expert never leave a slice. This is
`mesh_utils.create_hybrid_device_mesh(ici, dcn)` with the DCN parallelism on the data axis only,
written so that the slice of a device can be supplied: TPU devices carry `slice_index`; CPU devices
do not, so tests pass a fake assignment.
"""

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from querit_jax.sharding import axes
from querit_jax.sharding.mesh import make_mesh, resolve_mesh_shape


def device_slice(device) -> int | None:
    return getattr(device, "slice_index", None)


def ici_shape(shape: Sequence[int], dcn_data: int) -> tuple[int, ...]:
    """The per-slice mesh shape of a full (resolved) mesh shape whose data axis spans `dcn_data`
    slices."""
    data, *rest = shape
    if dcn_data < 1 or data % dcn_data:
        raise ValueError(
            f"sharding.mesh.dcn_data={dcn_data}: the data axis ({data}) must be a multiple of it."
        )
    return (data // dcn_data, *rest)


def make_hybrid_mesh(
    shape: Sequence[int],
    dcn_data: int = 1,
    devices: Sequence[jax.Device] | None = None,
    slice_of: Callable[[jax.Device], int | None] = device_slice,
) -> Mesh:
    """The 4-axis mesh; with `dcn_data` > 1 the data axis is slice-major over `dcn_data` slices."""
    devices = list(devices) if devices is not None else jax.devices()
    if dcn_data == 1:
        return make_mesh(shape, devices)
    resolved = resolve_mesh_shape(shape, len(devices))
    per_slice = ici_shape(resolved, dcn_data)
    groups: dict[int, list] = {}
    for d in devices:
        key = slice_of(d)
        if key is None:
            raise ValueError(
                f"sharding.mesh.dcn_data={dcn_data}: device {d} has no slice_index (not a "
                "multislice "
                "TPU job); use dcn_data=1."
            )
        groups.setdefault(key, []).append(d)
    sizes = {k: len(v) for k, v in sorted(groups.items())}
    if len(groups) != dcn_data or len(set(sizes.values())) != 1:
        raise ValueError(
            f"sharding.mesh.dcn_data={dcn_data}: the devices form slices of sizes {sizes}; "
            "expected "
            f"{dcn_data} slices of {len(devices) // dcn_data} devices."
        )
    grids = [mesh_utils.create_device_mesh(per_slice, groups[k]) for k in sorted(groups)]
    return Mesh(
        np.concatenate(grids, axis=0),
        axes.MESH_AXES,
        axis_types=(AxisType.Auto,) * len(axes.MESH_AXES),
    )
