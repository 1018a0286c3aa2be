"""A strict safetensors reader/writer on numpy (with ml_dtypes for bfloat16).

safetensors' own numpy backend cannot return bfloat16, the dtype most checkpoints are stored in. The
format is small (u64 little-endian header size, JSON header, raw little-endian bytes), so we read it
ourselves and validate every header field before touching data: a tampered header (oversized length,
offsets out of range, sizes that disagree with shapes) raises a clear error instead of reading
garbage. Pickle formats are never read anywhere in this project.
"""

import json
import struct

import ml_dtypes
import numpy as np

from querit_jax import storage
from querit_jax.errors import SafetensorsError

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


def read_header(path: str) -> tuple[dict, int]:
    """Returns (header without __metadata__, byte offset of the data section)."""
    size = storage.size(path)
    with storage.open_read_raw(path) as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsError(f"{path}: too short to be a safetensors file.")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            raise SafetensorsError(
                f"{path}: header length {n} exceeds the file size ({size} bytes)."
            )
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{path}: header is not valid JSON ({e}).") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object.")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(
                f"{path}: tensor {name!r} has a malformed or unsupported entry {info!r}."
            ) from None
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if not (0 <= start <= end <= data_size) or end - start != nbytes:
            raise SafetensorsError(
                f"{path}: tensor {name!r} offsets [{start}, {end}) do not fit its shape {shape} "
                f"({nbytes} bytes) inside the {data_size}-byte data section."
            )
    return header, 8 + n


def read_file(path: str) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file as read-only, memory-mapped arrays (no copy until used;
    a remote file is copied to the local cache first)."""
    path = storage.local_copy(path)
    header, base = read_header(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        dtype = np.dtype(DTYPES[info["dtype"]])
        count = int(np.prod(info["shape"], dtype=np.int64))
        arr = np.frombuffer(mm, dtype=dtype, count=count, offset=base + info["data_offsets"][0])
        out[name] = arr.reshape(info["shape"])
    return out


def write_file(
    path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Writes tensors (sorted by name, contiguous, 8-byte aligned header) readable by
    safetensors."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in NAMES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {a.dtype}.")
        header[name] = {
            "dtype": NAMES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with storage.atomic_writer(path, binary=True) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(a.tobytes())


# ----- sharded checkpoints (transformers' layout)
# ----------------------------------------------------

INDEX = "model.safetensors.index.json"
FLOAT_DTYPES = {np.dtype(t) for t in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16)}


def shard_plan(sizes: list[int], max_bytes: int) -> list[list[int]]:
    """Groups consecutive items (their byte sizes) into shards of at most `max_bytes`; an item
    larger
    than that gets a shard of its own (as transformers' `save_pretrained` does)."""
    shards: list[list[int]] = []
    used = 0
    for i, size in enumerate(sizes):
        if not shards or (used + size > max_bytes and shards[-1]):
            shards.append([])
            used = 0
        shards[-1].append(i)
        used += size
    return shards


def shard_names(count: int) -> list[str]:
    """model.safetensors for one shard, else model-00001-of-0000N.safetensors, ..."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_index(directory: str, weight_map: dict[str, str], total_size: int) -> None:
    """model.safetensors.index.json: which shard holds each tensor, and the bytes of all tensors."""
    index = {
        "metadata": {"total_size": int(total_size)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    storage.write_text(storage.join(directory, INDEX), json.dumps(index, indent=2) + "\n")


def cast_floats(array: np.ndarray, dtype) -> np.ndarray:
    """`array` in `dtype` when it is a floating-point tensor (ids and masks keep theirs)."""
    if dtype is None or np.dtype(array.dtype) not in FLOAT_DTYPES:
        return array
    return array.astype(dtype, copy=False)
