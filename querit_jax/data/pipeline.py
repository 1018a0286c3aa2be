"""Grain input pipeline for listwise training: one element = one query group, batched and tokenised.

    source (ArrayRecord via TFDS data source)
      -> shuffle (seeded, reshuffled every epoch, the same on every process) -> repeat
      -> sample 1 positive + (group_size - 1) negatives (seeded per element)
      -> batches of `batch_size` groups; global batch k is batches kP..kP+P-1 and process p takes
         batch kP+p (so it reads only its own records)
      -> the texts of mined groups joined from their docstore by row (`docstore.JoinTexts`)
      -> tokenise with the template, pad to a fixed length

Every stage is a `grain.MapDataset` (random access), so the iterator state is one index and a
restored iterator continues exactly where the saved one stopped.
"""

import dataclasses

import grain
import numpy as np

from querit_jax.data.docstore import JoinTexts
from querit_jax.data.tokenize import PairEncoder, pad_batch


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


@dataclasses.dataclass(frozen=True)
class SampleGroup:
    """Chooses one positive and `group_size - 1` negatives (without replacement when possible)."""

    group_size: int

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        # A mined record names docstore rows (joined later, for this process's groups only);
        # sampling draws the same numbers either way, so the batches equal a text-carrying run's.
        store = int(record.get("store", -1))
        pos, neg = (
            (record["pos_rows"], record["neg_rows"])
            if store >= 0
            else (record["pos"], record["neg"])
        )
        pos_scores = np.asarray(record["pos_scores"], np.float32)
        neg_scores = np.asarray(record["neg_scores"], np.float32)
        p = int(rng.integers(len(pos)))
        k = self.group_size - 1
        n = rng.choice(len(neg), size=k, replace=len(neg) < k)
        docs = [pos[p]] + [neg[i] for i in n]
        return {
            "query": _text(record["query"]),
            "docs": [int(d) for d in docs] if store >= 0 else [_text(d) for d in docs],
            "store": store,
            "teacher": np.concatenate([pos_scores[p : p + 1], neg_scores[n]]).astype(np.float32),
            "has_teacher": bool(record["has_scores"]),
        }


@dataclasses.dataclass(frozen=True)
class TokenizeGroups:
    """Tokenises a list of sampled groups into fixed-shape arrays.

    Output: input_ids, segment_ids, token_type_ids [Q, G, T] int32; teacher [Q, G] float32;
    has_teacher [Q] bool. The positive is at index 0 of every group.
    """

    encoder: PairEncoder
    pad_id: int

    def __call__(self, groups: list[dict]) -> dict:
        queries = [g["query"] for g in groups for _ in g["docs"]]
        docs = [d for g in groups for d in g["docs"]]
        seqs, types = self.encoder.encode(queries, docs)
        ids, seg, tt = pad_batch(seqs, self.encoder.max_length, self.pad_id, types=types)
        q, gsize = len(groups), len(groups[0]["docs"])
        return {
            "input_ids": ids.reshape(q, gsize, -1),
            "segment_ids": seg.reshape(q, gsize, -1),
            "token_type_ids": tt.reshape(q, gsize, -1),
            "teacher": np.stack([g["teacher"] for g in groups]),
            "has_teacher": np.array([g["has_teacher"] for g in groups]),
        }


def train_dataset(
    source,
    encoder: PairEncoder,
    pad_id: int,
    batch_size: int,
    group_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    docstores: tuple[str, ...] = (),
) -> grain.MapDataset:
    """The per-process training dataset of batches (`batch_size` groups per process per step).

    `docstores`: the locations of the docstores whose rows mined records name (`"store"` k is the
    k-th); each process opens them lazily, memory-mapped.

    Raises:
      ValueError: when this process's slice holds fewer groups than one batch.
    """
    ds = grain.MapDataset.source(source)
    if len(ds) < batch_size * process_count:
        raise ValueError(
            f"{len(ds)} training groups are fewer than one batch of {batch_size * process_count}."
        )
    ds = ds.shuffle(seed=seed).repeat(None)
    ds = ds.random_map(SampleGroup(group_size), seed=seed + 1)
    # Process p's batch k is rows [p B, (p + 1) B) of global batch k: N processes train on exactly
    # the batches one process would, each reading (and joining, tokenising) only its own records.
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=list)
    if process_count > 1:
        ds = ds[process_index::process_count]  # rows [p B, (p + 1) B) of every global batch
    if docstores:
        ds = ds.map(JoinTexts(docstores))
    return ds.map(TokenizeGroups(encoder, pad_id))


def make_iterator(
    dataset: grain.MapDataset, num_threads: int = 2, prefetch: int = 4, then=None
):  # fmt: skip
    """A checkpointable iterator (`get_state` / `set_state`, grain's Orbax handler). `then`: a map
    run on each element in the caller's thread, after the prefetch (`packing.AgreeRows`: it talks
    to the other processes); the state stays the dataset's position."""
    ds = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    )
    return iter(ds.map(then) if then is not None else ds)
