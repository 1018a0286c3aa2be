"""Qwen3-MoE: HF parity (sequence classification with routing agreement, the causal LM's yes/no
scores, the base model as an embedder), expert-parallel == dense (forward and gradients, with idle
experts and an idle device), the load-balancing loss against transformers', sharded training,
config validation."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import NamedSharding

from querit_jax import config_lib, sharding
from querit_jax.config_lib import OptimConfig
from querit_jax.convert.safetensors_io import read_file
from querit_jax.data.tokenize import PairEncoder, pad_batch
from querit_jax.loading import load_model
from querit_jax.models.decoder_config import DecoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.models.spec import ModelSpec, abstract_params, init_params, place_params
from querit_jax.models.templates import qwen3_pair
from querit_jax.release.export import export_hf
from querit_jax.sharding import axes
from querit_jax.training import losses, optim, steps
from querit_jax.training.state import init_state, state_shardings
from tests.fixtures import make_hf_qwen3_moe
from tests.helpers import load_config

QUERIES = [
    "How many points did the Panthers defense surrender?",
    "黑豹队的防守丢了多少分",
    "Сколько очков?",
    "a",
]
DOCS = [
    "The Panthers defense gave up just 308 points.",
    "黑豹队的防守只丢了 308分。",
    "Защита пропустила 308 очков.",
    "Ein sehr langes Dokument. " * 20,
]


def _hf_moe(tmp_path, norm, mlp_only, seed=0):
    out = make_hf_qwen3_moe(
        str(tmp_path / "hf"), "seq_cls", norm_topk_prob=norm, mlp_only_layers=mlp_only, seed=seed
    )
    return out, transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()


@pytest.mark.parametrize("norm,mlp_only", [(False, []), (True, []), (True, [1])])
def test_hf_parity_routing_and_round_trip(tmp_path, norm, mlp_only):
    hf_dir, ref = _hf_moe(tmp_path, norm, mlp_only)
    model = load_model(hf_dir)
    cfg = model.spec.backbone
    assert model.spec.family == "qwen3_moe" and cfg.norm_topk_prob == norm
    assert [cfg.is_sparse(i) for i in range(3)] == [i not in mlp_only for i in range(3)]
    for left in (False, True):
        seqs = PairEncoder(model.tokenizer, model.spec.template, 96)(QUERIES, DOCS)
        ids, seg, _ = pad_batch(seqs, 96, model.tokenizer.pad_token_id, left=left)
        with torch.no_grad():
            inputs = {
                "input_ids": torch.tensor(ids, dtype=torch.long),
                "attention_mask": torch.tensor(seg),
            }
            out = ref(**inputs)
            router = ref.model(**inputs, output_router_logits=True).router_logits
        scores, aux = model.module()(jnp.asarray(ids), jnp.asarray(seg), return_aux=True)
        np.testing.assert_allclose(
            np.asarray(scores)[:, 0], out.logits[:, 0].numpy(), atol=1e-4, rtol=0
        )
        real = seg.reshape(-1).astype(bool)
        hf_layers = [lg for lg in router if lg is not None]
        assert len(hf_layers) == len(aux["router_logits"])
        for ours_lg, hf_lg in zip(aux["router_logits"], hf_layers):
            ours_top = np.sort(np.asarray(jax.lax.top_k(ours_lg.reshape(-1, 8), 2)[1]), -1)[real]
            hf_top = np.sort(torch.topk(hf_lg, 2).indices.numpy(), -1)[real]
            assert np.mean(np.all(ours_top == hf_top, -1)) >= 0.999

    out_dir = export_hf(model, str(tmp_path / "export"))
    original, back = (
        read_file(os.path.join(hf_dir, "model.safetensors")),
        read_file(os.path.join(out_dir, "model.safetensors")),
    )
    assert set(back) == set(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(back[name], tensor, err_msg=name)
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(out_dir).eval()
    assert exported.config.num_experts == 8
    with torch.no_grad():
        again = exported(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(seg)
        ).logits[:, 0]
    np.testing.assert_allclose(again.numpy(), out.logits[:, 0].numpy(), atol=1e-5)


def _moe_batch(model, max_length):
    seqs = PairEncoder(model.tokenizer, model.spec.template, max_length)(QUERIES, DOCS)
    ids, seg, _ = pad_batch(seqs, max_length, model.tokenizer.pad_token_id, left=True)
    return ids, seg


def test_causal_lm_yes_no_scores_match_transformers(tmp_path):
    """Qwen3MoeForCausalLM as a Qwen3-Reranker-style yes/no scorer: logit(yes) - logit(no) at the
    last real token equals transformers' (left padding; scores spread over ~1)."""
    hf_dir = make_hf_qwen3_moe(str(tmp_path / "hf"), "causal_lm")
    model = load_model(hf_dir)
    assert model.spec.family == "qwen3_moe" and model.spec.head.kind == "yes_no"
    ids, seg = _moe_batch(model, 200)
    lm = transformers.Qwen3MoeForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(seg)).logits.numpy()
    rows = logits[:, -1]  # left padding: every pair ends at the last position
    ref = rows[:, model.spec.head.yes_token_id] - rows[:, model.spec.head.no_token_id]
    ours = np.asarray(model.module()(jnp.asarray(ids), jnp.asarray(seg)))[:, 0]
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert np.ptp(ref) > 0.1, ref


