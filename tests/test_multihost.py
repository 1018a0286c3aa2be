"""Several processes train, evaluate and resume like one process with all the devices.

Two processes on 127.0.0.1 (jax.distributed, gloo, 2 fake CPU devices each) against one process with
4: one chain of runs in one gs:// workdir (GCS emulator: the hosts of a pod share nothing else) goes
2 processes (preempted by a notice that reaches only process 1) -> 1 process -> 2 processes, and
must give the uninterrupted local 1-process run's losses, gradient norms, parameters and evaluation
numbers (untrained, reference model, during training, final).
"""

import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from querit_jax import storage
from querit_jax.data import tfds_groups
from querit_jax.loading import load_model
from tests import gcs_server
from tests.conftest import make_hf_qwen3
from tests.helpers import ROOT, xla_flags

STEPS = 6
OVERRIDES = [
    f"--config.train.num_steps={STEPS}",
    "--config.train.log_every=1",
    "--config.train.save_every=2",
    "--config.train.eval_every=2",
]
# Every program is stored in the compilation cache (the tiny model compiles in under a second).
ENV = {"JAX_PLATFORMS": "cpu", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def _config_with_reference(tmp_path, reference: str) -> str:
    """general_relevance.py:tiny with a reference model to evaluate (the file has no such field)."""
    path = tmp_path / "config_with_reference.py"
    path.write_text(
        "import importlib.util\n"
        "_spec = importlib.util.spec_from_file_location('gr', "
        f"{ROOT + '/configs/general_relevance.py'!r})\n"
        "_gr = importlib.util.module_from_spec(_spec)\n"
        "_spec.loader.exec_module(_gr)\n\n\n"
        "def get_config(arg=None):\n"
        "    c = _gr.get_config(arg)\n"
        f"    c.eval.reference_models = {reference!r}\n"
        "    return c\n"
    )
    return f"--config={path}:tiny"


@pytest.fixture
def bucket():
    """gs:// through the GCS emulator with the generation headers Orbax needs
    (tests/gcs_server.py)."""
    with gcs_server.serving() as url:
        yield url


def _rows(workdir):
    """{step: training row}; every step once (a resumed run replaces the rows it runs again)."""
    rows = [json.loads(line) for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), steps
    return {r["step"]: r for r in rows if "loss" in r}


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


def _two_processes(config, workdir, *extra, **env):
    return subprocess.Popen(
        [
            sys.executable,
            "launch/local.py",
            "--num_processes=2",
            "--devices_per_process=2",
            "--timeout=400",
            "--",
            "-m",
            "querit_jax.train",
            config,
            *OVERRIDES,
            f"--workdir={workdir}",
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, **ENV, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _one_process(config, workdir, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "querit_jax.train",
            config,
            *OVERRIDES,
            f"--workdir={workdir}",
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, **ENV, "XLA_FLAGS": xla_flags(4)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc, timeout=450) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _metric_values(tree, prefix=""):
    """{"path/to/metric": value} for every number in a results.json."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_metric_values(v, f"{prefix}{k}/"))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _own_files(workdir):
    """Files of the workdir outside what all processes write together (Orbax arrays of checkpoints
    and of the model, grain states) and outside per-launch names (TensorBoard event files,
    compiled programs), and the marker that commits a dataset uploaded to a bucket."""
    skip = ("checkpoints/", "model/params/", "tensorboard/", "compilation_cache/")
    return {
        rel
        for rel in storage.files(workdir)
        if not rel.startswith(skip) and not rel.endswith(tfds_groups.MARKER)
    }


def test_two_processes_train_evaluate_and_resume_like_one_process(tmp_path, bucket):
    reference = make_hf_qwen3(str(tmp_path / "reference_model"), "seq_cls", seed=1)
    config = _config_with_reference(tmp_path, reference)
    multi, single = f"{bucket}/multihost-{tmp_path.name}", str(tmp_path / "single")
    one = _one_process(config, single)  # the uninterrupted run, alongside the others

    # 1. Two processes, a preemption notice to process 1 only (slowed steps, so it lands mid-run):
    #    both agree on a step through JAX's preemption sync point, save it together and exit 0.
    own_cache = {"JAX_COMPILATION_CACHE_DIR": ""}  # the workdir's (not the suite's shared one)
    launcher = _two_processes(config, multi, QUERIT_TEST_STEP_DELAY="1.0", **own_cache)
    seen = []
    for line in launcher.stdout:
        seen.append(line)
        if f"step 1/{STEPS}" in line:
            break
    else:
        raise AssertionError("".join(seen)[-4000:])
    os.kill(_process_pid(launcher.pid, 1), signal.SIGTERM)
    out = "".join(seen) + _finish(launcher)
    stopped = int(re.search(r"all processes stop and save at step (\d)", out).group(1))
    assert 1 <= stopped <= 3 and str(stopped) in storage.listdir(f"{multi}/checkpoints")
    assert "over 4 cpu devices" in out
    # Process 0 built the training data once (uploaded; every process reads a local copy).
    assert storage.listdir(f"{multi}/data") == ["manifest.json", "tfds", "train.jsonl"]
    assert re.search(r"^\[0\] .*untrained: mean nDCG@10", out, re.M)

    # 2. One process (4 devices) resumes the 2-process checkpoint for two steps...
    middle = stopped + 2
    out = _finish(_one_process(config, multi, f"--stop_at_step={middle}"))
    assert f"Resumed from step {stopped} " in out and f"Stopped after step {middle}" in out

    # 3. ... and two processes resume that 1-process checkpoint and finish. The programs the first
    #    2-process launch compiled come from the workdir's compilation cache.
    out = _finish(_two_processes(config, multi, **own_cache))
    single_out = _finish(one)
    assert f"Resumed from step {middle} " in out
    assert "over 4 cpu devices" in single_out
    loaded = re.search(r"Compilation cache: (\d+) program\(s\) loaded", out)
    assert loaded and int(loaded.group(1)) >= 1, out[-3000:]

    # Same global batches, same losses and gradient norms (Adam is scale-invariant: the norm is what
    # shows a wrong cross-process gradient scale), same parameters.
    got, want = _rows(multi), _rows(single)
    assert sorted(got) == list(range(1, STEPS + 1)) == sorted(want)
    for key in ("loss", "grad_norm", "accuracy", "learning_rate"):
        np.testing.assert_allclose(
            [got[s][key] for s in sorted(got)], [want[s][key] for s in sorted(want)], rtol=1e-5
        )
    a, b = load_model(f"{multi}/model"), load_model(os.path.join(single, "model"))
    # Adam divides by |g|: reduction-order noise in near-zero gradients moves a few entries by
    # ~1e-5.
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-4)

    # Same evaluations: before training, of the reference model, during training and at the end.
    got = json.loads(storage.read_text(f"{multi}/results.json"))
    with open(os.path.join(single, "results.json")) as f:
        want = json.load(f)
    keys = ["final", "reference: reference_model", "step_2", "step_4", "untrained"]
    assert sorted(got) == sorted(want) == keys
    got, want = _metric_values(got), _metric_values(want)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-6, err_msg=k)

    # Logs come from process 0 only, and process 1 wrote no file of its own: the workdir holds what
    # the 1-process run's holds, apart from the collective checkpoints.
    assert re.search(r"^\[0\] .*step 6/6", out, re.M) and not re.search(
        r"^\[1\] .*(step \d|nDCG)", out, re.M
    )
    assert _own_files(multi) == _own_files(single)
    items = f"{multi}/checkpoints/{STEPS}/data_iter"
    assert storage.glob(items, "process_*") == [
        f"{items}/process_0-of-2.json",
        f"{items}/process_1-of-2.json",
    ]
    assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_two_processes_adapt_with_mining_like_one_process(tmp_path, bucket):
    """adapt_beir.py:tiny mines its training data inside the training command (every process mines
    its own shards of the target corpus, the teacher scoring on its devices), then trains on it,
    packed (each process packs its own groups; the processes agree on each step's rows), with
    evaluation on: 2 processes x 2 devices with workdir and mined data in a bucket give what one
    process with 4 devices gives locally."""
    config = "--config=configs/adapt_beir.py:tiny"
    multi, single = f"{bucket}/adapt-{tmp_path.name}", str(tmp_path / "single")
    one = _one_process(
        config, single, f"--config.mining.output={single}/mined", "--config.data.pack=True"
    )
    out = _finish(
        _two_processes(
            config, multi, f"--config.mining.output={multi}/mined", "--config.data.pack=True"
        )
    )
    single_out = _finish(one)
    assert "over 4 cpu devices" in out and "over 4 cpu devices" in single_out
    shapes = re.findall(r"^\[0\] .*Step \d+: (\d+) packed rows of (\d+) tokens", out, re.M)
    assert shapes and all(int(r) % 4 == 0 for r, _ in shapes), out[-3000:]

    # 24 documents in shards of 8: shard i mined by process i % 2, each recorded once; the same
    # groups as one process mined, in the same training data (built once, by process 0).
    manifest = json.loads(storage.read_text(f"{multi}/mined/manifest.json"))
    with open(os.path.join(single, "mined", "manifest.json")) as f:
        want = json.load(f)
    shards = sorted(manifest["shards"].items(), key=lambda x: int(x[0]))
    assert [e["process"] for _, e in shards] == [0, 1, 0]
    assert manifest["totals"] == want["totals"] and manifest["totals"]["groups"] > 20
    assert re.search(r"^\[1\] .*process 1: mined 1 shards", out, re.M), out[-3000:]
    with open(os.path.join(single, "data", "train.jsonl")) as f:
        want = [json.loads(line) for line in f]
    text = storage.read_text(f"{multi}/data/train.jsonl")
    got = [json.loads(line) for line in text.splitlines()]
    assert "neg_rows" in got[0] and "neg" not in got[0]  # ids and docstore rows: texts joined later
    scores = ("pos_scores", "neg_scores")  # teacher batches of another size: float32 rounding
    assert [{k: v for k, v in g.items() if k not in scores} for g in got] == [
        {k: v for k, v in g.items() if k not in scores} for g in want
    ]
    for key in scores:
        flat = [[x for g in groups for x in g[key]] for groups in (got, want)]
        np.testing.assert_allclose(*flat, atol=1e-6)

    got, want = _rows(multi), _rows(single)
    assert sorted(got) == list(range(1, STEPS + 1)) == sorted(want)
    for key in ("loss", "grad_norm", "accuracy", "learning_rate"):
        np.testing.assert_allclose(
            [got[s][key] for s in sorted(got)], [want[s][key] for s in sorted(want)], rtol=1e-5
        )
    assert want[STEPS]["loss"] != want[1]["loss"]  # it trained
    got = _metric_values(json.loads(storage.read_text(f"{multi}/results.json")))
    with open(os.path.join(single, "results.json")) as f:
        want = _metric_values(json.load(f))
    assert sorted({k.split("/")[0] for k in want}) == [
        "final", "reference: all-MiniLM-L6-v2", "step_2", "step_4", "untrained"
    ]  # fmt: skip
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-6, err_msg=k)
    # The training data's build key covers its sources' locations (a bucket here, a folder there).
    build = re.compile(r"^data/tfds/[0-9a-f]+/")
    assert {build.sub("data/tfds/KEY/", f) for f in _own_files(multi)} == {
        build.sub("data/tfds/KEY/", f) for f in _own_files(single)
    }
