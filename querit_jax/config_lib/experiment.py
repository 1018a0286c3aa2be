"""Whole configs: the experiment (training) config, and the entry points that read a config file.

`from_config_dict` (train), `mining_from_config_dict` (mine) and `merge_from_config_dict` (merge)
each build their sections with the one parser of parse.py. Checks that need the device count (batch
divisible by the data axes) run in `validate_for_devices` before anything is compiled.
"""

import dataclasses
import importlib.util
import json

import ml_collections

from querit_jax import storage
from querit_jax.config_lib.merge import MergeConfig
from querit_jax.config_lib.mining import MiningConfig
from querit_jax.config_lib.model import ModelConfig
from querit_jax.config_lib.parse import build, plain, require
from querit_jax.config_lib.sharding import ShardingConfig
from querit_jax.config_lib.training import DataConfig, EvalConfig, OptimConfig, TrainConfig
from querit_jax.errors import ConfigError
from querit_jax.sharding import axes, axis_size
from querit_jax.sharding.hybrid import ici_shape
from querit_jax.sharding.mesh import resolve_mesh_shape


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    sharding: ShardingConfig = dataclasses.field(default_factory=ShardingConfig)
    mining: MiningConfig | None = None  # adapt configs: mined first when its output is missing

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Rules between sections (each section has checked its own fields already).

        A randomly initialised MoE model's experts must split evenly over the expert axis, and the
        expert-parallel path needs a preset that maps experts to a mesh axis.
        """
        if self.model.init_from:
            return
        backbone, s = self.model.backbone_config(), self.sharding
        target = dict(s.rules()).get(axes.EXPERT)
        if getattr(backbone, "moe_impl", "") == "ep":
            require(
                isinstance(target, str),
                "model.overrides.moe_impl",
                f"'ep' needs a preset that maps experts to a mesh axis (fsdp+ep), not "
                f"{s.preset!r}.",
            )
        sizes = dict(zip(axes.MESH_AXES, s.mesh.shape))
        _require_experts_split(getattr(backbone, "num_experts", 0), target, sizes)


def _require_experts_split(experts: int, target, sizes: dict) -> None:
    """The experts split evenly over the mesh axis `target` (sizes: mesh axis -> size, -1 =
    rest)."""
    if experts and isinstance(target, str):
        size = sizes[target]
        require(
            size == -1 or experts % size == 0,
            f"sharding.mesh.{target}",
            f"{experts} experts do not split over the {size} devices of the '{target}' axis.",
        )


def validate_for_devices(
    cfg: ExperimentConfig, num_devices: int, process_count: int = 1
) -> tuple[int, ...]:
    """Device-dependent checks; returns the resolved mesh shape."""
    try:
        shape = resolve_mesh_shape(cfg.sharding.mesh.shape, num_devices)
        ici_shape(shape, cfg.sharding.mesh.dcn_data)
    except ValueError as err:
        raise ConfigError(f"sharding.mesh: {err}") from None
    rules = dict(cfg.sharding.rules())
    sizes = dict(zip(axes.MESH_AXES, shape))
    batch_axes = rules[axes.BATCH]
    split = axis_size(sizes, batch_axes)
    if not cfg.model.init_from:
        experts = getattr(cfg.model.backbone_config(), "num_experts", 0)
        _require_experts_split(experts, rules.get(axes.EXPERT), sizes)
    batch = cfg.data.batch_size
    require(
        batch % split == 0,
        "data.batch_size",
        f"{batch} query groups do not split over the batch mesh axes {batch_axes} of size {split}.",
    )
    require(
        batch % process_count == 0,
        "data.batch_size",
        f"{batch} does not split over {process_count} processes.",
    )
    return shape


# Fields a resume may change: they do not change which examples are read, in what order, or the
# model (packed and unpacked scores are equal, whatever the rows' count and length).
RESUMABLE_CHANGES = (
    "data.num_threads",
    "data.strict",
    "data.pack_rows",
    "data.pack_length",
    "data.pack_max_pairs",
)


def config_drift(saved: dict, current: dict) -> list[str]:
    """'section.field: saved -> current' for model/data fields that differ (what a resume must
    keep)."""
    # Through JSON: tuples -> lists, as saved.
    saved, current = (json.loads(json.dumps(c)) for c in (saved, current))
    out = []
    for section, cls in (("model", ModelConfig), ("data", DataConfig)):
        # A field the saved run predates counts as its default (old checkpoints stay resumable).
        defaults = json.loads(json.dumps(dataclasses.asdict(cls())))
        a = {**defaults, **saved.get(section, {})}
        b = current.get(section, {})
        for key in sorted(set(a) | set(b)):
            name = f"{section}.{key}"
            if name not in RESUMABLE_CHANGES and a.get(key) != b.get(key):
                out.append(f"{name}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


def from_config_dict(config: ml_collections.ConfigDict | dict) -> ExperimentConfig:
    """ConfigDict -> validated, frozen ExperimentConfig."""
    return build(ExperimentConfig, plain(config))


def _section(config, name: str) -> dict:
    values = plain(config)
    if name not in values:
        raise ConfigError(f"config: no `{name}` section.")
    return dict(values[name])


def mining_from_config_dict(config) -> MiningConfig:
    """The `mining` section of a config (what `python -m querit_jax.mine` reads)."""
    return build(MiningConfig, _section(config, "mining"), "mining")


def merge_from_config_dict(config) -> MergeConfig:
    """The `merge` section of a config file (what `python -m querit_jax.merge` reads).

    Raises:
      ConfigError: naming the field, for unknown fields and every invalid value.
    """
    section = _section(config, "merge")
    return build(MergeConfig, section, "merge", raw=section)


def load_sibling_config(config_file: str, name: str):
    """The config module `name`.py next to `config_file` (how one config file builds on another)."""
    path = storage.join(storage.dirname(config_file), f"{name}.py")  # config files are local
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
