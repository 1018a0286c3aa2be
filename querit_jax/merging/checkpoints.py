"""Reading merge inputs one tensor at a time and writing the merged model checkpoint incrementally.

Inputs are querit_jax model checkpoints (`models/checkpoint.py`: model.json + params/ + tokenizer/)
or training workdirs (their exported `model/`), local or gs://, resolved by
`loading.resolve_model_path`. Each tensor is restored on its own with Orbax's partial restore
(`PyTreeRestore(item=<one leaf>, partial_restore=True)`), straight onto its sharding, so host memory
never holds a whole input model.

The output is written with Orbax's partial save (`orbax.checkpoint.v1.partial`): merged tensors are
appended to one pending checkpoint every `flush_bytes`, and finalised at the end. The output
directory is committed by its model.json, written last (`storage.DirectoryWriter`): a killed merge
leaves no directory that looks complete, and a rerun starts from scratch.

On a local disk everything goes into `<output>.tmp`, and an existing `<output>` is replaced by
renames only: it is moved to `<output>.old`, `<output>.tmp` is moved to `<output>`, and only then is
`<output>.old` deleted. A kill at any point leaves either the previous or the new complete output
under `<output>`, or (between the two renames) the previous one under `<output>.old` with no
`<output>`; the next merge into the same place first moves such an `<output>.old` back to `<output>`
and deletes an `<output>.old` left beside an `<output>` (a kill while deleting it). On an object
store (gs://), which has no rename, the old model.json is deleted first and the new files are
written in place.
"""

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from orbax.checkpoint import v1 as ocp_v1
from orbax.checkpoint._src.path.atomicity_types import COMMIT_SUCCESS_FILE

from querit_jax import storage
from querit_jax.errors import CheckpointError
from querit_jax.loading import resolve_model_path
from querit_jax.merging import assemble
from querit_jax.models.checkpoint import MARKER, is_model_checkpoint, read_spec, restore_tensor
from querit_jax.models.spec import RUNTIME_FIELDS, ModelSpec

# Backbone fields that do not change what a parameter means: runtime choices (models.spec), token
# ids, training-only loss weights, and the vocabulary (checked through the embedding shapes
# instead).
_NON_ARCHITECTURE = {
    *RUNTIME_FIELDS,
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "vocab_size",
    "router_aux_loss_coef",
    "router_z_loss_coef",
    "max_position_embeddings",
}


@dataclasses.dataclass
class ModelInput:
    """One checkpoint taking part in a merge: its spec and the shapes/dtypes of its stored
    tensors."""

    path: str  # as configured
    resolved: str  # the model checkpoint directory
    spec: ModelSpec
    meta: dict
    shapes: dict[str, tuple[int, ...]]  # flat name -> stored shape
    dtypes: dict[str, str]  # flat name -> stored dtype name
    stored_keys: dict[str, tuple]  # flat name -> key path in the stored tree

    @property
    def params_dir(self) -> str:
        return storage.join(self.resolved, "params")

    def read(self, name: str, sharding) -> jax.Array:
        """Restores the single tensor `name` from disk onto `sharding`, in its stored dtype."""
        return restore_tensor(
            self.params_dir,
            name,
            self.stored_keys[name],
            self.shapes[name],
            self.dtypes[name],
            sharding,
        )


def open_input(path: str) -> ModelInput:
    """Resolves and inspects one merge input without reading any tensor data.

    Raises:
      CheckpointError: a missing path, a Hugging Face directory, or an unreadable checkpoint.
    """
    resolved = resolve_model_path(path)  # a local or gs:// checkpoint, a workdir, or a Hub id
    if not is_model_checkpoint(resolved):
        raise CheckpointError(
            f"{path} is a Hugging Face model directory; import it first with "
            "tools/convert_hf/import_hf.py --hf_dir=... --out=CKPT and merge the checkpoint."
        )
    spec, meta = read_spec(resolved)
    params_dir = storage.join(resolved, "params")
    try:
        tree = ocp.StandardCheckpointer().metadata(params_dir).item_metadata.tree
    except Exception as e:
        raise CheckpointError(
            f"{params_dir}: not a readable Orbax checkpoint ({type(e).__name__}: {e})."
        ) from None
    shapes, dtypes, keys = {}, {}, {}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        stored = tuple(k.key for k in keypath)
        name = ".".join(str(k) for k in stored)
        shapes[name], dtypes[name], keys[name] = tuple(leaf.shape), str(leaf.dtype), stored
    return ModelInput(path, resolved, spec, meta, shapes, dtypes, keys)


