"""The paper's whole loop in one command (see configs/loop.py and querit_jax/workflow.py):

    python -m querit_jax.loop --config=configs/loop.py:demo [--config.loop.targets=DIR[,DIR]]
        [--config.loop.target_evals=DIR[,DIR]] [--config.loop.workdir=DIR]

Stage 1 from pretrained weights -> label-free adaptation to each target corpus -> SLERP merge ->
export -> every stage on real held-out questions in <workdir>/report.md. Running it again skips the
stages that are complete. The log also goes to <workdir>/loop.log.
"""

from absl import flags
from ml_collections import config_flags

from querit_jax import cli, distributed

# Before the imports below: bm25s runs a JAX op when imported, and jax.distributed must come first.
distributed.maybe_initialize()

from querit_jax import storage  # noqa: E402
from querit_jax.logs import get_logger, log_to_file, stop_logging_to_file  # noqa: E402
from querit_jax.workflow import Loop  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Loop config file (configs/loop.py:VARIANT).", lock_config=True
)


def main(argv):
    del argv
    config = _CONFIG.value
    handler = log_to_file(storage.join(storage.absolute(config.loop.workdir), "loop.log"))
    try:
        report = Loop(config).run()
    finally:
        stop_logging_to_file(handler)
    get_logger().info(f"Report: {storage.join(config.loop.workdir, 'report.md')} "
                      f"({report['seconds'].get('this run', 0):.0f} s this run).")  # fmt: skip


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
