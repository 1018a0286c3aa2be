"""Training set-up: runtime overrides on an imported model. (Resume, refusal of a changed config and
the other restart tests are in test_resilience.py, on its shared uninterrupted run.)"""

import os

import jax

from tests.helpers import ROOT


def test_init_from_takes_runtime_overrides_and_refuses_architecture_ones(tmp_path):
    """`model.overrides` with `init_from`: how the model runs (moe_impl: ep, to fine-tune an
    imported
    MoE with expert parallelism) is applied; what its parameters are comes from the checkpoint."""
    import pytest

    from querit_jax import config_lib, sharding
    from querit_jax.models.checkpoint import save_model
    from querit_jax.training import trainer
    from tests.helpers import load_config

    c = load_config("configs/general_relevance.py", "tiny_moe")  # fsdp+ep over all 8 devices
    cfg = config_lib.from_config_dict(c)
    shape = config_lib.validate_for_devices(cfg, jax.device_count())
    mesh, rules = sharding.make_mesh(shape, jax.devices()), cfg.sharding.rules()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        spec, _, params, tokenizer = trainer.build_model(cfg, mesh, rules, print)
        assert spec.backbone.moe_impl == "ep"
        ckpt = save_model(
            str(tmp_path / "moe"), spec.replace(moe_impl="grouped"), params, tokenizer
        )
        c.model.init_from = ckpt
        for overrides, impl in (({}, "grouped"), ({"moe_impl": "ep"}, "ep")):
            c.model.overrides = overrides
            got = trainer.build_model(config_lib.from_config_dict(c), mesh, rules, print)[0]
            assert got.backbone.moe_impl == impl
        c.model.overrides = {"moe_impl": "ep", "num_experts": 16}
        with pytest.raises(
            config_lib.ConfigError,
            match=r"model.overrides.num_experts: the architecture comes from init_from",
        ):
            trainer.build_model(config_lib.from_config_dict(c), mesh, rules, print)
    finally:
        os.chdir(cwd)
