"""Sequence packing: the packer's invariants, packed scores == unpacked scores (dense Qwen3,
Qwen3-MoE incl. expert parallelism on 8 devices, BERT, XLM-R) and embeddings (mean and last-token
pooling), a packed train step == the unpacked one (metrics and gradients, for the same families,
also for a step beyond the largest row count), and the step shapes: a few deterministic sizes, the
same on every process, never an overflow."""

import dataclasses
import types

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding

from querit_jax import sharding
from querit_jax.data import packing
from querit_jax.inference.runners import BatchedRunner
from querit_jax.models.decoder_config import DecoderConfig
from querit_jax.models.encoder_config import EncoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.models.spec import ModelSpec, abstract_params, init_params, place_params
from querit_jax.models.templates import encoder_pair, encoder_text, qwen3_embedding, qwen3_pair
from querit_jax.sharding import axes
from querit_jax.training import steps
from querit_jax.training.state import init_state, state_shardings

PAD = 0


def _spec(family, backbone, template=None):
    return ModelSpec(family, backbone, HeadConfig(), template or qwen3_pair(), 64)


SPECS = {
    "qwen3": _spec("qwen3", DecoderConfig.tiny(vocab_size=256, num_layers=2)),
    "qwen3_moe": _spec(
        "qwen3_moe",
        DecoderConfig.tiny_moe(vocab_size=256, num_experts_per_tok=2, norm_topk_prob=False),
    ),
    "bert": _spec("bert", EncoderConfig.tiny_bert(vocab_size=256), encoder_pair()),
    "xlm_roberta": _spec(
        "xlm_roberta", EncoderConfig.tiny_xlm_roberta(vocab_size=256), encoder_pair()
    ),
}


