"""Sequence packing: several (query, document) pairs per row, told apart by segment ids.

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
groups is packed on its own.

Training steps (`PackGroups`) take one of a few row counts (`StepShapes`), each step the smallest
that holds its pairs, so the train step compiles a handful of programs instead of one per step. The
sizes come from the first batches (`choose_shapes`); a step that needs more rows than the largest
takes the most rows any step can need (compiled when first needed), so no batch stops a run. Rows
are `data.pack_length` tokens, by default the shortest multiple of the pair budget at which the
first batches are >= `TARGET_SHARE` real tokens: pairs longer than a third of a row leave gaps that
no packer can fill, and a longer row costs attention in proportion to its length, so it is taken
only when it removes that padding. Each process tokenises and packs only its own groups into its
own block of rows; the processes then agree on the step's row count (`AgreeRows`: one small integer
per process through JAX's coordination service, no device work) and each pads its block to it.
"""

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence

import jax
import numpy as np

from querit_jax.distributed import gather_ints
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
      lengths: [N] pair lengths, each 1..row_length.
      num_rows: a fixed number of rows to pack into (PackingError when they do not suffice), or
        None to open as many as needed.
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
                    f"{row_length} tokens with at most {max_pairs} pairs each."
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
    return _fill(sequences, types, place, row_length, pad_id)


def _fill(sequences, types, place: Placement, row_length: int, pad_id: int) -> PackedRows:
    """The [place.num_rows, row_length] arrays of a placement (rows past the last used: padding)."""
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


# ----- training steps: a few row counts, the smallest that holds each step ----------------------

ROW_MULTIPLES = (1, 2, 3, 4)  # packed row lengths tried, in units of the pair budget max_length
# Real tokens per packed token a row length must give the sampled batches to be chosen: 0.01 above
# the 0.93 goal, as the sizes are fitted to that sample (held-out steps get ~0.005 less).
TARGET_SHARE = 0.94
NUM_SIZES = 4  # row counts per run (each a train-step program)
SIZE_MARGIN = 0.05  # the largest size: the most rows a sampled batch needed, + 5%


