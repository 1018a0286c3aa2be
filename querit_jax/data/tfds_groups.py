"""A TFDS builder that turns training-group JSONL into ArrayRecord, read back with the data-source
API.

TensorFlow is never imported: the builder constructs its `DatasetInfo` directly and is prepared from
Python (`download_and_prepare`), the `tfds build` CLI and `tfds.load` need TensorFlow (see
../shared/notes/libraries.md §1). Prepared data lives in a directory keyed by the content hash of
the input files, so a changed input is rebuilt and an unchanged one is reused. The directory may be
a bucket: the dataset is then built locally, uploaded once and read through local copies, so several
hosts share one build.

A mined group (`data.mined`) is stored by its documents' docstore rows, not their texts: `"store"`
is the index of its docstore in the training data's manifest (-1: the texts are in `"pos"` and
`"neg"`), `"pos_rows"`/`"neg_rows"` its documents' rows there. The input pipeline joins the texts
(`data.pipeline`), so the dataset's size does not depend on the documents' lengths.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from querit_jax import storage
from querit_jax.data.groups import read_groups
from querit_jax.data.io import fingerprint

_FEATURES = {
    "query": tfds.features.Text(),
    "pos": tfds.features.Sequence(tfds.features.Text()),
    "neg": tfds.features.Sequence(tfds.features.Text()),
    "pos_scores": tfds.features.Sequence(np.float32),
    "neg_scores": tfds.features.Sequence(np.float32),
    "has_scores": np.bool_,
    "lang": tfds.features.Text(),
    "qid": tfds.features.Text(),
    "store": np.int32,  # docstore of a mined group (rows below), -1: texts in pos / neg
    "pos_rows": tfds.features.Sequence(np.int64),
    "neg_rows": tfds.features.Sequence(np.int64),
}


class _GroupsInfo(tfds.core.DatasetInfo):
    """The builder's `DatasetInfo`, minus the look-up of precomputed metadata in TFDS's public
    bucket (a fresh build's info would otherwise make an empty `tmp*tfds` temp directory, left
    behind each time, before finding GCS access disabled): these datasets are never there."""

    def initialize_from_bucket(self) -> None:
        return None


class QueritGroups(tfds.core.GeneratorBasedBuilder):
    """Listwise training groups (query, positives, negatives, optional teacher scores)."""

    VERSION = tfds.core.Version("1.1.0")  # 1.1: mined groups by docstore row
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place <split>.jsonl group files (FlagEmbedding format) in manual_dir."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return _GroupsInfo(builder=self, features=tfds.features.FeaturesDict(_FEATURES))

    def _split_generators(self, dl_manager):
        root = dl_manager.manual_dir
        splits = sorted(
            p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl")
        )
        return {split: self._generate_examples(root / f"{split}.jsonl") for split in splits}

    def _generate_examples(self, path):
        for i, g in enumerate(read_groups(os.fspath(path), strict=True, ids=True)):
            has = "pos_scores" in g and "neg_scores" in g
            by_row = "store" in g  # a mined group: documents by docstore row
            pos, neg = (g["pos_rows"], g["neg_rows"]) if by_row else (g["pos"], g["neg"])
            yield (
                i,
                {
                    "query": g["query"],
                    "pos": [] if by_row else pos,
                    "neg": [] if by_row else neg,
                    "pos_scores": np.asarray(g.get("pos_scores", [0.0] * len(pos)), np.float32),
                    "neg_scores": np.asarray(g.get("neg_scores", [0.0] * len(neg)), np.float32),
                    "has_scores": has,
                    "lang": g.get("lang", ""),
                    "qid": g.get("qid", str(i)),
                    "store": g["store"] if by_row else -1,
                    "pos_rows": np.asarray(pos if by_row else [], np.int64),
                    "neg_rows": np.asarray(neg if by_row else [], np.int64),
                },
            )


MARKER = "QUERIT_GROUPS_COMPLETE"  # written last into an uploaded build: the build is complete


def build_groups(splits: dict[str, str], cache_dir: str, key: str | None = None) -> str:
    """Builds (or reuses) the ArrayRecord dataset for {split name: groups JSONL location}.

    The dataset goes to `cache_dir/<key>`, which it returns; `key` identifies the inputs' content
    (default: the first 16 hex digits of their SHA-256, which reads them all). `cache_dir` may
    be local or a URL: TFDS writes local files only, so for a URL the dataset is built in a local
    scratch directory and uploaded, a marker file last (`storage.DirectoryWriter`). Read it with
    `open_groups` (which copies a remote one to the local cache).
    """
    for split, location in splits.items():
        if not storage.isfile(location):
            raise FileNotFoundError(
                f"Training groups for split {split!r}: {location} does not exist."
            )
    key = key or fingerprint([splits[s] for s in sorted(splits)])[:16]
    final = storage.join(cache_dir, key)
    if not storage.is_remote(final):
        if not _builder(final).is_prepared():
            _build(splits, final)
        return final
    if not storage.is_committed(final, MARKER):
        with storage.scratch_dir("tfds") as local:
            _build(splits, local)
            writer = storage.DirectoryWriter(final, MARKER)
            storage.upload_tree(local, writer.staging)
            writer.commit(key)
    return final


def open_groups(location: str) -> QueritGroups:
    """The prepared builder of a dataset written by `build_groups` (a remote one is read through a
    local copy: ArrayRecord reads local files). `builder.as_data_source(split)` gives random
    access."""
    if storage.is_remote(location) and not storage.is_committed(location, MARKER):
        raise FileNotFoundError(f"{location}: no complete training-group dataset there.")
    builder = _builder(storage.local_copy(location))
    if not builder.is_prepared():
        raise FileNotFoundError(f"{location}: no prepared training-group dataset there.")
    return builder


def prepare_groups(splits: dict[str, str], cache_dir: str) -> QueritGroups:
    """`build_groups` then `open_groups`: the prepared builder, for one process."""
    return open_groups(build_groups(splits, cache_dir))


def _builder(data_dir: str) -> QueritGroups:
    return QueritGroups(data_dir=data_dir, file_format="array_record")


def _build(splits: dict[str, str], data_dir: str) -> None:
    """Prepares the dataset in the local directory `data_dir` (the groups files may be remote)."""
    tfds.disable_progress_bar()
    manual = f"{data_dir}.manual"
    for split, location in splits.items():
        storage.copy_file(location, storage.join(manual, f"{split}.jsonl"))
    _builder(data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual)
    )
    storage.rmtree(manual)
