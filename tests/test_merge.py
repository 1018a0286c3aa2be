"""Merging: SLERP / Multi-SLERP against independent numpy implementations of mergekit's formulas,
per-tensor t from depth gradients and name filters, sharded == unsharded, MoE per expert, checks on
bad input, and a merge killed with SIGKILL that reruns to the same result."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from querit_jax import config_lib, merging, sharding
from querit_jax.errors import CheckpointError, ConfigError
from querit_jax.loading import load_model
from querit_jax.merging import checkpoints, merger, plan
from querit_jax.merging import slerp as slerp_lib
from querit_jax.models.checkpoint import is_model_checkpoint, save_model
from querit_jax.models.decoder_config import DecoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.models.spec import ModelSpec, abstract_params, flatten
from querit_jax.models.templates import qwen3_pair
from querit_jax.storage import commit as storage_commit
from tests.helpers import ROOT, load_config, xla_flags

ENV = {**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu"}
VOCAB = 16384  # the demo tokenizer's size (a checkpoint's vocabulary may not be smaller)


# ----- independent references: mergekit's formulas written out in numpy ---------------------------
def np_slerp(t, v0, v1, threshold=0.9995, eps=1e-8):
    a, b = np.asarray(v0, np.float32), np.asarray(v1, np.float32)
    n0, n1 = np.linalg.norm(a), np.linalg.norm(b)
    u0 = a / n0 if n0 > eps else a
    u1 = b / n1 if n1 > eps else b
    dot = np.sum(u0 * u1)
    if abs(dot) > threshold:
        return (1 - t) * a + t * b, True
    theta0 = np.arccos(dot)
    s0 = np.sin(theta0 - theta0 * t) / np.sin(theta0)
    s1 = np.sin(theta0 * t) / np.sin(theta0)
    return s0 * a + s1 * b, False


def np_multislerp(tensors, weights, base=None, eps=1e-8):
    x = np.stack([np.asarray(v, np.float64) for v in tensors])
    if base is not None:
        x = x - np.asarray(base, np.float64)
    flat = x.reshape(len(x), -1)
    w = np.asarray(weights, np.float64) / np.sum(weights)
    norms = np.linalg.norm(flat, axis=-1, keepdims=True)
    units = flat / (norms + eps)
    mean = (units * w[:, None]).sum(0)
    mean = mean / np.linalg.norm(mean)
    tangent = ((units - (units @ mean)[:, None] * mean) * w[:, None]).sum(0)
    tn = np.linalg.norm(tangent) + eps
    out = (mean * np.cos(tn) + tangent * np.sin(tn) / tn) * (norms[:, 0] * w).sum()
    out = out.reshape(x.shape[1:])
    return out + base if base is not None else out


def _jit_slerp(v0, v1, t):
    out, linear = jax.jit(slerp_lib.slerp)(jnp.asarray(v0), jnp.asarray(v1), t)
    return np.asarray(out.astype(v0.dtype)), bool(linear)


# ----- the formula
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_slerp_equals_numpy_formula_on_both_branches_and_zero_tensors(dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((32, 48)).astype(np.float32)
    cases = {
        "general": (a, rng.standard_normal((32, 48)).astype(np.float32) * 3, False),
        "near_parallel": (a, 2 * a + 1e-3 * rng.standard_normal(a.shape), True),
        "near_antiparallel": (a, -a + 1e-3 * rng.standard_normal(a.shape), True),
        "zero_base": (np.zeros_like(a), a, False),
        "both_zero": (np.zeros_like(a), np.zeros_like(a), False),
    }
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1 / 128, atol=1e-6)
    for label, (v0, v1, parallel) in cases.items():
        v0, v1 = np.asarray(v0, dtype), np.asarray(v1, dtype)
        for t in (0.0, 0.3, 0.71, 1.0):
            want, want_linear = np_slerp(t, v0, v1)
            got, linear = _jit_slerp(v0, v1, t)
            assert got.dtype == dtype and linear == want_linear == parallel, (label, t)
            np.testing.assert_allclose(
                got.astype(np.float32), want.astype(dtype).astype(np.float32), **tol, err_msg=label
            )
            if t in (0.0, 1.0):  # the endpoints exactly, on both branches
                assert np.array_equal(got, v0 if t == 0.0 else v1), (label, t)
        same, _ = _jit_slerp(v0, v0, 0.37)
        assert np.array_equal(same, v0), label  # a tensor merged with itself is unchanged


def test_multislerp_equals_numpy_formula_and_two_equal_weights_equal_slerp_half():
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((16, 24)).astype(np.float32) for _ in range(3)]
    base = rng.standard_normal((16, 24)).astype(np.float32)
    for tensors, weights, origin in [
        (xs, [0.2, 0.5, 0.3], None),
        (xs, [1.0, 2.0, 1.0], base),
        (xs[:2], [1.0, 1.0], None),
    ]:
        got, degenerate = jax.jit(slerp_lib.multislerp)(
            jnp.stack(tensors),
            jnp.asarray(weights),
            None if origin is None else jnp.asarray(origin),
        )
        assert not bool(degenerate)
        np.testing.assert_allclose(
            np.asarray(got), np_multislerp(tensors, weights, origin), rtol=2e-5, atol=2e-5
        )
    # mergekit's multislerp with two inputs and equal weights is the normalised bisector scaled by
    # the mean norm; SLERP at t=0.5 applies equal sine weights to the originals. They agree exactly
    # when the two tensors have the same norm (and differ otherwise, by design).
    b = xs[1] * (np.linalg.norm(xs[0]) / np.linalg.norm(xs[1]))
    two, _ = jax.jit(slerp_lib.multislerp)(jnp.stack([xs[0], b]), jnp.ones(2))
    half, _ = _jit_slerp(xs[0], b, 0.5)
    np.testing.assert_allclose(np.asarray(two), half, rtol=1e-5, atol=1e-5)


def test_every_merge_config_variant_validates():
    from tests.helpers import config_module

    for variant in config_module("configs/merge_slerp.py").VARIANTS:
        cfg = merging.merge_from_config_dict(load_config("configs/merge_slerp.py", variant))
        assert cfg.method == "slerp" and len(cfg.models) == 2 and cfg.output


def test_t_specs_positions_and_gradients():
    assert plan.tensor_position("model.embed_tokens.embedding", 4) == 0.0
    assert plan.tensor_position("model.layers.2.mlp.up_proj.kernel", 5) == 0.5
    assert plan.tensor_position("model.norm.scale", 4) == 1.0
    assert plan.tensor_position("score.kernel", 4) == 1.0
    assert plan.tensor_position("encoder.embeddings.LayerNorm.scale", 12) == 0.0
    # A single layer sits at 1, as in mergekit's plan_slice (t = 1 when num_layers == 1).
    assert plan.tensor_position("model.layers.0.mlp.up_proj.kernel", 1) == 1.0
    assert plan.interpolate([0.0, 1.0, 0.5], 0.75) == pytest.approx(0.75)
    rules = config_lib.parse_t([{"filter": "self_attn", "value": [0, 1]}, {"value": 0.25}])
    assert plan.resolve(rules, "model.layers.1.self_attn.q_proj.kernel", 0.5) == (0.5, "self_attn")
    assert plan.resolve(rules, "model.layers.1.mlp.up_proj.kernel", 0.5) == (0.25, "")
    with pytest.raises(ConfigError, match=r"no rule matches parameter model.norm.scale"):
        plan.resolve(config_lib.parse_t([{"filter": "mlp", "value": 0.5}]), "model.norm.scale", 1.0)
    with pytest.raises(ConfigError, match=r"merge.t=1.5 is outside \[0, 1\]"):
        config_lib.parse_t(1.5)
    with pytest.raises(ConfigError, match=r"merge.t\[1\].value\[2\]=-0.1 is outside \[0, 1\]"):
        config_lib.parse_t([{"filter": "mlp", "value": 0.5}, {"value": [0, 0.5, -0.1]}])
    with pytest.raises(ConfigError, match=r"merge.t\[0\]: missing 'value'"):
        config_lib.parse_t([{"filter": "mlp"}])


# ----- tiny checkpoints
# ----------------------------------------------------------------------------
def _spec(**fields):
    moe = fields.pop("moe", False)
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, head_dim=16)
    cfg = (DecoderConfig.tiny_moe if moe else DecoderConfig.tiny)(**{**base, **fields})
    return ModelSpec(cfg.family, cfg, HeadConfig(), qwen3_pair(), 32)


def _random_params(spec, seed):
    """Random weights without compiling an initialiser; norm scales near 1, so that their SLERP
    takes
    the nearly-parallel (linear) branch, as trained norms often do."""
    rng = np.random.default_rng(seed)
    _, abstract = abstract_params(spec)

    def draw(path, leaf):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return jnp.asarray(1 + 1e-3 * rng.standard_normal(leaf.shape), leaf.dtype)
        return jnp.asarray(0.05 * rng.standard_normal(leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("merge_inputs")
    made = {}
    for name, spec, seed in [
        ("a", _spec(num_layers=3), 0),
        ("b", _spec(num_layers=3), 1),
        ("c", _spec(num_layers=3), 2),
        ("deeper", _spec(num_layers=4), 0),
        ("wider_mlp", _spec(num_layers=3, intermediate_size=128), 0),
        ("wider_vocab", _spec(num_layers=3, vocab_size=VOCAB + 40), 3),
        ("moe_a", _spec(moe=True), 0),
        ("moe_b", _spec(moe=True), 1),
    ]:
        made[name] = save_model(str(root / name), spec, _random_params(spec, seed), tokenizer)
    made["root"] = str(root)
    return made


def _cfg(ckpts, models, out, **fields):
    c = load_config("configs/merge_slerp.py", "tiny")
    c.merge.models = ",".join(ckpts[m] for m in models)
    c.merge.output = os.path.join(ckpts["root"], out)
    values = c.to_dict()
    values["merge"].update(fields)  # t and friends may change type (number -> rules)
    return merging.merge_from_config_dict(values)


def _params(path):
    return {k: np.asarray(v) for k, v in flatten(load_model(path).params).items()}


def _manifest(path):
    with open(os.path.join(path, merging.MANIFEST_NAME), encoding="utf-8") as f:
        return json.load(f)


ONE = sharding.make_mesh((1, 1, 1, 1), jax.devices()[:1])


def test_layer_gradient_and_filters_give_each_tensor_its_t(ckpts):
    t = [
        {"filter": "self_attn", "value": [0.2, 0.6, 0.9, 0.3]},
        {"filter": "mlp", "value": 0.25},
        {"value": [0.1, 0.9]},
    ]
    cfg = _cfg(ckpts, "ab", "graded", t=t)
    manifest = merging.merge(cfg, mesh=ONE)
    assert manifest == _manifest(cfg.output)
    a, b, out = _params(ckpts["a"]), _params(ckpts["b"]), _params(cfg.output)
    assert set(out) == set(a) == set(manifest["tensors"])

    def expected(name):
        m = next((i for i in (0, 1, 2) if f"layers.{i}." in name), None)
        pos = 0.0 if "embed" in name else 1.0 if m is None else m / 2
        if "self_attn" in name:  # [0.2, 0.6, 0.9, 0.3] at pos: 0 -> 0.2, 0.5 -> 0.75, 1 -> 0.3
            return {0.0: 0.2, 0.5: 0.75, 1.0: 0.3}[pos], "self_attn"
        if "mlp" in name:
            return 0.25, "mlp"
        return 0.1 + 0.8 * pos, ""

    for name, entry in manifest["tensors"].items():
        want_t, want_filter = expected(name)
        assert entry["t"] == pytest.approx(want_t, abs=1e-9) and entry["filter"] == want_filter, (
            name
        )
        want, linear = np_slerp(want_t, a[name], b[name])
        assert entry["lerp"] == int(linear), name
        np.testing.assert_allclose(out[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert manifest["tensors"]["model.embed_tokens.embedding"]["t"] == pytest.approx(0.1)
    assert manifest["tensors"]["model.norm.scale"]["t"] == pytest.approx(0.9)
    assert manifest["filters"] == ["mlp", "self_attn"]
    assert [x["role"] for x in manifest["inputs"]] == ["base", "model"]
    assert all(len(x["sha256"]) == 64 for x in manifest["inputs"])


def test_endpoints_and_self_merge_are_exact(ckpts):
    a, b = _params(ckpts["a"]), _params(ckpts["b"])
    workdir = os.path.join(ckpts["root"], "workdir_a")  # a training workdir: its model/ is read
    os.makedirs(workdir, exist_ok=True)
    if not os.path.exists(os.path.join(workdir, "model")):
        os.symlink(ckpts["a"], os.path.join(workdir, "model"))
    ckpts = {**ckpts, "w": workdir}
    for models, t, want in [("ab", 0.0, a), ("ab", 1.0, b), ("aw", 0.37, a)]:
        cfg = _cfg(ckpts, models, f"exact_{models}_{t}", t=t)
        merging.merge(cfg, mesh=ONE)
        out = _params(cfg.output)
        for name in want:
            assert np.array_equal(out[name], want[name]), (models, t, name)


def test_sharded_merge_equals_unsharded_dense_and_moe(ckpts):
    cases = [("ab", "fsdp+tp", (1, 4, 2, 1)), (("moe_a", "moe_b"), "fsdp+ep", (1, 1, 1, 8))]
    for models, preset, shape in cases:
        outs = []
        for mesh, label in [(ONE, "one"), (sharding.make_mesh(shape), "eight")]:
            cfg = _cfg(ckpts, models, f"sharded_{preset}_{label}", t=0.4)
            cfg = dataclasses.replace(
                cfg, sharding=dataclasses.replace(cfg.sharding, preset=preset)
            )
            merging.merge(cfg, mesh=mesh)
            outs.append((_params(cfg.output), _manifest(cfg.output)["tensors"]))
        (p1, m1), (p8, m8) = outs
        assert m1 == m8
        for name in p1:
            np.testing.assert_allclose(p8[name], p1[name], rtol=1e-6, atol=1e-7, err_msg=name)
    # Tensors are read straight onto their shards and merged there (no gathered copy).
    mesh = sharding.make_mesh((1, 4, 2, 1))
    spec = NamedSharding(mesh, PartitionSpec("fsdp", "tensor"))
    x = checkpoints.open_input(ckpts["a"]).read("model.layers.0.mlp.up_proj.kernel", spec)
    assert x.sharding == spec and len({s.device for s in x.addressable_shards}) == 8


def test_merge_sharding_rule_overrides_reach_the_placement(ckpts, monkeypatch):
    section = {
        "preset": "fsdp+tp",
        "mesh": {"data": 1, "fsdp": 4, "tensor": 2, "expert": 1},
        "rule_overrides": {"vocab": "tensor"},
    }
    cfg = _cfg(ckpts, "ab", "rule_overrides", sharding=section)
    assert dict(cfg.sharding.rules())["vocab"] == "tensor"
    placed = {}

    def spy(spec, mesh, rules):
        graphdef, abstract = abstract_params(spec, mesh, rules)
        placed["rules"] = dict(rules)
        placed["embedding"] = flatten(abstract)["model.embed_tokens.embedding"].sharding.spec
        return graphdef, abstract

    monkeypatch.setattr(merger, "abstract_params", spy)
    merging.merge(cfg)  # on the mesh of cfg.sharding: 8 devices, 4 on fsdp and 2 on tensor
    assert placed["rules"]["vocab"] == "tensor"
    assert placed["embedding"][0] == "tensor"  # [vocab, embed]: the rows are split over `tensor`
    name = "model.embed_tokens.embedding"
    a, b = _params(ckpts["a"])[name], _params(ckpts["b"])[name]
    np.testing.assert_allclose(
        _params(cfg.output)[name], np_slerp(0.5, a, b)[0], rtol=1e-5, atol=1e-6
    )


def test_moe_experts_merge_one_by_one(ckpts):
    cfg = _cfg(ckpts, ("moe_a", "moe_b"), "moe", t=0.3)
    manifest = merging.merge(cfg, mesh=ONE)
    a, b, out = _params(ckpts["moe_a"]), _params(ckpts["moe_b"]), _params(cfg.output)
    name = "model.layers.1.mlp.gate_proj"
    assert a[name].shape[0] == 8 and manifest["tensors"][name]["per_expert"]
    per_expert = np.stack([np_slerp(0.3, a[name][e], b[name][e])[0] for e in range(8)])
    np.testing.assert_allclose(out[name], per_expert, rtol=1e-5, atol=1e-6)
    whole, _ = np_slerp(0.3, a[name], b[name])
    assert not np.allclose(out[name], whole, rtol=1e-4, atol=1e-6)
    assert not manifest["tensors"]["model.layers.1.mlp.gate"]["per_expert"]  # the router


def test_sequential_and_multislerp_with_base(ckpts):
    a, b, c = (_params(ckpts[m]) for m in "abc")
    cfg = _cfg(ckpts, "abc", "sequential", method="sequential_slerp", step_t=[0.5, 1 / 3])
    manifest = merging.merge(cfg, mesh=ONE)
    out = _params(cfg.output)
    for name in out:
        first, _ = np_slerp(0.5, a[name], b[name])
        want, _ = np_slerp(1 / 3, first, c[name])
        np.testing.assert_allclose(out[name], want, rtol=2e-5, atol=2e-6, err_msg=name)
    assert manifest["tensors"]["score.kernel"]["t"] == pytest.approx([0.5, 1 / 3])

    cfg = _cfg(ckpts, "bc", "multi", method="multislerp", weights=[1.0, 3.0])
    cfg_base = _cfg(
        ckpts, "bc", "multi_base", method="multislerp", weights=[1.0, 3.0], base_model=ckpts["a"]
    )
    merging.merge(cfg, mesh=ONE)
    manifest = merging.merge(cfg_base, mesh=ONE)
    plain, rel = _params(cfg.output), _params(cfg_base.output)
    assert [x["role"] for x in manifest["inputs"]] == ["model", "model", "origin"]
    name = "model.layers.1.self_attn.q_proj.kernel"
    np.testing.assert_allclose(
        rel[name], np_multislerp([b[name], c[name]], [1, 3], a[name]), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        plain[name], np_multislerp([b[name], c[name]], [1, 3]), rtol=1e-4, atol=1e-5
    )
    assert not np.allclose(rel[name], plain[name], atol=1e-3)  # the task vectors were used


def test_vocabulary_mismatch_refused_or_rectified(ckpts):
    with pytest.raises(CheckpointError, match=r"vocabulary sizes differ.*embed_tokens.*rectify"):
        merging.merge(_cfg(ckpts, ("a", "wider_vocab"), "vocab_refused"), mesh=ONE)
    cfg = _cfg(ckpts, ("a", "wider_vocab"), "vocab_rectified", vocab_policy="rectify")
    merging.merge(cfg, mesh=ONE)
    a, w, out = _params(ckpts["a"]), _params(ckpts["wider_vocab"]), _params(cfg.output)
    name = "model.embed_tokens.embedding"
    assert out[name].shape == a[name].shape
    np.testing.assert_allclose(
        out[name], np_slerp(0.5, a[name], w[name][:VOCAB])[0], rtol=1e-5, atol=1e-6
    )
    # The other way round the smaller table is padded with the base's own rows.
    cfg = _cfg(ckpts, ("wider_vocab", "a"), "vocab_padded", vocab_policy="rectify")
    merging.merge(cfg, mesh=ONE)
    padded = np.concatenate([a[name], w[name][VOCAB:]])
    np.testing.assert_allclose(
        _params(cfg.output)[name], np_slerp(0.5, w[name], padded)[0], rtol=1e-5, atol=1e-6
    )


def test_bad_inputs_fail_before_writing_with_clear_errors(ckpts):
    out = os.path.join(ckpts["root"], "never_written")
    with pytest.raises(CheckpointError, match=r"parameter model.layers.3.input_layernorm.scale"):
        merging.merge(_cfg(ckpts, ("a", "deeper"), "never_written"), mesh=ONE)
    with pytest.raises(
        CheckpointError,
        match=r"parameter model.layers.0.mlp.down_proj.kernel has shape \(128, 64\) there but "
        r"\(96, 64\) in the base",
    ):
        merging.merge(_cfg(ckpts, ("a", "wider_mlp"), "never_written"), mesh=ONE)
    with pytest.raises(CheckpointError, match=r"it is a qwen3_moe model .* the base a qwen3 model"):
        merging.merge(_cfg(ckpts, ("a", "moe_a"), "never_written"), mesh=ONE)
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")
    values = load_config("configs/merge_slerp.py", "tiny").to_dict()
    values["merge"]["models"] = f"{ckpts['a']},{ckpts['b']}"
    bad = [
        ({"models": f"{ckpts['a']},{ckpts['root']}/nope"}, CheckpointError, "nope: no such"),
        ({"t": 1.2}, ConfigError, r"merge.t=1.2 is outside \[0, 1\]"),
        ({"t": [0.0, 2.0]}, ConfigError, r"merge.t\[1\]=2.0 is outside \[0, 1\]"),
        ({"method": "ties"}, ConfigError, "merge.method='ties' is not a merge method"),
        ({"models": ckpts["a"]}, ConfigError, "slerp merges exactly 2 checkpoints"),
        ({"weights": [1, 2]}, ConfigError, "only multislerp reads weights"),
        ({"vocab_policy": "pad"}, ConfigError, "merge.vocab_policy='pad'"),
        ({"tt": 0.5}, ConfigError, r"unknown field\(s\) \['tt'\]"),
        ({"output": ckpts["b"] + "/merged"}, ConfigError, "overlaps the input"),
    ]
    for fields, error, message in bad:
        v = json.loads(json.dumps(values))
        v["merge"].update(fields)
        with pytest.raises(error, match=message):
            merging.merge(merging.merge_from_config_dict(v), mesh=ONE)


def test_head_fields_and_templates_must_match_the_base(ckpts):
    base = checkpoints.open_input(ckpts["a"])
    other = checkpoints.open_input(ckpts["b"])
    axes = checkpoints.logical_axes(base.spec)

    def with_spec(x, **fields):
        return dataclasses.replace(x, spec=dataclasses.replace(x.spec, **fields))

    def yes_no(no_token_id):
        return HeadConfig(kind="yes_no", yes_token_id=9, no_token_id=no_token_id)

    checkpoints.check_compatible(base, other, axes, "refuse")  # same head and template
    with pytest.raises(CheckpointError, match=r"head field no_token_id is 11 there but 10 in the"):
        checkpoints.check_compatible(
            with_spec(base, head=yes_no(10)), with_spec(other, head=yes_no(11)), axes, "refuse"
        )
    instructed = with_spec(other, template=qwen3_pair(instruction="Judge the document."))
    with pytest.raises(
        CheckpointError,
        match=r"its template 'qwen3_pair' differs from the base's 'qwen3_pair' in prefix .*"
        r"Merge checkpoints trained with the same template",
    ):
        checkpoints.check_compatible(base, instructed, axes, "refuse")
    renamed = with_spec(other, template=dataclasses.replace(base.spec.template, name="copy"))
    checkpoints.check_compatible(base, renamed, axes, "refuse")  # the name alone is no difference


def test_failed_merge_leaves_no_tmp_and_outputs_next_to_inputs_are_refused(ckpts, tokenizer):
    a = load_model(ckpts["a"])
    neg = save_model(
        os.path.join(ckpts["root"], "neg_a"),
        a.spec,
        jax.tree.map(jnp.negative, a.params),
        tokenizer,
    )
    # a, -a, a weighted 1, 2, 1: the mean direction cancels on the first tensor, mid-merge.
    cfg = _cfg({**ckpts, "n": neg}, "ana", "cancelled", method="multislerp", weights=[1, 2, 1])
    with pytest.raises(ConfigError, match=r"weighted mean direction .* is zero"):
        merging.merge(cfg, mesh=ONE)
    assert not os.path.exists(cfg.output + ".tmp") and not os.path.exists(cfg.output)
    # Inputs the writer would delete (<output>.tmp) or replace (<output>.old) are refused up front.
    for suffix in (".tmp", ".old"):
        victim = os.path.join(ckpts["root"], f"victim{suffix}")
        if not os.path.lexists(victim):
            os.symlink(ckpts["b"], victim)
        cfg = _cfg({**ckpts, "v": victim}, "av", "victim")
        with pytest.raises(ConfigError, match=rf"overlaps the input .*victim\{suffix}"):
            merging.merge(cfg, mesh=ONE)
        assert is_model_checkpoint(victim)


def test_existing_output_is_replaced_by_renames_and_leftovers_recovered(ckpts, monkeypatch):
    out = os.path.join(ckpts["root"], "replaced")
    merging.merge(_cfg(ckpts, "ab", "replaced", t=0.0), mesh=ONE)
    rmtree = storage_commit.shutil.rmtree  # the directory commit lives in the storage layer

    def killed_while_deleting_old(path, *args, **kwargs):
        if path == out + ".old" and not os.path.exists(out + ".tmp"):  # after the new output landed
            raise KeyboardInterrupt
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(storage_commit.shutil, "rmtree", killed_while_deleting_old)
    with pytest.raises(KeyboardInterrupt):
        merging.merge(_cfg(ckpts, "ab", "replaced", t=1.0), mesh=ONE)
    monkeypatch.undo()

    def t_of(path):
        return _manifest(path)["parameters"]["t"]

    assert t_of(out) == [{"value": 1.0}] and t_of(out + ".old") == [{"value": 0.0}]
    assert not os.path.exists(out + ".tmp")
    # The next merge into the same place deletes an .old that sits beside a complete output...
    checkpoints.OutputWriter(out, {}, 1 << 20).abort()
    assert not os.path.exists(out + ".old") and t_of(out) == [{"value": 1.0}]
    # ...and moves back an .old left alone (killed between the two renames): the previous output.
    os.replace(out, out + ".old")
    checkpoints.OutputWriter(out, {}, 1 << 20).abort()
    assert not os.path.exists(out + ".old") and not os.path.exists(out + ".tmp")
    assert t_of(out) == [{"value": 1.0}]
    assert load_model(out).spec == load_model(ckpts["a"]).spec


def _cli(*flags):
    return subprocess.Popen(
        [sys.executable, "-m", "querit_jax.merge", "--config=configs/merge_slerp.py:tiny", *flags],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_error_line_and_killed_merge_reruns_identically(ckpts):
    proc = _cli(f"--config.merge.models={ckpts['a']},/nonexistent/ckpt")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and err.strip().splitlines()[-1].startswith("error: /nonexistent")
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1
    assert "Traceback" not in err

    out = os.path.join(ckpts["root"], "killed")
    flags = (f"--config.merge.models={ckpts['a']},{ckpts['b']}", f"--config.merge.output={out}")
    proc = _cli(*flags)
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(out + ".tmp", "params.partial.partial_save")):
        assert proc.poll() is None and time.time() < deadline, "the merge ended before the kill"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(out)  # nothing that looks complete
    proc = _cli(*flags)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    ref = _cfg(ckpts, "ab", "killed_reference")
    merging.merge(ref, mesh=ONE)
    got, want = _params(out), _params(ref.output)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    m1, m2 = _manifest(out), _manifest(ref.output)
    assert m1["tensors"] == m2["tensors"] and m1["inputs"] == m2["inputs"]
    assert m1["totals"] == m2["totals"] and m1["totals"]["tensors"] == len(want)
