"""Mine label-free training data: `python -m querit_jax.mine --config=configs/mine_beir.py[:variant]`.

Writes soft-label shards and a manifest to `mining.output` (see querit_jax/mining/miner.py); an
interrupted run continues where it stopped when started again.
"""

import json

from absl import flags
from ml_collections import config_flags

from querit_jax import cli, config_lib, distributed, storage
from querit_jax.data.io import read_json
from querit_jax.data.mined import MANIFEST
from querit_jax.mining import miner
from querit_jax.training.writers import get_logger

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file with a `mining` section.", lock_config=True
)


def main(argv):
    del argv
    distributed.maybe_initialize()
    log = get_logger().info
    cfg = config_lib.mining_from_config_dict(_CONFIG.value)
    # With several processes, process 0 mines and the others wait for it (one copy of the shards).
    miner.ensure_mined(cfg, log)
    manifest = read_json(storage.join(cfg.output, MANIFEST))
    log(json.dumps({"output": cfg.output, **manifest["totals"]}, indent=2))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
