"""interpbench.ops.stats: the bootstrap CI of a mean."""

import numpy as np

from interpbench.ops.stats import bootstrap_ci


def test_bootstrap_ci_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    values = rng.normal(0.3, 0.1, size=400)
    lo, hi = bootstrap_ci(values, seed=1)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert lo < values.mean() < hi
    assert abs((hi - lo) / 2 - half) < 0.15 * half
    assert bootstrap_ci(values, seed=1) == (lo, hi)  # seeded
    assert bootstrap_ci(np.full(10, 0.25), seed=0) == (0.25, 0.25)
    assert bootstrap_ci(np.array([0.7]), seed=0) == (0.7, 0.7)
