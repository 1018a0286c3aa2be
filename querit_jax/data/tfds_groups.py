"""A TFDS builder that turns training-group JSONL into ArrayRecord, read back with the data-source API.

TensorFlow is never imported: the builder constructs its `DatasetInfo` directly and is prepared from
Python (`download_and_prepare`), the `tfds build` CLI and `tfds.load` need TensorFlow (see
../shared/notes/libraries.md §1). Prepared data lives in a directory keyed by the content hash of the
input files, so a changed input is rebuilt and an unchanged one is reused.
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
}


class QueritGroups(tfds.core.GeneratorBasedBuilder):
    """Listwise training groups (query, positives, negatives, optional teacher scores)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place <split>.jsonl group files (FlagEmbedding format) in manual_dir."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(_FEATURES))

    def _split_generators(self, dl_manager):
        root = dl_manager.manual_dir
        splits = sorted(
            p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl")
        )
        return {split: self._generate_examples(root / f"{split}.jsonl") for split in splits}

    def _generate_examples(self, path):
        for i, g in enumerate(read_groups(os.fspath(path), strict=True)):
            has = "pos_scores" in g and "neg_scores" in g
            yield (
                i,
                {
                    "query": g["query"],
                    "pos": g["pos"],
                    "neg": g["neg"],
                    "pos_scores": np.asarray(
                        g.get("pos_scores", [0.0] * len(g["pos"])), np.float32
                    ),
                    "neg_scores": np.asarray(
                        g.get("neg_scores", [0.0] * len(g["neg"])), np.float32
                    ),
                    "has_scores": has,
                    "lang": g.get("lang", ""),
                    "qid": g.get("qid", str(i)),
                },
            )


def prepare_groups(splits: dict[str, str], cache_dir: str) -> QueritGroups:
    """Builds (or reuses) the ArrayRecord dataset for {split name: groups JSONL location}.

    `cache_dir` is a local directory (ArrayRecord files are written and read through the local file
    system); the groups files may be local or gs://. Returns the prepared builder;
    `builder.as_data_source(split)` gives random access.
    """
    for split, location in splits.items():
        if not storage.isfile(location):
            raise FileNotFoundError(
                f"Training groups for split {split!r}: {location} does not exist."
            )
    key = fingerprint([splits[s] for s in sorted(splits)])[:16]
    builder = QueritGroups(data_dir=storage.join(cache_dir, key), file_format="array_record")
    if not builder.is_prepared():
        tfds.disable_progress_bar()
        manual = storage.join(cache_dir, f"{key}.manual")
        for split, location in splits.items():
            storage.copy_file(location, storage.join(manual, f"{split}.jsonl"))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual)
        )
        storage.rmtree(manual)
    return builder
