"""Train state: a plain pytree (step, params as a pure dict, optimiser state)."""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def _keys(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)


def state_shardings(abstract_params, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Shardings for the whole state: optimiser moments follow their parameters, the rest is
    replicated.

    An optimiser-state leaf belongs to the parameter whose key path ends its own key path (Adam's
    `mu` and `nu` copy the parameter tree, possibly inside masked or multi-transform wrappers) and
    has the same shape; anything else (counts, scalars) is replicated.
    """
    param_shardings = jax.tree.map(lambda a: a.sharding, abstract_params)
    by_path = {
        _keys(p): (a.shape, a.sharding)
        for p, a in jax.tree_util.tree_leaves_with_path(abstract_params)
    }
    depths = sorted({len(k) for k in by_path})
    replicated = NamedSharding(mesh, PartitionSpec())

    def for_leaf(path, leaf):
        keys = _keys(path)
        for d in depths:
            hit = by_path.get(keys[-d:]) if len(keys) >= d else None
            if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
                return hit[1]
        return replicated

    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_shardings = jax.tree_util.tree_map_with_path(for_leaf, abstract_opt)
    return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)


def init_state(params, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """Builds the state on device with the given shardings (optimiser moments computed sharded)."""

    def build(p):
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))

    return jax.jit(build, out_shardings=shardings)(params)
