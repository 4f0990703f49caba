"""Statistics: the bootstrap CI of a mean; for detectors, the ROC curve, AUROC and TPR at a fixed FPR (plain and
under bootstrap weights), bootstrap resampling counts and percentile intervals, and sums, linear solves and
sigmoids whose rounding does not depend on the machine.

``fixed_sum`` adds along a dimension in one fixed pairwise (tree) order made of elementwise additions, each a
correctly rounded IEEE-754 operation; torch's reductions and BLAS products instead pick their order from the
vector width of the CPU, its blocking and the number of threads, so their last bits move between machines.
``fixed_solve`` is a Cholesky factorisation written with the same elementwise operations. Together they make a
Newton fit of a logistic regression give the same bits on any CPU with any number of threads, given the same
inputs (the transcendental functions, exp and log1p, are torch's, accurate to an ulp; ``scalar_sigmoid`` and
``scalar_softplus`` take the C library's scalar ones instead, as the adversarial detector's fit does).

Layer: ops (imports nothing from the package); the detector built on these is in :mod:`interpbench.ops.detection`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Bootstrap replicates of every CI in the tables.
N_BOOTSTRAP = 2000


def bootstrap_ci(values: np.ndarray, seed: int, n_boot: int = N_BOOTSTRAP, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (Efron & Tibshirani 1993, ch. 13), resampling samples."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (math.nan, math.nan)
    if len(values) == 1:
        return (float(values[0]), float(values[0]))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def roc_curve(negatives: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(fpr, tpr)`` of the empirical ROC curve (Fawcett, Pattern Recognit. Lett. 2006, algorithm 1).

    A sample is flagged when its score is at least the threshold; the thresholds run down through the distinct
    scores, so the curve starts at ``(0, 0)``, ends at ``(1, 1)`` and moves diagonally across tied scores. The
    trapezoidal area under these points is the Mann-Whitney AUROC with ties counted one half.
    """
    neg = np.asarray(negatives, np.float64).ravel()
    pos = np.asarray(positives, np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        raise ValueError(f"roc_curve needs negatives and positives, got {neg.size} and {pos.size} scores")
    thresholds = np.unique(np.concatenate([neg, pos]))[::-1]
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    fp = neg.size - np.searchsorted(neg_sorted, thresholds, side="left")
    tp = pos.size - np.searchsorted(pos_sorted, thresholds, side="left")
    fpr = np.concatenate([[0.0], fp / neg.size])
    tpr = np.concatenate([[0.0], tp / pos.size])
    return fpr, tpr


def fixed_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum along ``dim`` in a fixed pairwise order (elementwise adds of halves, padded with zeros to a power of
    two): the same bits whatever the CPU, its vector width or the thread count, and an error that grows with
    ``log2 n`` rather than ``n``."""
    x = x.movedim(dim, 0)
    n = x.shape[0]
    if n == 0:
        return torch.zeros(x.shape[1:], dtype=x.dtype, device=x.device)
    size = 1 << (n - 1).bit_length()
    if size != n:
        x = torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
    while x.shape[0] > 1:
        half = x.shape[0] // 2
        x = x[:half] + x[half:]
    return x[0]


def fixed_matvec(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``a @ v`` for ``... x m x k`` and ``... x k``, summed with :func:`fixed_sum`."""
    return fixed_sum(a * v.unsqueeze(-2), -1)


def fixed_solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``matrix @ x = rhs`` for symmetric positive definite ``... x d x d`` matrices and ``... x d``
    right-hand sides by a Cholesky factorisation (Golub & Van Loan, algorithm 4.2.1) written with elementwise
    operations and :func:`fixed_sum`, so that the result does not depend on the machine's LAPACK. A single system
    is solved with Python's floats (IEEE doubles, each operation correctly rounded, in the loops' order): the same
    bits, and for the small systems of a detector (d of about 20) a hundred times faster than tensor operations."""
    if matrix.dim() == 2 and rhs.dim() == 1:
        return torch.tensor(_cholesky_solve(matrix.double().tolist(), rhs.double().tolist()), dtype=torch.float64,
                            device=matrix.device)
    a = matrix.double()
    d = a.shape[-1]
    low = torch.zeros_like(a)
    for j in range(d):
        head = low[..., j, :j]
        diag = a[..., j, j] - (fixed_sum(head * head, -1) if j else 0.0)
        root = diag.clamp_min(torch.finfo(a.dtype).tiny).sqrt()
        low[..., j, j] = root
        if j + 1 < d:
            below = low[..., j + 1:, :j]
            inner = fixed_sum(below * head.unsqueeze(-2), -1) if j else 0.0
            low[..., j + 1:, j] = (a[..., j + 1:, j] - inner) / root.unsqueeze(-1)
    y = torch.zeros_like(rhs, dtype=a.dtype)
    b = rhs.double()
    for i in range(d):  # forward substitution, L y = b
        inner = fixed_sum(low[..., i, :i] * y[..., :i], -1) if i else 0.0
        y[..., i] = (b[..., i] - inner) / low[..., i, i]
    x = torch.zeros_like(y)
    for i in reversed(range(d)):  # back substitution, L^T x = y
        inner = fixed_sum(low[..., i + 1:, i] * x[..., i + 1:], -1) if i + 1 < d else 0.0
        x[..., i] = (y[..., i] - inner) / low[..., i, i]
    return x


def _cholesky_solve(a: list[list[float]], b: list[float]) -> list[float]:
    """:func:`fixed_solve` of one system on Python floats (sums in index order)."""
    d = len(b)
    tiny = 2.2250738585072014e-308
    low = [[0.0] * d for _ in range(d)]
    for j in range(d):
        row_j = low[j]
        total = a[j][j]
        for t in range(j):
            total -= row_j[t] * row_j[t]
        root = math.sqrt(max(total, tiny))
        row_j[j] = root
        for i in range(j + 1, d):
            row_i = low[i]
            total = a[i][j]
            for t in range(j):
                total -= row_i[t] * row_j[t]
            row_i[j] = total / root
    y = [0.0] * d
    for i in range(d):
        total = b[i]
        for t in range(i):
            total -= low[i][t] * y[t]
        y[i] = total / low[i][i]
    x = [0.0] * d
    for i in reversed(range(d)):
        total = y[i]
        for t in range(i + 1, d):
            total -= low[t][i] * x[t]
        x[i] = total / low[i][i]
    return x


def scalar_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """``1 / (1 + exp(-z))`` element by element with Python's ``math`` (the C library's scalar exp): torch's
    vectorised exp differs from its scalar one by an ulp, so a CPU with other vector units would round otherwise."""
    values = [1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v)) for v in z.tolist()]
    return torch.tensor(values, dtype=torch.float64)


def scalar_softplus(z: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(z))`` element by element with Python's ``math`` (see :func:`scalar_sigmoid`)."""
    values = [v + math.log1p(math.exp(-v)) if v > 0 else math.log1p(math.exp(v)) for v in z.tolist()]
    return torch.tensor(values, dtype=torch.float64)


