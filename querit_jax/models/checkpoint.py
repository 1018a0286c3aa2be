"""The self-describing querit_jax model checkpoint: save and restore.

A model checkpoint is a directory

    model.json   {"format": "querit_jax.model", "family", "backbone", "head", "template", "max_length", ...}
    params/      Orbax (OCDBT) checkpoint of the parameter tree
    tokenizer/   the tokenizer files (tokenizer.json, tokenizer_config.json, ...)

so `rerank`, `evaluate`, `merge` and `export_hf.py` need nothing but the path. Loading any model
location (a checkpoint, a training workdir, a Hugging Face directory) is `querit_jax.loading`'s job.
"""

import json

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from querit_jax import storage
from querit_jax.errors import CheckpointError
from querit_jax.models.spec import ModelSpec, check_shapes, flatten

MARKER = "model.json"  # written last: a directory without it is not a (complete) checkpoint


def save_model(
    path: str, spec: ModelSpec, params: dict, tokenizer, extra: dict | None = None
) -> str:
    """Writes a model checkpoint directory (local or gs://, replacing `path`). Returns the location.

    Every process takes part in the Orbax save (sharded arrays are written collectively); process 0
    writes the tokenizer and, last, model.json, which commits the directory (storage.DirectoryWriter).
    """
    first = jax.process_index() == 0
    writer = storage.DirectoryWriter(path, MARKER, prepare=first)
    multihost_utils.sync_global_devices(f"querit_jax save_model start {writer.final}")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(storage.join(writer.staging, "params"), params)
    ckptr.wait_until_finished()
    if first:
        with storage.temp_dir() as tmp:
            tokenizer.save_pretrained(tmp)
            storage.upload_tree(tmp, storage.join(writer.staging, "tokenizer"))
        meta = {**spec.to_json(), "tokenizer": "tokenizer", **(extra or {})}
        writer.commit(json.dumps(meta, indent=2, ensure_ascii=False))
    multihost_utils.sync_global_devices(f"querit_jax save_model done {writer.final}")
    return writer.final


def is_model_checkpoint(path: str) -> bool:
    return storage.is_committed(path, MARKER)


def read_spec(path: str) -> tuple[ModelSpec, dict]:
    meta_path = storage.join(path, MARKER)
    try:
        meta = json.loads(storage.read_text(meta_path))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: invalid JSON ({e.msg}, line {e.lineno}).") from None
    return ModelSpec.from_json(meta, meta_path), meta


def load_tokenizer(path: str, meta: dict):
    """The tokenizer stored with a checkpoint (copied locally first when the checkpoint is remote)."""
    from transformers import AutoTokenizer

    location = storage.contained(
        path, meta.get("tokenizer", "tokenizer"), storage.join(path, MARKER)
    )
    return AutoTokenizer.from_pretrained(storage.local_copy(location))


def restore_params(path: str, spec: ModelSpec, abstract: dict) -> dict:
    params_dir = storage.join(path, "params")  # absolute: Orbax misreads relative paths
    if not storage.isdir(params_dir):
        raise CheckpointError(f"{path}: model.json present but the params/ directory is missing.")
    ckptr = ocp.StandardCheckpointer()
    try:
        stored = ckptr.metadata(params_dir).item_metadata.tree
    except Exception as e:  # Orbax raises many types for unreadable checkpoints
        raise CheckpointError(
            f"{params_dir}: not a readable Orbax checkpoint ({type(e).__name__}: {e})."
        ) from None
    check_shapes(
        {k: v.shape for k, v in flatten(stored).items()},
        {k: v.shape for k, v in flatten(abstract).items()},
        f"{params_dir} (against {storage.join(path, MARKER)})",
    )
    try:
        return ckptr.restore(params_dir, abstract)
    except Exception as e:
        raise CheckpointError(
            f"{params_dir}: restoring failed ({type(e).__name__}: {e})."
        ) from None
