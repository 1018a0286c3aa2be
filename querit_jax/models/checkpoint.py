"""The self-describing querit_jax model checkpoint: save and restore.

A model checkpoint is a directory

    model.json   {"format": "querit_jax.model", "family", "backbone", "head", "template",
    "max_length", ...}
    params/      Orbax (OCDBT) checkpoint of the parameter tree
    tokenizer/   the tokenizer files (tokenizer.json, tokenizer_config.json, ...)

so `rerank`, `evaluate`, `merge` and `export_hf.py` need nothing but the path. Loading any model
location (a checkpoint, a training workdir, a Hugging Face directory) is `querit_jax.loading`'s job.
"""

import dataclasses
import functools
import json
import logging
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from querit_jax import storage
from querit_jax.errors import CheckpointError
from querit_jax.models.spec import ModelSpec, abstract_params, check_shapes, flatten
from querit_jax.models.tokenizers import load_tokenizer_dir

MARKER = "model.json"  # written last: a directory without it is not a (complete) checkpoint

# Orbax writes a replicated array in slices, one per replica, so that every replica (every host of a
# data-parallel pod) writes its part. Each slice is a device program (compiled per array shape): for
# small arrays (norm scales, biases, a tiny model's every tensor) that costs far more than the write
# it splits (~1.5 s of a tiny model's first save on CPU). Below this many bytes per slice one
# replica writes the array whole; the large tensors of a real model are still written in parallel.
REPLICA_PARALLEL_MIN_SLICE_BYTES = 4 << 20


@functools.cache
def use_array_handler() -> None:
    """Makes Orbax save jax.Arrays with the replica-parallel threshold above (once per process;
    every Orbax writer of the package calls it)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # Orbax warns that a handler replaces its default: that is the aim
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array,
            ocp.type_handlers.ArrayHandler(
                min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_SLICE_BYTES
            ),
            override=True,
        )
    finally:
        absl.setLevel(level)


use_array_handler()


def save_model(
    path: str, spec: ModelSpec, params: dict, tokenizer, extra: dict | None = None
) -> str:
    """Writes a model checkpoint directory (local or gs://, replacing `path`). Returns the location.

    Every process takes part in the Orbax save (sharded arrays are written collectively); process 0
    writes the tokenizer and, last, model.json, which commits the directory
    (storage.DirectoryWriter).
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
    """The tokenizer stored with a checkpoint (copied locally first when the checkpoint is
    remote)."""
    location = storage.contained(
        path, meta.get("tokenizer", "tokenizer"), storage.join(path, MARKER)
    )
    return load_tokenizer_dir(storage.local_copy(location))


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


@dataclasses.dataclass(frozen=True)
class StoredParams:
    """The tensors of a checkpoint's params/, listed from metadata and read one at a time (Orbax
    partial restore: only that tensor's bytes are read), so no whole model is ever in memory."""

    params_dir: str
    keys: dict[str, tuple]  # flat name -> key path in the stored tree
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]

    @classmethod
    def open(cls, path: str) -> "StoredParams":
        params_dir = storage.join(path, "params")
        try:
            tree = ocp.StandardCheckpointer().metadata(params_dir).item_metadata.tree
        except Exception as e:  # Orbax raises many types for unreadable checkpoints
            raise CheckpointError(
                f"{params_dir}: not a readable Orbax checkpoint ({type(e).__name__}: {e})."
            ) from None
        keys, shapes, dtypes = {}, {}, {}
        for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            stored = tuple(k.key for k in keypath)
            name = ".".join(str(k) for k in stored)
            keys[name], shapes[name], dtypes[name] = stored, tuple(leaf.shape), str(leaf.dtype)
        return cls(params_dir, keys, shapes, dtypes)

    def abstract(self) -> dict:
        """The stored tree as ShapeDtypeStructs (nested dicts, stored keys)."""
        out: dict = {}
        for name, keys in self.keys.items():
            node = out
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = jax.ShapeDtypeStruct(self.shapes[name], self.dtypes[name])
        return out

    def read(self, name: str, sharding=None) -> jax.Array:
        """The tensor `name` ("model.layers.0.mlp.gate_proj.kernel"), in its stored dtype, on
        `sharding` (default: this host's first CPU device: host memory, whatever the
        accelerator)."""
        if name not in self.keys:
            raise CheckpointError(f"{self.params_dir}: no parameter {name}.")
        sharding = sharding or jax.sharding.SingleDeviceSharding(
            jax.local_devices(backend="cpu")[0]
        )
        return restore_tensor(
            self.params_dir, name, self.keys[name], self.shapes[name], self.dtypes[name], sharding
        )


def restore_tensor(params_dir: str, name: str, keys, shape, dtype, sharding) -> jax.Array:
    """Restores the one tensor at key path `keys` of an Orbax PyTree checkpoint onto `sharding`
    (Orbax's partial restore: nothing else is read). CheckpointError names the tensor."""
    item = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    for key in reversed(keys):
        item = {key: item}
    args = ocp.args.PyTreeRestore(
        item=item,
        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True,
    )
    try:
        restored = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(params_dir, args=args)
    except Exception as e:  # Orbax raises many types for unreadable data
        raise CheckpointError(
            f"{params_dir}: reading {name} failed ({type(e).__name__}: {e})."
        ) from None
    for key in keys:
        restored = restored[key]
    return restored


@dataclasses.dataclass
class StoredModel:
    """A model checkpoint opened without reading its tensors: what a streaming export needs (the
    counterpart of `spec.LoadedModel`, whose `params` here are ShapeDtypeStructs)."""

    spec: ModelSpec
    tokenizer: Any
    path: str
    metadata: dict
    stored: StoredParams

    @property
    def params(self) -> dict:
        return self.stored.abstract()

    def read(self, name: str) -> np.ndarray:
        return np.asarray(self.stored.read(name))


def open_model(path: str) -> StoredModel:
    """Opens the model checkpoint at `path` (local or gs://): spec, tokenizer, tensor list."""
    spec, meta = read_spec(path)
    stored = StoredParams.open(path)
    _, abstract = abstract_params(spec)
    check_shapes(
        stored.shapes,
        {k: v.shape for k, v in flatten(abstract).items()},
        f"{stored.params_dir} (against {storage.join(path, MARKER)})",
    )
    return StoredModel(spec, load_tokenizer(path, meta), path, meta, stored)
