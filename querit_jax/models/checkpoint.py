"""The self-describing querit_jax model checkpoint: save and restore.

A model checkpoint is a directory

    model.json   {"format": "querit_jax.model", "family", "backbone", "head", "template", "max_length", ...}
    params/      Orbax (OCDBT) checkpoint of the parameter tree
    tokenizer/   the tokenizer files (tokenizer.json, tokenizer_config.json, ...)

so `rerank`, `evaluate`, `merge` and `export_hf.py` need nothing but the path. Loading any model
location (a checkpoint, a training workdir, a Hugging Face directory) is `querit_jax.loading`'s job.
"""

import json
import os
import shutil

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from querit_jax.errors import CheckpointError
from querit_jax.models.spec import ModelSpec, check_shapes, flatten


def save_model(
    path: str, spec: ModelSpec, params: dict, tokenizer, extra: dict | None = None
) -> str:
    """Writes a model checkpoint directory (replacing `path`). Returns the path.

    Every process takes part in the Orbax save (sharded arrays are written collectively into one
    temporary directory); process 0 writes the metadata and renames the directory when all are done.
    """
    path = os.path.abspath(path)
    tmp = f"{path}.tmp"
    if jax.process_index() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    multihost_utils.sync_global_devices(f"querit_jax save_model start {path}")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(tmp, "params"), params)
    ckptr.wait_until_finished()
    if jax.process_index() == 0:
        tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
        meta = {**spec.to_json(), "tokenizer": "tokenizer", **(extra or {})}
        with open(os.path.join(tmp, "model.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    multihost_utils.sync_global_devices(f"querit_jax save_model done {path}")
    return path


def is_model_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "model.json"))


def read_spec(path: str) -> tuple[ModelSpec, dict]:
    meta_path = os.path.join(path, "model.json")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: invalid JSON ({e.msg}, line {e.lineno}).") from None
    return ModelSpec.from_json(meta, meta_path), meta


def restore_params(path: str, spec: ModelSpec, abstract: dict) -> dict:
    params_dir = os.path.join(os.path.abspath(path), "params")  # Orbax misreads relative paths
    if not os.path.isdir(params_dir):
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
        f"{params_dir} (against {os.path.join(path, 'model.json')})",
    )
    try:
        return ckptr.restore(params_dir, abstract)
    except Exception as e:
        raise CheckpointError(
            f"{params_dir}: restoring failed ({type(e).__name__}: {e})."
        ) from None