def test_embedder_matches_transformers_last_token(tmp_path):
    """Qwen3MoeModel as a Qwen3-Embedding-style embedder: the normalised last-token state."""
    from querit_jax.inference.runners import embedder_for

    hf_dir = make_hf_qwen3_moe(str(tmp_path / "hf"), "base")
    model = load_model(hf_dir, head="embed")
    assert model.spec.family == "qwen3_moe" and model.spec.head.pooling == "last"
    emb = embedder_for(model, batch_size=4)
    texts = [*QUERIES[:3], DOCS[0]]
    ours = emb.embed(model.params, texts, "query")
    seqs = emb.encoder(texts, "query")
    ids, seg, _ = pad_batch(seqs, max(map(len, seqs)), model.tokenizer.pad_token_id, left=True)
    base = transformers.Qwen3MoeModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        hidden = base(input_ids=torch.tensor(ids), attention_mask=torch.tensor(seg))
    ref = torch.nn.functional.normalize(hidden.last_hidden_state[:, -1], dim=-1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    cosines = ref @ ref.T
    assert cosines[np.triu_indices(len(texts), 1)].max() < 0.99  # the texts embed differently


def test_load_balancing_loss_equals_transformers():
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    rng = np.random.default_rng(0)
    mask = np.ones((3, 7), np.int64)
    mask[0, 5:] = 0
    mask[2, :3] = 0  # left padding
    logits = [rng.standard_normal((21, 8)).astype(np.float32) * 2 for _ in range(3)]
    ref = load_balancing_loss_func(tuple(torch.tensor(x) for x in logits), 8, 2, torch.tensor(mask))
    ours = losses.load_balancing_loss([jnp.asarray(x) for x in logits], jnp.asarray(mask), 2)
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-6)
    unmasked = load_balancing_loss_func(tuple(torch.tensor(x) for x in logits), 8, 2)
    np.testing.assert_allclose(
        float(losses.load_balancing_loss(logits, np.ones((21,)), 2)), float(unmasked), rtol=1e-6
    )


SPEC = ModelSpec(
    "qwen3_moe",
    # top-2 with unnormalised weights: the routing weights differ per token and carry gradient, so
    # a wrong weight permutation in any combine would show
    DecoderConfig.tiny_moe(vocab_size=512, num_experts_per_tok=2, norm_topk_prob=False),
    HeadConfig(),
    qwen3_pair(),
    32,
)


def _batch(q=8, g=2, t=16, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, t + 1, size=(q, g))
    seg = (np.arange(t)[None, None, :] < lengths[..., None]).astype(np.int32)
    return {
        "input_ids": rng.integers(1, 512, size=(q, g, t)).astype(np.int32) * seg,
        "segment_ids": seg,
    }


