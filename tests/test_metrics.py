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


# Ties (q1: a and b at 0.5; q3: m and n at 1.0), an unjudged document (q1: d), a judged query with
# no relevant document (q2) and a judged query the run misses (q4).
QRELS_HARD = {
    "q1": {"a": 1, "b": 0, "c": 2, "e": 1},
    "q2": {"x": 0, "y": 0},
    "q3": {"m": 1},
    "q4": {"w": 1},
}
RUN_HARD = {
    "q1": {"a": 0.5, "b": 0.5, "c": 0.9, "d": 0.7, "e": 0.1},
    "q2": {"x": 1.0, "z": 0.5},
    "q3": {"n": 1.0, "m": 1.0},
}


def test_map_and_precision_equal_pytrec_eval_with_ties_unjudged_and_no_relevant_docs():
    import pytrec_eval

    names = ["map@3", "map@100", "precision@1", "precision@3", "precision@5"]
    means, per_query = metrics.evaluate(QRELS_HARD, RUN_HARD, names)
    # pytrec_eval on the run re-scored in our tie order (score descending, then doc id ascending),
    # written out here rather than taken from metrics._untie; queries the run misses score 0.
    untied = {
        q: {d: float(-i) for i, d in enumerate(sorted(docs, key=lambda d: (-docs[d], d)))}
        for q, docs in RUN_HARD.items()
    }
    measures = {"map_cut.3,100", "P.1,3,5"}
    ref = pytrec_eval.RelevanceEvaluator(QRELS_HARD, measures).evaluate(untied)
    keys = {
        "map@3": "map_cut_3",
        "map@100": "map_cut_100",
        "precision@1": "P_1",
        "precision@3": "P_3",
        "precision@5": "P_5",
    }
    for name, key in keys.items():
        want = {q: ref[q][key] if q in ref else 0.0 for q in QRELS_HARD}
        assert per_query[name] == pytest.approx(want), name
        assert means[name] == pytest.approx(np.mean(list(want.values()))), name
    # ... and by hand. q1 ranks c, d (unjudged: not relevant), a, b, e; 3 relevant documents.
    assert per_query["map@100"]["q1"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert per_query["map@3"]["q1"] == pytest.approx((1 + 2 / 3) / 3)  # divided by all 3 relevant
    assert per_query["precision@5"]["q1"] == pytest.approx(3 / 5)
    assert per_query["map@100"]["q2"] == 0.0 and per_query["precision@1"]["q2"] == 0.0
    # q3's tie goes to "m" (doc id order); trec_eval alone would put "n" first (MAP 0.5).
    assert per_query["map@100"]["q3"] == 1.0
    assert per_query["precision@3"]["q3"] == pytest.approx(1 / 3)
    assert per_query["map@100"]["q4"] == 0.0
    assert means["map@100"] == pytest.approx(((1 + 2 / 3 + 3 / 5) / 3 + 1.0) / 4)
    raw = pytrec_eval.RelevanceEvaluator(QRELS_HARD, {"map"}).evaluate(RUN_HARD)
    assert raw["q3"]["map"] == 0.5  # so the tie order above is ours, not trec_eval's


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


def test_make_optimizer_schedule_decay_mask_clipping_and_freezing():
    """The project's optimizer, step by step: warmup then linear decay, decay on matrices only,
    clipping of the trained parameters' global norm (frozen ones excluded), frozen ones unchanged.

    Adam's update is invariant to the gradient's scale, so clipping is read off Adam's first moment
    (mu = (1 - b1) * the clipped gradient after one step), not off the update."""
    params = {
        "model": {
            "embed_tokens": {"embedding": np.ones((4, 2), np.float32)},
            "norm": {"scale": np.ones(2, np.float32)},
        },
        "score": {"kernel": np.ones((2, 1), np.float32)},
    }
    grads = {
        "model": {
            # frozen: a norm of 20 that must not count towards clipping
            "embed_tokens": {"embedding": np.full((4, 2), 10.0, np.float32)},
            "norm": {"scale": np.array([3.0, -4.0], np.float32)},  # norm 5 > clip_norm 1
        },
        "score": {"kernel": np.zeros((2, 1), np.float32)},
    }
    cfg = OptimConfig(
        learning_rate=0.1,
        warmup_steps=2,
        schedule="linear",
        end_lr_ratio=0.0,
        weight_decay=0.5,
        clip_norm=1.0,
        freeze=("embed_tokens",),
    )
    tx, schedule = optim.make_optimizer(cfg, 6)
    # written out independently: 0 -> 0.1 over 2 steps, then linearly to 0 over the other 4
    want_lr = [0.0, 0.05, 0.1, 0.075, 0.05, 0.025]
    np.testing.assert_allclose([float(schedule(t)) for t in range(6)], want_lr, rtol=1e-6)
    state, p = tx.init(params), params
    for t, lr in enumerate(want_lr):
        updates, state = tx.update(grads, state, p)
        if t == 0:
            mu = optax.tree_utils.tree_get(state, "mu")
            np.testing.assert_allclose(
                mu["model"]["norm"]["scale"], (1 - cfg.b1) * np.array([0.6, -0.8]), rtol=1e-5
            )
        # constant gradient: Adam's bias-corrected step is g / |g| = sign(g) on every coordinate
        np.testing.assert_allclose(
            updates["model"]["norm"]["scale"], -lr * np.array([1.0, -1.0]), rtol=1e-5, atol=1e-7
        )
        # zero gradient on a matrix: only the decoupled weight decay, lr * 0.5 * p
        np.testing.assert_allclose(
            updates["score"]["kernel"], -lr * 0.5 * p["score"]["kernel"], rtol=1e-5, atol=1e-7
        )
        np.testing.assert_array_equal(updates["model"]["embed_tokens"]["embedding"], 0.0)
        p = optax.apply_updates(p, updates)
    np.testing.assert_array_equal(p["model"]["embed_tokens"]["embedding"], 1.0)
    # no decay on vectors: the scale moved by exactly the summed learning rates
    np.testing.assert_allclose(
        p["model"]["norm"]["scale"], 1.0 - sum(want_lr) * np.array([1.0, -1.0]), rtol=1e-5
    )
