"""Every location the package reads or writes: a local path or a `gs://` URL, through one interface.

Locations are strings everywhere (configs, manifests, flags). Local paths are made absolute (Orbax
misreads relative ones); URLs (`gs://bucket/...`, and any other fsspec scheme) go through
`etils.epath`, which reaches Cloud Storage with gcsfs (Orbax and tensorstore reach it natively).
Nothing else in the package touches a user-given location with os/open/shutil (a test checks).

Object stores have no atomic rename and no append:
  * a single file is written in one piece (`write_text`, `write_bytes`, `atomic_writer`): on a local
    disk through a temporary file and `os.replace`, on an object store as one upload, which becomes
    visible complete or not at all;
  * a directory is committed by a marker (`DirectoryWriter`): its files first, the marker (e.g. a
    checkpoint's `model.json`) last, and readers check the marker (`is_committed`). On a local disk
    the directory is staged beside its final place and moved in with renames, so an existing one is
    replaced atomically; on an object store the old marker is removed first, so a reader never takes
    half-written files for a complete directory;
  * files that grow (metrics logs) are rewritten whole.

Readers that need local files (transformers' tokenizers and configs, ArrayRecord) get a local copy
of a remote directory (`local_copy`), cached by URL and content listing. `contained` keeps names read
from manifests inside their directory, for paths and URLs alike.

Arrays (`save_array`, `load_array`, `memmap_bytes`) are .npy files and raw byte files; memory-mapping
needs a local file (take a `local_copy` of a remote one first). `stat_key` identifies a file's
version cheaply (size + modification time locally, size + generation/etag on object stores), so a
content hash computed once can be reused while the key matches.
"""

import contextlib
import fnmatch
import gzip
import hashlib
import io
import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np
from etils import epath

from querit_jax.errors import DataFormatError, StorageError


class _QuietBucketProbe(logging.Filter):
    """gcsfs probes every bucket for hierarchical namespaces and warns when it cannot (no default
    credentials, an emulator); the fallback it takes is the right one, so the warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Could not determine bucket type" not in record.getMessage()


logging.getLogger("gcsfs").addFilter(_QuietBucketProbe())


def is_remote(location) -> bool:
    """Whether `location` is a URL (gs://...) rather than a local path."""
    return "://" in os.fspath(location)


def absolute(location) -> str:
    """The location as a string: URLs unchanged, local paths absolute and user-expanded."""
    location = os.fspath(location)
    if is_remote(location):
        return location.rstrip("/") if location.count("/") > 3 else location
    return os.path.abspath(os.path.expanduser(location))


def join(location, *parts: str) -> str:
    """`location/part/...` for paths and URLs alike."""
    base = absolute(location)
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])
    return os.path.join(base, *parts)


def dirname(location) -> str:
    location = absolute(location)
    return posixpath.dirname(location) if is_remote(location) else os.path.dirname(location)


def basename(location) -> str:
    location = absolute(location)
    return posixpath.basename(location) if is_remote(location) else os.path.basename(location)


def same(a, b) -> bool:
    """Whether two locations name the same place (local symlinks resolved)."""
    a, b = absolute(a), absolute(b)
    if is_remote(a) or is_remote(b):
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


def inside(location, directory) -> bool:
    """Whether `location` lies inside `directory` (local symlinks resolved)."""
    a, b = absolute(location), absolute(directory)
    if not (is_remote(a) or is_remote(b)):
        a, b = os.path.realpath(a), os.path.realpath(b)
    return a.startswith(b.rstrip("/") + "/")


def path(location) -> epath.Path:
    return epath.Path(absolute(location))


def _fresh(location) -> None:
    """Forgets cached listings of a remote location and its parents (gcsfs keeps listings without
    expiry): files another process, or another handle, wrote since must be seen."""
    location = absolute(location)
    if is_remote(location):
        _fs(location).invalidate_cache(_strip_scheme(location))
        if location.startswith("gs://"):  # epath holds its own gcsfs instance
            epath.backend.fsspec_backend.fs(location).invalidate_cache(_strip_scheme(location))


def exists(location) -> bool:
    _fresh(location)
    return path(location).exists()


def isdir(location) -> bool:
    _fresh(location)
    return path(location).is_dir()


def isfile(location) -> bool:
    _fresh(location)
    p = path(location)
    return p.exists() and not p.is_dir()


def size(location) -> int:
    """A file's size in bytes."""
    location = absolute(location)
    if is_remote(location):
        return int(_fs(location).size(_strip_scheme(location)))
    return os.path.getsize(location)


def listdir(location) -> list[str]:
    """Names in a directory (sorted); [] when it does not exist."""
    _fresh(location)
    p = path(location)
    if not p.is_dir():
        return []
    return sorted(child.name for child in p.iterdir())


def glob(directory, pattern: str) -> list[str]:
    """Locations of the entries of `directory` whose names match `pattern` (fnmatch), sorted."""
    return [join(directory, n) for n in listdir(directory) if fnmatch.fnmatch(n, pattern)]


