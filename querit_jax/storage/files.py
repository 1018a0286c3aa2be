"""Files and trees at any location: listing, reading, one-piece writes, copies, moves, arrays."""

import contextlib
import fnmatch
import gzip
import io
import os
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np

from querit_jax.errors import StorageError
from querit_jax.storage.paths import _fresh, _fs, _strip_scheme, absolute, is_remote, join, path


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


# ----- reading
# ---------------------------------------------------------------------------------------


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


# ----- writing
# ---------------------------------------------------------------------------------------


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
    """A local scratch directory, deleted afterwards (e.g. for a library that only writes
    locally)."""
    with tempfile.TemporaryDirectory(prefix="querit_jax-") as d:
        yield d


# ----- arrays
# ----------------------------------------------------------------------------------------


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


_VERSION_FIELDS = ("generation", "etag", "md5Hash", "crc32c", "mtime", "updated")


def _info_key(info: dict) -> str:
    """The stat key of an object store's file information (fsspec `info` / detailed `ls`)."""
    version = next((info[k] for k in _VERSION_FIELDS if info.get(k)), "")
    return f"{info.get('size', '')}:{version}"


def _local_key(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def stat_key(location) -> str:
    """A cheap identifier of a file's current version: size and modification time (local), size and
    generation / etag / checksum (object stores). It changes whenever the content is rewritten."""
    location = absolute(location)
    if not is_remote(location):
        return _local_key(os.stat(location))
    return _info_key(_fs(location).info(_strip_scheme(location)))


def stat_keys(directory) -> dict[str, str]:
    """{name: `stat_key`} of the files directly in `directory`, from one listing (an object store
    lists a thousand objects per request, where `stat_key` asks once per file)."""
    directory = absolute(directory)
    if not is_remote(directory):
        with os.scandir(directory) as entries:
            return {e.name: _local_key(e.stat()) for e in entries if e.is_file()}
    _fresh(directory)
    listing = _fs(directory).ls(_strip_scheme(directory), detail=True)
    return {
        info["name"].rstrip("/").rsplit("/", 1)[-1]: _info_key(info)
        for info in listing
        if info.get("type") == "file"
    }
