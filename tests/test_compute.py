"""Compute choices: remat policies change memory, never numbers; bf16 compute with float32 master
weights stays close to float32; a train step makes no host transfers once its inputs are placed;
scanning over the layers gives the loop's numbers while compiling one layer instead of N."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from querit_jax import config_lib, sharding
from querit_jax.models.decoder_config import DecoderConfig
from querit_jax.models.encoder_config import EncoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.models.spec import ModelSpec, abstract_params, init_params, place_params
from querit_jax.models.templates import encoder_pair, qwen3_pair
from querit_jax.training import losses, steps
from querit_jax.training.state import init_state, state_shardings

MESH = sharding.single_device_mesh()
RULES = sharding.rules.resolve_rules("fsdp")


def _spec(family="qwen3", **fields):
    if family == "qwen3":
        backbone, template = DecoderConfig.tiny(vocab_size=256, **fields), qwen3_pair()
    else:
        backbone, template = EncoderConfig.tiny_bert(vocab_size=256, **fields), encoder_pair()
    return ModelSpec(family, backbone, HeadConfig(), template, 32)


def _batch(q=2, g=4, t=32, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, t + 1, size=(q, g))
    seg = (np.arange(t)[None, None, :] < lengths[..., None]).astype(np.int32)
    return {
        "input_ids": (rng.integers(3, 256, size=(q, g, t)) * seg).astype(np.int32),
        "segment_ids": seg,
    }


def _loss_and_grads(spec, host, batch):
    graphdef, abstract = abstract_params(spec, MESH, RULES)
    params = place_params(host, abstract)
    loss_fn = lambda p: losses.listwise_ce(steps.group_scores(graphdef, p, batch))  # noqa: E731
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    return float(loss), jax.tree.map(np.asarray, grads)


def _checkpoint_policies(jaxpr) -> list:
    """The policy of every checkpoint (remat) primitive in a closed jaxpr, sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("checkpoint", "remat2"):  # jax.checkpoint's primitive
            found.append(eqn.params["policy"])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found.extend(_checkpoint_policies(sub))
    return found


@pytest.mark.parametrize("family", ["qwen3", "bert"])
def test_remat_policies_give_the_same_loss_and_gradients(family):
    """Every policy the config accepts is applied (the traced program holds one checkpoint per layer
    with that policy) and gives the loss and gradients of no remat. The encoder goes through the
    same `layers.maybe_remat`, so for BERT only the program is checked (the numbers cost ~30 s)."""
    from querit_jax.models.layers import REMAT_POLICIES

    batch = _batch()
    if family == "qwen3":
        host = jax.tree.map(np.asarray, init_params(_spec(family), MESH, RULES, seed=1)[1])
        ref_loss, ref_grads = _loss_and_grads(_spec(family), host, batch)
    assert set(REMAT_POLICIES) == {"full", "dots_saveable", "dots_with_no_batch_dims_saveable"}
    for remat in (False, *REMAT_POLICIES):
        spec = _spec(family, remat=remat)
        # remat is applied at all, once per layer, with the configured policy
        graphdef, abstract = abstract_params(spec, MESH, RULES)
        loss_fn = lambda p, g=graphdef: losses.listwise_ce(  # noqa: E731
            steps.group_scores(g, p, batch)
        )
        policies = _checkpoint_policies(jax.make_jaxpr(loss_fn)(abstract).jaxpr)
        want = [] if remat is False else [REMAT_POLICIES[remat]] * spec.backbone.num_layers
        assert policies == want, (remat, policies)
        if remat is False or family != "qwen3":
            continue
        loss, grads = _loss_and_grads(spec, host, batch)
        np.testing.assert_allclose(loss, ref_loss, atol=1e-6, rtol=0)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_bad_remat_policy_is_a_config_error():
    with pytest.raises(config_lib.ConfigError, match="model.remat_policy"):
        config_lib.from_config_dict({"model": {"remat": True, "remat_policy": "sometimes"}})
    with pytest.raises(ValueError, match="choose none, full"):
        _spec(remat="sometimes")


def test_bf16_compute_with_float32_master_weights_is_close_to_float32():
    host = jax.tree.map(np.asarray, init_params(_spec(), MESH, RULES, seed=2)[1])
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
    graphdef, abstract = abstract_params(spec, MESH, RULES)
    shardings = state_shardings(abstract, tx, MESH)
    state = init_state(init_params(spec, MESH, RULES)[1], tx, shardings)
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


# ----- scan over layers: same numbers and parameter layout as the loop, one layer compiled
# -----------


