"""Sharding: meshes from config, rule presets, shape-first init, and 8-device steps equal to 1
device."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

from querit_jax import sharding
from querit_jax.config_lib import OptimConfig
from querit_jax.models.decoder_config import DecoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.models.spec import ModelSpec, abstract_params, init_params, place_params
from querit_jax.models.templates import qwen3_pair
from querit_jax.sharding import axes
from querit_jax.training import losses, optim, steps
from querit_jax.training.state import init_state, state_shardings

SPEC = ModelSpec("qwen3", DecoderConfig.tiny(vocab_size=512), HeadConfig(), qwen3_pair(), 32)


def test_mesh_shape_resolution():
    assert sharding.resolve_mesh_shape((-1, 1, 1, 1), 8) == (8, 1, 1, 1)
    assert sharding.resolve_mesh_shape((2, -1, 2, 1), 8) == (2, 2, 2, 1)
    with pytest.raises(ValueError, match="at most one axis"):
        sharding.resolve_mesh_shape((-1, -1, 1, 1), 8)
    with pytest.raises(ValueError, match="does not divide"):
        sharding.resolve_mesh_shape((3, -1, 1, 1), 8)
    with pytest.raises(ValueError, match="uses 4 devices but 8"):
        sharding.resolve_mesh_shape((2, 2, 1, 1), 8)
    mesh = sharding.make_mesh((2, -1, 1, 1))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1, "expert": 1}


def test_every_logical_axis_has_a_rule_in_every_preset():
    for name in sharding.rules.PRESETS:
        table = dict(sharding.rules.resolve_rules(name))
        assert set(axes.ALL_AXES) <= set(table), name
    with pytest.raises(ValueError, match="unknown logical axis"):
        sharding.rules.resolve_rules("fsdp", {"embedd": "fsdp"})


def test_indivisible_parameter_names_the_parameter():
    spec = ModelSpec(
        "qwen3",
        DecoderConfig.tiny(vocab_size=512, hidden_size=100, head_dim=26),
        HeadConfig(),
        qwen3_pair(),
        32,
    )
    mesh = sharding.make_mesh((1, 8, 1, 1))
    with pytest.raises(
        ValueError, match=r"embed_tokens.*embedding.*dimension 1 \(embed=100\).*fsdp"
    ):
        abstract_params(spec, mesh, sharding.rules.resolve_rules("fsdp"))


def test_sharded_init_places_shards_and_matches_single_device_init():
    rules = sharding.rules.resolve_rules("fsdp+tp")
    mesh = sharding.make_mesh((1, 4, 2, 1))
    _, sharded = init_params(SPEC, mesh, rules, seed=3)
    _, single = init_params(SPEC, sharding.single_device_mesh(), rules, seed=3)
    q = sharded["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"]
    assert tuple(q.sharding.spec) == ("fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (128 // 4, 4 // 2, 32)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _batch(seed=0, q=8, g=2, t=32):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, t + 1, size=(q, g))
    seg = (np.arange(t)[None, None, :] < lengths[..., None]).astype(np.int32)
    ids = rng.integers(1, 512, size=(q, g, t)).astype(np.int32) * seg
    return {"input_ids": ids, "segment_ids": seg}


def _one_step(mesh, rules, host_params, batch):
    # The production optimiser (general_relevance.py: AdamW, peak lr 2e-5), without warmup. Adam's
    # first update is lr * g / (|g| + eps): scale-free, and summation-order noise in near-zero
    # gradients becomes up to ~15% of lr, so the parameter check alone would miss a scale bug and
    # flag noise at large lr; gradients and their global norm are compared separately.
    tx, schedule = optim.make_optimizer(OptimConfig(learning_rate=2e-5, warmup_steps=0), 10)
    graphdef, abstract = abstract_params(SPEC, mesh, rules)
    params = place_params(host_params, abstract)
    shardings = state_shardings(abstract, tx, mesh)
    state = init_state(params, tx, shardings)
    batch_sharding = NamedSharding(mesh, sharding.logical_to_spec((axes.BATCH,), rules))
    step = jax.jit(
        steps.make_train_step(graphdef, tx, schedule, 1.0),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, None),
        donate_argnums=(0,),
    )

    def loss_fn(p, b):
        return losses.listwise_ce(steps.group_scores(graphdef, p, b))

    with sharding.use_rules(mesh, rules):
        batch = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}
        grads = jax.tree.map(np.asarray, jax.jit(jax.grad(loss_fn))(state.params, batch))
        state, metrics = step(state, batch)
    return (
        float(metrics["loss"]),
        float(metrics["grad_norm"]),
        grads,
        jax.tree.map(np.asarray, state.params),
        state,
    )


@pytest.mark.parametrize(
    "preset,shape", [("dp", (8, 1, 1, 1)), ("fsdp", (2, 4, 1, 1)), ("fsdp+tp", (1, 4, 2, 1))]
)
def test_train_step_on_8_devices_equals_1_device(preset, shape):
    rules = sharding.rules.resolve_rules(preset)
    _, host = init_params(SPEC, sharding.single_device_mesh(), rules, seed=1)
    host = jax.tree.map(np.asarray, host)
    batch = _batch()
    ref_loss, ref_norm, ref_grads, ref_params, _ = _one_step(
        sharding.single_device_mesh(), rules, host, batch
    )
    mesh = sharding.make_mesh(shape)
    loss, norm, grads, params, state = _one_step(mesh, rules, host, batch)
    embedding = state.params["model"]["embed_tokens"]["embedding"]
    assert len(embedding.sharding.device_set) == 8
    if preset != "dp":  # fsdp shards the weights themselves, not only the batch
        assert embedding.addressable_shards[0].data.shape[1] < embedding.shape[1]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm, ref_norm, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(
            a, b, rtol=0, atol=1e-5 * max(np.abs(b).max(), 1e-6), err_msg=jax.tree_util.keystr(path)
        )
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(ref_params)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))
