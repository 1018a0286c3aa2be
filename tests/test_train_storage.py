"""Training outputs on any storage: metrics and TensorBoard events in a bucket (no appends there),
rows of a resumed run replaced, not duplicated."""

import json
import uuid

import pytest

from querit_jax import storage
from querit_jax.training.writers import MetricWriter
from tests import gcs


@pytest.fixture(params=["local", "gs"])
def workdir(request, tmp_path, monkeypatch):
    monkeypatch.setenv("QUERIT_JAX_CACHE", str(tmp_path / "cache"))
    if request.param == "local":
        return str(tmp_path / "run")
    return f"{gcs.start()}/{uuid.uuid4().hex[:8]}/run"


def _rows(workdir):
    return [json.loads(line) for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]


def test_metrics_and_events_reach_the_workdir_and_a_resume_replaces_later_rows(workdir):
    writer = MetricWriter(workdir, sync_seconds=3600)
    for step in range(1, 5):
        writer.write(step, {"loss": 1.0 / step})
    writer.flush()  # what a checkpoint save does: every row so far is in the workdir
    assert [r["step"] for r in _rows(workdir)] == [1, 2, 3, 4]
    writer.write(5, {"loss": 0.1})
    writer.close()
    assert [r["step"] for r in _rows(workdir)] == [1, 2, 3, 4, 5]
    events = storage.glob(storage.join(workdir, "tensorboard"), "events.out.tfevents.*")
    assert len(events) == 1 and storage.size(events[0]) > 0

    # Resumed from step 2: steps 3.. are run (and logged) again, so their old rows go; a row a
    # crash cut short goes too.
    if not storage.is_remote(workdir):
        with open(f"{workdir}/metrics.jsonl", "a") as f:
            f.write('{"step": 6, "lo')
    writer = MetricWriter(workdir, start_step=2)
    writer.write(3, {"loss": 0.5})
    writer.close()
    assert [(r["step"], r["loss"]) for r in _rows(workdir)] == [(1, 1.0), (2, 0.5), (3, 0.5)]
    assert len(storage.glob(storage.join(workdir, "tensorboard"), "events.*")) == 2
    if storage.is_remote(workdir):  # the local event files were scratch: uploaded, then deleted
        assert storage.listdir(storage.join(storage.cache_root(), "scratch")) == []
