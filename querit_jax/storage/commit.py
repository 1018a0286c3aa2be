"""Directories committed by a marker: readers see them complete or not at all."""

import os
import shutil

from querit_jax.storage.files import exists, remove, rmtree, write_text
from querit_jax.storage.paths import absolute, is_remote, join


def is_committed(directory, marker: str) -> bool:
    """Whether `directory` holds a complete write (its marker file exists)."""
    return exists(join(directory, marker))


class DirectoryWriter:
    """Writes a directory so that readers see it complete or not at all.

    Write the files into `writer.staging` (a location: use this module to write there), then call
    `commit(marker_text)`: the marker file is written last. Locally the staging directory is
    `<final>.tmp`, and commit replaces `<final>` by renames only (`<final>` -> `<final>.old`,
    `<final>.tmp` -> `<final>`, then `<final>.old` is deleted; a later writer first undoes a
    replacement killed half-way). On an object store the files go straight to `<final>` after its
    old marker and files are deleted. `abort()` removes what was written.
    """

    def __init__(self, final, marker: str, prepare: bool = True):
        """`prepare=False`: only compute the locations (the other processes of a collective write,
        after the one that prepared it)."""
        self.final, self.marker = absolute(final), marker
        self.remote = is_remote(self.final)
        self.old = f"{self.final}.old"
        self.staging = self.final if self.remote else f"{self.final}.tmp"
        if not prepare:
            return
        if self.remote:
            remove(join(self.final, marker))  # uncommitted from here on
            rmtree(self.final)
        else:
            _recover_previous(self.final, self.old)
            shutil.rmtree(self.staging, ignore_errors=True)
            os.makedirs(self.staging)

    def commit(self, marker_text: str) -> str:
        write_text(join(self.staging, self.marker), marker_text)
        if not self.remote:
            if os.path.lexists(self.final):
                shutil.rmtree(self.old, ignore_errors=True)
                os.replace(self.final, self.old)
            os.replace(self.staging, self.final)
            shutil.rmtree(self.old, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        rmtree(self.staging)


def _recover_previous(final: str, old: str) -> None:
    """Undoes a local replacement killed half-way: an `<final>.old` without `<final>` is the
    previous
    complete directory (moved back); one beside `<final>` was being deleted (deleted)."""
    if not os.path.lexists(old):
        return
    if os.path.lexists(final):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(old, final)
