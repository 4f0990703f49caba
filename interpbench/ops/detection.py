"""The adversarial detector's statistics: folds over image ids, the bit-reproducible logistic regression, the
cross-validated out-of-fold scores, and the bootstrap that reruns the whole cross-validation per resample.

Layer: ops (imports ops only). AUROC, TPR at a fixed FPR, bootstrap weights and percentile intervals, and the
fixed-order sums and solves the fit rests on, are in :mod:`interpbench.ops.stats`; the features the detector is
fitted on are in :mod:`interpbench.ops.detection_features`; the metric is
:class:`interpbench.metrics.adversarial.AdversarialDetection` (docs/protocols.md).
"""

from __future__ import annotations

import collections
import hashlib
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from interpbench.ops.stats import (
    fixed_matvec,
    fixed_solve,
    fixed_sum,
    scalar_sigmoid,
    scalar_softplus,
)


def image_folds(ids: Sequence[str], folds: int) -> dict[str, int]:
    """Fold of each image id: ids ordered by a hash of the id, then dealt round-robin (balanced, independent of the
    order in which images arrive). Every sample derived from an image (its adversarial copies) takes its fold."""
    ordered = sorted({str(i) for i in ids}, key=lambda s: (hashlib.sha256(s.encode()).hexdigest(), s))
    return {sid: k % folds for k, sid in enumerate(ordered)}


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """z-scores with the mean and standard deviation of ``train`` (constant columns: std 1)."""
    mean = train.mean(dim=0)
    std = train.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-12 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
    return [(x - mean) / std for x in (train, *others)]


def canonical_order(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Row order by (label, then each feature), lexicographic: the order in which the detector sums its rows, so
    that its fit does not depend on the order in which the samples arrive (identical rows are interchangeable)."""
    keys = [x[:, j].double().cpu().numpy() for j in reversed(range(x.shape[1]))]
    if y is not None:
        keys.append(y.double().cpu().numpy())
    return torch.from_numpy(np.lexsort(keys)) if keys else torch.arange(x.shape[0])


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, C: float = 1.0, *, max_iter: int = 100,
                            tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression ``min_w,b C sum_i log(1 + exp(-s_i (w.x_i + b))) + |w|^2 / 2`` (the
    intercept unpenalised; scikit-learn's ``LogisticRegression(C=C)`` objective), solved exactly by Newton's method
    with a backtracking line search, in float64. Returns ``(w, b)``.

    Reproducible to the bit: the rows are taken in :func:`canonical_order`, every sum over rows and every product
    is a fixed pairwise reduction of elementwise operations and the Newton system is solved by a Cholesky
    factorisation written the same way (:mod:`interpbench.ops.stats`), and exp / log1p are the C library's scalar
    ones, so the coefficients do not depend on the order of the samples, the CPU's vector units or BLAS, or the
    number of threads."""
    x = x.double()
    y = y.double()
    order = canonical_order(x, y)
    x, y = x[order], y[order]
    n, d = x.shape
    design = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], dim=1)
    ridge = torch.ones(d + 1, dtype=x.dtype)
    ridge[-1] = 0.0
    beta = torch.zeros(d + 1, dtype=x.dtype)

    def objective(b: torch.Tensor) -> torch.Tensor:
        z = fixed_matvec(design, b)
        return C * fixed_sum(scalar_softplus(z) - y * z, 0) + 0.5 * fixed_sum(ridge * b * b, 0)

    value = objective(beta)
    for _ in range(max_iter):
        p = scalar_sigmoid(fixed_matvec(design, beta))
        grad = C * fixed_sum(design * (p - y)[:, None], 0) + ridge * beta
        if float(grad.abs().max()) < tol * max(1.0, n * C):
            break
        weighted = design * (p * (1 - p))[:, None]
        hessian = C * fixed_sum(weighted[:, :, None] * design[:, None, :], 0) + torch.diag(ridge)
        hessian = hessian + torch.eye(d + 1, dtype=x.dtype) * (1e-12 * float(hessian.diagonal().abs().max()))
        step = fixed_solve(hessian, grad)
        decrease, t = float(fixed_sum(grad * step, 0)), 1.0
        while t >= 1e-10:  # Armijo backtracking; near the optimum the full Newton step is accepted
            candidate = beta - t * step
            new_value = objective(candidate)
            if float(new_value) <= float(value) - 1e-4 * t * decrease:
                break
            t *= 0.5
        else:  # no step decreases the objective: converged to machine precision
            break
        beta, value = candidate, new_value
    return beta[:-1], beta[-1]