def _loss_and_grads(spec, mesh, rules, host, batch):
    graphdef, abstract = abstract_params(spec, mesh, rules)
    params = place_params(host, abstract)
    batch_sharding = NamedSharding(mesh, sharding.logical_to_spec((axes.BATCH,), rules))

    def loss_fn(p, b):
        scores, aux = steps.group_scores(graphdef, p, b, return_aux=True)
        mask = b["segment_ids"] > 0
        return losses.listwise_ce(scores) + 0.1 * losses.load_balancing_loss(
            aux["router_logits"], mask, spec.backbone.num_experts_per_tok
        ), scores

    with sharding.use_rules(mesh, rules):
        b = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}
        (loss, scores), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, b)
    return float(loss), np.asarray(scores), jax.tree.map(np.asarray, grads)


def _experts_per_device(spec, host, batch, shards=8):
    """{layer: [set of experts chosen by the tokens (padding included) of each batch shard]}."""
    graphdef = abstract_params(spec)[0]
    router_logits = jax.jit(
        lambda p, b: steps.group_scores(graphdef, p, b, return_aux=True)[1]["router_logits"]
    )(host, batch)
    out = {}
    for layer, logits in enumerate(router_logits):
        top = np.asarray(jax.lax.top_k(logits, spec.backbone.num_experts_per_tok)[1])
        out[layer] = [set(part.ravel().tolist()) for part in np.split(top, shards)]
    return out


def test_some_expert_gets_no_tokens_on_some_device_in_the_ep_test_batch():
    """On every mesh of the test below the batch axes span the 8 devices (2 of the 16 rows each): in
    both layers of its short batch some device sends no token to some expert. (Its 16-token batch
    has such devices too, and the router-bias test after it an expert idle everywhere.)"""
    host = jax.tree.map(
        np.asarray,
        init_params(
            SPEC, sharding.single_device_mesh(), sharding.rules.resolve_rules("fsdp+ep"), seed=3
        )[1],
    )
    for layer, chosen in _experts_per_device(SPEC, host, _batch(q=8, g=2, t=6)).items():
        assert min(map(len, chosen)) < 8, (layer, chosen)


def _biased_route(bias):
    """moe.route with a router bias added to the logits (as an aux-loss-free balancing bias
    would)."""
    from querit_jax.models import moe

    def route(x, router, top_k, norm_topk_prob):
        logits = x @ router.astype(x.dtype) + bias
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        weights, experts = jax.lax.top_k(probs, top_k)
        if norm_topk_prob:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        return logits, weights.astype(x.dtype), experts

    return moe, route


def test_expert_parallel_equals_dense_with_idle_experts_and_an_idle_device(monkeypatch):
    """A router bias of -30 on experts 6 and 7 (both on the last of 4 expert shards): no token of
    any
    device reaches them, so that device computes for nobody, their weights get zero gradients, and
    other experts are idle on some devices too; ep must still equal dense."""
    module, route = _biased_route(jnp.asarray([0.0] * 6 + [-30.0] * 2))
    monkeypatch.setattr(module, "route", route)
    rules = sharding.rules.resolve_rules("fsdp+ep")
    host = jax.tree.map(
        np.asarray, init_params(SPEC, sharding.single_device_mesh(), rules, seed=3)[1]
    )
    batch = _batch(q=8, g=2, t=6)
    chosen = _experts_per_device(SPEC, host, batch)
    for layer in chosen:
        assert not set.union(*chosen[layer]) & {6, 7}
        assert min(map(len, chosen[layer])) < 6  # and more idle experts on some devices
    dense = SPEC.replace(moe_impl="dense")
    ref_loss, ref_scores, ref_grads = _loss_and_grads(
        dense, sharding.single_device_mesh(), rules, host, batch
    )
    mesh = sharding.make_mesh((1, 2, 1, 4))  # experts 6, 7 live on expert shard 3
    loss, scores, grads = _loss_and_grads(SPEC.replace(moe_impl="ep"), mesh, rules, host, batch)
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5, rtol=0)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5, rtol=0)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))
    idle = grads["model"]["layers"][0]["mlp"]["down_proj"][6:]
    assert not idle.any() and grads["model"]["layers"][0]["mlp"]["down_proj"][:6].any()


