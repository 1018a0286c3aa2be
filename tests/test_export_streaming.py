"""Streaming export: a model checkpoint -> sharded safetensors, tensor by tensor, equal to the
in-memory export; transformers loads the shards; --verify works on them; the whole model is never
restored."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from querit_jax.convert.hf_import import read_weights
from querit_jax.convert.safetensors_io import shard_names, shard_plan
from querit_jax.loading import load_model
from querit_jax.models import checkpoint
from querit_jax.models.checkpoint import save_model
from querit_jax.models.decoder_config import DecoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.models.spec import ModelSpec, abstract_params
from querit_jax.models.templates import qwen3_pair
from querit_jax.release.export import export_checkpoint, export_hf, parse_size
from querit_jax.release.verify import verify


def _random_params(spec, seed=0):
    rng = np.random.default_rng(seed)
    _, abstract = abstract_params(spec)
    return jax.tree.map(
        lambda a: jnp.asarray(0.05 * rng.standard_normal(a.shape), a.dtype), abstract
    )


def _checkpoint(root, tokenizer, name, head=None, **fields):
    cfg = DecoderConfig.tiny_demo(num_layers=2, **fields)
    spec = ModelSpec(cfg.family, cfg, head or HeadConfig(), qwen3_pair(), 128, 32)
    return save_model(str(root / name), spec, _random_params(spec), tokenizer)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("stream_inputs")
    yes, no = tokenizer.convert_tokens_to_ids(["yes", "no"])
    return {
        "dense": _checkpoint(root, tokenizer, "dense"),
        "yes_no": _checkpoint(
            root,
            tokenizer,
            "yes_no",
            head=HeadConfig(kind="yes_no", yes_token_id=yes, no_token_id=no),
            tie_word_embeddings=False,
        ),
        "moe": _checkpoint(
            root,
            tokenizer,
            "moe",
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            norm_topk_prob=True,
        ),
    }


def test_shard_plan_and_names():
    assert shard_plan([4, 4, 4], 8) == [[0, 1], [2]]
    assert shard_plan([10, 1, 1], 8) == [[0], [1, 2]]  # an oversized tensor gets its own shard
    assert shard_plan([3], 8) == [[0]]
    assert shard_names(1) == ["model.safetensors"]
    assert shard_names(3)[1] == "model-00002-of-00003.safetensors"
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2MiB") == 2 * 2**20


@pytest.mark.parametrize("kind", ["dense", "yes_no", "moe"])
def test_streamed_shards_equal_the_in_memory_export(ckpts, kind, tmp_path, monkeypatch):
    """fp32: the same tensors bit for bit; each tensor restored on its own, never the whole
    model."""
    memory = export_hf(load_model(ckpts[kind]), str(tmp_path / "memory"))
    reads = []
    original = checkpoint.StoredParams.read
    monkeypatch.setattr(
        checkpoint.StoredParams,
        "read",
        lambda self, name, sharding=None: reads.append(name) or original(self, name, sharding),
    )
    monkeypatch.setattr(
        checkpoint, "restore_params", lambda *a: pytest.fail("the whole model was restored")
    )
    out = export_checkpoint(
        ckpts[kind], str(tmp_path / "streamed"), dtype="float32", max_shard_bytes=300_000
    )
    index = json.loads((tmp_path / "streamed" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 2 and files == shard_names(len(files))
    for f in files:  # every shard but the oversized embedding's is within the limit
        assert os.path.getsize(os.path.join(out, f)) < 300_000 + 16_384 or "00001" in f
    streamed, reference = read_weights(out), read_weights(memory)
    assert set(streamed) == set(reference) == set(index["weight_map"])
    for name, tensor in reference.items():
        np.testing.assert_array_equal(streamed[name], tensor, err_msg=name)
    assert sum(t.nbytes for t in streamed.values()) == index["metadata"]["total_size"]
    # Every stored tensor read once (the yes/no model's LM head only to derive score.weight).
    assert sorted(reads) == sorted(checkpoint.StoredParams.open(ckpts[kind]).keys)


def test_bf16_sharded_export_loads_in_transformers_and_verifies(ckpts, tmp_path):
    import torch
    import transformers

    out = export_checkpoint(ckpts["dense"], str(tmp_path / "bf16"), max_shard_bytes=400_000)
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert (tmp_path / "bf16" / "model.safetensors.index.json").exists()
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        out, dtype=torch.float32, use_safetensors=True
    )
    assert hf.model.layers[1].mlp.down_proj.weight.shape == (64, 192)
    report = verify(load_model(ckpts["dense"]), out)
    assert report["max_abs_diff_transformers"] < 1e-4
    assert report["max_abs_diff_sentence_transformers"] < 1e-4
