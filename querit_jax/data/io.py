"""Line-oriented readers that report bad input by file and line, never deep inside a jit.

Every reader takes `strict`: True raises `DataFormatError` at the first bad row; False skips bad
rows, counts them in a `ReadReport` that callers log and write into manifests.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator

from querit_jax import storage
from querit_jax.errors import DataFormatError


@dataclasses.dataclass
class ReadReport:
    """What a reader saw: rows read and rows skipped (with the first few reasons)."""

    rows: int = 0
    skipped: int = 0
    reasons: list[str] = dataclasses.field(default_factory=list)

    def skip(self, where: str, reason: str, strict: bool) -> None:
        if strict:
            raise DataFormatError(f"{where}: {reason}")
        self.skipped += 1
        if len(self.reasons) < 20:
            self.reasons.append(f"{where}: {reason}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def open_text(path):
    """Opens a text file (local or gs://) for reading, transparently gunzipping `.gz`."""
    return storage.open_read(path)


def iter_jsonl(
    path, report: ReadReport | None = None, strict: bool = True
) -> Iterator[tuple[int, dict]]:
    """Yields (line number, object) for every non-blank line of a JSONL file.

    Raises:
      DataFormatError: `path:line: ...` for invalid JSON or a line that is not a JSON object
      (strict).
    """
    report = report if report is not None else ReadReport()
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                report.skip(
                    f"{path}:{lineno}", f"invalid JSON ({e.msg} at column {e.colno}).", strict
                )
                continue
            if not isinstance(obj, dict):
                report.skip(
                    f"{path}:{lineno}", f"expected a JSON object, got {type(obj).__name__}.", strict
                )
                continue
            report.rows += 1
            yield lineno, obj


def write_jsonl(path, rows, digest=None) -> None:
    """Writes rows as UTF-8 JSONL in one piece (a reader never sees half a file); `digest` (a
    hashlib object) is fed every byte written."""
    with storage.atomic_writer(path) as f:
        for row in rows:
            line = json.dumps(row, ensure_ascii=False) + "\n"
            if digest is not None:
                digest.update(line.encode("utf-8"))
            f.write(line)


def write_json(path, obj, indent: int = 2) -> None:
    """Writes JSON in one piece."""
    storage.write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def read_json(path):
    """Reads a JSON file; errors name the file."""
    with open_text(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg}).") from None


def fingerprint(paths) -> str:
    """SHA-256 over the names and bytes of the given files, and of every file under given
    directories (local or gs://)."""
    h = hashlib.sha256()
    for location in [paths] if isinstance(paths, str | os.PathLike) else paths:
        location = os.fspath(location)
        if storage.isdir(location):
            parent = storage.basename(location)
            entries = [
                (storage.join(location, rel), f"{parent}/{rel}") for rel in storage.files(location)
            ]
        else:
            entries = [(location, storage.basename(location))]
        for full, name in entries:
            h.update(name.encode())
            with storage.open_read_raw(full) as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()
