"""The accelerator check script (benchmarks/accelerator_check.sh) runs end to end in its CPU dry
run:
every section reports figures (no errors), the JSON lands in the given directory, the JAX scores
equal transformers' on the same weights."""

import json
import os
import subprocess

from tests.helpers import ROOT, xla_flags


def test_accelerator_check_dry_run(tmp_path):
    env = {**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        ["bash", "benchmarks/accelerator_check.sh", str(tmp_path), "--dry_run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "accelerator_check.json").read_text())
    for section in ("attention", "train", "scoring", "moe", "memory"):
        assert "error" not in report[section], report[section]
    assert report["dry_run"] and report["backend"] == "cpu"
    assert report["train"]["tokens_per_s"] > 0 and report["train"]["packed_rows"] >= 1
    assert report["scoring"]["score_max_abs_diff"] < 1e-4  # fp32: the same weights, the same scores
    assert report["moe"]["layer"]["grouped"]["fwd_bwd_ms"] > 0
