"""Compute choices: remat policies change memory, never numbers; bf16 compute with float32 master
weights stays close to float32; a train step makes no host transfers once its inputs are placed."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from querit_jax import config_lib, sharding
from querit_jax.data.templates import encoder_pair, qwen3_pair
from querit_jax.models import api
from querit_jax.models.config import DecoderConfig
from querit_jax.models.encoder_config import EncoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.training import losses, steps
from querit_jax.training.state import init_state, state_shardings

MESH = sharding.single_device_mesh()
RULES = sharding.rules.resolve_rules("fsdp")


def _spec(family="qwen3", **fields):
    if family == "qwen3":
        backbone, template = DecoderConfig.tiny(vocab_size=256, **fields), qwen3_pair()
    else:
        backbone, template = EncoderConfig.tiny_bert(vocab_size=256, **fields), encoder_pair()
    return api.ModelSpec(family, backbone, HeadConfig(), template, 32)


def _batch(q=2, g=4, t=32, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, t + 1, size=(q, g))
    seg = (np.arange(t)[None, None, :] < lengths[..., None]).astype(np.int32)
    return {
        "input_ids": (rng.integers(3, 256, size=(q, g, t)) * seg).astype(np.int32),
        "segment_ids": seg,
    }


def _loss_and_grads(spec, host, batch):
    graphdef, abstract = api.abstract_params(spec, MESH, RULES)
    params = api.place_params(host, abstract)
    loss_fn = lambda p: losses.listwise_ce(steps.group_scores(graphdef, p, batch))  # noqa: E731
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    return float(loss), jax.tree.map(np.asarray, grads)


def test_remat_policies_give_the_same_loss_and_gradients(family="qwen3"):
    # (the encoder goes through the same `layers.maybe_remat`)
    host = jax.tree.map(np.asarray, api.init_params(_spec(family), MESH, RULES, seed=1)[1])
    batch = _batch()
    ref_loss, ref_grads = _loss_and_grads(_spec(family), host, batch)
    for remat in ("full", "dots_saveable"):
        loss, grads = _loss_and_grads(_spec(family, remat=remat), host, batch)
        np.testing.assert_allclose(loss, ref_loss, atol=1e-6, rtol=0)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_bad_remat_policy_is_a_config_error():
    with pytest.raises(config_lib.ConfigError, match="model.remat_policy"):
        config_lib.from_config_dict({"model": {"remat": True, "remat_policy": "sometimes"}})
    with pytest.raises(ValueError, match="choose none, full"):
        _spec(remat="sometimes")


def test_bf16_compute_with_float32_master_weights_is_close_to_float32():
    host = jax.tree.map(np.asarray, api.init_params(_spec(), MESH, RULES, seed=2)[1])
    batch = _batch(seed=3)
    ref_loss, ref_grads = _loss_and_grads(_spec(), host, batch)
    loss, grads = _loss_and_grads(_spec(dtype="bfloat16", param_dtype="float32"), host, batch)
    assert all(g.dtype == np.float32 for g in jax.tree.leaves(grads))  # master weights stay fp32
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-2)
    flat, ref_flat = (
        np.concatenate([x.ravel() for x in jax.tree.leaves(t)]) for t in (grads, ref_grads)
    )
    cosine = flat @ ref_flat / (np.linalg.norm(flat) * np.linalg.norm(ref_flat))
    assert cosine > 0.98


def test_train_step_makes_no_host_transfers():
    spec = _spec()
    tx = optax.adamw(1e-3)
    graphdef, abstract = api.abstract_params(spec, MESH, RULES)
    shardings = state_shardings(abstract, tx, MESH)
    state = init_state(api.init_params(spec, MESH, RULES)[1], tx, shardings)
    step = jax.jit(
        steps.make_train_step(graphdef, tx, optax.constant_schedule(1e-3), 1.0),
        donate_argnums=(0,),
    )
    batch = jax.device_put(_batch())
    jax.block_until_ready((state, batch))
    with jax.transfer_guard("disallow"):
        for _ in range(2):  # the compiling call and a cached one
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    assert int(state.step) == 2 and jnp.isfinite(metrics["loss"])
