"""Print the per-device memory plan of a training config on any mesh, without allocating anything.

  python -m querit_jax.plan --config=configs/X.py[:VARIANT] [--config.a.b=v ...]
      [--mesh=data=1,fsdp=64] [--num_devices=N] [--device_memory_gib=G] [--mode=estimate|compile]

Parameters, optimiser state and gradients are exact (shapes and shardings); activations come from
the residuals JAX keeps for the backward pass (`--mode=estimate`, the default away from
accelerators: any mesh size, no devices needed) or from the compiled step's memory_analysis()
(`--mode=compile`; on a CPU machine it uses N fake CPU devices, whose figures ignore remat). Exits 2
with the fields to change when the plan does not fit. See querit_jax/training/memory.py.
"""

from absl import flags
from ml_collections import config_flags

from querit_jax import cli, config_lib
from querit_jax.sharding.mesh import mesh_shape_from_flag, planning_mesh
from querit_jax.training import memory

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (path[:variant]).", lock_config=True
)
_MESH = flags.DEFINE_string(
    "mesh", "", "Mesh axis sizes over the config's, e.g. data=1,fsdp=64 (one may be -1)."
)
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices", None, "Devices to plan for (default: the mesh's product, else this machine's)."
)
_MEMORY = flags.DEFINE_float(
    "device_memory_gib", 95.0, "Memory of one device in GiB (95: TPU v5p; 141: H200; 80: H100)."
)
_MODE = flags.DEFINE_enum(
    "mode", "auto", memory.MODES, "auto: compile on TPU/GPU devices, else estimate."
)


def main(argv):
    del argv
    cfg = config_lib.from_config_dict(_CONFIG.value)
    shape = mesh_shape_from_flag(_MESH.value, cfg.sharding.mesh.shape)
    mode = "estimate" if _MODE.value == "auto" and _NUM_DEVICES.value else _MODE.value
    mesh = planning_mesh(shape, _NUM_DEVICES.value, mode)
    result = memory.plan(cfg, mesh, capacity=int(_MEMORY.value * memory.GIB), mode=mode)
    result.check()  # does not fit: one `error:` line with the plan and what to change, exit 2
    print(result.line())


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
