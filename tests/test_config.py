"""Every config file and every documented variant loads and validates; bad configs fail clearly."""

import glob
import os
import re

import ml_collections
import pytest

from querit_jax import config_lib
from querit_jax.models.decoder_config import DecoderConfig
from tests.helpers import ROOT, config_module, load_config

CONFIG_FILES = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
)


def _variants(path):
    return config_module(path).VARIANTS


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_config_and_variant_validates(path):
    variants = _variants(path)
    assert variants, f"{path} documents no variants"
    doc = config_module(path).__doc__
    for variant in variants:
        if variant is not None:
            assert variant in doc, f"variant {variant!r} is not documented in {path}"
        cfg = load_config(path, variant)
        assert isinstance(cfg, ml_collections.ConfigDict)
        if set(cfg.keys()) == {"mining"}:  # a mining-only config (python -m querit_jax.mine)
            assert config_lib.mining_from_config_dict(cfg).output
            continue
        if set(cfg.keys()) == {"merge"}:  # a merge config (python -m querit_jax.merge)
            assert config_lib.merge_from_config_dict(cfg).output
            continue
        if "loop" in cfg:  # the whole loop (python -m querit_jax.loop): every section
            from querit_jax import workflow

            workflow.validate(cfg)
            continue
        exp = config_lib.from_config_dict(cfg)
        assert exp.train.num_steps >= 1


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_unknown_variant_is_rejected(path):
    with pytest.raises(ValueError, match="variant"):
        load_config(path, "no-such-variant")


def _demo():
    return load_config("configs/general_relevance.py", "demo")


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("model.preset", "qwen9", "model.preset"),
        ("model.head", "pairwise", "model.head"),
        ("model.template", "nope", "model.template"),
        ("data.group_size", 1, "data.group_size"),
        ("data.max_query_tokens", 500, "data.max_query_tokens"),
        ("optim.schedule", "step", "optim.schedule"),
        ("sharding.preset", "zero", "sharding"),
        ("data.train", "", "data.train"),
    ],
)
def test_bad_values_name_the_field(key, value, match):
    cfg = _demo()
    section, field = key.split(".")
    cfg[section][field] = value
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.from_config_dict(cfg)


def test_unknown_field_is_rejected():
    cfg = _demo().to_dict()
    cfg["optim"]["learnin_rate"] = 1.0
    with pytest.raises(config_lib.ConfigError, match="learnin_rate"):
        config_lib.from_config_dict(cfg)


def test_misspelt_fields_in_the_mining_and_merge_sections_are_named():
    cfg = load_config("configs/mine_beir.py", "demo").to_dict()
    cfg["mining"]["teacherr"] = "x"
    with pytest.raises(
        config_lib.ConfigError, match=r"config.mining: unknown field\(s\) \['teacherr'\]"
    ):
        config_lib.mining_from_config_dict(cfg)
    cfg = load_config("configs/adapt_beir.py", "demo").to_dict()
    cfg["mining"]["num_negative"] = 3
    with pytest.raises(config_lib.ConfigError, match=r"config.mining: .*\['num_negative'\]"):
        config_lib.from_config_dict(cfg)
    for path, key in [
        ((), "vocab_polcy"),
        (("sharding",), "presett"),
        (("sharding", "mesh"), "fdsp"),
    ]:
        cfg = load_config("configs/merge_slerp.py", "tiny").to_dict()
        section = cfg["merge"]
        for name in path:
            section = section[name]
        section[key] = 1
        where = re.escape(".".join(("config.merge", *path)))
        with pytest.raises(
            config_lib.ConfigError, match=rf"{where}: unknown field\(s\) \['{key}'\]"
        ):
            config_lib.merge_from_config_dict(cfg)


def test_merge_sharding_is_checked_like_training_sharding_and_named_under_merge():
    cfg = load_config("configs/merge_slerp.py", "tiny")
    cfg.merge.sharding.rule_overrides = {"vocab": "tensor"}
    merge = config_lib.merge_from_config_dict(cfg)
    assert isinstance(merge.sharding, config_lib.ShardingConfig)
    assert merge.sharding.rule_overrides == (("vocab", "tensor"),)
    assert merge.sharding.mesh == config_lib.MeshConfig(data=1, fsdp=-1)
    cfg.merge.sharding.preset = "zero"
    with pytest.raises(config_lib.ConfigError, match="merge.sharding: Unknown sharding preset"):
        config_lib.merge_from_config_dict(cfg)
    cfg.merge.sharding.preset = (
        "dp"  # maps nothing to fsdp, where the merge's mesh puts every device
    )
    with pytest.raises(config_lib.ConfigError, match="merge.sharding.mesh.fsdp: size -1"):
        config_lib.merge_from_config_dict(cfg)


