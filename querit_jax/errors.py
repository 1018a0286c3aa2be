"""Every user-facing error type, in one place.

The command-line wrapper (`querit_jax.cli`) turns each of these into one `error: ...` line and exit
status 2; anything else is a bug and keeps its traceback. Every message names what is wrong (the
config field, the file and line, the checkpoint key, the URL) and, where it can, what to do.
"""


class QueritError(Exception):
    """Base of the errors a user can fix (bad config, data, checkpoint, location, server)."""


class ConfigError(QueritError, ValueError):
    """An invalid configuration; the message names the field."""


class DataFormatError(QueritError, ValueError):
    """Malformed input data; the message names the file and line."""


class PackingError(DataFormatError):
    """A pair longer than a packed row, or a fixed row count that cannot hold a batch (the message
    says what to change); training's own steps never raise it (data/packing.py)."""


class CheckpointError(QueritError, ValueError):
    """A path that is not a usable model checkpoint; the message names the path and the key."""


class SafetensorsError(QueritError, ValueError):
    """A safetensors file that is malformed or unsafe; the message names the file and the tensor."""


class StorageError(QueritError, OSError):
    """A location that cannot be read or written (missing, outside its root, unreachable)."""


class MiningError(QueritError, ValueError):
    """A mining run that cannot proceed (the message says why and what to do)."""


class GenerationError(QueritError, RuntimeError):
    """A generation request that failed for good (the message never contains the API key)."""


class PublishError(QueritError):
    """An export that must not be published, or a push that failed."""


class NonFiniteError(QueritError, RuntimeError):
    """Training stopped after too many consecutive non-finite steps."""


# What `cli.run` reports as one line. FileNotFoundError is there for paths given on the command
# line.
USER_ERRORS = (QueritError, FileNotFoundError)
