"""The phases after training, with a pod's storage and processes: two checkpoints in a bucket (GCS
emulator on 127.0.0.1) are merged gs:// -> gs:// by one process and by two (launch/local.py, each
process with its own device), both equal to the same merge on a local disk; the merged checkpoint is
then evaluated and exported straight from the bucket, into the bucket."""

import os
import subprocess
import sys

import jax
import numpy as np
import transformers

from querit_jax import merging, sharding, storage
from querit_jax.eval.api import evaluate_models
from querit_jax.loading import load_model
from querit_jax.models.checkpoint import is_model_checkpoint, save_model
from querit_jax.models.spec import flatten
from querit_jax.release.export import export_checkpoint
from tests import gcs
from tests.helpers import ROOT, load_config, xla_flags
from tests.test_merge import _random_params, _spec

ONE = sharding.make_mesh((1, 1, 1, 1), jax.devices()[:1])
ES_TEST = os.path.join(ROOT, "data", "xquad_r", "es", "test")


def _merge_cfg(models, output):
    c = load_config("configs/merge_slerp.py", "tiny")
    c.merge.models = ",".join(models)
    c.merge.output = output
    return merging.merge_from_config_dict(c.to_dict())


def _params(path):
    return {k: np.asarray(v) for k, v in flatten(load_model(path).params).items()}


def test_merge_evaluate_and_export_in_a_bucket(tmp_path, tokenizer):
    root = f"{gcs.start()}/pod-{tmp_path.name}"
    spec = _spec(num_layers=2)
    local_inputs, bucket_inputs = [], []
    for name, seed in (("a", 0), ("b", 1)):
        local = save_model(str(tmp_path / name), spec, _random_params(spec, seed), tokenizer)
        storage.copy_tree(local, f"{root}/{name}")
        local_inputs.append(local)
        bucket_inputs.append(f"{root}/{name}")

    merging.merge(_merge_cfg(local_inputs, str(tmp_path / "merged")), mesh=ONE)
    merging.merge(_merge_cfg(bucket_inputs, f"{root}/merged1"), mesh=ONE)
    launch = [sys.executable, "launch/local.py", "--num_processes=2", "--devices_per_process=1"]
    two = subprocess.run(
        [
            *launch,
            "--timeout=300",
            "--",
            "-m",
            "querit_jax.merge",
            "--config=configs/merge_slerp.py:tiny",
            f"--config.merge.models={','.join(bucket_inputs)}",
            f"--config.merge.output={root}/merged2",
        ],
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu"},  # the emulator's too
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert not os.path.exists(os.path.join(ROOT, "gs:"))  # no local folder named after the URL
    want = _params(str(tmp_path / "merged"))
    for out in (f"{root}/merged1", f"{root}/merged2"):
        assert is_model_checkpoint(out), out
        got = _params(out)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{out}: {k}")
    # Written once: one manifest, no staging left in the bucket.
    names = storage.files(f"{root}/merged2")
    assert names.count(merging.MANIFEST_NAME) == 1 and not any(".tmp" in n for n in names)

    # Evaluation reads the checkpoint from the bucket: the same scores as the local copy.
    summaries, runs = evaluate_models(
        [str(tmp_path / "merged"), f"{root}/merged1"],
        [ES_TEST],
        top_k=5,
        max_queries=8,
        max_length=96,  # the tiny spec's own 32 leaves no room after a query
        labels=["local", "bucket"],
    )
    (local_run,), (bucket_run,) = (
        [r for (label, _), r in runs.items() if label == x] for x in ("local", "bucket")
    )
    assert local_run == bucket_run and len(local_run) == 8
    assert summaries[0]["reranked"] == summaries[1]["reranked"]

    # Export from the bucket into the bucket; transformers loads it, with the merged weights.
    hf = export_checkpoint(f"{root}/merged1", f"{root}/hf", dtype="float32")
    copy = storage.local_copy(hf)
    assert os.path.isfile(os.path.join(copy, "config.json"))
    transformers.AutoModelForSequenceClassification.from_pretrained(copy)
    exported = _params(copy)
    for k in want:
        np.testing.assert_array_equal(exported[k], want[k], err_msg=f"export: {k}")
