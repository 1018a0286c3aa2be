"""Shared entry-point wrapper: user errors print one clear line and exit 2, not a traceback."""

import sys

from absl import app

from querit_jax.config_lib import ConfigError
from querit_jax.convert.publish import PublishError
from querit_jax.convert.safetensors_io import SafetensorsError
from querit_jax.data.io import DataFormatError
from querit_jax.mining.miner import MiningError
from querit_jax.mining.openai_client import GenerationError
from querit_jax.models.api import CheckpointError
from querit_jax.training.guards import NonFiniteError

USER_ERRORS = (
    ConfigError,
    DataFormatError,
    CheckpointError,
    SafetensorsError,
    FileNotFoundError,
    MiningError,
    GenerationError,
    PublishError,
    NonFiniteError,
)


def run(main) -> None:
    """`absl.app.run(main)`, reporting configuration, data and checkpoint errors as `error: ...`."""

    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped)
