"""Train a reranker: `python -m querit_jax.train --config=configs/X.py[:variant] [--config.a.b=v]
[--workdir=DIR]`."""

import os

import jax
from absl import flags
from ml_collections import config_flags

from querit_jax import cli, config_lib, distributed

# Before the imports below: bm25s runs a JAX op when imported, and jax.distributed must come first.
distributed.maybe_initialize()

from querit_jax.eval import report  # noqa: E402
from querit_jax.mining import miner  # noqa: E402
from querit_jax.training import trainer  # noqa: E402
from querit_jax.training.writers import get_logger  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (path[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (default: workdirs/<config name>)."
)
_STOP_AT = flags.DEFINE_integer(
    "stop_at_step", None, "End this run after that step, saving a checkpoint."
)


def default_workdir(config_arg: str) -> str:
    name, _, variant = os.path.basename(config_arg).partition(":")
    name = os.path.splitext(name)[0]
    return os.path.join("workdirs", f"{name}_{variant}" if variant else name)


def main(argv):
    del argv
    distributed.maybe_initialize()
    cfg = config_lib.from_config_dict(_CONFIG.value)
    workdir = _WORKDIR.value or default_workdir(
        config_flags.get_config_filename(flags.FLAGS["config"])
    )
    if cfg.mining is not None:
        # Adaptation configs mine their training data first (resuming an interrupted run; a finished
        # run with other settings is refused rather than silently reused).
        miner.ensure_mined(cfg.mining, get_logger().info)
    results = trainer.run(cfg, workdir, stop_at_step=_STOP_AT.value)
    if "final" in results and jax.process_index() == 0:
        paths = report.write_training_report(workdir)  # report.{json,md,png}: first stage vs models
        if paths:
            get_logger().info(f"Evaluation report: {', '.join(paths.values())}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