@pytest.fixture(scope="module")
def dense_reference():
    """Loss, scores and gradients of the dense MoE on one device for each batch of the ep test
    (computed once for all its meshes)."""
    rules = sharding.rules.resolve_rules("fsdp+ep")
    host = jax.tree.map(
        np.asarray, init_params(SPEC, sharding.single_device_mesh(), rules, seed=3)[1]
    )
    dense = dataclasses.replace(SPEC, backbone=dataclasses.replace(SPEC.backbone, moe_impl="dense"))
    batches = (_batch(), _batch(q=8, g=2, t=6))  # padding everywhere; few tokens: idle experts
    refs = [_loss_and_grads(dense, sharding.single_device_mesh(), rules, host, b) for b in batches]
    return host, batches, refs


@pytest.mark.parametrize(
    "ep,fsdp", [(2, 1), (4, 1), (8, 1), (2, 4), (4, 2)]
)  # data = 8 / (ep * fsdp)
def test_expert_parallel_equals_dense_forward_and_gradients(ep, fsdp, dense_reference):
    rules = sharding.rules.resolve_rules("fsdp+ep")
    host, batches, refs = dense_reference
    ep_spec = dataclasses.replace(SPEC, backbone=dataclasses.replace(SPEC.backbone, moe_impl="ep"))
    mesh = sharding.make_mesh((8 // (fsdp * ep), fsdp, 1, ep))  # all 8 devices; the rest on `data`
    for batch, (ref_loss, ref_scores, ref_grads) in zip(batches, refs):
        loss, scores, grads = _loss_and_grads(ep_spec, mesh, rules, host, batch)
        np.testing.assert_allclose(loss, ref_loss, atol=1e-5, rtol=0)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5, rtol=0)
        for (path, a), b in zip(
            jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)
        ):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))


def test_grouped_equals_dense():
    rules = sharding.rules.resolve_rules("fsdp")
    mesh = sharding.single_device_mesh()
    host = jax.tree.map(np.asarray, init_params(SPEC, mesh, rules, seed=1)[1])
    results = []
    for impl in ("dense", "grouped"):
        spec = dataclasses.replace(SPEC, backbone=dataclasses.replace(SPEC.backbone, moe_impl=impl))
        results.append(_loss_and_grads(spec, mesh, rules, host, _batch()))
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-5)
    for a, b in zip(jax.tree.leaves(results[0][2]), jax.tree.leaves(results[1][2])):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _one_train_step(spec, mesh, rules, host, batch):
    tx, schedule = optim.make_optimizer(OptimConfig(learning_rate=2e-5, warmup_steps=0), 10)
    graphdef, abstract = abstract_params(spec, mesh, rules)
    shardings = state_shardings(abstract, tx, mesh)
    state = init_state(place_params(host, abstract), tx, shardings)
    batch_sharding = NamedSharding(mesh, sharding.logical_to_spec((axes.BATCH,), rules))
    step = jax.jit(
        steps.make_train_step(graphdef, tx, schedule, 1.0, moe=spec.backbone),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, None),
        donate_argnums=(0,),
    )
    with sharding.use_rules(mesh, rules):
        state, metrics = step(
            state, {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}
        )
    return {k: float(v) for k, v in metrics.items()}, jax.tree.map(np.asarray, state.params)


def test_tiny_moe_train_step_on_8_devices_equals_1_device():
    cfg = config_lib.from_config_dict(load_config("configs/general_relevance.py", "tiny_moe"))
    assert cfg.sharding.preset == "fsdp+ep" and cfg.model.backbone_config().moe_impl == "ep"
    rules = cfg.sharding.rules()
    spec = ModelSpec(
        "qwen3_moe", cfg.model.backbone_config(vocab_size=512), HeadConfig(), qwen3_pair(), 32
    )
    host = jax.tree.map(
        np.asarray, init_params(spec, sharding.single_device_mesh(), rules, seed=0)[1]
    )
    batch = _batch()
    ref_metrics, ref_params = _one_train_step(
        spec, sharding.make_mesh((1, 1, 1, 1), jax.devices()[:1]), rules, host, batch
    )
    metrics, params = _one_train_step(spec, sharding.make_mesh((1, 2, 1, 4)), rules, host, batch)
    assert {"aux_loss", "z_loss", "expert_load_max/layer_0"} <= set(metrics)
    for key in ("loss", "aux_loss", "grad_norm"):
        np.testing.assert_allclose(
            metrics[key], ref_metrics[key], rtol=1e-5, atol=1e-6, err_msg=key
        )
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(ref_params)
    ):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))


