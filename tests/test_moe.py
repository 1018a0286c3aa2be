"""Qwen3-MoE: HF parity and routing agreement, expert-parallel == dense (forward and gradients),
the load-balancing loss against transformers', sharded training, config validation."""

import dataclasses
import os
import shutil

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
from tests.conftest import DEMO_TOKENIZER
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
    tok = transformers.AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    tok.pad_token = "<|fim_pad|>"
    torch.manual_seed(seed)
    cfg = transformers.Qwen3MoeConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        norm_topk_prob=norm,
        mlp_only_layers=mlp_only,
        tie_word_embeddings=False,
    )
    model = transformers.Qwen3MoeForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    out = str(tmp_path / "hf")
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, model


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


def test_some_expert_gets_no_tokens_in_the_test_batch():
    host = jax.tree.map(
        np.asarray,
        init_params(
            SPEC, sharding.single_device_mesh(), sharding.rules.resolve_rules("fsdp"), seed=3
        )[1],
    )
    _, aux = steps.group_scores(
        abstract_params(SPEC)[0], host, _batch(q=1, g=1, t=4), return_aux=True
    )
    chosen = np.asarray(jax.lax.top_k(aux["router_logits"][0].reshape(-1, 8), 2)[1]).ravel()
    assert len(set(chosen.tolist())) < 8  # so the ep test below covers an idle expert


@pytest.mark.parametrize(
    "ep,fsdp", [(2, 1), (4, 1), (8, 1), (2, 4), (4, 2)]
)  # data = 8 / (ep * fsdp)
def test_expert_parallel_equals_dense_forward_and_gradients(ep, fsdp):
    rules = sharding.rules.resolve_rules("fsdp+ep")
    host = jax.tree.map(
        np.asarray, init_params(SPEC, sharding.single_device_mesh(), rules, seed=3)[1]
    )
    for batch in (_batch(), _batch(q=8, g=2, t=6)):  # padding everywhere; few tokens: idle experts
        dense = dataclasses.replace(
            SPEC, backbone=dataclasses.replace(SPEC.backbone, moe_impl="dense")
        )
        ref_loss, ref_scores, ref_grads = _loss_and_grads(
            dense, sharding.single_device_mesh(), rules, host, batch
        )
        ep_spec = dataclasses.replace(
            SPEC, backbone=dataclasses.replace(SPEC.backbone, moe_impl="ep")
        )
        mesh = sharding.make_mesh(
            (8 // (fsdp * ep), fsdp, 1, ep)
        )  # all 8 devices; the rest on `data`
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
