"""Sharding: mesh construction, logical-axis rules, activation constraints and sharded
initialisation.

Model code writes only logical axis names (`axes`); a rule preset (`rules.PRESETS`) maps them to the
mesh axes `data`, `fsdp`, `tensor`, `expert`. The mapping is installed with `use_rules(mesh, rules)`
around tracing, which is what flax NNX reads when it creates a `nnx.Param(..., out_sharding=...)`
and what `shard()` reads for activations.
"""

import contextlib
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from querit_jax.sharding import axes, rules  # noqa: F401  (re-exported)
from querit_jax.sharding.mesh import make_mesh, resolve_mesh_shape, single_device_mesh  # noqa: F401

Rules = tuple[tuple[str, rules.MeshAxes], ...]


@contextlib.contextmanager
def use_rules(mesh: Mesh, logical_rules: Rules) -> Iterator[None]:
    """Activates `mesh` and the logical->mesh rules for everything traced inside."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(logical_rules):
        yield


def logical_to_spec(
    logical: Sequence[str | None], logical_rules: Rules | None = None
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec with the given (or the active) rules."""
    table = dict(logical_rules if logical_rules is not None else spmd.get_logical_axis_rules())
    out = []
    for name in logical:
        if name is None:
            out.append(None)
        elif name not in table:
            raise KeyError(f"Logical axis {name!r} has no sharding rule; known: {sorted(table)}.")
        else:
            out.append(table[name])
    return PartitionSpec(*out)


def shard(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """Constrains an activation's sharding by logical names; a no-op outside a mesh/rules
    context."""
    if jax.sharding.get_abstract_mesh().empty or not spmd.get_logical_axis_rules():
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical))


def to_host(x) -> np.ndarray:
    """The full value of an array on this host, wherever its shards live.

    An array that spans other processes' devices is gathered with `process_allgather`: a collective,
    so every process must call this for it (in the same order). Host arrays pass through.
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def axis_size(mesh_shape, target: rules.MeshAxes) -> int:
    """Number of devices a logical axis is split over: the product of its mesh axes' sizes.

    `mesh_shape` is a Mesh, an AbstractMesh or a {mesh axis: size} mapping; `target` a rule's
    right-hand side.
    """
    shape = dict(mesh_shape.shape) if hasattr(mesh_shape, "axis_names") else mesh_shape
    if target is None:
        return 1
    names = (target,) if isinstance(target, str) else target
    return int(np.prod([shape[n] for n in names]))


def param_specs(abstract_state: nnx.State, mesh: Mesh, logical_rules: Rules) -> nnx.State:
    """PartitionSpecs for every variable of an abstract state, from its `out_sharding` metadata.

    Raises:
      ValueError: naming the parameter, when a sharded dimension does not divide by its mesh axes.
    """

    def spec_for(path, variable):
        logical = (
            variable.get_metadata("out_sharding", None)
            if isinstance(variable, nnx.Variable)
            else None
        )
        shape = variable.shape if hasattr(variable, "shape") else np.shape(variable)
        if not logical:
            return PartitionSpec()
        spec = logical_to_spec(logical, logical_rules)
        for dim, (size, target) in enumerate(zip(shape, spec)):
            n = axis_size(mesh, target)
            if size % n:
                name = "/".join(str(p) for p in path)
                raise ValueError(
                    f"Parameter {name} has shape {tuple(shape)}; dimension {dim} "
                    f"({logical[dim]}={size}) "
                    f"is sharded over mesh axes {target} of total size {n}, which does not divide "
                    "it. "
                    "Change the mesh shape or the sharding preset."
                )
        return spec

    return jax.tree_util.tree_map_with_path(
        spec_for, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


def init_sharded(
    build: Callable[[], nnx.Module], mesh: Mesh, logical_rules: Rules
) -> tuple[nnx.GraphDef, nnx.State]:
    """Shape-first sharded initialisation: no full parameter ever materialises on one device.

    `build` constructs the module (with its own `nnx.Rngs`). It is first traced abstractly to learn
    shapes and logical axes, the shardings are checked and resolved, then it runs once under
    `jax.jit` with those output shardings so that every device computes only its own shard.

    Returns:
      (graphdef, state): state is an `nnx.State` of sharded `jax.Array`s.
    """
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(build)
    graphdef, abstract_state = nnx.split(abstract)
    specs = param_specs(abstract_state, mesh, logical_rules)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    with use_rules(mesh, logical_rules):
        state = jax.jit(lambda: nnx.split(build())[1], out_shardings=shardings)()
    return graphdef, state
