"""Faults a long preemptible run meets: restarts, NaN steps, SIGTERM, kill -9 (also mid-save), bad
checkpoints, a changed config.

The subprocess tests share one uninterrupted reference run (tiny config, 12 steps, a checkpoint
every 3; built once per test run for all xdist workers) and compare a run interrupted in every way
against it: losses and final parameters bitwise equal.
"""

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import jax
import numpy as np
import pytest

from querit_jax import config_lib, sharding
from querit_jax.config_lib import OptimConfig
from querit_jax.errors import CheckpointError
from querit_jax.loading import load_model
from querit_jax.models.decoder_config import DecoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.models.spec import ModelSpec, abstract_params, init_params
from querit_jax.models.templates import qwen3_pair
from querit_jax.training import guards, optim, steps
from querit_jax.training.state import init_state, state_shardings
from tests.helpers import ROOT, SharedOutput, load_config, shared_root, xla_flags

STEPS = 12
ARGS = [
    "--config=configs/general_relevance.py:tiny",
    f"--config.train.num_steps={STEPS}",
    "--config.train.save_every=3",
    "--config.train.keep_checkpoints=2",
    "--config.train.log_every=1",
    "--config.eval.datasets=",
]


def _launch(workdir, *extra, **env):
    """The training CLI in a new process (1 CPU device), output merged into a line-buffered pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "querit_jax.train", *ARGS, *extra, f"--workdir={workdir}"],
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _losses(workdir):
    """{step: loss}; a step run again after a kill overwrites its earlier row."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def _assert_same_model(a, b):
    pa, pb = load_model(a).params, load_model(b).params
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (started in the background; the fixture's user waits for it), one for
    every xdist worker."""
    shared = SharedOutput(shared_root(tmp_path_factory), "resilience_reference", _launch)
    yield shared
    shared.close()


def _wait_reference(reference):
    return reference.wait()


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


def test_stop_and_resume_in_a_new_process_equals_the_uninterrupted_run(tmp_path, reference):
    """Stop after step 6 (`--stop_at_step`), then continue in a new process, as after a preemption:
    state, optimiser and the data iterator's position all come back from disk."""
    resumed = str(tmp_path / "resumed")
    rc, first = _finish(_launch(resumed, "--stop_at_step=6"))
    assert rc == 0 and "Stopped after step 6" in first, first[-3000:]
    assert not os.path.exists(os.path.join(resumed, "model"))
    rc, second = _finish(_launch(resumed))
    assert rc == 0 and "Resumed from step 6" in second, second[-3000:]

    straight = _wait_reference(reference)
    assert f"Train step compiled 1 time(s) for {STEPS} steps" in reference.log, "traces once"
    scalars = _tensorboard_scalars(straight)
    assert [s for s, _ in scalars["loss"]] == list(range(1, STEPS + 1))
    assert {"accuracy", "grad_norm", "learning_rate"} <= set(scalars)
    want, got = _losses(straight), _losses(resumed)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == want[step], (step, got[step], want[step])
    _assert_same_model(os.path.join(straight, "model"), os.path.join(resumed, "model"))


def test_resuming_with_a_different_config_is_refused_and_loses_nothing(tmp_path, reference):
    workdir = str(tmp_path / "run")
    shutil.copytree(_wait_reference(reference), workdir)
    before = sorted(os.path.relpath(os.path.join(d, f), workdir)
                    for d, _, fs in os.walk(workdir) for f in fs)  # fmt: skip
    rc, out = _finish(_launch(workdir, "--config.data.max_length=60"))
    assert rc == 2, out[-3000:]
    assert "error:" in out and "data.max_length: 64 -> 60" in out and "Traceback" not in out
    after = sorted(os.path.relpath(os.path.join(d, f), workdir)
                   for d, _, fs in os.walk(workdir) for f in fs)  # fmt: skip
    assert set(before) <= set(after), set(before) - set(after)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "9"]


