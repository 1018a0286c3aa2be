"""Evaluation reports (JSON, Markdown, PNG), the evaluate CLI comparing models side by side, and the
MTEB adapter agreeing with our own evaluation (issue 6)."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from querit_jax.data import beir
from querit_jax.data.runs import write_trec
from querit_jax.eval import report as report_lib
from querit_jax.eval.api import evaluate_model
from querit_jax.eval.suite import bm25_run
from tests.conftest import XQUAD
from tests.helpers import ROOT, xla_flags

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _summary(label, dataset, first, reranked):
    metrics = lambda v: {"ndcg@10": v, "mrr@10": v / 2, "recall@100": min(1.0, v + 0.2)}  # noqa: E731
    return {
        "label": label,
        "dataset": dataset,
        "first_stage": metrics(first),
        "reranked": metrics(reranked),
        "queries": 7,
        "top_k": 20,
    }


def _md_rows(md: str, metric: str) -> dict[str, list[float]]:
    """{row name: values} of the Markdown table under `## metric`."""
    section = md.split(f"## {metric}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


def _assert_png(path: str):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    from matplotlib.image import imread

    height, width, _ = imread(path).shape
    assert width >= 600 and height >= 400


def test_report_files_agree_and_show_models_side_by_side(tmp_path):
    summaries = [
        _summary("base", "de/test", 0.61, 0.55),
        _summary("base", "es/test", 0.70, 0.64),
        _summary("adapted", "de/test", 0.61, 0.73),
        _summary("adapted", "es/test", 0.70, 0.81),
    ]
    report = report_lib.from_summaries(summaries)
    paths = report_lib.write_report(report, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(report_lib.REPORT_NAMES)
    with open(paths["json"]) as f:
        saved = json.load(f)
    assert saved == report and saved["models"] == ["base", "adapted"]
    assert saved["datasets"]["es/test"]["models"]["adapted"]["ndcg@10"] == 0.81
    assert saved["mean"]["models"]["adapted"]["ndcg@10"] == pytest.approx((0.73 + 0.81) / 2)
    with open(paths["md"]) as f:
        md = f.read()
    for metric in saved["metrics"]:
        rows = _md_rows(md, metric)
        assert list(rows) == ["de/test", "es/test", "mean"]
        for name, values in rows.items():
            entry = saved["mean"] if name == "mean" else saved["datasets"][name]
            expected = [entry["first_stage"][metric]] + [
                entry["models"][m][metric] for m in saved["models"]
            ]
            np.testing.assert_allclose(values, expected, atol=5e-5)
    assert "| dataset | BM25 | base | adapted |" in md
    _assert_png(paths["png"])


def test_report_rejects_incomplete_results_and_non_reports(tmp_path):
    with pytest.raises(ValueError, match="'b' has no results for dataset"):
        report_lib.from_summaries(
            [
                _summary("a", "x", 0.1, 0.2),
                _summary("a", "y", 0.1, 0.2),
                _summary("b", "x", 0.1, 0.2),
            ]
        )
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({"first_stage": {}, "reranked": {}}))
    with pytest.raises(report_lib.DataFormatError, match="not an evaluation report"):
        report_lib.load_report(str(bad))


def test_training_report_from_the_trainer_results(tiny_workdir, tmp_path):
    """What `python -m querit_jax.train` writes into the workdir at the end (the demo's chart)."""
    shutil.copy(os.path.join(tiny_workdir, "results.json"), tmp_path)
    paths = report_lib.write_training_report(str(tmp_path))
    assert set(paths) == {"json", "md", "png"}
    results = report_lib.read_json(os.path.join(tiny_workdir, "results.json"))
    report = report_lib.load_report(paths["json"])
    assert report["models"][-2:] == ["untrained", "trained"]
    for name, entry in report["datasets"].items():
        assert entry["models"]["trained"] == results["final"]["datasets"][name]["reranked"]
        assert entry["first_stage"] == results["final"]["datasets"][name]["first_stage"]
    _assert_png(paths["png"])


def test_find_report_uses_only_the_trainer_report_of_the_workdir_holding_the_model(tmp_path):
    """A model card must never show another model's evaluation (e.g. a comparison report written
    next to several merge outputs); only workdir/model picks up workdir/report.json."""
    first = {"de/test": {"ndcg@10": 0.5}}
    training = report_lib.build_report(
        first,
        {"untrained": {"de/test": {"ndcg@10": 0.4}}, "trained": {"de/test": {"ndcg@10": 0.7}}},
    )
    comparison = report_lib.build_report(first, {"slerp": {"de/test": {"ndcg@10": 0.6}}})

    def put(directory, report):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "report.json"), "w", encoding="utf-8") as f:
            json.dump(report, f) if isinstance(report, dict) else f.write(report)
        return os.path.join(directory, "report.json")

    run = tmp_path / "run"
    os.makedirs(run / "model")
    path = put(run, training)
    assert report_lib.find_report(str(run / "model")) == path
    assert report_lib.find_report(str(run / "model") + os.sep) == path
    # The default merge output workdirs/merged/slerp beside a comparison (or any) report: nothing.
    os.makedirs(tmp_path / "merged" / "slerp")
    put(tmp_path / "merged", training)
    assert report_lib.find_report(str(tmp_path / "merged" / "slerp")) is None
    # A model/ directory whose parent holds a report that is not the trainer's, or no JSON at all.
    for name, report in (("compared", comparison), ("broken", "{not json")):
        os.makedirs(tmp_path / name / "model")
        put(tmp_path / name, report)
        assert report_lib.find_report(str(tmp_path / name / "model")) is None, name
    # A report inside the model's own directory is its own.
    own = put(tmp_path / "merged" / "slerp", comparison)
    assert report_lib.find_report(str(tmp_path / "merged" / "slerp")) == own


