"""Assembles tensors saved as .npy parts into one Orbax checkpoint, in a process of its own.

A merge into an object store run by several processes (`checkpoints.OutputWriter`) gathers each
merged tensor to process 0, which saves it as a .npy part on its local disk; at the end process 0
runs this module as a child process (single-process JAX on the CPU: Orbax's partial save, which
appends tensor groups to one checkpoint, is collective in a multi-process job, and cannot append on
an object store), then uploads the finalised checkpoint. Memory holds one flush of parts at a time
(parts are memory-mapped).

    python -m querit_jax.merging.assemble DIR

DIR/parts.json: {"flush_bytes": N, "parts": [{"keys": [...], "file": "00000.npy", "dtype": "..."}]}.
Writes DIR/params.partial (finalised: the tree under DIR/params.partial/state).
"""

import json
import sys

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from orbax.checkpoint import v1 as ocp_v1

from querit_jax import storage

PARTS = "parts.json"
# numpy has no bfloat16 of its own: such parts are stored as their raw 16-bit patterns.
_RAW = {"bfloat16": (np.uint16, ml_dtypes.bfloat16)}


def to_part(array: np.ndarray) -> tuple[np.ndarray, str]:
    """(what np.save can store, the dtype name to read it back as)."""
    name = str(array.dtype)
    return (array.view(_RAW[name][0]) if name in _RAW else array), name


def from_part(stored: np.ndarray, dtype: str) -> np.ndarray:
    return stored.view(_RAW[dtype][1]) if dtype in _RAW else stored


def assemble(directory: str) -> str:
    spec = json.loads(storage.read_text(storage.join(directory, PARTS)))
    target = storage.join(directory, "params.partial")
    pending, size = {}, 0
    for part in spec["parts"]:
        stored = storage.load_array(storage.join(directory, part["file"]), mmap=True)
        array = jnp.asarray(from_part(stored, part["dtype"]))
        node = pending
        *parents, last = part["keys"]
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = array
        size += array.nbytes
        if size >= spec["flush_bytes"]:
            ocp_v1.partial.save(target, pending)
            pending, size = {}, 0
    if pending:
        ocp_v1.partial.save(target, pending)
    ocp_v1.partial.finalize(target)
    return target


if __name__ == "__main__":
    assemble(sys.argv[1])