def _scores_and_grads(spec, host, batch):
    graphdef, abstract = abstract_params(spec, MESH, RULES)
    params = place_params(host, abstract)

    def loss_fn(p):
        scores = steps.group_scores(graphdef, p, batch)
        return losses.listwise_ce(scores), scores

    (_, scores), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    return jax.tree.map(np.asarray, (scores, grads))


def _assert_trees_close(a, b, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.mark.parametrize("family,remats", [("qwen3", (False, "full")), ("bert", (False,))])
def test_scan_layers_gives_the_loop_scores_gradients_and_parameter_layout(family, remats):
    loop, scan = _spec(family, num_layers=3), _spec(family, num_layers=3, scan_layers=True)
    host = jax.tree.map(np.asarray, init_params(loop, MESH, RULES, seed=4)[1])
    # the layout checkpoints, HF conversion and merge plans read does not change
    scan_layout = abstract_params(scan, MESH, RULES)[1]
    assert jax.tree.structure(scan_layout) == jax.tree.structure(host)
    batch = _batch(g=2, t=16, seed=5)
    ref = _scores_and_grads(loop, host, batch)
    for remat in remats:  # remat applies to the scanned layer body too
        _assert_trees_close(_scores_and_grads(scan.replace(remat=remat), host, batch), ref)


def test_scan_layers_is_wired_from_the_experiment_config():
    from tests.helpers import load_config

    config = load_config("configs/general_relevance.py", "tiny")
    assert config_lib.from_config_dict(config).model.backbone_config().scan_layers is False
    config.model.scan_layers = True
    assert config_lib.from_config_dict(config).model.backbone_config().scan_layers is True


def test_scan_layers_on_a_moe_with_dense_layers_keeps_scores_aux_losses_and_updates():
    # layers 0-1 dense, 2-3 sparse: two scanned runs; the router logits of the sparse layers, the
    # load-balancing and z losses, the per-layer expert load and the updated parameters all match.
    def spec(scan):
        backbone = DecoderConfig.tiny_moe(
            vocab_size=256,
            num_layers=4,
            mlp_only_layers=(0, 1),
            router_z_loss_coef=1e-3,
            scan_layers=scan,
        )
        return ModelSpec("qwen3_moe", backbone, HeadConfig(), qwen3_pair(), 32)

    # SGD: the update is the gradient times a constant, so comparing updated parameters compares
    # gradients (Adam's division by sqrt(v) blows float noise in near-zero gradients up to 1e-5).
    tx = optax.sgd(1e-2)
    batch = jax.device_put(_batch(g=2, t=16, seed=6))
    host = jax.tree.map(np.asarray, init_params(spec(False), MESH, RULES, seed=7)[1])
    results = []
    for scan in (False, True):
        s = spec(scan)
        graphdef, abstract = abstract_params(s, MESH, RULES)
        params = place_params(host, abstract)
        forward = functools.partial(steps.group_scores, graphdef, batch=batch, return_aux=True)
        scores, aux = jax.jit(forward)(params)
        state = init_state(params, tx, state_shardings(abstract, tx, MESH))
        step = steps.make_train_step(graphdef, tx, optax.constant_schedule(1e-3), 1.0, s.backbone)
        state, metrics = jax.jit(step)(state, batch)
        results.append((scores, aux["router_logits"], metrics, state.params))
    (scores, logits, metrics, params), ref = results[1], results[0]
    assert len(logits) == len(ref[1]) == 2
    assert {"aux_loss", "z_loss", "expert_load_max/layer_3"} <= set(metrics)
    _assert_trees_close((scores, logits, metrics), ref[:3])
    _assert_trees_close(params, ref[3])


def _dot_count(num_layers: int, scan: bool) -> tuple[int, str]:
    spec = _spec(num_layers=num_layers, scan_layers=scan)
    graphdef, abstract = abstract_params(spec, MESH, RULES)
    batch = _batch()
    text = jax.jit(lambda p: steps.group_scores(graphdef, p, batch)).lower(abstract).as_text()
    return text.count("dot_general"), text


def test_scanned_forward_is_a_while_loop_whose_program_does_not_grow_with_depth():
    loop_dots, loop_text = _dot_count(6, scan=False)
    scan_dots, scan_text = _dot_count(6, scan=True)
    assert "stablehlo.while" in scan_text and "stablehlo.while" not in loop_text
    assert _dot_count(2, scan=True)[0] == scan_dots  # one traced layer whatever the depth
    assert loop_dots >= 5 * scan_dots - 10  # the loop unrolls all 6 layers
