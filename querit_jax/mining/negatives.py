"""Which mined candidates become a training list's negatives."""

import numpy as np


def choose_by_bins(
    scores: np.ndarray, count: int, bins: int, rng: np.random.Generator
) -> list[int]:
    """Indices of `count` candidates spread over `bins` equal-width teacher-score bins (round robin,
    random within a bin), so a training list sees easy, middling and hard negatives alike."""
    n = len(scores)
    if count >= n or bins <= 1:
        return list(range(min(count, n)))
    lo, hi = float(np.min(scores)), float(np.max(scores))
    edges = np.linspace(lo, hi, bins + 1)[1:-1]
    which = np.searchsorted(edges, scores, side="right")
    pools = [list(rng.permutation(np.flatnonzero(which == b))) for b in range(bins)]
    chosen: list[int] = []
    while len(chosen) < count:
        for pool in pools:
            if pool and len(chosen) < count:
                chosen.append(int(pool.pop()))
    return sorted(chosen)
