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


def test_a_resumed_run_restores_its_checkpoint_without_reading_init_from(tmp_path):
    """A run restarting with checkpoints takes its weights from the newest one only: `init_from` is
    not read again (a pod restarting after preemption would re-read the whole initial model).
    Shown by resuming after the initial model's weights are gone."""
    import shutil

    import numpy as np

    from querit_jax import config_lib, sharding
    from querit_jax.models.checkpoint import save_model
    from querit_jax.training import trainer
    from tests.helpers import load_config

    c = load_config("configs/general_relevance.py", "tiny")
    devices = jax.devices()[:4]  # the tiny batch of 4 groups
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        cfg = config_lib.from_config_dict(c)
        mesh = sharding.make_mesh(config_lib.validate_for_devices(cfg, 4), devices)
        spec, _, params, tokenizer = trainer.build_model(cfg, mesh, cfg.sharding.rules(), print)
        c.model.init_from = save_model(str(tmp_path / "init"), spec, params, tokenizer)
        cfg = config_lib.from_config_dict(c)
        workdir = str(tmp_path / "run")
        first = trainer.setup(cfg, workdir, devices)
        assert first.start == 0
        # A state no initialisation gives (the step's update is not what is tested here).
        saved = first.state.replace(
            step=first.state.step + 3, params=jax.tree.map(lambda x: x + 1, first.state.params)
        )
        first.checkpointer.save(3, saved, first.data_iter, cfg.to_dict())
        first.checkpointer.close()
        shutil.rmtree(tmp_path / "init" / "params")

        again = trainer.setup(cfg, workdir, devices)
        assert again.start == 3 and again.spec == first.spec
        for got, want in zip(jax.tree.leaves(again.state), jax.tree.leaves(saved)):
            assert got.sharding == want.sharding
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        again.checkpointer.close()
    finally:
        os.chdir(cwd)
