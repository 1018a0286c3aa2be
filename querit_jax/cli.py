"""Shared entry-point wrapper: user errors print one clear line and exit 2, not a traceback."""

import re
import sys

from absl import app, flags

from querit_jax.errors import USER_ERRORS


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with bad flags and config overrides reported as one `error:` line.

    A misspelt `--config.a.b=v` raises AttributeError from inside ml_collections (with its "did
    you mean"), a wrong type a flags.Error; both become `error: ...` and exit 2.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e}. Pass --helpfull to list the flags.")
    except (AttributeError, KeyError) as e:  # ml_collections: an override naming no field
        text = str(e).replace("\\n", "\n").replace("\\'", "'")
        key = re.search(r"'([^'\n]+)'", text)
        hint = re.search(r'Did you mean "[^"]*" instead of "[^"]*"\?', text)
        overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        _fail(
            f"config override {', '.join(overrides) or ''}: no field "
            f"{key.group(1) if key else text!r}"
            f" in the config{'; ' + hint.group(0) if hint else '.'}"
        )


def run(main) -> None:
    """`absl.app.run(main)`, reporting configuration, data and checkpoint errors as `error: ...`."""

    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            _fail(str(e))

    app.run(wrapped, flags_parser=_parse_flags)
