"""The detector's statistics: the ROC points by hand, and logistic regressions whose bits do not depend on the
order of the samples or the number of threads (fixed-order sums and solves, interpbench.ops.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interpbench.ops.detection import (
    cross_validated_scores,
    fit_logistic_regression,
    fold_models,
)
from interpbench.ops.stats import auroc, fixed_solve, fixed_sum, roc_curve


def test_roc_points_by_hand_and_their_area_is_the_auroc():
    # negatives 0.1, 0.4, 0.4; positives 0.4, 0.8: thresholds 0.8, 0.4, 0.1
    fpr, tpr = roc_curve(np.array([0.1, 0.4, 0.4]), np.array([0.4, 0.8]))
    assert fpr.tolist() == [0.0, 0.0, 2 / 3, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    # Mann-Whitney: pairs (pos > neg) = 0.8 beats all 3, 0.4 beats 0.1 and ties two: (3 + 1 + 2 * 0.5) / 6
    assert np.trapezoid(tpr, fpr) == pytest.approx(5 / 6) == auroc(np.array([0.1, 0.4, 0.4]), np.array([0.4, 0.8]))


def test_fixed_sum_is_accurate_and_does_not_depend_on_the_thread_count():
    x = torch.randn(1001, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e3
    exact = torch.tensor([math.fsum(col) for col in x.T.tolist()], dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fixed_sum(x, 0)
        torch.set_num_threads(2)
        two = fixed_sum(x, 0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert torch.allclose(one, exact, rtol=0, atol=1e-9)
    assert fixed_sum(torch.zeros(0, 3), 0).tolist() == [0.0, 0.0, 0.0]


def test_fixed_solve_solves_symmetric_positive_definite_systems():
    g = torch.Generator().manual_seed(1)
    m = torch.randn(3, 6, 6, dtype=torch.float64, generator=g)
    a = m @ m.transpose(1, 2) + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(3, 6, dtype=torch.float64, generator=g)
    assert torch.allclose(fixed_solve(a, b), torch.linalg.solve(a, b), atol=1e-10)


def detection_features(n: int = 120, d: int = 21, seed: int = 0):
    # numpy's generator: the same numbers on any CPU (torch.randn's vectorised transform is not)
    rng = np.random.default_rng(seed)
    clean = torch.from_numpy(rng.standard_normal((n, d)))
    adversarial = torch.from_numpy(rng.standard_normal((n, d)) + 0.35 * np.linspace(-1, 1, d))
    return clean, adversarial


def test_the_fit_has_the_same_bits_whatever_the_row_order_or_the_thread_count():
    clean, adversarial = detection_features()
    x = torch.cat([clean, adversarial])
    y = torch.cat([torch.zeros(len(clean)), torch.ones(len(adversarial))]).double()
    w, b = fit_logistic_regression(x, y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))
    wp, bp = fit_logistic_regression(x[perm], y[perm])
    assert torch.equal(w, wp) and torch.equal(b, bp)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        wt, bt = fit_logistic_regression(x, y)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(w, wt) and torch.equal(b, bt)
    # and it is the optimum: the gradient of the objective vanishes
    p = torch.sigmoid(x @ w + b)
    assert float((x.T @ (p - y) + w).abs().max()) < 1e-7 and abs(float((p - y).sum())) < 1e-7


def test_cross_validated_auroc_is_unchanged_when_rows_are_permuted_within_folds():
    clean, adversarial = detection_features(n=60, seed=4)
    ids = [f"img{i}" for i in range(len(clean))]
    features = torch.cat([clean, adversarial])
    labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(adversarial))]).double()
    groups = ids + ids
    scores = cross_validated_scores(features, labels, groups)
    perm = torch.randperm(len(features), generator=torch.Generator().manual_seed(5))
    permuted = cross_validated_scores(features[perm], labels[perm], [groups[i] for i in perm.tolist()])
    assert torch.equal(scores[perm], permuted)  # every out-of-fold score, to the bit
    n = len(clean)
    value = auroc(scores[:n].numpy(), scores[n:].numpy())
    inverse = torch.argsort(perm)
    again = auroc(permuted[inverse][:n].numpy(), permuted[inverse][n:].numpy())
    assert abs(value - again) < 1e-9 and 0.6 < value < 0.97
    folds = torch.tensor([i % 5 for i in range(2 * n)])
    models = fold_models(features, labels, folds, 5, 1.0)
    assert all(m is not None for m in models)


def test_one_system_on_python_floats_equals_the_batched_tensor_solve():
    g = torch.Generator().manual_seed(2)
    m = torch.randn(9, 9, dtype=torch.float64, generator=g)
    a = m @ m.T + torch.eye(9, dtype=torch.float64)
    b = torch.randn(9, dtype=torch.float64, generator=g)
    assert torch.allclose(fixed_solve(a, b), fixed_solve(a[None], b[None])[0], rtol=0, atol=1e-12)


def test_the_fit_has_the_same_bits_with_another_cpus_vector_kernels():
    # ATEN_CPU_CAPABILITY=default and ONEDNN_MAX_CPU_ISA=SSE41 make torch use the scalar / SSE kernels of a CPU
    # without AVX: its exp and its sums round differently (a BLAS fit's coefficients move by about 2e-16 there)
    import os
    import subprocess
    import sys

    code = ("import torch, sys; sys.path.insert(0, %r); from test_detection import detection_features; "
            "from interpbench.ops.detection import fit_logistic_regression as fit; c, a = detection_features(); "
            "w, b = fit(torch.cat([c, a]), torch.cat([torch.zeros(len(c)), torch.ones(len(a))]).double()); "
            "print(torch.cat([w, b[None]]).numpy().tobytes().hex())") % os.path.dirname(__file__)
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    clean, adversarial = detection_features()
    w, b = fit_logistic_regression(torch.cat([clean, adversarial]),
                                   torch.cat([torch.zeros(len(clean)), torch.ones(len(adversarial))]).double())
    assert other.stdout.strip() == torch.cat([w, b[None]]).numpy().tobytes().hex()
