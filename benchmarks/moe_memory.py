"""Per-device memory of one MoE layer (forward + backward) on 8 CPU devices: before and after.

  python benchmarks/moe_memory.py [--rows=16 --length=256 --hidden=256 --inter=128 --experts=32
  --top_k=4]

Compiled `memory_analysis()` temporary bytes per device of `jax.grad` of one routed layer for:
  * ep dropless (the `ep` path with capacity_factor <= 0: worst-case [ep, n*k, H] buffers),
  * ep with capacity factor 1.25 (fixed [E*C, H] buffers),
  * grouped under GSPMD (the global sort every device used to run on all tokens),
  * grouped inside the shard_map over the batch axes (each device sorts its own tokens).
Prints one JSON line. Memory only: the 8 devices share this machine's cores, so no timings.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding

from querit_jax import sharding
from querit_jax.models import moe, moe_parallel
from querit_jax.sharding import axes

_ROWS = flags.DEFINE_integer("rows", 16, "Sequences in the batch.")
_LENGTH = flags.DEFINE_integer("length", 256, "Tokens per sequence.")
_HIDDEN = flags.DEFINE_integer("hidden", 256, "Model width H.")
_INTER = flags.DEFINE_integer("inter", 128, "Expert MLP width I.")
_EXPERTS = flags.DEFINE_integer("experts", 32, "Experts E.")
_TOP_K = flags.DEFINE_integer("top_k", 4, "Experts per token k.")
_FACTOR = flags.DEFINE_float("capacity_factor", 1.25, "Capacity factor of the ep path.")


def temp_bytes(fn, preset, mesh_shape, rows, t, h, inter, e, k) -> int:
    mesh = sharding.make_mesh(mesh_shape)
    rules = sharding.rules.resolve_rules(preset)
    router = jnp.asarray(np.random.default_rng(0).standard_normal((h, e)), jnp.float32)

    def loss(x, wg, wu, wd):
        _, w, ex = moe.route(x.reshape(-1, h), router, k, True)
        return jnp.sum(fn(x, w.reshape(rows, t, k), ex.reshape(rows, t, k), wg, wu, wd) ** 2)

    def arg(shape, logical):
        spec = sharding.logical_to_spec(logical, rules)
        return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, spec))

    w_in = arg((e, h, inter), (axes.EXPERT, axes.EMBED, None))
    with sharding.use_rules(mesh, rules):
        compiled = (
            jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
            .lower(
                arg((rows, t, h), (axes.BATCH, None, None)),
                w_in,
                w_in,
                arg((e, inter, h), (axes.EXPERT, None, axes.EMBED)),
            )
            .compile()
        )
    return int(compiled.memory_analysis().temp_size_in_bytes)


def main(argv):
    del argv
    rows, t, h, i, e, k = (
        _ROWS.value,
        _LENGTH.value,
        _HIDDEN.value,
        _INTER.value,
        _EXPERTS.value,
        _TOP_K.value,
    )

    def ep(factor):
        def fn(x, w, ex, *p):
            valid = jnp.ones(x.shape[:2], bool)
            return moe_parallel.experts_expert_parallel(
                x, w, ex, valid, *p, capacity_factor=factor
            )[0]

        return fn

    def grouped_global(x, w, ex, *p):
        return moe.experts_grouped(
            x.reshape(rows * t, h), w.reshape(rows * t, k), ex.reshape(rows * t, k), *p
        ).reshape(rows, t, h)

    shapes = (rows, t, h, i, e, k)
    mib = {
        "ep_dropless": temp_bytes(ep(0.0), "fsdp+ep", (1, 1, 1, 8), *shapes),
        f"ep_capacity_{_FACTOR.value}": temp_bytes(
            ep(_FACTOR.value), "fsdp+ep", (1, 1, 1, 8), *shapes
        ),
        "grouped_gspmd": temp_bytes(grouped_global, "fsdp", (1, 8, 1, 1), *shapes),
        "grouped_shard_map": temp_bytes(
            moe_parallel.experts_grouped_sharded, "fsdp", (1, 8, 1, 1), *shapes
        ),
    }
    values = list(mib.values())
    print(
        json.dumps(
            {
                "shapes": dict(rows=rows, length=t, hidden=h, inter=i, experts=e, top_k=k),
                "temp_mib_per_device": {key: round(v / 2**20, 1) for key, v in mib.items()},
                "ep_dropless_over_capacity": round(values[0] / values[1], 2),
                "grouped_gspmd_over_shard_map": round(values[2] / values[3], 2),
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