def test_sigterm_and_kill_9_at_any_point_resume_to_the_uninterrupted_result(tmp_path, reference):
    workdir = str(tmp_path / "run")
    # Keep a single checkpoint: the old one must survive until the new one is complete (step 3).
    keep1 = "--config.train.keep_checkpoints=1"
    # 1. SIGTERM mid-run (steps slowed down so that it lands mid-run): the step in flight finishes,
    #    a checkpoint of that step is saved and waited for, exit code 0.
    proc = _launch(workdir, keep1, QUERIT_TEST_STEP_DELAY="0.5")
    for line in proc.stdout:
        if f"step 2/{STEPS}" in line:
            break
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    rc, out = _finish(proc)
    elapsed = time.time() - sent
    assert rc == 0, out[-3000:]
    got = re.search(r"SIGTERM received during step (\d+): saving a checkpoint at step (\d+)", out)
    assert got, out[-3000:]
    during, saved = map(int, got.groups())
    assert 2 <= during <= saved <= during + 1 < STEPS, (during, saved)
    assert elapsed < 30, f"SIGTERM -> exit took {elapsed:.1f} s"
    assert str(saved) in os.listdir(os.path.join(workdir, "checkpoints"))

    # 2. Resume from exactly that step; kill -9 after step 7 (last checkpoint: 6; the delay lets its
    #    async save finish first).
    rc, out = _finish(
        _launch(workdir, keep1, QUERIT_TEST_FAULT="kill@7", QUERIT_TEST_STEP_DELAY="0.3")
    )
    assert rc == -signal.SIGKILL and f"Resumed from step {saved} " in out, out[-3000:]

    # 3. kill -9 while the async save of step 9 is being written: a temporary directory is left, and
    #    step 6 (the only one kept) was not deleted before step 9 was complete.
    rc, out = _finish(_launch(workdir, keep1, QUERIT_TEST_FAULT="kill_in_save@9"))
    assert rc == -signal.SIGKILL and "Resumed from step 6 " in out, out[-3000:]
    ckpts = os.path.join(workdir, "checkpoints")
    assert any("tmp" in d for d in os.listdir(ckpts)), os.listdir(ckpts)

    # 4. The half-written step 9 is ignored and cleaned up; kill -9 again after step 11.
    rc, out = _finish(
        _launch(workdir, keep1, QUERIT_TEST_FAULT="kill@11", QUERIT_TEST_STEP_DELAY="0.3")
    )
    assert rc == -signal.SIGKILL and "Resumed from step 6 " in out, out[-3000:]
    assert not any("tmp" in d for d in os.listdir(ckpts)), os.listdir(ckpts)

    # 5. The last launch completes; everything equals the run that was never interrupted.
    rc, out = _finish(_launch(workdir, keep1))
    assert rc == 0 and "Resumed from step 9 " in out, out[-3000:]
    # Only finished checkpoints, keep_checkpoints of them, the newest being the last step.
    assert os.listdir(ckpts) == ["12"]

    straight = _wait_reference(reference)
    want, got = _losses(straight), _losses(workdir)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert [got[s] for s in sorted(got)] == [want[s] for s in sorted(want)]
    _assert_same_model(os.path.join(straight, "model"), os.path.join(workdir, "model"))


@pytest.fixture
def bucket():
    """gs:// through the GCS emulator with the generation headers Orbax needs
    (tests/gcs_server.py)."""
    from tests import gcs_server

    with gcs_server.serving() as url:
        yield url


