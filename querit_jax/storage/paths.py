"""Locations as strings: local paths absolute, URLs kept; joins, containment, the filesystem."""

import logging
import os
import posixpath

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


# ----- names read from files
# --------------------------------------------------------------------------


def contained(root, name: str, where: str) -> str:
    """`root/name`, or DataFormatError naming `where` if `name` is absolute or leaves `root`.

    A manifest is data, possibly from someone else: an entry such as `../../.ssh/id_rsa`,
    `/etc/passwd` or `gs://other-bucket/x` would otherwise make a reader open (or a cleaner delete)
    files outside the run's directory. Works for local paths (symlinks resolved) and URLs alike.
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


# ----- internals
# ---------------------------------------------------------------------------------------


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
