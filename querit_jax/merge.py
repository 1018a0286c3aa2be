"""Merge model checkpoints: `python -m querit_jax.merge --config=configs/merge_slerp.py[:variant]`.

Writes one model checkpoint (usable by rerank, evaluate and export_hf.py with nothing but its path)
and a merge manifest beside it; see querit_jax/merging/.
"""

import json

from absl import flags
from ml_collections import config_flags

from querit_jax import cli, config_lib, distributed, merging
from querit_jax.training.writers import get_logger

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file with a `merge` section.", lock_config=True
)


def main(argv):
    del argv
    distributed.maybe_initialize()
    log = get_logger().info
    cfg = config_lib.merge_from_config_dict(_CONFIG.value)
    manifest = merging.merge(cfg, log=log)
    log(json.dumps({"output": manifest["output"], **manifest["totals"]}, indent=2))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