def test_a_bucket_workdir_survives_kill_9_and_trains_like_a_local_one(tmp_path, reference, bucket):
    """gs:// workdir: checkpoints, data, metrics, TensorBoard, evaluation, results, report and the
    final model all go to the bucket; kill -9 mid-run, relaunch: the same losses and parameters as
    the uninterrupted local run, compiled programs loaded from the bucket's compilation cache, and
    nothing local but the cache under QUERIT_JAX_CACHE."""
    from querit_jax import storage

    workdir = f"{bucket}/resilience-{uuid.uuid4().hex[:8]}/run"
    cache = tmp_path / "cache"
    env = dict(
        QUERIT_JAX_CACHE=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_COMPILATION_CACHE_DIR="",  # the workdir's own cache (not the suite's shared one)
    )
    evaluate = ["--config.eval.datasets=data/xquad_r/zh/test", "--config.train.eval_every=6"]
    # Killed after step 8, while or after step 6 is saved asynchronously (slower to a bucket).
    launch = functools.partial(_launch, workdir, *evaluate, **env)
    rc, out = _finish(launch(QUERIT_TEST_FAULT="kill@8", QUERIT_TEST_STEP_DELAY="0.3"), 420)
    assert rc == -signal.SIGKILL, out[-3000:]
    assert "Compilation cache: gs://" in out
    rc, out = _finish(launch(), 420)
    resumed = re.search(r"Resumed from step (\d+) ", out)
    assert rc == 0 and resumed and resumed.group(1) in ("3", "6"), out[-3000:]
    loaded = re.search(r"Compilation cache: (\d+) program\(s\) loaded", out)
    assert loaded and int(loaded.group(1)) >= 1, out[-3000:]

    rows = [json.loads(line) for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    got = {r["step"]: r["loss"] for r in rows if "loss" in r}
    want = _losses(_wait_reference(reference))
    assert [got[s] for s in sorted(got)] == [want[s] for s in sorted(want)]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))  # none twice
    _assert_same_model(os.path.join(_wait_reference(reference), "model"), f"{workdir}/model")
    results = json.loads(storage.read_text(f"{workdir}/results.json"))
    assert {"untrained", "step_6", "final"} <= set(results)
    names = storage.files(workdir)
    for expected in ("report.json", "data/manifest.json", "data/train.jsonl", "model/model.json"):
        assert expected in names, names
    assert len([n for n in names if n.startswith("tensorboard/events.out.tfevents.")]) == 2
    assert any(n.startswith("eval/") and n.endswith(".trec") for n in names)
    assert any(n.startswith("compilation_cache/") for n in names)
    assert any(
        re.fullmatch(r"data/tfds/\w+/querit_groups/[\d.]+/.*array_record.*", n) for n in names
    )
    # Nothing local: no `gs:` folder where the runs started, only the cache of local copies.
    assert not os.path.exists(os.path.join(ROOT, "gs:"))
    assert set(os.listdir(cache)) <= {"remote", "scratch"}


def _tiny_cfg(**train):
    c = load_config("configs/general_relevance.py", "tiny")
    c.train.num_steps, c.train.save_every, c.train.keep_checkpoints = STEPS, 3, 2
    c.train.log_every, c.eval.datasets = 1, ""
    return config_lib.from_config_dict(c)


