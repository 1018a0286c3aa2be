"""Two processes on 127.0.0.1 (jax.distributed, gloo, 4 fake CPU devices each) train like one with 8,
also across a preemption notice that reaches only one of them."""

import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np

from querit_jax.loading import load_model
from tests.helpers import ROOT

TRAIN = [
    "-m",
    "querit_jax.train",
    "--config=configs/general_relevance.py:demo",
    "--config.train.num_steps=4",
    "--config.train.log_every=1",
    "--config.eval.datasets=",
]


def _losses(workdir):
    """{step: loss} (a step run again after a restart overwrites its earlier row)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def _process_pid(launcher_pid: int, process_id: int) -> int:
    """The pid of the launcher's child with QUERIT_PROCESS_ID=process_id (read from /proc)."""
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == launcher_pid and f"QUERIT_PROCESS_ID={process_id}".encode() in env:
            return int(pid)
    raise AssertionError(f"no process {process_id} under launcher {launcher_pid}")


def _launch(workdir, **env):
    return subprocess.Popen(
        [
            sys.executable,
            "launch/local.py",
            "--num_processes=2",
            "--devices_per_process=4",
            "--timeout=400",
            "--",
            *TRAIN,
            f"--workdir={workdir}",
        ],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_processes_train_like_one_process_with_all_devices(tmp_path):
    multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
    one = subprocess.Popen(  # runs alongside; each run is bounded by a timeout
        [sys.executable, *TRAIN, f"--workdir={single}"],
        cwd=ROOT,
        env={
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Preemption notice to process 1 only (slowed steps, so it lands mid-run): both processes agree
    # on a step through JAX's preemption sync point, save it together and exit 0.
    launcher = _launch(multi, QUERIT_TEST_STEP_DELAY="1.0")
    for line in launcher.stdout:
        if "step 1/4" in line:
            break
    os.kill(_process_pid(launcher.pid, 1), signal.SIGTERM)
    out, _ = launcher.communicate(timeout=450)
    assert launcher.returncode == 0, out[-4000:]
    stopped = int(re.search(r"all processes stop and save at step (\d)", out).group(1))
    assert 1 <= stopped < 4 and str(stopped) in os.listdir(os.path.join(multi, "checkpoints"))
    # The next launch resumes there and finishes.
    launcher = _launch(multi)
    out, _ = launcher.communicate(timeout=450)
    single_out, _ = one.communicate(timeout=450)
    assert launcher.returncode == 0, out[-4000:]
    assert one.returncode == 0, single_out[-3000:]
    assert f"Resumed from step {stopped} " in out
    assert "over 8 cpu devices" in out and "over 8 cpu devices" in single_out

    # Same global batches, same losses (the all-reduce runs over gloo instead of in one process).
    got, want = _losses(multi), _losses(single)
    assert sorted(got) == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-6
    )
    a, b = (
        load_model(os.path.join(multi, "model")),
        load_model(os.path.join(single, "model")),
    )
    # Adam divides by |g|: reduction-order noise in near-zero gradients moves a few entries by ~1e-5.
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-4)

    # Logs from process 0 only; each process read its own data copy; one collective checkpoint.
    assert re.search(r"^\[0\] .*step 4/4", out, re.M) and not re.search(
        r"^\[1\] .*step \d", out, re.M
    )
    assert sorted(os.listdir(os.path.join(multi, "data"))) == ["process_0", "process_1"]
    step_dir = os.path.join(multi, "checkpoints", "4")
    assert sorted(os.listdir(os.path.join(step_dir, "data_iter"))) == [
        "commit_success.txt",
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
