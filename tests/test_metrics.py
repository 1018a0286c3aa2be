"""IR metrics (pytrec-eval-terrier, BEIR conventions), run files and the optimiser schedule."""

import math

import numpy as np
import optax
import pytest

from querit_jax.config_lib import OptimConfig
from querit_jax.data.runs import read_run, write_trec
from querit_jax.errors import DataFormatError
from querit_jax.eval import metrics
from querit_jax.training import optim

QRELS = {"q1": {"a": 1, "c": 2}, "q2": {"x": 1}, "q3": {"z": 1}}
RUN = {"q1": {"a": 0.9, "b": 0.8, "c": 0.7}, "q2": {"y": 0.5, "x": 0.4}}  # q3 retrieves nothing


def _dcg(gains):
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def test_known_values_with_linear_gain_and_missing_queries():
    means, per_query = metrics.evaluate(QRELS, RUN, ["ndcg@10", "mrr@10", "recall@100", "map@100"])
    ndcg_q1 = _dcg([1, 0, 2]) / _dcg([2, 1])
    ndcg_q2 = _dcg([0, 1]) / _dcg([1])
    assert per_query["ndcg@10"]["q1"] == pytest.approx(ndcg_q1)
    assert per_query["ndcg@10"]["q3"] == 0.0  # judged, absent from the run: counts as 0
    assert means["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 3)
    assert means["mrr@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert means["recall@100"] == pytest.approx(2 / 3)


def test_ties_are_broken_by_doc_id_for_every_metric():
    run = {"q": {"b": 1.0, "a": 1.0}}
    qrels = {"q": {"b": 1}}
    means, _ = metrics.evaluate(qrels, run, ["ndcg@1", "mrr@1"])
    assert means == {"ndcg@1": 0.0, "mrr@1": 0.0}  # "a" ranks first, for both metrics


def test_identical_query_and_doc_ids_are_ignored_like_beir():
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 5.0, "d1": 1.0}}
    assert metrics.evaluate(qrels, run, ["mrr@10"])[0]["mrr@10"] == 1.0
    assert metrics.evaluate(qrels, run, ["mrr@10"], ignore_identical_ids=False)[0]["mrr@10"] == 0.5


def test_unknown_metric_names():
    with pytest.raises(ValueError, match="ndcg@10"):
        metrics.parse_metric("ndcg")
    with pytest.raises(ValueError, match="Unknown metric"):
        metrics.parse_metric("bleu@4")


def test_trec_run_round_trip_and_malformed_lines(tmp_path):
    path = tmp_path / "run.trec"
    write_trec(RUN, str(path))
    assert read_run(str(path)) == {
        q: {d: pytest.approx(s) for d, s in docs.items()} for q, docs in RUN.items()
    }
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 a 1 0.9 tag\nq1 Q0 b two 0.8 tag\n")
    with pytest.raises(DataFormatError, match=r"bad\.trec:2: rank 'two'"):
        read_run(str(bad))
    bad.write_text("q1 Q0 a 1 0.9\n")
    with pytest.raises(DataFormatError, match=r"bad\.trec:1: expected 6"):
        read_run(str(bad))


def test_learning_rate_schedule():
    cfg = OptimConfig(learning_rate=1e-3, warmup_steps=10, schedule="cosine", end_lr_ratio=0.1)
    schedule = optim.learning_rate_schedule(cfg, 110)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(110)) == pytest.approx(1e-4)
    linear = optim.learning_rate_schedule(
        OptimConfig(learning_rate=1.0, warmup_steps=0, schedule="linear"), 10
    )
    assert float(linear(5)) == pytest.approx(0.5)


def test_optimizer_freezes_clips_and_skips_decay_on_vectors():
    params = {
        "model": {
            "embed_tokens": {"embedding": np.ones((4, 2), np.float32)},
            "norm": {"scale": np.ones(2, np.float32)},
        },
        "score": {"kernel": np.ones((2, 1), np.float32)},
    }
    grads = {
        "model": {
            "embed_tokens": {"embedding": np.full((4, 2), 10.0, np.float32)},
            "norm": {"scale": np.zeros(2, np.float32)},
        },
        "score": {"kernel": np.zeros((2, 1), np.float32)},
    }
    cfg = OptimConfig(
        learning_rate=0.1,
        warmup_steps=0,
        schedule="constant",
        weight_decay=0.5,
        freeze=("embed_tokens",),
    )
    tx, _ = optim.make_optimizer(cfg, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(
        new["model"]["embed_tokens"]["embedding"], params["model"]["embed_tokens"]["embedding"]
    )
    np.testing.assert_array_equal(
        new["model"]["norm"]["scale"], 1.0
    )  # zero grad, no decay on vectors
    np.testing.assert_allclose(new["score"]["kernel"], 1.0 - 0.1 * 0.5)  # decayed matrix
    # Clipping bounds the global norm of what reaches Adam.
    clip = optax.clip_by_global_norm(1.0)
    clipped, _ = clip.update(grads, clip.init(params))
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-6)
