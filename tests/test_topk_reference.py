"""The exact sharded top-k against a brute force written here in plain numpy (float64 scores, a full
sort by score then index), sharing no code with querit_jax.retrieval.topk: a bug in the shared
scoring kernel (`block_dot` / `all_scores`, which `brute_force_top_k` reuses) would pass
tests/test_retrieval.py but not this one."""

import jax
import numpy as np
import pytest

from querit_jax.retrieval.topk import ShardedCorpus


def _numpy_top_k(queries, corpus, k):
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(len(corpus)), scores.shape), -scores), axis=-1)
    ids = order[:, :k]
    return np.take_along_axis(scores, ids, -1), ids


@pytest.mark.parametrize("n,block", [(1003, 32), (7, 32), (200, 64)])
def test_sharded_top_k_equals_a_numpy_brute_force(n, block):
    rng = np.random.default_rng(100 + n)
    corpus = rng.standard_normal((n, 24)).astype(np.float32)
    queries = rng.standard_normal((37, 24)).astype(np.float32)
    if n > 10:
        corpus[5] = corpus[n - 1]  # an exact tie across shards: the lower index ranks first
        queries[1] = corpus[5]
    k = min(10, n)
    want_scores, want_ids = _numpy_top_k(queries, corpus, k)
    # float32 rounding (~1e-6 on these scores) cannot reorder: apart from the planted tie,
    # neighbouring scores in the numpy ranking differ by more than that (smallest gap measured:
    # 2.7e-4, n=1003)
    top = np.sort(queries.astype(np.float64) @ corpus.astype(np.float64).T, -1)[:, ::-1][:, : k + 1]
    gaps = np.diff(top, axis=-1)
    gaps[gaps == 0] = -1.0
    assert (np.abs(gaps) > 1e-4).all()
    sharded = ShardedCorpus(corpus, jax.devices(), block=block)
    assert len(sharded.matrix.sharding.device_set) == 8
    scores, ids = sharded.search(queries, 10, batch=16)
    assert scores.shape == ids.shape == (37, k)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-4)
    if n > 10:
        assert list(ids[1][:2]) == [5, n - 1]
