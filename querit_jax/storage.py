"""Paths read from files (manifests, checkpoints) must stay inside the directory that holds them.

A manifest is data, possibly from someone else: an entry such as `../../.ssh/id_rsa` or `/etc/passwd`
would otherwise make a reader open (or a cleaner delete) files outside the run's directory.
"""

import os

from querit_jax.errors import DataFormatError


def contained(root: str, name: str, where: str) -> str:
    """`root/name`, or DataFormatError naming `where` if `name` is absolute or leaves `root`."""
    if not isinstance(name, str) or not name or os.path.isabs(name):
        raise DataFormatError(f"{where}: {name!r} must be a relative path inside {root}.")
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, name))
    if os.path.commonpath([base, path]) != base:
        raise DataFormatError(f"{where}: {name!r} points outside {root}; refusing to read it.")
    return path