def makedirs(location) -> None:
    """Creates a directory and its parents (a no-op on object stores, which have none)."""
    if not is_remote(location):
        os.makedirs(absolute(location), exist_ok=True)


def remove(location) -> None:
    """Deletes a file; a missing one is fine."""
    path(location).unlink(missing_ok=True)


def rmtree(location) -> None:
    """Deletes a directory tree; a missing one is fine."""
    p = path(location)
    if is_remote(location):
        if p.exists():
            p.rmtree()
    else:
        shutil.rmtree(absolute(location), ignore_errors=True)


def files(location) -> list[str]:
    """Every file under a directory, as sorted paths relative to it ([] if it does not exist)."""
    root = absolute(location)
    if is_remote(root):
        _fresh(root)
        fs = _fs(root)
        prefix = _strip_scheme(root).rstrip("/") + "/"
        found = fs.find(_strip_scheme(root)) if fs.exists(_strip_scheme(root)) else []
        return sorted(f[len(prefix) :] for f in found if f.startswith(prefix))
    out = []
    for r, dirs, names in os.walk(root):
        dirs.sort()
        out.extend(os.path.relpath(os.path.join(r, n), root) for n in names)
    return sorted(out)


# ----- reading ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_read(location, binary: bool = False) -> Iterator[io.IOBase]:
    """Opens a file for reading (a `.gz` file is decompressed). FileNotFoundError names it."""
    p = path(location)
    try:
        raw = p.open("rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{location}: no such file.") from None
    with raw:
        stream = gzip.GzipFile(fileobj=raw) if str(location).endswith(".gz") else raw
        yield stream if binary else io.TextIOWrapper(stream, encoding="utf-8")


def read_text(location) -> str:
    with open_read(location) as f:
        return f.read()


def read_bytes(location) -> bytes:
    with open_read(location, binary=True) as f:
        return f.read()


# ----- writing ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_writer(location, binary: bool = False) -> Iterator[io.IOBase]:
    """A file that appears complete or not at all: a temporary file renamed into place (local), or
    one upload finalised on close (object stores). An exception inside leaves no file behind."""
    target = absolute(location)
    mode = "wb" if binary else "w"
    if is_remote(target):
        raw = _fs(target).open(_strip_scheme(target), "wb")
        f = raw if binary else io.TextIOWrapper(raw, encoding="utf-8")
        try:
            yield f
            f.close()  # the upload is finalised here
        except BaseException:
            raw.discard()  # never finalised: no object appears
            raise
        return
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, mode, **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(location, text: str) -> None:
    with atomic_writer(location) as f:
        f.write(text)


def write_bytes(location, data: bytes) -> None:
    with atomic_writer(location, binary=True) as f:
        f.write(data)


def copy_file(src, dst) -> None:
    """Copies one file (any storage to any storage), atomically at the destination."""
    with open_read_raw(src) as fin, atomic_writer(dst, binary=True) as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)


@contextlib.contextmanager
def open_read_raw(location) -> Iterator[io.IOBase]:
    """The file's bytes as stored (no decompression)."""
    try:
        f = path(location).open("rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{location}: no such file.") from None
    with f:
        yield f


def upload_tree(local_dir: str, location) -> None:
    """Copies a local directory's files to `location` (a path or a URL), replacing files there."""
    target = absolute(location)
    if not is_remote(target):
        shutil.copytree(local_dir, target, dirs_exist_ok=True)
        return
    for rel in files(local_dir):
        copy_file(os.path.join(local_dir, rel), join(target, rel))


def copy_tree(src, dst) -> None:
    """Copies every file of the directory `src` into `dst` (any storage to any storage; within one
    object store the copies are server-side)."""
    src, dst = absolute(src), absolute(dst)
    remote = is_remote(src) and is_remote(dst) and src.split("://")[0] == dst.split("://")[0]
    for rel in files(src):
        if remote:
            _fs(src).copy(_strip_scheme(join(src, rel)), _strip_scheme(join(dst, rel)))
        else:
            copy_file(join(src, rel), join(dst, rel))


