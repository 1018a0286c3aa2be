"""Test set-up: 8 fake CPU devices (set before jax is imported) and shared fixtures.

Never time anything under this flag: the 8 "devices" share the 2 cores.
"""

import os
import tempfile

from tests.helpers import with_test_flags  # no jax import there

os.environ["XLA_FLAGS"] = with_test_flags(os.environ.get("XLA_FLAGS", ""), devices=8)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache for the whole run, shared by both xdist workers and every process
# a test starts (the trainer takes $JAX_COMPILATION_CACHE_DIR over its workdir's): the same tiny
# programs compile once per run. Tests of the workdir's own cache set it to "" for their runs.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(
        tempfile.gettempdir(),
        f"querit_jax_tests_jit_{os.environ.get('PYTEST_XDIST_TESTRUNUID') or os.getpid()}",
    ),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import json

import pytest

# The shared fixtures live in tests/fixtures.py (importable without this file's device flag, by the
# benchmarks too); these names stay importable from here.
from tests.fixtures import (  # noqa: F401
    DEMO_TOKENIZER,
    DOCS,
    QUERIES,
    ROOT,
    SHARED,
    XQUAD,
    make_hf_qwen3,
)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
    """A workdir trained by `python -m querit_jax.train --config=configs/general_relevance.py:tiny`
    (4 steps, evaluated; the CLI's report at the end), shared by CLI tests (trained once per test
    run, for every xdist worker; its output in `<path>.log`)."""
    import subprocess
    import sys

    from tests.helpers import SharedOutput, shared_root, xla_flags

    def train(workdir):
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "querit_jax.train",
                "--config=configs/general_relevance.py:tiny",
                f"--workdir={workdir}",
            ],
            cwd=ROOT,
            env={**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    return SharedOutput(shared_root(tmp_path_factory), "tiny_workdir", train).wait()


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")


# The slowest tests (seconds on a 2-core CI run), started first on both xdist workers: worksteal
# gives each worker one contiguous half of the collection and later moves queued tests, never a
# running one, so a long test that starts near the end keeps the other worker idle. Tests that wait
# on a shared run (tiny_workdir, the resilience reference) are left where they are.
# (180, 168, 157, 95, 69, 60, 52 and 39 s in the CI run that chose them).
SLOWEST = (
    "tests/test_multihost.py::test_two_processes_train_evaluate_and_resume_like_one_process",
    "tests/test_multihost.py::test_two_processes_adapt_with_mining_like_one_process",
    "tests/test_loop.py::test_loop_tiny_end_to_end_records_every_choice_and_resumes",
    "tests/test_pod_phases.py::test_merge_evaluate_and_export_in_a_bucket",
    "tests/test_resilience.py::test_checkpoint_restores_onto_another_mesh_and_rule_preset",
    "tests/test_mining.py::test_two_processes_mine_what_one_does_and_a_killed_process_resumes",
    "tests/test_encoders.py::test_xlm_roberta_embedder_matches_sentence_transformers",
    "tests/test_compute.py::"
    "test_scan_layers_on_a_moe_with_dense_layers_keeps_scores_aux_losses_and_updates",
)


def pytest_collection_modifyitems(config, items):
    """Puts the SLOWEST tests at the front of both halves of the collection, alternately (the
    order is the same in every worker, as xdist requires)."""
    rank = {nodeid: i for i, nodeid in enumerate(SLOWEST)}
    slow = sorted((item for item in items if item.nodeid in rank), key=lambda i: rank[i.nodeid])
    rest = [item for item in items if item.nodeid not in rank]
    first, second = slow[0::2], slow[1::2]
    cut = max(0, len(items) // 2 - len(first))
    items[:] = first + rest[:cut] + second + rest[cut:]