def _sequences(n, seed=0, lo=3, hi=64, typed=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, hi + 1, size=n)
    seqs = [rng.integers(3, 256, size=k).tolist() for k in lengths]
    # Token types as in BERT pairs: 0 for the query part, 1 for the document part.
    kinds = [[0] * (k // 3) + [1] * (k - k // 3) for k in lengths] if typed else None
    return seqs, kinds


# ----- the packer --------------------------------------------------------------------------------


@pytest.mark.parametrize("row_length,max_pairs", [(64, 16), (128, 3), (64, 1)])
def test_packer_loses_nothing_and_restores_order(row_length, max_pairs):
    seqs, kinds = _sequences(300, seed=row_length + max_pairs, typed=True)
    packed = packing.pack_sequences(seqs, row_length, max_pairs, PAD, kinds)
    place = packed.placement
    seg, ids = packed.segment_ids, packed.input_ids
    assert seg.shape == (place.num_rows, row_length)
    assert ((seg > 0).sum(-1) <= row_length).all() and (seg.max(-1) <= max_pairs).all()
    assert (seg > 0).sum() == sum(map(len, seqs))  # every token placed once
    for i, s in enumerate(seqs):  # each pair is one contiguous segment, read back in input order
        got = ids[place.row[i]][seg[place.row[i]] == place.slot[i] + 1]
        assert got.tolist() == s
        assert (
            packed.token_type_ids[place.row[i], place.offset[i] : place.offset[i] + len(s)].tolist()
            == kinds[i]
        )
    slot_values = np.full((place.num_rows, max_pairs), -1)
    slot_values[place.row, place.slot] = np.arange(len(seqs))
    np.testing.assert_array_equal(packing.unpack(slot_values, place), np.arange(len(seqs)))
    # best-fit decreasing is near the lower bound on rows
    lower = max(-(-sum(map(len, seqs)) // row_length), -(-len(seqs) // max_pairs))
    assert place.num_rows <= lower * 1.1 + 1


def test_packer_errors_are_clear():
    with pytest.raises(packing.PackingError, match="Pair 1 has 70 tokens"):
        packing.best_fit_decreasing([5, 70], 64, 4)
    with pytest.raises(packing.PackingError, match="do not fit into 2 rows"):
        packing.best_fit_decreasing([40, 40, 40], 64, 4, num_rows=2)


@pytest.mark.parametrize("multiple", [1, 2, 3, 4])
def test_most_rows_bounds_every_packing(multiple):
    """A step never needs more rows than `most_rows` (the shape the memory plan fits)."""
    rng = np.random.default_rng(multiple)
    for _ in range(50):
        n, max_pairs = int(rng.integers(1, 80)), int(rng.integers(1, 9))
        lengths = rng.integers(1, 65, size=n)
        if rng.random() < 0.3:
            lengths[:] = 64  # every pair at the budget: the worst case
        need = packing.rows_needed(lengths, multiple * 64, max_pairs)
        assert need <= packing.most_rows(n, multiple * 64, 64, max_pairs)


# ----- packed scoring == unpacked scoring ---------------------------------------------------------


def _runner(spec, mesh, rules, pack, max_pairs=16):
    graphdef, _ = abstract_params(spec, mesh, rules)
    tok = types.SimpleNamespace(pad_token_id=PAD)
    return BatchedRunner(spec, graphdef, tok, mesh, rules, 16, 64, pack=pack, max_pairs=max_pairs)


def _params(spec, seed=0):
    mesh, rules = sharding.single_device_mesh(), sharding.rules.resolve_rules("fsdp")
    return jax.tree.map(np.asarray, init_params(spec, mesh, rules, seed=seed)[1])


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe", "bert", "xlm_roberta"])
def test_packed_scores_equal_unpacked(family):
    spec = SPECS[family]
    if family == "qwen3_moe":
        spec = spec.replace(moe_impl="grouped")
    mesh, rules = sharding.single_device_mesh(), sharding.rules.resolve_rules("fsdp")
    _, abstract = abstract_params(spec, mesh, rules)
    params = place_params(_params(spec), abstract)
    seqs, kinds = _sequences(40, seed=1, typed=family == "bert")
    ref = _runner(spec, mesh, rules, pack=False).run(params, seqs, kinds)
    packed = _runner(spec, mesh, rules, pack=True, max_pairs=8).run(params, seqs, kinds)
    assert packed.shape == (40,)
    np.testing.assert_allclose(packed, ref, atol=1e-5, rtol=0)
    assert np.std(ref) > 1e-3  # scores differ between pairs, so a mix-up would show


# (CLS pooling reads the first token of each segment, as the packed BERT scores above do.)
@pytest.mark.parametrize("family,pooling", [("bert", "mean"), ("qwen3", "last")])
def test_packed_embeddings_equal_unpacked(family, pooling):
    """Embedders (a teacher, a dense first stage) pool each text's own tokens in a packed row."""
    template = encoder_text() if family == "bert" else qwen3_embedding()
    spec = ModelSpec(
        family, SPECS[family].backbone, HeadConfig("embed", pooling=pooling), template, 64
    )
    mesh, rules = sharding.single_device_mesh(), sharding.rules.resolve_rules("fsdp")
    params = place_params(_params(spec), abstract_params(spec, mesh, rules)[1])
    seqs, _ = _sequences(40, seed=4)
    unpacked = _runner(spec, mesh, rules, pack=False)
    assert unpacked._call_sizes(16) == [4, 8, 12, 16]  # the last 8 texts: a call of 8 rows
    ref = unpacked.run(params, seqs)
    packed = _runner(spec, mesh, rules, pack=True, max_pairs=8).run(params, seqs)
    assert ref.shape == packed.shape == (40, spec.backbone.hidden_size)
    np.testing.assert_allclose(packed, ref, atol=1e-5, rtol=0)
    assert np.abs(ref[1:] - ref[:-1]).max() > 1e-2  # texts embed differently: a mix-up would show


def test_packed_moe_scores_equal_unpacked_with_expert_parallelism_on_8_devices():
    rules = sharding.rules.resolve_rules("fsdp+ep")
    host = _params(SPECS["qwen3_moe"], seed=2)
    seqs, _ = _sequences(24, seed=3)
    dense = SPECS["qwen3_moe"].replace(moe_impl="dense")
    mesh1 = sharding.single_device_mesh()
    ref = _runner(dense, mesh1, rules, pack=False).run(
        place_params(host, abstract_params(dense, mesh1, rules)[1]), seqs
    )
    ep = SPECS["qwen3_moe"].replace(moe_impl="ep")
    mesh = sharding.make_mesh((2, 1, 1, 4))
    params = place_params(host, abstract_params(ep, mesh, rules)[1])
    got = _runner(ep, mesh, rules, pack=True, max_pairs=8).run(params, seqs)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


# ----- packed train step == unpacked train step
# ----------------------------------------------------


def _group_batch(q=4, g=4, t=48, seed=0, typed=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, t + 1, size=(q, g))
    seg = (np.arange(t)[None, None, :] < lengths[..., None]).astype(np.int32)
    # BERT pairs: token type 0 for the query's third of a pair, 1 for the document part
    types = (np.arange(t)[None, None, :] >= lengths[..., None] // 3) * seg if typed else 0 * seg
    return {
        "input_ids": (rng.integers(3, 256, size=(q, g, t)) * seg).astype(np.int32),
        "segment_ids": seg,
        "token_type_ids": types.astype(np.int32),
        "teacher": rng.normal(size=(q, g)).astype(np.float32),
        "has_teacher": np.ones(q, bool),
    }


def _train_step(spec, batch, mesh, rules):
    """One train step with plain SGD at learning rate 1, so new params = old params - gradients."""
    tx = optax.sgd(1.0)
    graphdef, abstract = abstract_params(spec, mesh, rules)
    state = init_state(
        place_params(_params(spec, seed=4), abstract), tx, state_shardings(abstract, tx, mesh)
    )
    moe = spec.backbone if spec.family == "qwen3_moe" else None
    step = jax.jit(
        steps.make_train_step(
            graphdef, tx, lambda s: 1.0, 1.0, moe, {"listwise_ce": 1.0, "kl": 0.5}
        )
    )
    batch_sharding = NamedSharding(mesh, sharding.logical_to_spec((axes.BATCH,), rules))
    with sharding.use_rules(mesh, rules):
        b = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}
        state, metrics = step(state, b)
    return {k: float(v) for k, v in metrics.items()}, jax.tree.map(np.asarray, state.params)


def _pack(batch, sizes, most, row_length=96, max_pairs=6):
    shapes = packing.StepShapes(row_length, tuple(sizes), most)
    return packing.PackGroups(shapes, max_pairs, PAD)(batch)


def _agreed(parts, agree):
    """Every process's packed part after `AgreeRows`, the processes' needs gathered in-process."""
    needs = [int((p["segment_ids"] > 0).any(-1).sum()) for p in parts]
    return [
        dataclasses.replace(agree, process_index=i, gather=lambda need: needs)(p)
        for i, p in enumerate(parts)
    ]


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe", "qwen3_moe_ep", "bert", "xlm_roberta"])
def test_packed_train_step_equals_unpacked(family):
    """One SGD step (new params = old - gradients): packed rows give the unpacked step's gradients,
    for expert parallelism on 8 devices (packed, against the unpacked dense MoE on one), for BERT
    with token types, and for a step beyond the largest row count (qwen3)."""
    mesh, rules = sharding.single_device_mesh(), sharding.rules.resolve_rules("fsdp")
    spec = SPECS[family.removesuffix("_ep")]
    ref_spec, ref_mesh, ref_rules = spec, mesh, rules
    if family == "qwen3_moe":
        spec = ref_spec = spec.replace(moe_impl="grouped")
    elif family == "qwen3_moe_ep":
        rules = ref_rules = sharding.rules.resolve_rules("fsdp+ep")
        ref_spec = spec.replace(moe_impl="dense")
        spec, mesh = spec.replace(moe_impl="ep"), sharding.make_mesh((2, 1, 1, 4))
    q, g = (8, 2) if family == "qwen3_moe_ep" else (4, 4)  # groups split over the 8 devices too
    batch = _group_batch(q, g, typed=family == "bert")
    lengths = (batch["segment_ids"] > 0).sum(-1).reshape(-1)
    rows = packing.rows_needed(lengths, 96, 6)
    assert lengths.sum() / (rows * 96) > 0.7  # denser than the padded batch
    if family == "qwen3_moe_ep":
        rows = -(-rows // 8) * 8  # rows split over the 8 devices' batch axes
    packed = _pack(batch, (rows,), rows)
    if family == "qwen3":
        # The overflow that used to stop a run (a PackingError naming data.pack_rows): a step that
        # needs more rows than every size takes the most rows a step can need, and trains the same.
        rows = packing.most_rows(q * g, 96, 48, 6)  # pairs of <= 48 tokens: two per row at least
        packed = _pack(batch, (2,), rows)
        assert rows == 8 and packing.rows_needed(lengths, 96, 6) > 2
    assert packed["input_ids"].shape == (rows, 96) and packed["pair_row"].shape == (q, g)
    if family == "bert":
        assert packed["token_type_ids"].any() and (packed["token_type_ids"] <= 1).all()
    ref_metrics, ref = _train_step(ref_spec, batch, ref_mesh, ref_rules)
    metrics, got = _train_step(spec, packed, mesh, rules)
    for key in ("loss", "accuracy", "grad_norm", "loss/kl"):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], atol=1e-5, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))


def test_each_step_takes_the_smallest_size_and_processes_pack_their_own_groups():
    """Steps take the smallest size that holds them (deterministically). Process i of 2 packs only
    its own groups (block i of the batch); `AgreeRows` gives both the step's rows (the size that
    holds twice the larger need), pads each block to half of them and numbers rows globally: the
    step holds the same pairs as the one-process packing."""
    batches = [_group_batch(seed=s) for s in range(6)]
    lengths = [(b["segment_ids"] > 0).sum(-1).reshape(-1) for b in batches]
    needed = [packing.rows_needed(x, 96, 6) for x in lengths]
    sizes = packing.row_sizes(needed, 2, 16)
    assert sizes == tuple(sorted(sizes)) and len(sizes) <= packing.NUM_SIZES
    assert all(s % 2 == 0 for s in sizes) and sizes[-1] >= max(needed)
    for b, need in zip(batches, needed):
        whole = _pack(b, sizes, 16)
        rows = whole["input_ids"].shape[0]
        assert rows == min(s for s in sizes if s >= need)
        for key, value in _pack(b, sizes, 16).items():  # the same batch packs the same way
            np.testing.assert_array_equal(value, whole[key])
        shapes = packing.StepShapes(96, tuple(sizes), 16)
        halves = [{k: v[2 * i : 2 * i + 2] for k, v in b.items()} for i in range(2)]
        parts = [packing.PackGroups(shapes, 6, PAD, 2)(h) for h in halves]
        needs = [int((p["segment_ids"] > 0).any(-1).sum()) for p in parts]
        assert needs == [packing.rows_needed((h["segment_ids"] > 0).sum(-1).ravel(), 96, 6)
                         for h in halves]  # fmt: skip
        parts = _agreed(parts, packing.AgreeRows(shapes, PAD, 0, 2))
        step = shapes.rows_for(2 * max(needs))
        assert [p["input_ids"].shape for p in parts] == [(step // 2, 96)] * 2
        assert _packed_pairs(parts) == _packed_pairs([whole])
        for key in ("teacher", "has_teacher"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
        assert parts[1]["pair_row"].min() >= step // 2 and parts[0]["pair_row"].max() < step // 2
        assert whole["slot_valid"].sum() == 16 and whole["pair_row"].max() < rows


def test_packed_grain_pipeline_takes_a_few_shapes_resumes_exactly_and_never_overflows(tokenizer):
    from querit_jax.data import pipeline
    from querit_jax.data.tokenize import PairEncoder

    encoder = PairEncoder(tokenizer, qwen3_pair(), 64, 16)
    ds = pipeline.train_dataset(_records(), encoder, PAD, 2, 4, seed=0)
    cfg = types.SimpleNamespace(pack_rows=0, pack_length=0, max_length=64, pack_max_pairs=8)
    packed, shapes, _ = packing.pack_train_dataset(ds, cfg, PAD, row_multiple=2)
    assert packing.pack_train_dataset(ds, cfg, PAD, row_multiple=2)[1] == shapes  # deterministic
    assert all(s % 2 == 0 for s in shapes.sizes) and len(shapes.sizes) <= packing.NUM_SIZES
    allowed = {(r, shapes.row_length) for r in (*shapes.sizes, shapes.fallback)}
    it = pipeline.make_iterator(packed, num_threads=1)
    first = [next(it) for _ in range(6)]
    assert {b["input_ids"].shape for b in first} <= allowed
    state = it.get_state()
    want = next(it)
    it2 = pipeline.make_iterator(packed, num_threads=1)
    it2.set_state(state)
    got = next(it2)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    for i, b in enumerate(first):  # every pair of every group is in the rows, once
        assert b["slot_valid"].sum() == 8
        assert (b["segment_ids"] > 0).sum() == ds[i]["segment_ids"].sum()
    # The memory plan's batch is at least the largest shape a step can take.
    rows, length = packing.largest_step(cfg, 8, 2)
    assert length >= shapes.row_length and rows * length >= shapes.fallback * shapes.row_length

    # One size (data.pack_rows) far too small for any step: every step runs in the most rows a step
    # can need, none stops.
    small = types.SimpleNamespace(pack_rows=1, pack_length=64, max_length=64, pack_max_pairs=8)
    overflowing, shapes, _ = packing.pack_train_dataset(ds, small, PAD, row_multiple=2)
    assert shapes.sizes == (2,) and shapes.fallback == 8  # one pair per row at most: 8 rows
    for i in range(4):
        batch = overflowing[i]
        assert batch["input_ids"].shape == (8, 64) and batch["slot_valid"].sum() == 8


def test_packing_refuses_a_mesh_where_a_process_rows_are_not_one_block(monkeypatch):
    """pair_row numbers process i's rows from i * rows_per_process; a batch sharding that does not
    give
    each process that block would gather scores from the wrong rows, so setup refuses it."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from querit_jax.errors import ConfigError

    mesh = Mesh(np.array(jax.devices()), ("data",))
    batch = NamedSharding(mesh, P("data"))
    packing.check_process_rows(batch, 4 * jax.device_count())  # one process: its rows are all rows
    # Pretend to be process 0 of 2 while this process addresses every row: not the block [0, G/2).
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"data.pack with 2 processes.*data.pack=False"):
        packing.check_process_rows(batch, 4 * jax.device_count())


def _records(n=12, seed=0):
    rng = np.random.default_rng(seed)
    words = "the a packed row holds several pairs of very unequal length".split()
    text = lambda k: " ".join(rng.choice(words, size=k))  # noqa: E731
    return [
        {
            "query": text(4),
            "pos": [text(int(rng.integers(2, 40)))],
            "neg": [text(int(rng.integers(2, 40))) for _ in range(5)],
            "pos_scores": [1.0],
            "neg_scores": [0.0] * 5,
            "has_scores": True,
        }
        for _ in range(n)
    ]


def _packed_pairs(parts):
    """{(query, document): token ids} of a step's packed batch, given as every process's part
    (their rows and groups in process order; pair_row/pair_slot read back)."""
    ids, seg = (np.concatenate([p[k] for p in parts]) for k in ("input_ids", "segment_ids"))
    row, slot = (np.concatenate([p[k] for p in parts]) for k in ("pair_row", "pair_slot"))
    return {(q, g): tuple(ids[r][seg[r] == slot[q, g] + 1]) for (q, g), r in np.ndenumerate(row)}


def test_a_packed_step_is_the_same_pairs_on_any_process_count_and_resumes_across_counts(
    tokenizer, tmp_path
):
    """Process i of N packs its own groups of each global batch, and the processes agree on the
    step's rows: a step holds the same pairs (the same tokens) on any process count, and a run
    saved by 2 processes resumes on 1 (and back) from the same position."""
    import jax.numpy as jnp

    from querit_jax.data import pipeline
    from querit_jax.data.tokenize import PairEncoder
    from querit_jax.errors import CheckpointError
    from querit_jax.training.checkpointing import Checkpointer

    encoder = PairEncoder(tokenizer, qwen3_pair(), 64, 16)
    records = _records()

    def packed(index, count):  # as training/inputs.py builds it
        ds = pipeline.train_dataset(records, encoder, PAD, 4 // count, 4, 0, index, count)
        sample = pipeline.train_dataset(records, encoder, PAD, 4, 4, 0)  # the global batches
        cfg = types.SimpleNamespace(pack_rows=0, pack_length=0, max_length=64, pack_max_pairs=8)
        return packing.pack_train_dataset(ds, cfg, PAD, 2, index, count, sample=sample)

    one, two = packed(0, 1)[0], [packed(0, 2), packed(1, 2)]
    assert two[0][1] == two[1][1]  # the same step shapes in both processes
    for step in (0, 5):
        parts = _agreed([two[0][0][step], two[1][0][step]], two[0][2])
        assert parts[0]["input_ids"].shape == parts[1]["input_ids"].shape  # one global shape
        for key in ("teacher", "has_teacher"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), one[step][key])
        want = _packed_pairs([one[step]])
        assert _packed_pairs(parts) == want and len(want) == 16

    # A checkpoint whose iterator states were saved by 2 processes restores on this 1 process.
    directory = str(tmp_path / "checkpoints")
    ckpt = Checkpointer(directory, keep=2, async_save=False)
    it = pipeline.make_iterator(one, num_threads=1)
    for _ in range(3):
        next(it)
    ckpt.save(3, {"w": jnp.zeros(4)}, it, {})
    ckpt.close()
    item = tmp_path / "checkpoints" / "3" / "data_iter"
    state = (item / "process_0-of-1.json").read_text()
    (item / "process_0-of-1.json").unlink()
    for name in ("process_0-of-2.json", "process_1-of-2.json"):
        (item / name).write_text(state)
    fresh = pipeline.make_iterator(one, num_threads=1)
    Checkpointer(directory, keep=2, async_save=False).restore(3, {"w": jnp.zeros(4)}, fresh)
    resumed = next(fresh)
    for key, value in one[3].items():
        np.testing.assert_array_equal(resumed[key], value)
    # Saved positions that disagree cannot be right for any process: refused, not guessed.
    (item / "process_1-of-2.json").write_text(state.replace("3", "4"))
    with pytest.raises(CheckpointError, match="differing input iterator states"):
        Checkpointer(directory, keep=2, async_save=False).restore(
            3, {"w": jnp.zeros(4)}, pipeline.make_iterator(one, num_threads=1)
        )