def move(src, dst) -> None:
    """Moves a file or directory to a location that does not exist yet: a rename on a local disk, a
    copy then a delete on an object store (not atomic there: commit the enclosing directory with a
    marker)."""
    src, dst = absolute(src), absolute(dst)
    if not is_remote(src) and not is_remote(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
        return
    if isdir(src):
        copy_tree(src, dst)
        rmtree(src)
    else:
        copy_file(src, dst)
        remove(src)


@contextlib.contextmanager
def temp_dir() -> Iterator[str]:
    """A local scratch directory, deleted afterwards (e.g. for a library that only writes locally)."""
    with tempfile.TemporaryDirectory(prefix="querit_jax-") as d:
        yield d


class GrowingFile:
    """A text file that grows (a metrics log), on a local disk or an object store.

    Object stores cannot append: the content is kept in memory and `sync()` rewrites the object in
    one upload (a reader sees the previous or the new complete version), so the caller chooses how
    often the cost of a whole upload is paid. Locally lines are appended and flushed as they come and
    `sync()` has nothing left to do. `keep(line)` filters what the file already holds when it is
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


# ----- arrays ----------------------------------------------------------------------------------------


def save_array(location, array: np.ndarray) -> None:
    """Writes one array as a .npy file (never pickled), in one piece."""
    with atomic_writer(location, binary=True) as f:
        np.save(f, np.asarray(array), allow_pickle=False)


def load_array(location, mmap: bool = False) -> np.ndarray:
    """Reads a .npy file (pickled object arrays are refused); `mmap=True` maps a local file
    read-only instead of reading it (a remote one: take `local_copy` first)."""
    location = absolute(location)
    if is_remote(location):
        if mmap:
            raise StorageError(f"{location}: memory-map a local copy (storage.local_copy) instead.")
        return np.load(io.BytesIO(read_bytes(location)), allow_pickle=False)
    try:
        return np.load(location, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{location}: no such file.") from None


def memmap_bytes(location) -> np.ndarray:
    """A local file's bytes as a read-only uint8 array mapped from disk (an empty file: [])."""
    location = absolute(location)
    if is_remote(location):
        raise StorageError(f"{location}: memory-map a local copy (storage.local_copy) instead.")
    if os.path.getsize(location) == 0:
        return np.zeros(0, np.uint8)
    return np.memmap(location, dtype=np.uint8, mode="r")


def stat_key(location) -> str:
    """A cheap identifier of a file's current version: size and modification time (local), size and
    generation / etag / checksum (object stores). It changes whenever the content is rewritten."""
    location = absolute(location)
    if not is_remote(location):
        st = os.stat(location)
        return f"{st.st_size}:{st.st_mtime_ns}"
    info = _fs(location).info(_strip_scheme(location))
    fields = ("generation", "etag", "md5Hash", "crc32c", "mtime", "updated")
    version = next((info[k] for k in fields if info.get(k)), "")
    return f"{info.get('size', '')}:{version}"


# ----- local copies of remote directories -------------------------------------------------------------


def cache_root() -> str:
    """Where remote directories are copied for readers that need local files (QUERIT_JAX_CACHE, else
    ~/.cache/querit_jax)."""
    return os.environ.get("QUERIT_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "querit_jax"
    )


def local_copy(location, version: str = "") -> str:
    """A local path with the content of `location`: the path itself when local; for a URL, a copy
    in the cache keyed by the URL, the names and sizes of its files and `version` (e.g. a content
    hash the caller knows; re-used while they all match).

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
        listing = [(rel, fs.size(f"{key}/{rel}")) for rel in files(source)]
    identity = (source, listing, version) if version else (source, listing)
    digest = hashlib.sha256(repr(identity).encode()).hexdigest()[:20]
    target = os.path.join(cache_root(), "remote", digest, basename(source))
    done = os.path.join(cache_root(), "remote", digest, ".complete")
    if os.path.exists(done):
        return target
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
        shutil.rmtree(target, ignore_errors=True)
        os.replace(local, target)
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


# ----- directories committed by a marker ------------------------------------------------------------


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
    """Undoes a local replacement killed half-way: an `<final>.old` without `<final>` is the previous
    complete directory (moved back); one beside `<final>` was being deleted (deleted)."""
    if not os.path.lexists(old):
        return
    if os.path.lexists(final):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(old, final)


# ----- names read from files --------------------------------------------------------------------------


def contained(root, name: str, where: str) -> str:
    """`root/name`, or DataFormatError naming `where` if `name` is absolute or leaves `root`.

    A manifest is data, possibly from someone else: an entry such as `../../.ssh/id_rsa`, `/etc/passwd`
    or `gs://other-bucket/x` would otherwise make a reader open (or a cleaner delete) files outside the
    run's directory. Works for local paths (symlinks resolved) and URLs alike.
    """
    if not isinstance(name, str) or not name or os.path.isabs(name) or is_remote(name):
        raise DataFormatError(f"{where}: {name!r} must be a relative path inside {root}.")
    base = absolute(root)
    if is_remote(base):
        scheme, rest = base.split("://", 1)
        top = "/" + rest.rstrip("/")
        joined = posixpath.normpath(posixpath.join(top, name))
        inside = joined == top or joined.startswith(top + "/")
        resolved = f"{scheme}://{joined.lstrip('/')}"
    else:
        real = os.path.realpath(base)
        resolved = os.path.realpath(os.path.join(real, name))
        inside = os.path.commonpath([real, resolved]) == real
    if not inside:
        raise DataFormatError(f"{where}: {name!r} points outside {root}; refusing to read it.")
    return resolved


# ----- internals ---------------------------------------------------------------------------------------


def _strip_scheme(url: str) -> str:
    return url.split("://", 1)[1]


def _fs(url: str):
    """The fsspec filesystem of a URL (gcsfs for gs://)."""
    import fsspec

    scheme = url.split("://", 1)[0]
    try:
        return fsspec.filesystem(scheme)
    except (ImportError, ValueError) as e:
        raise StorageError(
            f"{url}: no filesystem for {scheme}:// ({e}); install gcsfs for gs:// locations."
        ) from None
