"""Configuration: `ml_collections.ConfigDict` at the edge, frozen validated dataclasses inside.

Config files (`configs/*.py`) return a ConfigDict so that `--config.a.b=v` overrides work; the entry
points call `from_config_dict` (train), `mining_from_config_dict` (mine) or `merge_from_config_dict`
(merge) once, and library code never sees a ConfigDict. One parser (parse.py) builds every section:
it rejects unknown keys and calls the section's own `validate()`, whose errors name the field.

  parse.py       the generic dict -> dataclass builder
  model.py       `model`: backbone preset or checkpoint, head, template, numerics
  training.py    `data`, `optim`, `train` (losses), `eval`
  sharding.py    `sharding`: rule preset, overrides and mesh (training and merging alike)
  mining.py      `mining`: synthetic queries, candidates and teacher scores
  merge.py       `merge`: the merge recipe and its t specs
  experiment.py  the experiment config, rules between sections, the entry points, resume drift
"""

from querit_jax.config_lib.experiment import (  # noqa: F401
    RESUMABLE_CHANGES,
    ExperimentConfig,
    config_drift,
    from_config_dict,
    load_sibling_config,
    merge_from_config_dict,
    mining_from_config_dict,
    validate_for_devices,
)
from querit_jax.config_lib.merge import METHODS, VOCAB_POLICIES, MergeConfig, Rule, parse_t  # noqa: F401
from querit_jax.config_lib.mining import MiningConfig, validate_mining  # noqa: F401
from querit_jax.config_lib.model import FAMILY_NAMES, ModelConfig, head_config  # noqa: F401
from querit_jax.config_lib.sharding import MeshConfig, ShardingConfig  # noqa: F401
from querit_jax.config_lib.training import (  # noqa: F401
    LOSS_NAMES,
    DataConfig,
    EvalConfig,
    OptimConfig,
    TrainConfig,
    parse_losses,
)
from querit_jax.errors import ConfigError  # noqa: F401