def _truncate_arrays(step_dir):
    """Cuts the largest array file of a checkpoint step in half (a torn write / lost object)."""
    files = [
        os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
    ]
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, caplog):
    from querit_jax.training import trainer

    workdir = str(tmp_path / "run")
    shutil.copytree(_wait_reference(reference), workdir)
    ckpts = os.path.join(workdir, "checkpoints")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        # A state of another structure (no clipping: one optimiser transform fewer) is a config
        # error, not a corrupt checkpoint: nothing is moved aside and no older step is tried.
        c = load_config("configs/general_relevance.py", "tiny")
        c.train.num_steps, c.optim.clip_norm, c.eval.datasets = STEPS, 0.0, ""
        with pytest.raises(config_lib.ConfigError, match="another structure"):
            trainer.setup(config_lib.from_config_dict(c), workdir, devices=jax.devices()[:1])
        assert sorted(os.listdir(ckpts)) == ["12", "9"] and not os.path.exists(ckpts + ".rejected")
    finally:
        os.chdir(cwd)
    _truncate_arrays(os.path.join(ckpts, "12"))
    warnings = []
    logger = trainer.get_logger()
    logger.warning, orig = warnings.append, logger.warning
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        s = trainer.setup(_tiny_cfg(), workdir, devices=jax.devices()[:1])
        assert s.start == 9
        s.checkpointer.close()
        assert re.search(r"checkpoint step 12 in .* cannot be restored \(\w+", warnings[0])
        assert "Fell back to checkpoint step 9" in warnings[1]
        assert os.listdir(ckpts) == ["9"] and os.listdir(ckpts + ".rejected")[0].startswith("12.")
        # Checkpoints exist but none restores: a clear error, never a silent fresh start.
        _truncate_arrays(os.path.join(ckpts, "9"))
        with pytest.raises(CheckpointError, match=r"no checkpoint restores \(step 9 \("):
            trainer.setup(_tiny_cfg(), workdir, devices=jax.devices()[:1])
        assert os.listdir(ckpts) == ["9"]  # nothing is moved when no step restores
    finally:
        os.chdir(cwd)
        logger.warning = orig


SPEC = ModelSpec("qwen3", DecoderConfig.tiny(vocab_size=512), HeadConfig(), qwen3_pair(), 32)


def _kd_batch(seed, teacher_nan=False, q=4, g=2, t=32):
    rng = np.random.default_rng(seed)
    seg = np.ones((q, g, t), np.int32)
    ids = rng.integers(1, 512, size=(q, g, t)).astype(np.int32)
    teacher = rng.normal(size=(q, g)).astype(np.float32)
    if teacher_nan:
        teacher[1, 0] = np.nan  # one corrupted teacher score in the mined data
    return {"input_ids": ids, "segment_ids": seg, "teacher": teacher}


def test_nonfinite_step_changes_nothing_and_repeated_ones_abort():
    mesh, rules = sharding.single_device_mesh(), sharding.rules.resolve_rules("dp")
    tx, schedule = optim.make_optimizer(OptimConfig(learning_rate=1e-3, warmup_steps=0), 10)
    tx = guards.skip_nonfinite(tx, max_consecutive=3)
    graphdef, abstract = abstract_params(SPEC, mesh, rules)
    _, params = init_params(SPEC, mesh, rules, seed=0)
    state0 = init_state(params, tx, state_shardings(abstract, tx, mesh))
    step = jax.jit(
        steps.make_train_step(graphdef, tx, schedule, 1.0, loss_weights={"margin_mse": 1.0})
    )
    host = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731

    def run(batches):
        state, losses = state0, []
        with sharding.use_rules(mesh, rules):
            for b in batches:
                state, metrics = step(state, b)
                losses.append(float(metrics["loss"]))
        return state, losses

    good, bad = _kd_batch(0), _kd_batch(1, teacher_nan=True)
    after_good, _ = run([good])
    after_bad, losses = run([good, bad])
    assert np.isnan(losses[1])
    jax.tree.map(np.testing.assert_array_equal, host(after_bad.params), host(after_good.params))
    jax.tree.map(
        np.testing.assert_array_equal,
        host(after_bad.opt_state.inner),
        host(after_good.opt_state.inner),
    )
    assert int(after_bad.step) == 2  # the batch was consumed: steps count batches
    assert guards.counts(after_bad.opt_state) == (1, 1, False)
    # Skipping the bad batch is the same as never having seen it.
    skipped, _ = run([good, bad, _kd_batch(2)])
    without, _ = run([good, _kd_batch(2)])
    jax.tree.map(np.testing.assert_array_equal, host(skipped.params), host(without.params))
    assert guards.counts(skipped.opt_state) == (0, 1, False)

    logs = []
    monitor = guards.Monitor(3, logs.append)
    assert monitor.check(after_good.opt_state, 1) == {"nonfinite_skipped": 0.0}
    monitor.check(after_bad.opt_state, 2)
    assert "Skipped 1 update(s) with a non-finite loss or gradients by step 2" in logs[0]
    # Three in a row trip the guard: no update ever gets through, and the host stops the run.
    tripped, _ = run([good, bad, bad, bad, _kd_batch(3)])
    assert guards.counts(tripped.opt_state) == (0, 3, True)
    jax.tree.map(np.testing.assert_array_equal, host(tripped.params), host(after_good.params))
    with pytest.raises(guards.NonFiniteError, match="train.max_nonfinite_steps: 3 consecutive"):
        monitor.check(tripped.opt_state, 5)


