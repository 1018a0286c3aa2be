"""launch/ scripts (--dry_run output, early errors) and the multislice (hybrid) mesh."""

import shlex
import time

import jax
import numpy as np
import pytest

from launch import local, tpu
from querit_jax import config_lib
from querit_jax.sharding import hybrid
from tests.helpers import load_config


def _dry(capsys, *argv) -> list[list[str]]:
    assert tpu.main([argv[0], "--dry_run", *argv[1:]]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return [out[0]] + [shlex.split(line) for line in out[1:]]


def test_v5e_8_single_host(capsys):
    head, create = _dry(
        capsys, "create", "--name=rr", "--zone=us-west4-a", "--accelerator=v5e-8", "--spot"
    )
    assert "1 x v5litepod-8 (8 chips, 1 worker(s) per slice, runtime v2-alpha-tpuv5-lite)" in head
    assert create == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "rr", "--accelerator-type=v5litepod-8",
        "--zone=us-west4-a", "--version=v2-alpha-tpuv5-lite", "--spot",
    ]  # fmt: skip
    remote_data = [
        "--config.data.train=gs://b/xquad_r/en/train",
        "--config.eval.datasets=gs://b/xquad_r/zh/test",
        "--config.model.tokenizer=gs://b/tokenizers/xquad_r_bpe",
    ]
    _, run = _dry(
        capsys, "run", "--name=rr", "--zone=us-west4-a", "--accelerator=v5e-8",
        "--config=configs/general_relevance.py:demo", "--workdir=gs://b/rr", "--",
        "--config.train.num_steps=9", *remote_data,
    )  # fmt: skip
    assert run[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rr"] and "--worker=all" in run
    remote = run[-1]
    assert (
        "QUERIT_JAX_INIT=1 QUERIT_WATCH_MAINTENANCE=1 .venv/bin/python -m querit_jax.train"
        in remote
    )
    assert "--config.train.num_steps=9" in remote and "MEGASCALE" not in remote


def test_v5p_128_pod_slice_through_a_queued_resource(capsys):
    args = ["--name=pod", "--zone=us-east5-a", "--project=proj", "--accelerator=v5p-128"]
    head, create = _dry(capsys, "create", *args, "--queued")
    assert "v5p-128 (64 chips, 16 worker(s) per slice, runtime v2-alpha-tpuv5)" in head
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "pod"]
    assert {
        "--accelerator-type=v5p-128",
        "--runtime-version=v2-alpha-tpuv5",
        "--node-id=pod",
    } <= set(create)
    assert "--project=proj" in create
    _, tar, scp, setup = _dry(capsys, "install", *args)
    assert tar[:2] == ["tar", "czf"] and "querit_jax" in tar
    assert (
        scp[4:7] == ["scp", "/tmp/querit_jax.tgz", "pod:~/querit_jax.tgz"] and "--worker=all" in scp
    )
    assert "--worker=all" in setup and "pip install -q 'jax[tpu]' -e ." in setup[-1]
    _, stop = _dry(capsys, "stop", *args)
    assert "kill -TERM" in stop[-1]  # SIGTERM: the trainer saves a checkpoint, then exits
    _, delete = _dry(capsys, "delete", *args, "--queued")
    assert delete[3:6] == ["queued-resources", "delete", "pod"] and "--force" in delete


def test_two_slice_multislice_job(capsys):
    args = ["--name=ms", "--zone=us-east5-a", "--accelerator=v5p-128", "--num_slices=2"]
    _, create = _dry(capsys, "create", *args)
    assert create[3:5] == ["queued-resources", "create"]
    assert {"--node-count=2", "--node-prefix=ms"} <= set(create)
    head, ip, run0, run1 = _dry(
        capsys, "run", *args, "--config=configs/general_relevance.py", "--workdir=gs://b/ms",
        "--", "--config.data.train=gs://b/data/train.jsonl",
    )  # fmt: skip
    assert "2 x v5p-128" in head and ip[0].startswith("COORDINATOR_IP=$(gcloud")
    for slice_id, run in enumerate((run0, run1)):
        assert run[5] == f"ms-{slice_id}" and "--worker=all" in run
        assert f"MEGASCALE_SLICE_ID={slice_id} " in run[-1]
        assert "MEGASCALE_NUM_SLICES=2 " in run[-1] and "MEGASCALE_PORT=8080" in run[-1]
        assert "MEGASCALE_COORDINATOR_ADDRESS=$COORDINATOR_IP:8080" in run[-1]


