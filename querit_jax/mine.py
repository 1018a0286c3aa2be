"""Mine label-free training data: `python -m querit_jax.mine
--config=configs/mine_beir.py[:variant]`.

Writes soft-label shards, their records and a manifest to `mining.output` (see
querit_jax/mining/miner.py); an interrupted run continues where it stopped when started again.
Under launch/local.py or on a pod every process mines its own shards on all of its devices.
"""

import json

import jax
from absl import flags
from ml_collections import config_flags

from querit_jax import cli, config_lib, distributed, storage

# Before the imports below: bm25s runs a JAX op when imported, and jax.distributed must come first.
distributed.maybe_initialize()

from querit_jax.data.io import read_json  # noqa: E402
from querit_jax.data.mined import MANIFEST  # noqa: E402
from querit_jax.mining import miner  # noqa: E402
from querit_jax.training.writers import get_logger  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file with a `mining` section.", lock_config=True
)


def main(argv):
    del argv
    log = get_logger().info
    cfg = config_lib.mining_from_config_dict(_CONFIG.value)
    # Every process mines its share of the shards; process 0 writes the manifest at the end.
    miner.ensure_mined(cfg, log)
    if jax.process_index() == 0:
        manifest = read_json(storage.join(cfg.output, MANIFEST))
        log(json.dumps({"output": cfg.output, **manifest["totals"]}, indent=2))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