def _mesh_cfg(preset, **mesh):
    c = load_config("configs/general_relevance.py", "tiny")
    c.data.batch_size, c.eval.datasets, c.train.num_steps = 8, "", STEPS
    c.sharding.preset = preset
    c.sharding.mesh.update(mesh)
    return config_lib.from_config_dict(c)


def _next_step_loss(s) -> float:
    local = next(s.data_iter)
    with sharding.use_rules(s.mesh, s.rules):
        batch = {
            k: jax.make_array_from_process_local_data(s.batch_sharding, v) for k, v in local.items()
        }
        _, metrics = s.train_step(s.state, batch)
    return float(metrics["loss"])


def test_checkpoint_restores_onto_another_mesh_and_rule_preset(tmp_path):
    """Saved with fsdp over 8 devices; restored on 1 device and on fsdp=4 x tensor=2 (fsdp+tp
    rules)."""
    from querit_jax.training import trainer

    workdir = str(tmp_path / "run")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        s8 = trainer.setup(_mesh_cfg("fsdp", data=1, fsdp=-1), workdir)
        assert trainer._train(s8, 2) == 2
        saved = jax.tree.map(np.asarray, s8.state.params)
        want = _next_step_loss(s8)
        for cfg, devices in [
            (_mesh_cfg("fsdp", data=-1), jax.devices()[:1]),
            (_mesh_cfg("fsdp+tp", data=1, fsdp=4, tensor=2), jax.devices()),
        ]:
            s = trainer.setup(cfg, workdir, devices=devices)
            s.checkpointer.close()
            assert s.start == 2
            for (path, x), y in zip(
                jax.tree_util.tree_leaves_with_path(s.state.params), jax.tree.leaves(saved)
            ):
                np.testing.assert_array_equal(np.asarray(x), y, jax.tree_util.keystr(path))
            q = s.state.params["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"]
            assert q.sharding.mesh.devices.size == len(devices)
            if len(devices) == 8:  # the new run's own shardings, not the saved ones
                assert tuple(q.sharding.spec) == ("fsdp", "tensor", None)
            np.testing.assert_allclose(_next_step_loss(s), want, rtol=1e-6)
    finally:
        os.chdir(cwd)


def test_host_maintenance_event_is_a_preemption_notice(monkeypatch):
    """A TPU VM maintenance event (GCE metadata) becomes SIGTERM, then a stop at the step
    boundary."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from querit_jax.training import preemption

    class Metadata(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            assert self.headers["Metadata-Flavor"] == "Google"
            body = b"TERMINATE_ON_HOST_MAINTENANCE"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("QUERIT_WATCH_MAINTENANCE", "1")
    monkeypatch.setenv("QUERIT_METADATA_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    logs = []
    stop = preemption.StopRequest(logs.append)
    try:
        assert not stop.should_stop(4)
        deadline = time.time() + 20
        while stop.signal_name is None and time.time() < deadline:
            time.sleep(0.05)
        assert stop.should_stop(5)
    finally:
        stop.close()
        server.shutdown()
    assert "Maintenance event TERMINATE_ON_HOST_MAINTENANCE" in logs[0]
    assert "SIGTERM received during step 5: saving a checkpoint at step 5" in logs[1]