def test_a_pod_reads_and_writes_only_through_buckets_or_the_hub(capsys):
    args = ["run", "--name=pod", "--zone=z", "--accelerator=v5p-128"]
    config = "--config=configs/general_relevance.py"
    assert tpu.main([*args, config, "--workdir=/tmp/run", "--dry_run"]) == 2
    assert "--workdir=/tmp/run is not a gs:// location; 16 hosts" in capsys.readouterr().err
    assert tpu.main([*args, config, "--workdir=gs://b/run", "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert "data.train=data/general_relevance/train.jsonl: local paths; 16 hosts" in err
    assert "--config.data.train=gs://BUCKET/" in err
    overrides = [
        "--config.data.train=gs://b/data/train.jsonl",
        "--config.model.init_from=Qwen/Qwen3-0.6B",  # a Hub id: every host downloads it
        "--config.eval.datasets=gs://b/beir/scifact:test,miracl:gs://b/miracl:de",
    ]
    _, run = _dry(capsys, *args, config, "--workdir=gs://b/run", "--", *overrides)
    assert "--workdir=gs://b/run --config.data.train=gs://b/data/train.jsonl" in run[-1]
    # The adaptation config names a target corpus, a teacher and a mining output: all must be
    # remote.
    assert tpu.main([*args, "--config=configs/adapt_beir.py", "--workdir=gs://b/a", "--dry_run",
                     "--", *overrides]) == 2  # fmt: skip
    assert "mining.target=" in capsys.readouterr().err


def test_errors_are_early_and_clear(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.delenv("QUERIT_WORKDIR", raising=False)
    assert tpu.main(["create", "--zone=z", "--dry_run"]) == 2
    assert "missing --name (or $TPU_NAME)" in capsys.readouterr().err
    assert tpu.main(["run", "--name=a", "--zone=z", "--config=c.py", "--dry_run"]) == 2
    assert "missing --workdir" in capsys.readouterr().err
    assert tpu.main(["create", "--name=a", "--zone=z", "--accelerator=v5p-12"]) == 2
    assert "multiples of 8 TensorCores" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud: refused before anything runs
    assert tpu.main(["delete", "--name=a", "--zone=z"]) == 2
    assert "gcloud is not installed or not on PATH" in capsys.readouterr().err


def test_local_launcher_dry_run(capsys):
    assert local.main(["--num_processes=3", "--devices_per_process=2", "--port=1234", "--dry_run",
                       "--", "-m", "querit_jax.train", "--config=x.py"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[2].startswith("[launch] process 2: QUERIT_COORDINATOR=127.0.0.1:1234 ")
    assert "QUERIT_NUM_PROCESSES=3 QUERIT_PROCESS_ID=2" in lines[2]
    assert "--xla_force_host_platform_device_count=2" in lines[2]
    assert lines[2].endswith("python -m querit_jax.train --config=x.py")


def test_local_launcher_stops_the_others_when_any_process_fails(capsys, tmp_path):
    """The last process fails while the first runs on, ignoring SIGTERM: the launcher sees it
    (every process is polled), sends SIGTERM, SIGKILL after --grace_s, prints every exit code and
    returns the failing one."""
    ready = str(tmp_path / "ready")
    code = (
        "import os, signal, sys, time\n"
        "if os.environ['QUERIT_PROCESS_ID'] == '0':\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"    open({ready!r}, 'w').close()\n"
        "    time.sleep(60)\n"
        f"while not os.path.exists({ready!r}):\n"
        "    time.sleep(0.01)\n"
        "sys.exit(3)\n"
    )
    start = time.time()
    assert local.run(["-c", code], local.process_envs(2, 1, 1234), None, grace_s=1.0) == 3
    assert time.time() - start < 30
    err = capsys.readouterr().err
    assert "a process exited with 3; stopping the others" in err
    assert "[launch] exit codes: -9 3" in err


def test_hybrid_mesh_keeps_model_axes_inside_a_slice():
    devices = jax.devices()[:8]
    slice_of = {d: i // 4 for i, d in enumerate(devices)}.get  # two fake slices of 4 devices
    mesh = hybrid.make_hybrid_mesh((4, 2, 1, 1), 2, devices, slice_of)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1, "expert": 1}
    grid = np.vectorize(slice_of)(mesh.devices)
    # Data rows 0-1 on slice 0, rows 2-3 on slice 1: only the data axis crosses slices.
    np.testing.assert_array_equal(grid[:, :, 0, 0], [[0, 0], [0, 0], [1, 1], [1, 1]])
    assert hybrid.ici_shape((4, 2, 1, 1), 2) == (2, 2, 1, 1)
    with pytest.raises(ValueError, match="the data axis \\(2\\) must be a multiple"):
        hybrid.make_hybrid_mesh((2, 4, 1, 1), 4, devices, slice_of)
    with pytest.raises(ValueError, match="slices of sizes \\{0: 4, 1: 4\\}; expected 4 slices"):
        hybrid.make_hybrid_mesh((8, 1, 1, 1), 4, devices, slice_of)
    with pytest.raises(ValueError, match="has no slice_index"):
        hybrid.make_hybrid_mesh((8, 1, 1, 1), 2, devices)  # CPU devices: not a multislice job
    c = load_config("configs/general_relevance.py", "tiny")
    c.sharding.mesh.update(dict(data=8))
    cfg = config_lib.from_config_dict(
        {
            **c.to_dict(),
            "sharding": {
                **c.sharding.to_dict(),
                "mesh": {**c.sharding.mesh.to_dict(), "dcn_data": 3},
            },
        }
    )
    with pytest.raises(
        config_lib.ConfigError, match="sharding.mesh: .*dcn_data=3: the data axis \\(8\\)"
    ):
        config_lib.validate_for_devices(cfg, 8)