def test_demo_presets_are_the_demo_models():
    numbers = dict(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=16384)
    exp = config_lib.from_config_dict(_demo())
    assert exp.model.backbone_config() == DecoderConfig.tiny(
        **numbers, hidden_size=64, intermediate_size=192
    )
    moe = config_lib.from_config_dict(load_config("configs/general_relevance.py", "tiny_moe"))
    assert moe.model.backbone_config() == DecoderConfig.tiny_moe(vocab_size=16384, moe_impl="ep")


def test_unused_mesh_axis_is_rejected():
    cfg = _demo()
    cfg.sharding.mesh.tensor = 2  # dp preset maps nothing to 'tensor'
    with pytest.raises(config_lib.ConfigError, match="sharding.mesh.tensor"):
        config_lib.from_config_dict(cfg)


def test_batch_must_split_over_data_axes():
    exp = config_lib.from_config_dict(_demo())  # batch 8
    assert config_lib.validate_for_devices(exp, 8) == (8, 1, 1, 1)
    cfg = _demo()
    cfg.data.batch_size = 6
    with pytest.raises(config_lib.ConfigError, match="data.batch_size"):
        config_lib.validate_for_devices(config_lib.from_config_dict(cfg), 8)


def test_locked_config_rejects_typos_on_the_command_line():
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "querit_jax.train",
            "--config=configs/general_relevance.py:demo",
            "--config.optim.learnin_rate=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "learnin_rate" in proc.stderr


def test_encoder_families_validate_with_their_own_presets_and_templates():
    cfg = _demo()
    cfg.model.family, cfg.model.preset, cfg.model.template = "bert", "minilm_l6", "encoder_pair"
    cfg.model.overrides = {}
    exp = config_lib.from_config_dict(cfg)
    assert exp.model.backbone_config().hidden_size == 384
    cfg.model.template = "qwen3_pair"
    with pytest.raises(config_lib.ConfigError, match="bert models read pair templates"):
        config_lib.from_config_dict(cfg)
    cfg.model.template, cfg.model.head = "encoder_pair", "yes_no"
    with pytest.raises(config_lib.ConfigError, match="model.head"):
        config_lib.from_config_dict(cfg)


def test_loss_and_mining_settings_are_validated():
    cfg = load_config("configs/adapt_beir.py", "demo")
    assert config_lib.parse_losses("listwise_ce:0.5,kl") == {"listwise_ce": 0.5, "kl": 1.0}
    cfg.train.loss = "kl:x"
    with pytest.raises(config_lib.ConfigError, match="train.loss: weight 'x' of kl"):
        config_lib.from_config_dict(cfg)
    cfg = load_config("configs/adapt_beir.py", "demo")
    cfg.mining.generator = "jax"
    with pytest.raises(config_lib.ConfigError, match="mining.generator_model"):
        config_lib.from_config_dict(cfg)
    cfg = load_config("configs/mine_beir.py", "demo")
    cfg.mining.prompt = "haiku"
    with pytest.raises(config_lib.ConfigError, match="mining.prompt"):
        config_lib.mining_from_config_dict(cfg)


@pytest.mark.parametrize("path", ["configs/adapt_beir.py:demo", "configs/adapt_miracl.py"])
def test_overriding_the_mining_output_or_teacher_moves_training_and_reference_eval(path):
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from absl import flags\n"
        "from ml_collections import config_flags\n"
        "from querit_jax import config_lib\n"
        "c = config_flags.DEFINE_config_file('config', None, '', lock_config=True)\n"
        "flags.FLAGS(sys.argv)\n"
        "e = config_lib.from_config_dict(c.value)\n"
        "print(e.data.train, e.eval.reference_models)\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            f"--config={path}",
            "--config.mining.output=/elsewhere/mined",
            "--config.mining.teacher=/elsewhere/teacher",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.split("\n")[0] == "('/elsewhere/mined',) ('/elsewhere/teacher',)"
