"""A docstore: a corpus's texts on disk, read by row or by document id without holding the corpus.

Built once per corpus by streaming its files (a BEIR `corpus.jsonl(.gz)`, or the
`corpus/*.jsonl(.gz)` shards of MIRACL) one line at a time, and stored as a directory committed by
its marker:

    docstore.json    marker, written last: documents, corpus files with their `storage.stat_key`s
                     and the corpus SHA-256 (the bytes hashed while they were read: never again),
                     the skipped documents (empty, no id, duplicate id: the first copy is kept)
    texts.bin        UTF-8 texts back to back, each `(title + " " + text).strip()` (BEIR's join)
    offsets.npy      int64 [N + 1]: text i is texts.bin[offsets[i]:offsets[i + 1]]
    ids.bin          the document ids, the same way (id_offsets.npy)
    id_hash.npy      uint64 [N]: 64-bit BLAKE2b of each id, sorted; id_row.npy: their rows

A reader memory-maps the files (a gs:// docstore through one local copy per host, cached by URL and
corpus hash), so a process's memory holds only what it reads. Row numbers are the order of first
appearance in the corpus files; retrieval indexes (`retrieval.bm25`, `retrieval.dense`) and mined
groups refer to documents by these rows and ids. `JoinTexts` is the training pipeline's step that
turns the rows of sampled mined groups into texts (`data.pipeline`).
"""

import array
import gzip
import hashlib
import io
import json
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from querit_jax import storage
from querit_jax.data.beir import doc_text, iter_corpus
from querit_jax.data.io import ReadReport, read_json
from querit_jax.errors import DataFormatError

MARKER = "docstore.json"
FORMAT = "querit_jax.docstore"
VERSION = 1
_FLUSH = 1 << 22  # bytes buffered before a write


