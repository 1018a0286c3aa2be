"""Training end to end: resume equals an uninterrupted run, the step compiles once, outputs are
usable."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from querit_jax.loading import load_model
from tests.helpers import ROOT


def _tensorboard_scalars(workdir):
    """Reads the TFRecord event files tensorboardX wrote (no TensorFlow): {tag: [(step, value)]}."""
    import glob
    import struct

    from tensorboardX.proto import event_pb2

    out = {}
    for path in glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")):
        with open(path, "rb") as f:
            while header := f.read(12):
                (length,) = struct.unpack("<Q", header[:8])
                event = event_pb2.Event.FromString(f.read(length))
                f.read(4)
                for v in event.summary.value:
                    out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows}


def _train_cli(workdir, *extra, ok=True):
    """Runs the training CLI in a fresh process (1 CPU device; every run in the same
    configuration)."""
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "querit_jax.train",
            "--config=configs/general_relevance.py:tiny",
            "--config.train.num_steps=12",
            "--config.train.save_every=6",
            "--config.train.log_every=1",
            "--config.eval.datasets=",
            f"--workdir={workdir}",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr
    return proc


def test_resume_after_restart_equals_uninterrupted_run(tmp_path):
    straight = str(tmp_path / "straight")
    log = _train_cli(straight)
    assert "Train step compiled 1 time(s) for 12 steps" in log, "the train step must trace once"
    scalars = _tensorboard_scalars(straight)
    assert [s for s, _ in scalars["loss"]] == list(range(1, 13))
    assert {"accuracy", "grad_norm", "learning_rate"} <= set(scalars)

    # Stop after step 6 (checkpoint), then continue in a new process, as after a preemption:
    # everything (state, optimiser, data iterator position) comes back from disk.
    resumed = str(tmp_path / "resumed")
    first = _train_cli(resumed, "--stop_at_step=6")
    assert "Stopped after step 6" in first and not os.path.exists(os.path.join(resumed, "model"))
    second = _train_cli(resumed)
    assert "Resumed from step 6" in second

    want, got = _losses(straight), _losses(resumed)
    assert sorted(got) == list(range(1, 13))
    for step in range(1, 13):
        assert got[step] == want[step], (step, got[step], want[step])
    a, b = load_model(straight), load_model(resumed)
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a.params), jax.tree.leaves(b.params)
    ):
        np.testing.assert_array_equal(
            np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path)
        )


def test_resuming_with_a_different_config_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    _train_cli(workdir, "--stop_at_step=2")
    proc = _train_cli(workdir, "--config.data.max_length=60", ok=False)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "data.max_length: 64 -> 60" in proc.stderr
    assert "Traceback" not in proc.stderr


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