def fold_models(features: torch.Tensor, labels: torch.Tensor, folds: torch.Tensor, n_folds: int, C: float
                ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """Per fold ``k``: the detector trained on the samples outside ``k`` (standardised on them, with sums in a
    fixed order, as the fit) as ``(mean, std, w, b)``, or None when the training part lacks a class."""
    out = []
    for k in range(n_folds):
        train = folds != k
        if not bool(train.any()) or labels[train].unique().numel() < 2:
            out.append(None)
            continue
        x, y = features[train].double(), labels[train]
        order = canonical_order(x, y)
        x, y = x[order], y[order]
        mean = fixed_sum(x, 0) / x.shape[0]
        std = (fixed_sum((x - mean) ** 2, 0) / x.shape[0]).sqrt()
        std = torch.where(std > 1e-12 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
        w, b = fit_logistic_regression((x - mean) / std, y, C)
        out.append((mean, std, w, b))
    return out


def out_of_fold_scores(models, features: torch.Tensor, folds: torch.Tensor) -> torch.Tensor:
    """Decision values ``w.x + b`` of each sample under the detector of its own (held-out) fold."""
    scores = torch.full((features.shape[0],), math.nan, dtype=torch.float64)
    for k, model in enumerate(models):
        test = folds == k
        if model is None or not bool(test.any()):
            continue
        mean, std, w, b = model
        scores[test] = fixed_matvec((features[test].double() - mean) / std, w) + b  # row by row: order-free
    return scores


def cross_validated_scores(features: torch.Tensor, labels: torch.Tensor, groups: Sequence[Any], n_folds: int = 5,
                           C: float = 1.0) -> torch.Tensor:
    """Out-of-fold detector scores with folds over ``groups`` (e.g. image ids): samples of one group never fall
    on both sides of a split."""
    fold_of = image_folds([str(g) for g in groups], n_folds)
    folds = torch.tensor([fold_of[str(g)] for g in groups])
    return out_of_fold_scores(fold_models(features, labels, folds, n_folds, C), features, folds)


def fit_logistic_regression_batched(x: torch.Tensor, y: torch.Tensor, sample_weights: torch.Tensor,
                                    penalty: torch.Tensor, C: float = 1.0, *, max_iter: int = 50,
                                    tol: float = 1e-9, init: torch.Tensor | None = None) -> torch.Tensor:
    """``R`` weighted logistic regressions on one design, ``(R, d + 1)`` coefficients (intercept last).

    Replicate ``r`` minimises ``C sum_i s_ri log(1 + exp(-y~_i z_ri)) + sum_j penalty_rj beta_rj^2 / 2`` with
    ``z_ri = x_i . beta_r[:d] + beta_r[d]``: integer ``s`` are bootstrap counts (a resampled data set), and the
    penalty ``sigma_rj^2`` reproduces :func:`fit_logistic_regression` on features standardised with replicate
    ``r``'s standard deviations. Newton's method with a backtracking line search per replicate, in float64,
    from ``init`` (``d + 1`` coefficients, e.g. the unweighted fit) or zero.
    """
    x, y, s, pen = x.double(), y.double(), sample_weights.double(), penalty.double()
    reps, (n, d) = s.shape[0], x.shape
    design = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], dim=1)
    pen = torch.cat([pen, torch.zeros(reps, 1, dtype=x.dtype)], dim=1)
    beta = torch.zeros(reps, d + 1, dtype=x.dtype) if init is None else init.double().expand(reps, d + 1).clone()
    steps = 0.5 ** torch.arange(12, dtype=x.dtype)  # 1, 1/2, ..., 1/2048

    def objective(b: torch.Tensor) -> torch.Tensor:  # b: R x T x (d + 1) -> R x T
        z = b @ design.T
        return C * ((F.softplus(z) - y * z) * s[:, None, :]).sum(-1) + 0.5 * (pen[:, None, :] * b * b).sum(-1)

    active = torch.ones(reps, dtype=torch.bool)
    scale = tol * torch.clamp(C * s.sum(dim=1), min=1.0)
    for _ in range(max_iter):
        p = torch.sigmoid(beta @ design.T)
        grad = C * (s * (p - y)) @ design + pen * beta
        active &= grad.abs().amax(dim=1) >= scale
        if not bool(active.any()):
            break
        curvature = s * p * (1 - p)
        hessian = C * (design.T * curvature[:, None, :]) @ design + torch.diag_embed(pen)
        largest = hessian.diagonal(dim1=1, dim2=2).abs().amax(dim=1)
        hessian += torch.eye(d + 1, dtype=x.dtype) * 1e-12 * largest[:, None, None]
        step = torch.linalg.solve(hessian, grad)
        value = objective(beta[:, None, :])[:, 0]
        decrease = 1e-4 * (grad * step).sum(dim=1)
        full = beta - step
        ok = objective(full[:, None, :])[:, 0] <= value - decrease  # the full Newton step, accepted near the optimum
        new = torch.where(ok[:, None], full, beta)
        retry = torch.nonzero(active & ~ok).squeeze(1)
        if retry.numel():  # backtracking for the others
            candidates = beta[retry, None, :] - steps[None, 1:, None] * step[retry, None, :]
            z = candidates @ design.T
            values = (C * ((F.softplus(z) - y * z) * s[retry, None, :]).sum(-1)
                      + 0.5 * (pen[retry, None, :] * candidates ** 2).sum(-1))
            armijo = values <= value[retry, None] - steps[None, 1:] * decrease[retry, None]
            found = armijo.any(dim=1)
            chosen = candidates[torch.arange(retry.numel()), armijo.to(torch.int8).argmax(dim=1)]
            new[retry] = torch.where(found[:, None], chosen, beta[retry])
            ok[retry] = found
        beta = new
        active &= ok
    return beta