def _round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def most_rows(num_pairs: int, row_length: int, max_length: int, max_pairs: int) -> int:
    """The most rows `best_fit_decreasing` can open for `num_pairs` pairs of <= max_length tokens.

    A row with fewer than k = min(row_length // max_length, max_pairs) pairs has room for any pair,
    so a new row is opened only once every open row holds k pairs: at most ceil(N / k) rows.
    """
    return -(-num_pairs // max(1, min(row_length // max_length, max_pairs)))


@dataclasses.dataclass(frozen=True)
class StepShapes:
    """The packed shapes of training steps: rows of `row_length` tokens, over all processes.

    A step takes the smallest of `sizes` that holds its pairs, else `fallback`, the most rows any
    step can need (`most_rows`, rounded up to the row multiple; compiled only if a step needs it).
    """

    row_length: int
    sizes: tuple[int, ...]  # ascending multiples of the row multiple
    fallback: int

    def rows_for(self, needed: int) -> int:
        """Rows of a step that needs `needed` (never more than `most_rows`, which bounds every
        packing: tests/test_packing.py)."""
        return next((s for s in self.sizes if s >= needed), self.fallback)

    def __str__(self) -> str:
        more = "" if self.fallback <= self.sizes[-1] else f" (needing more: {self.fallback})"
        return f"{'/'.join(map(str, self.sizes))} rows of {self.row_length} tokens{more}"


def row_sizes(needed: Sequence[int], multiple: int, most: int) -> tuple[int, ...]:
    """`NUM_SIZES` row counts for steps like a sample of batches that need `needed` rows each.

    The largest is the sample's maximum + `SIZE_MARGIN` (at most `most`); the others are the
    sample's own row counts that leave it the fewest rows in all (an exhaustive search: a sample
    has a few dozen distinct counts). All are rounded up to `multiple`.
    """
    needed = np.array([_round_up(n, multiple) for n in needed])
    top = min(_round_up(np.ceil(needed.max() * (1 + SIZE_MARGIN)), multiple), most)
    values = np.unique(needed[needed < top])

    def total(cut: tuple) -> int:
        sizes = np.array([*cut, top])
        return int(sizes[np.searchsorted(sizes, needed)].sum())

    cuts = itertools.combinations(values.tolist(), min(NUM_SIZES - 1, len(values)))
    return (*min(cuts, key=lambda cut: (total(cut), cut)), top)


def step_rows(lengths: Sequence[int], row_length: int, max_pairs: int, processes: int = 1) -> int:
    """The rows a global batch's pairs need when each of `processes` packs its own block of them
    (pairs are group-major, so process i's are block i): processes x the most any one needs."""
    parts = np.array_split(np.asarray(lengths), processes)
    return processes * max(rows_needed(x, row_length, max_pairs) for x in parts)


def choose_shapes(
    sample: Sequence[Sequence[int]],
    max_length: int,
    max_pairs: int,
    multiple: int,
    pack_length: int = 0,
    pack_rows: int = 0,
    processes: int = 1,
) -> tuple[StepShapes, float]:
    """The step shapes for batches like `sample` ([B][N] pair lengths of sampled global batches),
    each packed by `processes` processes, one block of its pairs each (`step_rows`).

    Rows are `pack_length` tokens, or (0) the shortest of `ROW_MULTIPLES` x max_length whose sizes
    give the sample >= `TARGET_SHARE` real tokens (else the row length with the highest share).
    Sizes: `pack_rows` alone, or `row_sizes` of the rows the sample needs. Returns (shapes, the
    sample's real-token share with them).
    """
    num_pairs = len(sample[0])
    tokens = np.array([np.sum(x) for x in sample], np.float64)
    best = None
    for row_length in (pack_length,) if pack_length else [m * max_length for m in ROW_MULTIPLES]:
        most = processes * most_rows(num_pairs // processes, row_length, max_length, max_pairs)
        most = _round_up(most, multiple)
        needed = [step_rows(x, row_length, max_pairs, processes) for x in sample]
        if pack_rows:
            shapes = StepShapes(row_length, (_round_up(pack_rows, multiple),), most)
        else:
            shapes = StepShapes(row_length, row_sizes(needed, multiple, most), most)
        rows = np.array([shapes.rows_for(n) for n in needed])
        share = float(np.mean(tokens / (rows * row_length)))
        if share >= TARGET_SHARE:
            return shapes, share
        if best is None or share > best[1]:
            best = (shapes, share)
    return best


def row_length_for(lengths: Sequence[int], unit: int, max_pairs: int) -> int:
    """The shortest of `ROW_MULTIPLES` x unit at which these lengths (all <= unit), packed at once,
    are >= `TARGET_SHARE` real tokens; else the one with the highest share."""
    total, best = float(np.sum(lengths)), None
    for row_length in [m * unit for m in ROW_MULTIPLES]:
        share = total / (rows_needed(lengths, row_length, max_pairs) * row_length)
        if share >= TARGET_SHARE:
            return row_length
        if best is None or share > best[1]:
            best = (row_length, share)
    return best[0]


def largest_step(data_cfg, num_pairs: int, multiple: int, processes: int = 1) -> tuple[int, int]:
    """(rows, row length) of the largest packed step a run of `data_cfg` can take, before any data
    is read (what the memory plan must fit): the most rows at the longest row length it may choose
    (each of `processes` packing its share of the pairs), or `pack_rows` when that is more."""
    length = data_cfg.pack_length or ROW_MULTIPLES[-1] * data_cfg.max_length
    share = num_pairs // processes
    most = processes * most_rows(share, length, data_cfg.max_length, data_cfg.pack_max_pairs)
    return _round_up(max(most, data_cfg.pack_rows), multiple), length


@dataclasses.dataclass(frozen=True)
class PackGroups:
    """Grain map: this process's padded batch of groups ([Q, G, T], `pipeline.TokenizeGroups`) ->
    its packed rows.

    The pairs go into `shapes.rows_for(P x rows needed) / P` rows (P = `process_count`): with one
    process the step's rows; with several, `AgreeRows` pads every process's block to the rows the
    step agrees on. Output: input_ids, segment_ids, token_type_ids [R / P, row_length]; slot_valid
    [R / P, max_pairs] bool; pair_row, pair_slot [Q, G] int32 (a pair's row in this block, which
    `AgreeRows` turns into its global row, and its slot in the model's [R, max_pairs] output); the
    other entries (teacher, has_teacher) as they came.
    """

    shapes: StepShapes
    max_pairs: int
    pad_id: int
    process_count: int = 1

    def __call__(self, batch: dict) -> dict:
        seg = batch["segment_ids"]
        q, g, t = seg.shape
        real = seg.reshape(q * g, t) > 0
        ids, tt = (batch[k].reshape(q * g, t) for k in ("input_ids", "token_type_ids"))
        seqs = [ids[i][real[i]] for i in range(q * g)]
        types = [tt[i][real[i]] for i in range(q * g)]
        place = best_fit_decreasing([len(s) for s in seqs], self.shapes.row_length, self.max_pairs)
        n = self.process_count
        place = dataclasses.replace(place, num_rows=self.shapes.rows_for(n * place.num_rows) // n)
        packed = _fill(seqs, types, place, self.shapes.row_length, self.pad_id)
        tokens = ("input_ids", "segment_ids", "token_type_ids")
        out = {k: v for k, v in batch.items() if k not in tokens}
        out.update(
            input_ids=packed.input_ids,
            segment_ids=packed.segment_ids,
            token_type_ids=packed.token_type_ids,
            slot_valid=slot_valid(place, self.max_pairs),
            pair_row=place.row.reshape(q, g),
            pair_slot=place.slot.reshape(q, g),
        )
        return out


@dataclasses.dataclass(frozen=True)
class AgreeRows:
    """Map over `PackGroups`' output, in the training loop's thread: the processes agree on the
    step's rows R (`shapes.rows_for(P x the most rows any process's pairs need)`; the needs are
    gathered by `gather`, default `distributed.gather_ints`), each pads its block to R / P rows and
    numbers its pairs' rows from process_index x R / P. With one process it changes nothing."""

    shapes: StepShapes
    pad_id: int
    process_index: int = 0
    process_count: int = 1
    gather: Callable[[int], list[int]] | None = None

    def __call__(self, batch: dict) -> dict:
        if self.process_count == 1:
            return batch
        have = batch["input_ids"].shape[0]
        need = int((batch["segment_ids"] > 0).any(-1).sum())  # rows are filled in order
        needs = (self.gather or functools.partial(gather_ints, "packed-steps"))(need)
        rows = self.shapes.rows_for(self.process_count * max(needs))
        rows //= self.process_count  # >= have: rows_for grows with the need
        out = dict(batch, pair_row=batch["pair_row"] + self.process_index * rows)
        if rows == have:  # PackGroups' guess held: nothing to pad
            return out
        fills = {"input_ids": self.pad_id, "segment_ids": 0, "token_type_ids": 0, "slot_valid": 0}
        for key, fill in fills.items():
            extra = np.full((rows - have, *batch[key].shape[1:]), fill, batch[key].dtype)
            out[key] = np.concatenate([batch[key], extra])
        return out


def check_process_rows(batch_sharding, global_rows: int) -> None:
    """Packed steps number rows of process i from i * rows_per_process (`AgreeRows`): true
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
    sample_batches: int = 32,
    sample=None,
):
    """Appends `PackGroups` to this process's training `grain.MapDataset` of padded batches
    (`data.pack`; `pipeline.train_dataset`).

    The step shapes (`choose_shapes`) come from the first `sample_batches` batches of `sample`,
    the same global batches (every process's groups, `pipeline.train_dataset` of one process) in
    every process, so all choose the same shapes; default: `dataset` (one process). Row counts are
    multiples of `row_multiple` (the device count, so rows split evenly over the batch mesh axes
    and processes). Returns (dataset, StepShapes, `AgreeRows` to map over its iterator).
    """
    sample = dataset if sample is None else sample
    if row_multiple % process_count or len(sample[0]["teacher"]) % process_count:
        raise ValueError(
            f"{process_count} processes: the row multiple ({row_multiple}) and the query groups "
            "of a batch must split evenly over them."
        )
    lengths = []
    for i in range(min(sample_batches, len(sample))):
        seg = sample[i]["segment_ids"]
        lengths.append((seg.reshape(-1, seg.shape[-1]) > 0).sum(-1))
    shapes, _ = choose_shapes(
        lengths,
        data_cfg.max_length,
        data_cfg.pack_max_pairs,
        row_multiple,
        getattr(data_cfg, "pack_length", 0),  # benchmarks pass a namespace without it
        data_cfg.pack_rows,
        process_count,
    )
    pack = PackGroups(shapes, data_cfg.pack_max_pairs, pad_id, process_count)
    return dataset.map(pack), shapes, AgreeRows(shapes, pad_id, process_index, process_count)
