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
