"""Sequence packing: several (query, document) pairs per row of a fixed length, told apart by
segment ids.

Reranker pairs are short and of very unequal length; padding each one to the batch maximum wastes
most of the compute (notes/performance-and-reliability.md, M4: 0.26-0.33 real tokens padded, 0.96
packed). A packed row holds pairs back to back with segment ids 1..S (0 = padding); the models mask
attention across segments, restart positions per segment and read each pair at its own last token
(decoders) or first token (encoders), so a packed pair scores exactly as it does alone
(tests/test_packing.py).

The packer is best-fit decreasing (pairs longest first, each into the open row it fills most
tightly, with at most `max_pairs` pairs per row), a variant of first-fit decreasing (both use at
most 11/9 of the optimal number of rows, asymptotically, without the pairs-per-row cap). grain's own
packers (`grain.experimental.FirstFitPackIterDataset`, `BestFitPackIterDataset`) stream rows across
batch boundaries: they would split a listwise group over two steps and need an `IterDataset`, which
loses the random-access (one index) iterator state of our `MapDataset` pipeline. Here every batch of
groups is packed on its own into a fixed number of rows, so the train step keeps one shape and
traces once.
"""

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from querit_jax.errors import ConfigError, PackingError


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where each pair went: row, slot (segment id - 1) and first token in the row; all [N]
    int32."""

    row: np.ndarray
    slot: np.ndarray
    offset: np.ndarray
    num_rows: int


def best_fit_decreasing(
    lengths: Sequence[int], row_length: int, max_pairs: int, num_rows: int | None = None
) -> Placement:
    """Packs items of the given lengths into rows of `row_length` tokens, at most `max_pairs` per
    row.

    Args:
      lengths: [N] pair lengths, each 1..row_length. num_rows: a fixed number of rows to pack into
      (PackingError when they do not suffice), or None to
        open as many as needed.
    Returns:
      a Placement; rows are numbered in the order they were opened, slots in the order pairs
      arrived.
    """
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    if max_pairs < 1 or row_length < 1:
        raise ValueError(f"row_length={row_length} and max_pairs={max_pairs} must be positive.")
    if lengths.size and (lengths.min() < 1 or lengths.max() > row_length):
        bad = int(np.flatnonzero((lengths < 1) | (lengths > row_length))[0])
        raise PackingError(
            f"Pair {bad} has {lengths[bad]} tokens; a packed row holds 1..{row_length} "
            "(raise the pack length to at least the pair budget max_length)."
        )
    n = lengths.size
    row, slot, offset = (np.zeros(n, np.int32) for _ in range(3))
    # Open rows by free space: free_count[c] = how many open rows have exactly c tokens free, and
    # rows_by_free[c] the stack of them. Best fit = the smallest c >= length with a row.
    free_count = np.zeros(row_length + 1, np.int64)
    rows_by_free: list[list[int]] = [[] for _ in range(row_length + 1)]
    used, pairs = [], []
    for i in np.argsort(-lengths, kind="stable"):
        need = int(lengths[i])
        fits = np.flatnonzero(free_count[need:])
        if fits.size:
            r = rows_by_free[need + int(fits[0])].pop()
            free_count[need + int(fits[0])] -= 1
        else:
            if num_rows is not None and len(used) == num_rows:
                raise PackingError(
                    f"{n} pairs ({int(lengths.sum())} tokens) do not fit into {num_rows} rows of "
                    f"{row_length} tokens with at most {max_pairs} pairs each; raise the number of "
                    "packed rows (data.pack_rows)."
                )
            r = len(used)
            used.append(0)
            pairs.append(0)
        row[i], slot[i], offset[i] = r, pairs[r], used[r]
        used[r] += need
        pairs[r] += 1
        free = row_length - used[r]
        if pairs[r] < max_pairs and free > 0:
            rows_by_free[free].append(r)
            free_count[free] += 1
    return Placement(row, slot, offset, len(used) if num_rows is None else num_rows)


@dataclasses.dataclass(frozen=True)
class PackedRows:
    """Packed model inputs [R, L] int32 (segment id = slot + 1, 0 = padding) and the Placement."""

    input_ids: np.ndarray
    segment_ids: np.ndarray
    token_type_ids: np.ndarray
    placement: Placement

    def real_token_share(self) -> float:
        return float((self.segment_ids > 0).mean()) if self.segment_ids.size else 0.0


def pack_sequences(
    sequences: Sequence[Sequence[int]],
    row_length: int,
    max_pairs: int,
    pad_id: int,
    types: Sequence[Sequence[int]] | None = None,
    num_rows: int | None = None,
) -> PackedRows:
    """Packs token sequences (one per pair) into rows; see `best_fit_decreasing`."""
    place = best_fit_decreasing([len(s) for s in sequences], row_length, max_pairs, num_rows)
    shape = (place.num_rows, row_length)
    ids = np.full(shape, pad_id, np.int32)
    seg = np.zeros(shape, np.int32)
    tt = np.zeros(shape, np.int32)
    for i, s in enumerate(sequences):
        r, a = place.row[i], place.offset[i]
        sl = slice(a, a + len(s))
        ids[r, sl] = s
        seg[r, sl] = place.slot[i] + 1
        if types is not None:
            tt[r, sl] = types[i]
    return PackedRows(ids, seg, tt, place)


def slot_valid(placement: Placement, max_pairs: int) -> np.ndarray:
    """[R, max_pairs] bool: which slots hold a pair (its shape tells the step how many slots to
    score)."""
    out = np.zeros((placement.num_rows, max_pairs), bool)
    out[placement.row, placement.slot] = True
    return out


def unpack(values: np.ndarray, placement: Placement) -> np.ndarray:
    """Per-slot model outputs [R, S, ...] -> per-pair outputs [N, ...] in the original pair
    order."""
    return values[placement.row, placement.slot]


def rows_needed(lengths: Sequence[int], row_length: int, max_pairs: int) -> int:
    """How many rows `best_fit_decreasing` opens for these lengths."""
    return best_fit_decreasing(lengths, row_length, max_pairs).num_rows


@dataclasses.dataclass(frozen=True)
class PackGroups:
    """Grain map: a padded batch of groups ([Q, G, T], `pipeline.TokenizeGroups`) -> packed rows.

    Output: input_ids, segment_ids, token_type_ids [num_rows, row_length]; slot_valid [num_rows,
    max_pairs] bool; pair_row, pair_slot [Q, G] int32, where each pair's score is read from the
    model's [rows, max_pairs] output (rows of process i are numbered from i * num_rows: the global
    row index once the batch is assembled); teacher and has_teacher unchanged. Every batch has the
    same shapes, so the train step traces once.
    """

    num_rows: int
    row_length: int
    max_pairs: int
    pad_id: int
    process_index: int = 0

    def __call__(self, batch: dict) -> dict:
        seg = batch["segment_ids"]
        q, g, _ = seg.shape
        flat_seg = seg.reshape(q * g, -1) > 0
        ids = batch["input_ids"].reshape(q * g, -1)
        tt = batch["token_type_ids"].reshape(q * g, -1)
        seqs = [ids[i][flat_seg[i]] for i in range(q * g)]
        types = [tt[i][flat_seg[i]] for i in range(q * g)]
        packed = pack_sequences(
            seqs, self.row_length, self.max_pairs, self.pad_id, types, self.num_rows
        )
        place = packed.placement
        out = {
            k: v
            for k, v in batch.items()
            if k not in ("input_ids", "segment_ids", "token_type_ids")
        }
        out.update(
            input_ids=packed.input_ids,
            segment_ids=packed.segment_ids,
            token_type_ids=packed.token_type_ids,
            pair_row=(place.row + self.process_index * self.num_rows).reshape(q, g),
            pair_slot=place.slot.reshape(q, g),
            slot_valid=slot_valid(place, self.max_pairs),
        )
        return out


def estimate_rows(batches, row_length: int, max_pairs: int, margin: float = 0.15) -> int:
    """Rows per batch for `PackGroups`: the most any of the sample batches needs, plus `margin`.

    A batch of many pairs needs close to (its tokens / row_length) rows, and that total varies
    little from batch to batch, so a margin over a sample of batches leaves overflow (a PackingError
    naming data.pack_rows) rare; set the rows explicitly for a guarantee.
    """
    most = 0
    for batch in batches:
        seg = batch["segment_ids"]
        lengths = (seg.reshape(-1, seg.shape[-1]) > 0).sum(-1)
        most = max(most, rows_needed(lengths, row_length, max_pairs))
    return max(1, int(np.ceil(most * (1.0 + margin))))


def check_process_rows(batch_sharding, global_rows: int) -> None:
    """Packed steps number rows of process i from i * rows_per_process (`PackGroups.pair_row`): true
    only when the batch sharding gives each process one contiguous block of rows, in process order.
    Checked once at setup, so a device order that breaks it (possible on some pod topologies) is a
    clear error rather than scores gathered from the wrong rows."""
    index_map = batch_sharding.addressable_devices_indices_map((global_rows,))
    spans = sorted(
        {
            (ix[0].start or 0, global_rows if ix[0].stop is None else ix[0].stop)
            for ix in index_map.values()
        }
    )
    per_process = global_rows // jax.process_count()
    start = jax.process_index() * per_process
    merged = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    if merged != [(start, start + per_process)]:
        raise ConfigError(
            f"data.pack with {jax.process_count()} processes: process {jax.process_index()} holds "
            f"batch rows {merged} of {global_rows}, not the block [{start}, {start + per_process}) "
            "that packing assumes on this mesh. Train this mesh with data.pack=False."
        )


def pack_train_dataset(
    dataset,
    data_cfg,
    pad_id: int,
    row_multiple: int,
    process_index: int = 0,
    process_count: int = 1,
    sample_batches: int = 8,
):
    """Appends `PackGroups` to the training `grain.MapDataset` of padded group batches
    (`data.pack`).

    Rows per step (over all processes) are `data.pack_rows`, or estimated from the first
    `sample_batches` batches (the largest estimate of any process); either is rounded up to a
    multiple of `row_multiple` (the device count, so rows split evenly over the batch mesh axes and
    processes). Returns (dataset, global rows).
    """
    rows = data_cfg.pack_rows
    if not rows:
        sample = [dataset[i] for i in range(sample_batches)]
        local = estimate_rows(sample, data_cfg.max_length, data_cfg.pack_max_pairs)
        if process_count > 1:  # every process must pack into the same number of rows
            from jax.experimental import multihost_utils

            local = int(np.max(multihost_utils.process_allgather(np.int32(local))))
        rows = local * process_count
    rows = -(-rows // row_multiple) * row_multiple
    pack = PackGroups(
        rows // process_count,
        data_cfg.max_length,
        data_cfg.pack_max_pairs,
        pad_id,
        process_index,
    )
    return dataset.map(pack), rows
