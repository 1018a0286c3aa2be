"""The miner: output schema and manifest, filters and counted skips, resumption after SIGKILL."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from querit_jax import config_lib
from querit_jax.data import groups
from querit_jax.data.mined import shard_files
from querit_jax.errors import CheckpointError
from querit_jax.mining import miner
from querit_jax.mining.filters import QueryFilter, longest_common_run, normalize
from querit_jax.mining.negatives import choose_by_bins
from tests.conftest import XQUAD, make_hf_qwen3, write_jsonl
from tests.helpers import ROOT, load_config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_hf_qwen3(str(tmp_path_factory.mktemp("teacher") / "hf"), "seq_cls", std=0.05)


def _cfg(tmp_path, teacher, **overrides):
    base = config_lib.mining_from_config_dict(load_config("configs/mine_beir.py", "demo"))
    fields = dict(
        target=os.path.join(XQUAD, "es", "test"),
        output=str(tmp_path / "mined"),
        teacher=teacher,
        max_docs=40,
        shard_size=8,
        candidates=8,
        round_trip_k=8,
        num_negatives=3,
    )
    return config_lib.validate_mining(dataclasses.replace(base, **{**fields, **overrides}))


def test_mined_groups_follow_the_schema_and_the_manifest_counts(tmp_path, teacher):
    manifest = miner.mine(_cfg(tmp_path, teacher, score_bins=4), log=lambda *a: None)
    files = shard_files(str(tmp_path / "mined"))
    assert len(files) == 5 and manifest["complete"]
    rows = [g for f in files for g in groups.read_groups(f)]  # validates the FlagEmbedding schema
    assert len(rows) == manifest["totals"]["groups"] > 50
    for g in rows[:20]:
        assert len(g["neg"]) == 3 == len(g["neg_scores"]) and len(g["pos_scores"]) == 1
        assert g["source_doc"] not in g["neg_ids"]
    totals = manifest["totals"]
    assert totals["generated_queries"] == totals["groups"] + sum(
        v for k, v in totals.items() if k.startswith("dropped")
    )
    assert (
        manifest["inputs"]["teacher"]["kind"] == "reranker"
        and manifest["inputs"]["prompt"]["name"] == "web_search"
    )
    assert manifest["signature"]["corpus_sha256"]
    assert len({normalize(g["query"]) for g in rows}) == len(rows)  # deduped across shards
    # Reuse: a mined directory is a training source.
    from querit_jax.data.sources import parse_source

    assert parse_source(str(tmp_path / "mined"))[0] == "mined"


def test_bad_documents_are_counted_and_a_missing_teacher_is_a_clear_error(tmp_path, teacher):
    target = tmp_path / "target"
    os.makedirs(target / "qrels")
    write_jsonl(
        target / "corpus.jsonl",
        [
            {"_id": "d1", "text": "Berlin is the capital of Germany and its largest city."},
            {"_id": "d2", "text": ""},  # empty: skipped, counted
            {"_id": "d3", "text": "!!! ??? ..."},  # no words: the generator returns no marked query
            {
                "_id": "d4",
                "text": "Paris is the capital of France. " * 400,
            },  # longer than max_doc_chars
            {"_id": "d5", "text": "Rome is the capital of Italy, founded long ago."},
        ],
    )
    cfg = _cfg(
        tmp_path,
        teacher,
        target=str(target),
        max_docs=0,
        shard_size=10,
        candidates=3,
        round_trip_k=3,
        num_negatives=2,
        max_doc_chars=500,
    )
    manifest = miner.mine(cfg, log=lambda *a: None)
    assert manifest["skipped_documents"] == 1 and "d2" in manifest["skipped_reasons"][0]
    assert manifest["totals"]["malformed_generations"] == 1
    assert manifest["totals"]["truncated_documents"] == 1
    with pytest.raises(CheckpointError, match="no such directory"):
        miner.mine(
            dataclasses.replace(cfg, teacher=str(tmp_path / "nope"), output=str(tmp_path / "o2"))
        )
    with pytest.raises(miner.MiningError, match="different mining run"):
        miner.mine(dataclasses.replace(cfg, num_negatives=1))


def test_filters_and_score_bins():
    f = QueryFilter(min_chars=5, max_chars=40, max_copy_overlap=0.8)
    doc = "The quick brown fox jumps over the lazy dog"
    assert not f.keep("fox", doc) and not f.keep("the quick brown fox jumps", doc)
    assert f.keep("which animal jumps over a dog", doc)
    assert f.counts == {"dropped_length": 1, "dropped_copied": 1, "kept": 1}
    assert longest_common_run(["a", "b", "c"], ["x", "a", "b", "y", "c"]) == 2
    assert normalize("  Où est-il ?") == "où est il"
    import numpy as np

    scores = np.array([0.0, 0.1, 0.2, 0.5, 0.9, 1.0, 0.95, 0.05])
    picked = choose_by_bins(scores, 4, 4, np.random.default_rng(0))
    assert len(picked) == 4 and len({int(min(3, s * 4)) for s in scores[picked]}) >= 3


def test_killed_mining_resumes_to_the_same_shards_without_recomputing(tmp_path, teacher):
    straight = _cfg(
        tmp_path, teacher, max_docs=120, shard_size=8, output=str(tmp_path / "straight")
    )
    miner.mine(straight, log=lambda *a: None)
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "querit_jax.mine", "--config=configs/mine_beir.py:demo"] + [
        f"--config.mining.{k}={v}"
        for k, v in dict(
            target=straight.target,
            output=out,
            teacher=teacher,
            max_docs=120,
            shard_size=8,
            candidates=8,
            round_trip_k=8,
            num_negatives=3,
        ).items()
    ]
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def recorded():  # shards the manifest lists as finished (it is replaced atomically)
        try:
            return len(json.loads((out / "manifest.json").read_text())["shards"])
        except (OSError, ValueError, KeyError):
            return 0

    deadline = time.time() + 240
    while recorded() < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = [f"shard-{i:05d}.jsonl" for i in range(recorded())]
    assert 3 <= len(done_before) < 15, done_before  # killed mid-way
    mtimes = {p: os.stat(out / p).st_mtime_ns for p in done_before}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p: os.stat(out / p).st_mtime_ns for p in done_before} == mtimes  # not computed twice
    assert (
        f"mined shard {len(done_before) + 1}/15" in proc.stderr
        and "mined shard 1/15" not in proc.stderr
    )
    a, b = shard_files(straight.output), shard_files(str(out))
    assert [os.path.basename(p) for p in a] == [os.path.basename(p) for p in b]
    for x, y in zip(a, b):
        with open(x) as fx, open(y) as fy:
            assert fx.read() == fy.read(), x
    assert (
        json.load(open(out / "manifest.json"))["totals"]["groups"]
        == json.load(open(os.path.join(straight.output, "manifest.json")))["totals"]["groups"]
    )


def test_distillation_trains_on_the_mined_teacher_scores(tmp_path, teacher, monkeypatch):
    import jax
    import numpy as np

    from querit_jax.training import trainer

    monkeypatch.chdir(ROOT)
    mined = _cfg(tmp_path, teacher, max_docs=16)
    miner.mine(mined, log=lambda *a: None)
    rows = [g for f in shard_files(mined.output) for g in groups.read_groups(f)]
    mined_scores = np.array([s for g in rows for s in g["pos_scores"] + g["neg_scores"]])
    base = load_config("configs/general_relevance.py", "tiny")
    base.data.train, base.data.group_size, base.train.loss = mined.output, 4, "kl"
    base.train.num_steps, base.train.log_every, base.eval.datasets = 2, 1, ""
    cfg = config_lib.from_config_dict(base)
    session = trainer.setup(cfg, str(tmp_path / "run"), devices=jax.devices()[:1])
    batch = next(session.data_iter)
    assert batch["has_teacher"].all()
    teacher_scores = batch["teacher"].ravel()
    assert np.abs(teacher_scores).max() > 0
    assert np.isin(teacher_scores, mined_scores.astype(np.float32)).all()  # the mined labels
    trainer.run(cfg, str(tmp_path / "run2"), devices=jax.devices()[:1])
    logged = [json.loads(x) for x in open(tmp_path / "run2" / "metrics.jsonl")]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in logged if "loss" in r)

    write_jsonl(
        tmp_path / "plain.jsonl", [{k: g[k] for k in ("query", "pos", "neg")} for g in rows]
    )
    base.data.train = str(tmp_path / "plain.jsonl")
    with pytest.raises(config_lib.ConfigError, match="learns from teacher scores"):
        trainer.setup(
            config_lib.from_config_dict(base), str(tmp_path / "run3"), devices=jax.devices()[:1]
        )
