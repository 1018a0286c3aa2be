"""The command-line contracts of DESIGN §4 on a trained checkpoint and on its Hugging Face
export."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from querit_jax.eval.api import evaluate_model, rerank_file
from tests.conftest import XQUAD, write_jsonl
from tests.helpers import ROOT, xla_flags

ENV = {**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu"}


def _cli(*args, ok=True):
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_jsonl(
        path,
        [
            {
                "id": "a",
                "query": "Wann wurde die Universität gegründet?",
                "document": "Die Universität wurde 1088 gegründet.",
            },
            {"query": "黑豹队的防守丢了多少分", "document": "黑豹队的防守只丢了 308分。"},
            {"id": 3, "query": "x", "document": "y " * 300},
        ],
    )
    return str(path)


@pytest.fixture(scope="module")
def exported(tiny_workdir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "hf")
    proc = _cli(
        "tools/convert_hf/export_hf.py",
        f"--checkpoint={tiny_workdir}",
        f"--out={out}",
        "--verify",
        "--dtype=float32",  # the release default is bfloat16; these tests compare scores at 1e-4
    )
    assert (
        "max_abs_diff_transformers" in proc.stdout
        and "max_abs_diff_sentence_transformers" in proc.stdout
    )
    return out


def _read_scores(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_rerank_cli_on_checkpoint_and_export_agree(tiny_workdir, exported, pairs_file, tmp_path):
    out = tmp_path / "scores.jsonl"
    _cli(
        "-m",
        "querit_jax.rerank",
        f"--model={tiny_workdir}",
        f"--input={pairs_file}",
        f"--output={out}",
    )
    rows = _read_scores(out)
    assert [r.get("id") for r in rows] == ["a", None, 3] and all(
        isinstance(r["score"], float) for r in rows
    )
    hf = rerank_file(exported, pairs_file, str(tmp_path / "hf_scores.jsonl"))
    np.testing.assert_allclose(hf, [r["score"] for r in rows], atol=1e-4)


def test_periodic_evaluation_is_recorded(tiny_workdir):
    with open(os.path.join(tiny_workdir, "results.json")) as f:
        results = json.load(f)
    assert {"untrained", "step_2", "final"} <= set(results)
    assert 0.0 <= results["final"]["mean"]["reranked"]["ndcg@10"] <= 1.0


def test_user_errors_exit_2_with_one_line(tmp_path):
    proc = _cli(
        "-m", "querit_jax.evaluate", f"--model={tmp_path}", f"--data={XQUAD}/en/test", ok=False
    )
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "is not a querit_jax model checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_rerank_cli_malformed_input_names_the_line(tiny_workdir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"query": "q", "document": "d"}, {"query": "q"}])
    proc = _cli(
        "-m",
        "querit_jax.rerank",
        f"--model={tiny_workdir}",
        f"--input={bad}",
        f"--output={tmp_path / 'o'}",
        ok=False,
    )
    assert proc.returncode != 0 and "bad.jsonl:2: 'document' must be a string" in proc.stderr


def test_evaluate_cli_on_checkpoint_and_export(tiny_workdir, exported, tmp_path):
    data = os.path.join(XQUAD, "vi", "test")
    out = tmp_path / "metrics.json"
    rerank_out = tmp_path / "reranked.trec"
    _cli(
        "-m",
        "querit_jax.evaluate",
        f"--model={exported}",
        f"--data={data}",
        "--run=bm25",
        "--top_k=10",
        "--max_queries=12",
        f"--output={out}",
        f"--rerank_output={rerank_out}",
    )
    with open(out) as f:
        hf = json.load(f)
    assert set(hf["reranked"]) == {"ndcg@10", "mrr@10", "recall@100"} and hf["queries"] == 12
    assert sum(1 for _ in open(rerank_out)) == 12 * 10
    ours, _ = evaluate_model(tiny_workdir, data, "bm25", top_k=10, max_queries=12)
    for metric, value in ours["reranked"].items():
        assert abs(value - hf["reranked"][metric]) < 1e-6, metric
    assert ours["first_stage"] == hf["first_stage"]


def test_evaluate_accepts_a_trec_run_file(tiny_workdir, tmp_path):
    from querit_jax.data import beir
    from querit_jax.data.runs import write_trec

    ds = beir.load_beir(os.path.join(XQUAD, "zh", "test"), "test")
    qids = sorted(ds.qrels)[:5]
    other = sorted(ds.corpus)[0]
    run = {q: {d: 1.0 for d in list(ds.qrels[q])} | {other: 0.5} for q in qids}
    path = tmp_path / "run.trec"
    write_trec(run, str(path))
    summary, reranked = evaluate_model(
        tiny_workdir, os.path.join(XQUAD, "zh", "test"), str(path), top_k=5, max_queries=5
    )
    assert summary["queries"] == 5 and set(reranked) == set(qids)
    assert summary["first_stage"]["recall@100"] == 1.0