def auroc(clean: np.ndarray, adversarial: np.ndarray) -> float:
    """Area under the ROC curve = P(adversarial score > clean score) + P(tie) / 2 (Mann-Whitney U / (n1 n2))."""
    return float(bootstrap_auroc(clean, adversarial, np.ones((1, len(clean))), np.ones((1, len(adversarial))))[0])


def tpr_at_fpr(clean: np.ndarray, adversarial: np.ndarray, fpr: float = 0.05) -> float:
    """Largest true-positive rate over thresholds whose false-positive rate is at most ``fpr`` (the ROC's
    operating point, no interpolation): flag scores above the ``floor(fpr n) + 1``-th largest clean score."""
    return float(bootstrap_tpr(clean, adversarial, np.ones((1, len(clean))), np.ones((1, len(adversarial))), fpr)[0])


def bootstrap_auroc(clean: np.ndarray, adversarial: np.ndarray, weights: np.ndarray,
                    adversarial_weights: np.ndarray | None = None) -> np.ndarray:
    """AUROC under sample weights, one value per row of ``weights`` (``R x n_clean``; the adversarial scores take
    ``adversarial_weights``, by default the same rows: paired samples resampled together).

    Weighted Mann-Whitney: ``sum_j v_j G(a_j) / (sum w)(sum v)`` with ``G(s) = sum_i w_i ([c_i < s] + [c_i = s]/2)``.
    """
    clean = np.asarray(clean, np.float64)
    adversarial = np.asarray(adversarial, np.float64)
    weights = np.atleast_2d(np.asarray(weights, np.float64))
    v = weights if adversarial_weights is None else np.atleast_2d(np.asarray(adversarial_weights, np.float64))
    order = np.argsort(clean, kind="stable")
    sorted_clean = clean[order]
    cum = np.concatenate([np.zeros((weights.shape[0], 1)), np.cumsum(weights[:, order], axis=1)], axis=1)
    below = np.searchsorted(sorted_clean, adversarial, side="left")
    at_or_below = np.searchsorted(sorted_clean, adversarial, side="right")
    g = 0.5 * (cum[:, below] + cum[:, at_or_below])
    return (v * g).sum(axis=1) / (weights.sum(axis=1) * v.sum(axis=1))


def bootstrap_tpr(clean: np.ndarray, adversarial: np.ndarray, clean_weights: np.ndarray,
                  adversarial_weights: np.ndarray, fpr: float) -> np.ndarray:
    """:func:`tpr_at_fpr` under integer sample weights (one value per row of the weights)."""
    clean = np.asarray(clean, np.float64)
    adversarial = np.asarray(adversarial, np.float64)
    wc = np.atleast_2d(np.asarray(clean_weights, np.float64))
    wa = np.atleast_2d(np.asarray(adversarial_weights, np.float64))
    order = np.argsort(-clean, kind="stable")
    descending = clean[order]
    cum = np.cumsum(wc[:, order], axis=1)
    allowed = np.floor(fpr * wc.sum(axis=1) + 1e-9)  # false positives allowed
    first = np.argmax(cum >= allowed[:, None] + 1, axis=1)  # the (allowed + 1)-th largest clean score
    threshold = descending[first]
    order_a = np.argsort(adversarial, kind="stable")
    ascending = adversarial[order_a]
    cum_a = np.concatenate([np.zeros((wa.shape[0], 1)), np.cumsum(wa[:, order_a], axis=1)], axis=1)
    at_or_below = np.searchsorted(ascending, threshold, side="right")
    total = cum_a[:, -1]
    return (total - cum_a[np.arange(wa.shape[0]), at_or_below]) / total


def bootstrap_weights(n: int, replicates: int, seed: int) -> np.ndarray:
    """``replicates x n`` resampling counts (multinomial, with replacement) over ``n`` units."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(replicates, n))
    weights = np.zeros((replicates, n))
    np.add.at(weights, (np.arange(replicates)[:, None], draws), 1.0)
    return weights


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (math.nan, math.nan)
    alpha = (1 - level) / 2
    return (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)))


__all__ = [
    "auroc",
    "bootstrap_auroc",
    "bootstrap_ci",
    "bootstrap_tpr",
    "bootstrap_weights",
    "fixed_matvec",
    "fixed_solve",
    "fixed_sum",
    "percentile_interval",
    "roc_curve",
    "scalar_sigmoid",
    "scalar_softplus",
    "tpr_at_fpr",
]
