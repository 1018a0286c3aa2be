"""Local stand-ins for remote locations: cached copies, scratch space, files mirrored by upload."""

import contextlib
import fnmatch
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator

from querit_jax.storage.files import copy_file, exists, files, read_text, write_text
from querit_jax.storage.paths import _fs, _strip_scheme, absolute, basename, is_remote, join


class GrowingFile:
    """A text file that grows (a metrics log), on a local disk or an object store.

    Object stores cannot append: the content is kept in memory and `sync()` rewrites the object in
    one upload (a reader sees the previous or the new complete version), so the caller chooses how
    often the cost of a whole upload is paid. Locally lines are appended and flushed as they come
    and `sync()` has nothing left to do. `keep(line)` filters what the file already holds when it is
    opened (e.g. the rows of steps a resumed run is about to write again).
    """

    def __init__(self, location, keep=None):
        self.location = absolute(location)
        self.remote = is_remote(self.location)
        lines = read_text(self.location).splitlines(keepends=True) if exists(self.location) else []
        kept = [line for line in lines if keep is None or keep(line)]
        if kept and not kept[-1].endswith("\n"):
            kept[-1] += "\n"  # a line cut by a crash was kept: later lines must not join it
        self._dirty = False
        if self.remote:
            self._content = io.StringIO("".join(kept))
            self._content.seek(0, io.SEEK_END)
        else:
            if kept != lines:
                write_text(self.location, "".join(kept))
            os.makedirs(os.path.dirname(self.location), exist_ok=True)
            self._file = open(self.location, "a", encoding="utf-8")

    def write(self, text: str) -> None:
        if self.remote:
            self._content.write(text)
            self._dirty = True
        else:
            self._file.write(text)
            self._file.flush()

    def sync(self) -> None:
        """Makes everything written so far visible at the location."""
        if self.remote and self._dirty:
            write_text(self.location, self._content.getvalue())
            self._dirty = False

    def close(self) -> None:
        self.sync()
        if not self.remote:
            self._file.close()


class UploadedDir:
    """A local directory for a library that writes only local files (e.g. TensorBoard's event
    writer), mirrored to `location`.

    For a local location, `local` is the location itself. For a URL, `local` is a fresh directory
    under cache_root() and `sync()` uploads every file whose size changed since the last sync, whole
    (object stores cannot append); `close()` syncs and deletes the local directory. Files are only
    added or rewritten at the location, never deleted.
    """

    def __init__(self, location):
        self.location = absolute(location)
        self.remote = is_remote(self.location)
        if self.remote:
            parent = _ensure(os.path.join(cache_root(), "scratch"))
            self.local = tempfile.mkdtemp(prefix="upload-", dir=parent)
        else:
            self.local = _ensure(self.location)
        self._sizes: dict[str, int] = {}

    def sync(self) -> None:
        if not self.remote:
            return
        for rel in files(self.local):
            size = os.path.getsize(os.path.join(self.local, rel))
            if self._sizes.get(rel) != size:
                copy_file(os.path.join(self.local, rel), join(self.location, rel))
                self._sizes[rel] = size

    def close(self) -> None:
        self.sync()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(name: str = "tmp") -> Iterator[str]:
    """A fresh local directory under cache_root() (not the system's temporary directory: large
    scratch data, e.g. a dataset built before its upload, goes where the caches go), deleted
    afterwards."""
    parent = _ensure(os.path.join(cache_root(), "scratch"))
    d = tempfile.mkdtemp(prefix=f"{name}-", dir=parent)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def cache_root() -> str:
    """Where remote directories are copied for readers that need local files (QUERIT_JAX_CACHE, else
    ~/.cache/querit_jax)."""
    return os.environ.get("QUERIT_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "querit_jax"
    )


def local_copy(location, version: str = "", skip: tuple[str, ...] = ()) -> str:
    """A local path with the content of `location`: the path itself when local; for a URL, a copy
    in the cache keyed by the URL, the names and sizes of its files and `version` (e.g. a content
    hash the caller knows; re-used while they all match). `skip`: file name patterns (fnmatch, on
    the last path part) a remote directory's copy leaves out (e.g. the weights, for a reader of
    its configuration only).

    Raises:
      FileNotFoundError: when the location does not exist.
    """
    source = absolute(location)
    if not is_remote(source):
        return source
    fs, key = _fs(source), _strip_scheme(source)
    if not fs.exists(key):
        raise FileNotFoundError(f"{source}: no such file or directory.")
    if not fs.isdir(key):
        listing = [(basename(source), fs.size(key))]
    else:
        listing = [
            (rel, fs.size(f"{key}/{rel}"))
            for rel in files(source)
            if not any(fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pattern) for pattern in skip)
        ]
    identity = (source, listing, version) if version else (source, listing)
    digest = hashlib.sha256(repr(identity).encode()).hexdigest()[:20]
    target = os.path.join(cache_root(), "remote", digest, basename(source))
    done = os.path.join(cache_root(), "remote", digest, ".complete")
    if os.path.exists(done):
        return target
    if os.path.lexists(target):  # a copy killed before its marker: incomplete
        shutil.rmtree(target, ignore_errors=True)
    staging = tempfile.mkdtemp(
        prefix=".staging-", dir=_ensure(os.path.join(cache_root(), "remote"))
    )
    try:
        local = os.path.join(staging, basename(source))
        if fs.isdir(key):
            for rel, _ in listing:
                copy_file(join(source, rel), os.path.join(local, rel))
        else:
            copy_file(source, local)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.replace(local, target)
        except OSError:
            # Another process (another host's worker on a shared cache, or a test's subprocess)
            # put the same content in place first: keep theirs, discard ours.
            if not os.path.exists(target):
                raise
        with open(done, "w") as f:
            f.write(source)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _ensure(directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    return directory


def local_scratch(location, name: str) -> str:
    """A local directory for work files that belong to `location` (e.g. a TFDS build before its
    upload): `location/name` itself when local, else a directory in the cache keyed by the URL."""
    target = absolute(location)
    if not is_remote(target):
        return _ensure(os.path.join(target, name))
    digest = hashlib.sha256(target.encode()).hexdigest()[:20]
    return _ensure(os.path.join(cache_root(), "scratch", digest, name))