def logical_axes(spec: ModelSpec) -> dict[str, tuple]:
    """Flat name -> logical axis names of every parameter (which dims are vocab rows,
    experts...)."""
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: spec.build())
    _, state = nnx.split(abstract)
    return {
        ".".join(str(p) for p in path): tuple(v.get_metadata("out_sharding", None) or ())
        for path, v in nnx.to_flat_state(state)
    }


def canonical_order(names) -> list[str]:
    """Embeddings first, then layers in numeric order, then the rest: depth order, as mergekit
    plans."""

    def key(name):
        m = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
        if m:
            return (1, int(m.group(1)), name)
        return (0 if "embed" in name else 2, 0, name)

    return sorted(names, key=key)


def check_compatible(
    base: ModelInput, other: ModelInput, axes: dict[str, tuple], vocab_policy: str
) -> None:
    """Refuses inputs that are not the same architecture as the base, naming the first difference.

    Family and head kind first, then the other head fields (the yes/no token ids...) and the pair
    template, then parameter names and shapes in depth order (a difference only in vocabulary rows
    is allowed when `vocab_policy` is "rectify"), then the architecture fields. The output takes the
    base's head and template, so a model trained to read other token ids or another prompt format
    would be merged into weights that score its half of the recipe wrongly: such inputs are refused.

    Raises:
      CheckpointError: naming the first mismatching parameter (or config field) and both paths.
    """
    where = f"{other.path} cannot be merged with the base {base.path}"
    if other.spec.family != base.spec.family or other.spec.head.kind != base.spec.head.kind:
        raise CheckpointError(
            f"{where}: it is a {other.spec.family} model with a {other.spec.head.kind} head, the "
            "base "
            f"a {base.spec.family} model with a {base.spec.head.kind} head."
        )
    _check_head_and_template(base, other, where)
    for name in canonical_order(set(base.shapes) | set(other.shapes)):
        if name not in other.shapes:
            raise CheckpointError(
                f"{where}: parameter {name} {base.shapes[name]} of the base is missing there; the "
                "checkpoints must have the same architecture."
            )
        if name not in base.shapes:
            raise CheckpointError(
                f"{where}: it has parameter {name} {other.shapes[name]} that the base does not; "
                "the "
                "checkpoints must have the same architecture."
            )
        have, want = other.shapes[name], base.shapes[name]
        if have == want:
            continue
        vocab_dims = [i for i, a in enumerate(axes.get(name, ())) if a == "vocab"]
        only_vocab = len(have) == len(want) and all(
            h == w or i in vocab_dims for i, (h, w) in enumerate(zip(have, want))
        )
        if not only_vocab:
            raise CheckpointError(
                f"{where}: parameter {name} has shape {have} there but {want} in the base; the "
                "checkpoints must have the same architecture."
            )
        if vocab_policy != "rectify":
            raise CheckpointError(
                f"{where}: vocabulary sizes differ (parameter {name} has shape {have} there, "
                f"{want} "
                "in the base); set merge.vocab_policy='rectify' to cut or pad its embedding rows "
                "to "
                "the base's vocabulary, or merge models that share a tokenizer."
            )
    mine, theirs = base.spec.backbone.to_dict(), other.spec.backbone.to_dict()
    for field in sorted(set(mine) | set(theirs)):
        if field not in _NON_ARCHITECTURE and mine.get(field) != theirs.get(field):
            raise CheckpointError(
                f"{where}: backbone field {field} is {theirs.get(field)!r} there but "
                f"{mine.get(field)!r} in the base; the checkpoints must have the same architecture."
            )


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _check_head_and_template(base: ModelInput, other: ModelInput, where: str) -> None:
    """Refuses a head field or a template field (the name aside) that differs from the base's."""
    mine, theirs = base.spec.head.to_dict(), other.spec.head.to_dict()
    for field in sorted(set(mine) | set(theirs)):
        if mine.get(field) != theirs.get(field):
            raise CheckpointError(
                f"{where}: head field {field} is {theirs.get(field)!r} there but "
                f"{mine.get(field)!r} in the base; the merged model keeps the base's head, so "
                "merge "
                "checkpoints whose heads read the same tokens."
            )
    mine, theirs = base.spec.template.to_dict(), other.spec.template.to_dict()
    for field in sorted((set(mine) | set(theirs)) - {"name"}):
        if mine.get(field) != theirs.get(field):
            raise CheckpointError(
                f"{where}: its template {other.spec.template.name!r} differs from the base's "
                f"{base.spec.template.name!r} in {field} ({_short(theirs.get(field))} there, "
                f"{_short(mine.get(field))} in the base); the merged model scores with the base's "
                "prompt format, which the other model was not trained on. Merge checkpoints "
                "trained "
                "with the same template."
            )