def test_bad_moe_configs_fail_at_validation():
    cfg = load_config("configs/general_relevance.py", "tiny_moe")
    cfg.sharding.mesh.expert = 3
    with pytest.raises(
        config_lib.ConfigError, match=r"sharding.mesh.expert: 8 experts do not split over the 3"
    ):
        config_lib.from_config_dict(cfg)
    cfg = load_config("configs/general_relevance.py", "tiny_moe")
    cfg.model.overrides.num_experts_per_tok = 9
    with pytest.raises(
        config_lib.ConfigError, match=r"num_experts_per_tok=9 must be in \[1, num_experts=8\]"
    ):
        config_lib.from_config_dict(cfg)
    cfg = load_config("configs/general_relevance.py", "tiny_moe")
    cfg.sharding.preset, cfg.sharding.mesh.expert, cfg.sharding.mesh.data = "fsdp", 1, -1
    with pytest.raises(config_lib.ConfigError, match="'ep' needs a preset"):
        config_lib.from_config_dict(cfg)
    cfg = config_lib.from_config_dict(load_config("configs/general_relevance.py", "tiny_moe"))
    with pytest.raises(config_lib.ConfigError, match="8 experts do not split over the 3 devices"):
        config_lib.validate_for_devices(
            dataclasses.replace(
                cfg,
                sharding=dataclasses.replace(
                    cfg.sharding, mesh=config_lib.MeshConfig(data=2, fsdp=1, tensor=1, expert=3)
                ),
            ),
            6,
        )


def test_a0p4b_preset_matches_the_published_parameter_counts():
    cfg = DecoderConfig.qwen3_moe_a0p4b()
    _, abstract = abstract_params(ModelSpec("qwen3_moe", cfg, HeadConfig(), qwen3_pair(), 512))
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
    expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    active = total - cfg.num_layers * (cfg.num_experts - cfg.num_experts_per_tok) * expert
    assert 4.8e9 < total < 5.1e9 and 0.38e9 < active < 0.45e9  # card: 4.92B total, 0.43B active
    assert cfg.num_layers == 24 and cfg.num_heads == 16


# ----- dispatch at scale: grouped per device, ep with a capacity factor
# -----------------------------