def weighted_auroc_rows(clean: torch.Tensor, adversarial: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """AUROC per row: scores ``R x n`` of paired samples, weights ``R x n`` (the same for a pair)."""
    out = torch.empty(clean.shape[0], dtype=torch.float64)
    n = clean.shape[1]
    chunk = max(1, (1 << 24) // max(n * n, 1))
    for lo in range(0, clean.shape[0], chunk):
        c, a, w = clean[lo:lo + chunk, :, None], adversarial[lo:lo + chunk, None, :], weights[lo:lo + chunk].double()
        wins = (a > c).double() + 0.5 * (a == c).double()  # [r, i, j]: adversarial j against clean i
        out[lo:lo + chunk] = torch.einsum("ri,rij,rj->r", w, wins, w) / w.sum(dim=1) ** 2
    return out


def weighted_tpr_rows(clean: torch.Tensor, adversarial: torch.Tensor, weights: torch.Tensor,
                      fpr: float) -> torch.Tensor:
    """:func:`tpr_at_fpr` per row of scores ``R x n`` with integer weights ``R x n`` (paired)."""
    w = weights.double()
    ordered, order = torch.sort(clean, dim=1, descending=True, stable=True)
    cum = w.gather(1, order).cumsum(dim=1)
    allowed = torch.floor(fpr * w.sum(dim=1) + 1e-9)
    threshold = ordered.gather(1, (cum >= (allowed + 1)[:, None]).to(torch.int8).argmax(dim=1, keepdim=True))
    return (w * (adversarial > threshold)).sum(dim=1) / w.sum(dim=1)


def bootstrap_detection(clean: torch.Tensor, adversarial: torch.Tensor, folds: torch.Tensor, n_folds: int, C: float,
                        weights: torch.Tensor, fpr: float, chunk: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """AUROC and TPR at ``fpr`` of the whole cross-validated detector on bootstrap resamples of the pairs.

    Each replicate (a row of ``weights``: resampling counts of the ``n`` images) reruns the cross-validation on its
    resample: in every fold the detector is standardised and fitted on the replicate's training images (their
    counts as sample weights), the held-out images are scored, and the pooled out-of-fold scores give the
    replicate's AUROC and TPR, weighted by the counts. Folds stay those of the images, so copies of an image never
    fall on both sides. The spread thus covers the detector's training as well as its test sample.
    """
    features = torch.cat([clean, adversarial]).double()
    mean, std = features.mean(dim=0), features.std(dim=0, unbiased=False)
    features = (features - mean) / torch.where(std > 0, std, torch.ones_like(std))  # conditioning only
    n = clean.shape[0]
    labels = torch.cat([torch.zeros(n), torch.ones(n)]).double()
    sample_folds = torch.cat([folds, folds])
    aucs, tprs = [], []
    for lo in range(0, weights.shape[0], chunk):
        w = weights[lo:lo + chunk].double()
        pair_w = torch.cat([w, w], dim=1)
        scores = torch.zeros_like(pair_w)
        for k in range(n_folds):
            train, test = sample_folds != k, sample_folds == k
            if not bool(test.any()):
                continue
            x = features[train]
            penalties = []
            for s in (torch.ones(1, x.shape[0], dtype=x.dtype), pair_w[:, train]):
                mu = (s @ x) / s.sum(dim=1, keepdim=True)
                sigma = ((s @ (x * x)) / s.sum(dim=1, keepdim=True) - mu * mu).clamp_min(0).sqrt()
                sigma = torch.where(sigma > 1e-12 * mu.abs().clamp_min(1.0), sigma, torch.ones_like(sigma))
                penalties.append(sigma * sigma)
            start = fit_logistic_regression_batched(x, labels[train], torch.ones(1, x.shape[0]), penalties[0], C)
            beta = fit_logistic_regression_batched(x, labels[train], pair_w[:, train], penalties[1], C, init=start[0])
            scores[:, test] = beta[:, :-1] @ features[test].T + beta[:, -1:]
        aucs.append(weighted_auroc_rows(scores[:, :n], scores[:, n:], w))
        tprs.append(weighted_tpr_rows(scores[:, :n], scores[:, n:], w, fpr))
    return torch.cat(aucs), torch.cat(tprs)


def detection_scores(clean: torch.Tensor, adversarial: torch.Tensor, groups: Sequence[str], fold_of: Mapping[str, int],
                     n_folds: int, C: float):
    """Fold models and out-of-fold scores for pairs ``(clean[i], adversarial[i])`` of image ``groups[i]``."""
    features = torch.cat([clean, adversarial]).double()
    labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(adversarial))]).double()
    folds = torch.tensor([fold_of[g] for g in groups] * 2)
    models = fold_models(features, labels, folds, n_folds, C)
    scores = out_of_fold_scores(models, features, folds)
    return models, scores[: len(clean)].numpy(), scores[len(clean):].numpy()


_BOOTSTRAP_CACHE: "collections.OrderedDict[str, tuple[torch.Tensor, torch.Tensor]]" = collections.OrderedDict()


def cached_bootstrap_detection(clean: torch.Tensor, adversarial: torch.Tensor, folds: torch.Tensor, n_folds: int,
                               C: float, weights: torch.Tensor, fpr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`bootstrap_detection`, remembered by the content of its inputs (the method-free baseline is the same
    in every method's cell of a run, so it is bootstrapped once)."""
    digest = hashlib.sha256()
    for t in (clean, adversarial, folds, weights):
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    key = f"{digest.hexdigest()}:{n_folds}:{C!r}:{fpr!r}"
    if key not in _BOOTSTRAP_CACHE:
        _BOOTSTRAP_CACHE[key] = bootstrap_detection(clean, adversarial, folds, n_folds, C, weights, fpr)
        while len(_BOOTSTRAP_CACHE) > 64:
            _BOOTSTRAP_CACHE.popitem(last=False)
    return _BOOTSTRAP_CACHE[key]