def id_hash(doc_id: str) -> int:
    """The stable 64-bit hash of a document id (the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little")


def corpus_stat(paths: Sequence[str]) -> list[list[str]]:
    """[[file name, stat key], ...]: says, without reading them, whether the files changed."""
    return [[storage.basename(p), storage.stat_key(p)] for p in paths]


class _Hashing(io.RawIOBase):
    """A raw byte stream that feeds every byte it reads into a hash (one pass: read and hash)."""

    def __init__(self, raw, digest):
        self.raw, self.digest = raw, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)


class _Column:
    """Strings written back to back into one file, with their int64 offsets."""

    def __init__(self, writer):
        self.writer, self.buffer = writer, bytearray()
        self.offsets = array.array("q", [0])

    def add(self, text: str) -> None:
        data = text.encode("utf-8")
        self.buffer += data
        self.offsets.append(self.offsets[-1] + len(data))
        if len(self.buffer) >= _FLUSH:
            self.flush()

    def flush(self) -> None:
        self.writer.write(bytes(self.buffer))
        self.buffer.clear()


class _SeenHashes:
    """The id hashes a docstore being built already holds: all but the latest `chunk` in one sorted
    uint64 array, the latest in a set, merged into the array (linearly) when it fills. 8 bytes a
    document (plus one chunk), where one set of them all takes ~60 (Python ints): ~600 MB at 10M
    documents."""

    def __init__(self, chunk: int):
        self.old, self.new, self.chunk = np.zeros(0, np.uint64), set(), chunk

    def add(self, h: int) -> bool:
        """Adds `h`; False if it was there already."""
        if h in self.new:
            return False
        if self.old.size:
            key = np.uint64(h)
            at = int(np.searchsorted(self.old, key))
            if at < self.old.size and self.old[at] == key:
                return False
        self.new.add(h)
        if len(self.new) >= self.chunk:
            fresh = np.sort(np.fromiter(self.new, np.uint64, len(self.new)))
            self.old = np.insert(self.old, np.searchsorted(self.old, fresh), fresh)
            self.new = set()
        return True


SEEN_CHUNK = 1 << 20  # id hashes kept in a set before they join the sorted array


def build(
    paths: Sequence[str], location: str, strict: bool = False, log=None, every: int = 1_000_000
) -> "DocStore":
    """Streams the corpus files into a docstore at `location` (local or gs://) and opens it.

    Raises:
      DataFormatError: no usable document, or (strict) the first bad line, naming file and line.
    """
    report, digest, seen = ReadReport(), hashlib.sha256(), _SeenHashes(SEEN_CHUNK)
    hashes = array.array("Q")
    writer = storage.DirectoryWriter(location, MARKER)
    texts_path, ids_path = (storage.join(writer.staging, n) for n in ("texts.bin", "ids.bin"))
    with (
        storage.atomic_writer(texts_path, binary=True) as ftexts,
        storage.atomic_writer(ids_path, binary=True) as fids,
    ):
        texts, ids = _Column(ftexts), _Column(fids)
        for path in paths:
            digest.update(storage.basename(path).encode())
            with storage.open_read_raw(path) as raw:
                hashing = _Hashing(raw, digest)
                buffered = io.BufferedReader(hashing, 1 << 20)
                stream = gzip.GzipFile(fileobj=buffered) if path.endswith(".gz") else buffered
                lines = io.TextIOWrapper(stream, encoding="utf-8")
                for doc_id, title, text, where in iter_corpus(path, strict, report, stream=lines):
                    h = id_hash(doc_id)
                    if not seen.add(h):
                        report.skip(where, f"duplicate document id {doc_id!r}.", strict)
                        continue
                    hashes.append(h)
                    texts.add(doc_text(title, text))
                    ids.add(doc_id)
                    if log and len(hashes) % every == 0:
                        log(f"docstore: {len(hashes)} documents read")
                while buffered.read(1 << 20):  # bytes after the last line still count in the hash
                    pass
        texts.flush()
        ids.flush()
    del seen
    if not hashes:
        writer.abort()
        raise DataFormatError(f"{', '.join(paths)}: the corpus has no documents.")
    hash_array = np.frombuffer(hashes, np.uint64)
    order = np.argsort(hash_array, kind="stable")
    storage.save_array(
        storage.join(writer.staging, "offsets.npy"), np.frombuffer(texts.offsets, np.int64)
    )
    storage.save_array(
        storage.join(writer.staging, "id_offsets.npy"), np.frombuffer(ids.offsets, np.int64)
    )
    storage.save_array(storage.join(writer.staging, "id_hash.npy"), hash_array[order])
    storage.save_array(storage.join(writer.staging, "id_row.npy"), order.astype(np.int64))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "documents": len(hashes),
        "text_bytes": int(texts.offsets[-1]),
        "corpus": {"files": corpus_stat(paths), "sha256": digest.hexdigest()},
        "skipped": report.skipped,
        "skipped_reasons": report.reasons[:5],
    }
    writer.commit(json.dumps(meta, indent=2) + "\n")
    return DocStore(location)


def read_meta(location: str) -> dict | None:
    """The marker of a committed docstore at `location`, or None."""
    marker = storage.join(location, MARKER)
    if not storage.exists(marker):
        return None
    meta = read_json(marker)
    return meta if meta.get("format") == FORMAT and meta.get("version") == VERSION else None


def is_current(location: str, paths: Sequence[str]) -> bool:
    """Whether `location` holds a docstore of exactly these corpus files, unchanged since (by their
    stat keys: no byte of the corpus is read)."""
    meta = read_meta(location)
    return bool(meta) and meta["corpus"]["files"] == corpus_stat(paths)


class DocStore:
    """Random access to a built docstore (memory-mapped; one local copy of a remote one)."""

    def __init__(self, location: str):
        self.location = storage.absolute(location)
        meta = read_meta(self.location)
        if meta is None:
            raise DataFormatError(
                f"{location}: no docstore ({MARKER} missing or of another format)."
            )
        self.meta = meta
        local = storage.local_copy(self.location, version=meta["corpus"]["sha256"])
        self._texts = storage.memmap_bytes(storage.join(local, "texts.bin"))
        self._ids = storage.memmap_bytes(storage.join(local, "ids.bin"))
        self._offsets = storage.load_array(storage.join(local, "offsets.npy"), mmap=True)
        self._id_offsets = storage.load_array(storage.join(local, "id_offsets.npy"), mmap=True)
        self._hash = storage.load_array(storage.join(local, "id_hash.npy"), mmap=True)
        self._row = storage.load_array(storage.join(local, "id_row.npy"), mmap=True)

    @property
    def sha256(self) -> str:
        """The corpus's SHA-256 (computed once, at build time)."""
        return self.meta["corpus"]["sha256"]

    def __len__(self) -> int:
        return int(self.meta["documents"])

    @staticmethod
    def _get(data, offsets, row: int) -> str:
        return bytes(data[int(offsets[row]) : int(offsets[row + 1])]).decode("utf-8")

    def text(self, row: int) -> str:
        return self._get(self._texts, self._offsets, row)

    def texts(self, rows: Sequence[int]) -> list[str]:
        return [self._get(self._texts, self._offsets, r) for r in rows]

    def doc_id(self, row: int) -> str:
        return self._get(self._ids, self._id_offsets, row)

    def ids(self, rows: Sequence[int]) -> list[str]:
        return [self._get(self._ids, self._id_offsets, r) for r in rows]

    def row(self, doc_id: str) -> int | None:
        """The row of a document id, or None when the corpus has no such document."""
        h = np.uint64(id_hash(doc_id))
        i = int(np.searchsorted(self._hash, h))
        while i < len(self._hash) and self._hash[i] == h:
            row = int(self._row[i])
            if self.doc_id(row) == doc_id:
                return row
            i += 1
        return None

    def iter_texts(
        self, chunk: int = 10_000, start: int = 0, stop: int | None = None
    ) -> Iterator[list[str]]:
        """The texts of rows [start, stop) in lists of `chunk` (for index builds)."""
        stop = len(self) if stop is None else stop
        for a in range(start, stop, chunk):
            yield self.texts(range(a, min(a + chunk, stop)))


def open_checked(location: str, sha256: str, where: str) -> DocStore:
    """The docstore at `location`, which must still hold the corpus `sha256` (its rows are what
    `where` refers to).

    Raises:
      DataFormatError: missing, or rebuilt from another corpus since (says what to do).
    """
    if read_meta(location) is None:
        raise DataFormatError(
            f"{where}: the training groups name documents of the docstore {location}, which is "
            f"missing ({MARKER} not found). Keep the mining output (and its index/) where it was "
            "mined, or delete the training data (<workdir>/data) to rebuild it."
        )
    store = DocStore(location)
    if store.sha256 != sha256:
        raise DataFormatError(
            f"{where}: the docstore {location} now holds another corpus (sha256 {store.sha256[:12]}"
            f", the training data was built from {sha256[:12]}); delete the training data "
            "(<workdir>/data) to rebuild it."
        )
    return store


class JoinTexts:
    """Grain map over a list of sampled groups: a group whose "docs" are docstore rows (`"store"`:
    k >= 0, the k-th of `locations`) gets their texts; text groups (`"store"` -1) pass unchanged.

    Each worker opens a docstore when it first needs it (memory-mapped, so only the rows read are
    paged in) and keeps it; pickling (to a worker process) carries only the locations.
    """

    def __init__(self, locations: Sequence[str]):
        self.locations = tuple(locations)
        self._stores: dict[int, DocStore] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"locations": self.locations}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["locations"])

    def _store(self, k: int) -> DocStore:
        with self._lock:
            if k not in self._stores:
                self._stores[k] = DocStore(self.locations[k])
            return self._stores[k]

    def __call__(self, groups: list[dict]) -> list[dict]:
        return [
            {**g, "docs": self._store(g["store"]).texts(g["docs"])} if g["store"] >= 0 else g
            for g in groups
        ]