def _layer_inputs(rows=8, t=16, h=32, inter=16, e=8, k=2, seed=0):
    """Random MoE layer inputs [rows, t, ...] with crafted routing: row 0 uses only experts 0 and 1
    (idle experts on that device), no token anywhere picks expert e-1 (idle everywhere)."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, e - 1, size=(rows, t))
    second = (first + 1 + rng.integers(0, e - 2, size=(rows, t))) % (e - 1)
    experts = np.stack([first, second], -1)
    experts[0] = [0, 1]
    weights = rng.uniform(0.1, 1.0, size=(rows, t, k)).astype(np.float32)
    x = rng.standard_normal((rows, t, h)).astype(np.float32)
    ws = [
        (rng.standard_normal(s) * 0.2).astype(np.float32)
        for s in ((e, h, inter), (e, h, inter), (e, inter, h))
    ]
    return x, weights, experts.astype(np.int32), ws


def _dense_layer(x, weights, experts, *ws):
    from querit_jax.models.moe import experts_dense

    b, t, h = x.shape
    return experts_dense(
        x.reshape(b * t, h), weights.reshape(b * t, -1), experts.reshape(b * t, -1), *ws
    ).reshape(b, t, h)


def _layer_value_and_grads(fn, mesh, preset, x, weights, experts, ws):
    """fn(x, weights, experts, *ws) -> (y, dropped); returns y, dropped, grads wrt x, weights,
    ws."""
    cot = np.random.default_rng(9).standard_normal(x.shape).astype(np.float32)

    def loss(x, w, *ws):
        y, dropped = fn(x, w, jnp.asarray(experts), *ws)
        return jnp.sum(y * cot), (y, dropped)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))
    if mesh is None:
        grads, (y, dropped) = grad(x, weights, *ws)
    else:
        with sharding.use_rules(mesh, sharding.rules.resolve_rules(preset)):
            grads, (y, dropped) = grad(x, weights, *ws)
    return np.asarray(y), float(dropped), [np.asarray(g) for g in grads]


def _assert_close(got, want):
    for name, a, b in zip(("y", "dx", "dweights", "dgate", "dup", "ddown"), got, want):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=0, err_msg=name)


def test_ep_with_capacity_equals_dense_when_nothing_is_dropped_even_with_idle_experts():
    from querit_jax.models.moe_parallel import experts_expert_parallel

    x, weights, experts, ws = _layer_inputs()
    valid = jnp.ones(x.shape[:2], bool)
    ref = _layer_value_and_grads(
        lambda *a: (_dense_layer(*a), 0.0), None, None, x, weights, experts, ws
    )
    for factor in (4.0, 0.0):  # E / k: an expert can take every local copy; 0: dropless buffers
        y, dropped, grads = _layer_value_and_grads(
            lambda x, w, e, *p, cf=factor: experts_expert_parallel(
                x, w, e, valid, *p, capacity_factor=cf
            ),
            sharding.make_mesh((2, 1, 1, 4)),
            "fsdp+ep",
            x,
            weights,
            experts,
            ws,
        )
        assert dropped == 0.0
        _assert_close([y, *grads], [ref[0], *ref[2]])


def _expected_keep(experts, valid, shards, num_experts, factor):
    """numpy: which copies the capacity path keeps (per batch shard: real copies first, in token and
    top-k order, then padding; the first `cap` of each expert stay)."""
    rows, t, k = experts.shape
    keep = np.zeros(experts.shape, bool)
    per = rows // shards
    n = per * t
    cap = max(1, int(np.ceil(factor * n * k / num_experts)))
    for s in range(shards):
        e = experts[s * per : (s + 1) * per].reshape(-1)
        real = np.repeat(valid[s * per : (s + 1) * per].reshape(-1), k)
        kept = np.zeros(e.shape, bool)
        for ex in range(num_experts):
            order = [i for i in range(len(e)) if e[i] == ex and real[i]]
            order += [i for i in range(len(e)) if e[i] == ex and not real[i]]
            kept[order[:cap]] = True
        keep[s * per : (s + 1) * per] = kept.reshape(per, t, k)
    return keep


def test_ep_capacity_drops_overflow_padding_first_and_counts_it():
    """Every token's first choice is expert 0 (an overloaded expert); the first 3 tokens of each
    row are padding. The capacity path must equal the dense layer with exactly the dropped copies'
    weights zeroed, and report the share of real copies dropped."""
    from querit_jax.models.moe_parallel import experts_expert_parallel

    x, weights, experts, ws = _layer_inputs(seed=1)
    experts[..., 0] = 0
    experts[..., 1] = np.where(experts[..., 1] == 0, 3, experts[..., 1])
    valid = np.ones(x.shape[:2], bool)
    valid[:, :3] = False
    keep = _expected_keep(experts, valid, shards=8, num_experts=8, factor=1.0)
    real = np.repeat(valid[..., None], 2, -1)
    assert (~keep & real).any() and (keep[..., 0] & real[..., 0]).sum() == 8 * 4  # cap 4 per row
    y, dropped, grads = _layer_value_and_grads(
        lambda x, w, e, *p: experts_expert_parallel(
            x, w, e, jnp.asarray(valid), *p, capacity_factor=1.0
        ),
        sharding.make_mesh((2, 1, 1, 4)),
        "fsdp+ep",
        x,
        weights,
        experts,
        ws,
    )
    ref = _layer_value_and_grads(
        lambda x, w, e, *p: (_dense_layer(x, w * jnp.asarray(keep), e, *p), 0.0),
        None,
        None,
        x,
        weights,
        experts,
        ws,
    )
    np.testing.assert_allclose(dropped, (~keep & real).sum() / real.sum(), rtol=1e-6)
    mask = valid[..., None]  # padding outputs are never read (and lost capacity first)
    _assert_close([y * mask, grads[0] * mask], [ref[0] * mask, ref[2][0] * mask])
    for a, b in zip(grads[2:], ref[2][2:]):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)


def test_grouped_in_shard_map_equals_dense_forward_and_gradients():
    from querit_jax.models.moe_parallel import experts_grouped_sharded

    x, weights, experts, ws = _layer_inputs(seed=2)
    ref = _layer_value_and_grads(
        lambda *a: (_dense_layer(*a), 0.0), None, None, x, weights, experts, ws
    )
    got = _layer_value_and_grads(
        lambda *a: (experts_grouped_sharded(*a), 0.0),
        sharding.make_mesh((2, 4, 1, 1)),
        "fsdp",
        x,
        weights,
        experts,
        ws,
    )
    _assert_close([got[0], *got[2]], [ref[0], *ref[2]])


def _layer_temp_bytes(fn, preset, mesh_shape, rows=16, t=64, h=64, inter=32, e=16, k=2):
    """Per-device temporary bytes of the compiled forward + backward of one MoE layer."""
    from jax.sharding import NamedSharding

    from querit_jax.models.moe import route

    mesh = sharding.make_mesh(mesh_shape)
    rules = sharding.rules.resolve_rules(preset)
    router = jnp.asarray(np.random.default_rng(0).standard_normal((h, e)), jnp.float32)

    def loss(x, wg, wu, wd):
        _, w, ex = route(x.reshape(-1, h), router, k, True)
        return jnp.sum(fn(x, w.reshape(rows, t, k), ex.reshape(rows, t, k), wg, wu, wd) ** 2)

    def arg(shape, logical):
        spec = sharding.logical_to_spec(logical, rules)
        return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, spec))

    w_in = arg((e, h, inter), (axes.EXPERT, axes.EMBED, None))
    with sharding.use_rules(mesh, rules):
        compiled = (
            jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
            .lower(
                arg((rows, t, h), (axes.BATCH, None, None)),
                w_in,
                w_in,
                arg((e, inter, h), (axes.EXPERT, None, axes.EMBED)),
            )
            .compile()
        )
    return compiled.memory_analysis().temp_size_in_bytes


def test_ep_capacity_buffers_use_4x_less_memory_than_dropless():
    """Compiled memory_analysis on 8 CPU devices, forward + backward of one layer (benchmarks/
    moe_memory.py prints the same at larger shapes)."""
    from querit_jax.models.moe_parallel import experts_expert_parallel

    def ep(factor):
        def fn(x, w, e, *p):
            valid = jnp.ones(x.shape[:2], bool)
            return experts_expert_parallel(x, w, e, valid, *p, capacity_factor=factor)[0]

        return fn

    dropless = _layer_temp_bytes(ep(0.0), "fsdp+ep", (1, 1, 1, 8))
    capacity = _layer_temp_bytes(ep(1.25), "fsdp+ep", (1, 1, 1, 8))
    assert dropless >= 4 * capacity, (dropless, capacity)


def test_router_overload_is_reported_by_the_model():
    """A zero router ties every expert, so top-2 sends every token to experts 0 and 1: with
    capacity factor 1 each keeps a quarter of the copies, which the model reports per layer."""
    batch = _batch(q=2, g=2, t=16)
    rules = sharding.rules.resolve_rules("fsdp+ep")
    mesh = sharding.make_mesh((1, 1, 1, 1), jax.devices()[:1])
    backbone = dataclasses.replace(
        SPEC.backbone, num_layers=1, moe_impl="ep", moe_capacity_factor=1.0
    )
    spec = dataclasses.replace(SPEC, backbone=backbone)
    host = jax.tree.map(np.asarray, init_params(spec, mesh, rules, seed=0)[1])
    host["model"]["layers"][0]["mlp"]["gate"] = np.zeros_like(
        host["model"]["layers"][0]["mlp"]["gate"]
    )
    real, n = int(batch["segment_ids"].sum()), batch["segment_ids"].size
    graphdef, abstract = abstract_params(spec, mesh, rules)
    with sharding.use_rules(mesh, rules):
        _, aux = jax.jit(lambda p, b: steps.group_scores(graphdef, p, b, return_aux=True))(
            place_params(host, abstract), batch
        )
    (share,) = aux["moe_dropped"]
    np.testing.assert_allclose(float(share), 1 - min(-(-2 * n // 8), real) / real, rtol=1e-6)