def test_train_cli_writes_the_report_into_the_workdir(tiny_workdir):
    """`python -m querit_jax.train` (as the README demo runs it; the shared tiny workdir is trained
    by it) ends with report.{json,md,png}."""
    with open(tiny_workdir + ".log", encoding="utf-8") as f:
        log = f.read()
    assert f"Evaluation report: {os.path.join(tiny_workdir, 'report.json')}" in log, log[-3000:]
    report = report_lib.load_report(os.path.join(tiny_workdir, "report.json"))
    results = report_lib.read_json(os.path.join(tiny_workdir, "results.json"))
    assert report == report_lib.from_training_results(results)
    assert report["models"] == ["untrained", "trained"]
    assert os.path.isfile(os.path.join(tiny_workdir, "report.md"))
    _assert_png(os.path.join(tiny_workdir, "report.png"))


def test_evaluate_cli_compares_models_on_several_datasets(tiny_workdir, tmp_path):
    data = [os.path.join(XQUAD, lang, "test") for lang in ("vi", "de")]
    other = str(tmp_path / "second")
    shutil.copytree(os.path.join(tiny_workdir, "model"), other)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "querit_jax.evaluate",
            f"--model={tiny_workdir}",
            f"--model={other}",
            f"--data={','.join(data)}",
            "--top_k=5",
            "--max_queries=6",
            f"--output={tmp_path / 'metrics.json'}",
            f"--report_dir={tmp_path / 'report'}",
        ],
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = report_lib.load_report(str(tmp_path / "report" / "report.json"))
    label = os.path.basename(tiny_workdir)
    assert report["models"] == [label, "second"] and list(report["datasets"]) == [
        "vi/test",
        "de/test",
    ]
    ours, _ = evaluate_model(tiny_workdir, data[0], top_k=5, max_queries=6)
    for side, got in (
        ("first_stage", report["datasets"]["vi/test"]["first_stage"]),
        ("reranked", report["datasets"]["vi/test"]["models"][label]),
    ):
        for metric, value in ours[side].items():
            assert abs(got[metric] - value) < 1e-6, (side, metric)
    # The same weights under two names score the same.
    for entry in report["datasets"].values():
        assert entry["models"][label] == pytest.approx(entry["models"]["second"], abs=1e-6)
    with open(tmp_path / "metrics.json") as f:
        assert len(json.load(f)["results"]) == 4
    _assert_png(str(tmp_path / "report" / "report.png"))


def test_mteb_reranking_matches_our_evaluation(tiny_workdir, tmp_path):
    """MTEB's nDCG@10 (its own SearchCrossEncoderWrapper and pytrec_eval) on a local XQuAD-R task
    equals ours for the same model and candidates, through the JAX adapter and the HF export."""
    pytest.importorskip("mteb")
    from sentence_transformers import CrossEncoder

    from querit_jax.eval import mteb_adapter
    from querit_jax.release.export import export_hf

    data = os.path.join(XQUAD, "es", "test")
    adapter = mteb_adapter.MtebCrossEncoder(tiny_workdir)
    ds = beir.load_beir(data, "test")
    run = bm25_run(ds, adapter.model.tokenizer, 100)
    run_path = str(tmp_path / "bm25.trec")
    write_trec(run, run_path)
    task = mteb_adapter.beir_reranking_task(data, run, top_k=10, max_queries=16)
    ours, _ = evaluate_model(tiny_workdir, data, run_path, top_k=10, max_queries=16)

    exported = export_hf(adapter.model, str(tmp_path / "export"))
    for model in (adapter, CrossEncoder(exported)):
        scores = mteb_adapter.mteb_scores(model, task)
        # MTEB rounds its trec_eval scores (nDCG) to 5 decimals; its MRR is its own, unrounded.
        assert scores["ndcg_at_10"] == round(ours["reranked"]["ndcg@10"], 5), type(model)
        assert abs(scores["mrr_at_10"] - ours["reranked"]["mrr@10"]) < 1e-9, type(model)
    assert 0.0 < ours["reranked"]["ndcg@10"] < 1.0


def test_mteb_task_needs_a_known_language(tmp_path):
    pytest.importorskip("mteb")
    from querit_jax.eval import mteb_adapter

    data = tmp_path / "mycorpus"
    shutil.copytree(os.path.join(XQUAD, "es", "test"), data)
    run = {"x": {"y": 1.0}}
    with pytest.raises(ValueError, match="No judged query"):
        mteb_adapter.beir_reranking_task(str(data), run)
    ds = beir.load_beir(str(data), "test")
    q = sorted(ds.qrels)[0]
    with pytest.raises(ValueError, match=re.escape("pass language=")):
        mteb_adapter.beir_reranking_task(str(data), {q: {d: 1.0 for d in ds.qrels[q]}})