def content_hash(directory: str) -> dict:
    """sha256 over every file of a checkpoint directory (relative path and bytes, in sorted
    order)."""
    digest, count, total = hashlib.sha256(), 0, 0
    for rel in storage.files(directory):
        digest.update(rel.encode() + b"\0")
        with storage.open_read_raw(storage.join(directory, rel)) as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(chunk)
                total += len(chunk)
        count += 1
    return {"sha256": digest.hexdigest(), "files": count, "bytes": total}


class OutputWriter:
    """Writes the merged model checkpoint tensor by tensor, committed at the end by its model.json.

    The directory is a `storage.DirectoryWriter`: staged in `<output>.tmp` and moved in by renames
    on a local disk, written in place after removing the old marker on an object store. Tensors are
    appended with Orbax's partial save and finalised into `params/`:

      * local output: every process takes part in the saves (each writes its shards), process 0
        writes the rest;
      * object store (gs://): Orbax's partial save cannot append there (its commit-file protocol
        refuses snapshots, and epath's gcsfs backend cannot rename into a prefix without objects),
        so the checkpoint is assembled on process 0's local disk (`storage.local_scratch`) and its
        finalised `params/` uploaded at the end. With one process the tensors are appended as they
        come; with several, each is gathered to process 0 and saved as a .npy part, and a child
        process assembles the parts (`merging.assemble`: partial saves are collective in a
        multi-process job). Host memory holds one tensor, or one flush, at a time.
    """

    def __init__(self, output: str, keys: dict[str, tuple], flush_bytes: int):
        self._first = jax.process_index() == 0
        self._dir = storage.DirectoryWriter(output, MARKER, prepare=self._first)
        self.path, self.tmp = self._dir.final, self._dir.staging
        self._remote = storage.is_remote(self.tmp)
        self._parts = self._remote and jax.process_count() > 1
        if self._remote:
            self._scratch = storage.local_scratch(self.path, "merge")
            self._partial = storage.join(self._scratch, "params.partial")
            if self._first:  # a killed merge's leftovers
                storage.rmtree(self._scratch)
                storage.makedirs(self._scratch)
        else:
            self._partial = storage.join(self.tmp, "params.partial")
        self._keys = keys  # flat name -> key path of the model's own (pure dict) tree
        self._flush_bytes = flush_bytes
        self._pending, self._pending_bytes = {}, 0
        self._part_list = []
        multihost_utils.sync_global_devices(f"querit_jax merge start {self.path}")

    def add(self, name: str, array: jax.Array) -> None:
        if self._parts:
            host = multihost_utils.process_allgather(array, tiled=True)  # every process takes part
            if self._first:
                stored, dtype = assemble.to_part(np.asarray(host))
                file = f"{len(self._part_list):05d}.npy"
                storage.save_array(storage.join(self._scratch, file), stored)
                self._part_list.append(
                    {"keys": list(self._keys[name]), "file": file, "dtype": dtype}
                )
            return
        node = self._pending
        *parents, last = self._keys[name]
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = array
        self._pending_bytes += array.nbytes
        if self._pending_bytes >= self._flush_bytes:
            self.flush()

    def flush(self) -> None:
        """Appends the pending tensors to the checkpoint and drops them from memory."""
        if self._pending:
            ocp_v1.partial.save(self._partial, self._pending)
        self._pending, self._pending_bytes = {}, 0

    def _assemble_parts(self) -> None:
        storage.write_text(
            storage.join(self._scratch, assemble.PARTS),
            json.dumps({"flush_bytes": self._flush_bytes, "parts": self._part_list}),
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUERIT_")}
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="")
        proc = subprocess.run(
            [sys.executable, "-m", "querit_jax.merging.assemble", self._scratch],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise CheckpointError(
                f"{self.path}: assembling the merged parts in {self._scratch} failed:\n"
                + proc.stderr[-2000:]
            )

    def finish(self, model_json: dict, tokenizer_dir: str, manifest: dict, manifest_name: str):
        """Finalises params/, writes the tokenizer and the manifest, then model.json (the
        commit)."""
        if self._parts:
            if self._first:
                self._assemble_parts()
        else:
            self.flush()
            ocp_v1.partial.finalize(self._partial)
        if self._first:
            # The finalised checkpoint keeps the tree under `state/`: that directory is a complete
            # Orbax PyTree checkpoint, the same layout `save_model` writes to params/.
            params = storage.join(self.tmp, "params")
            if self._remote:
                storage.upload_tree(storage.join(self._partial, "state"), params)
                storage.rmtree(self._scratch)
                # Orbax reads a gs:// checkpoint only with the file its own commit writes there.
                storage.write_text(
                    storage.join(params, COMMIT_SUCCESS_FILE),
                    f"Checkpoint commit was successful to {params}",
                )
            else:
                storage.move(storage.join(self._partial, "state"), params)
                storage.rmtree(self._partial)
            _write_checkpoint_metadata(params)
            storage.copy_tree(tokenizer_dir, storage.join(self.tmp, "tokenizer"))
            storage.write_text(
                storage.join(self.tmp, manifest_name),
                json.dumps(manifest, indent=2, ensure_ascii=False),
            )
            self._dir.commit(json.dumps(model_json, indent=2, ensure_ascii=False))
        multihost_utils.sync_global_devices(f"querit_jax merge done {self.path}")

    def abort(self) -> None:
        """Removes the partial output after a failed merge; an existing local `<output>` is left as
        it
        was (on an object store it was uncommitted when the merge started)."""
        if self._first:
            self._dir.abort()
            if self._remote:
                storage.rmtree(self._scratch)


def _write_checkpoint_metadata(params_dir: str) -> None:
    """The `_CHECKPOINT_METADATA` a StandardCheckpointer save leaves (the partial-save layout keeps
    it
    one level up); without it every load of the merged model logs a missing-metadata warning."""
    handler = ocp.StandardCheckpointHandler
    now = time.time_ns()
    meta = {
        "item_handlers": f"{handler.__module__}.{handler.__qualname__}",
        "metrics": {},
        "performance_metrics": {},
        "init_timestamp_nsecs": now,
        "commit_timestamp_nsecs": now,
        "custom_metadata": {"written_by": "querit_jax.merging"},
    }
    storage.write_text(storage.join(params_dir, "_CHECKPOINT_METADATA"), json.dumps(meta))
