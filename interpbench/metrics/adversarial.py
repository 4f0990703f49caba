"""Adversarial examples and explanations (docs/protocols.md, "Adversarial detection with explanations").

Two metrics:

- ``adversarial_detection`` (explanation scope, dataset level). Do a method's maps reveal adversarial images?
  (Fong & Vedaldi, ICCV 2017; features as in ML-LOO, Yang et al., AAAI 2020.) Clean images the model classifies
  correctly are attacked (FGSM and PGD-Linf at 2/255, 4/255, 8/255, Carlini-Wagner L2); successful attacks only
  are kept. The method explains the predicted class of the clean image (the runner's maps) and of the adversarial
  image (the same method, re-run here). From each map: its mass on a small grid (shifted to a minimum of 0 and
  normalised to sum 1) and dispersion statistics (log inter-quartile range as in ML-LOO, log standard deviation,
  IQR over range, normalised entropy, share of the top 10% pixels). A logistic regression separates clean from
  adversarial maps, cross-validated over disjoint images: folds are drawn over image ids, so an image and its
  adversarial copies (of every attack) always fall on the same side. Reported per attack: AUROC and TPR at 5% FPR
  of the pooled out-of-fold scores (95% percentile bootstrap CIs over images: an image and its adversarial copy are
  resampled together and the whole cross-validation, fits included, is rerun on each resample),
  n, the attack's success rate; the same detector on method-free features (softmax and logit statistics) as the
  baseline an explanation has to beat (``baseline.ATTACK.*``), and the paired difference ``ATTACK.auroc_gain``
  (method minus baseline, paired bootstrap CI); the cross-attack table ``cross.TRAIN.TEST.auroc`` (train on one
  attack's training folds, test on another attack's held-out folds). None of the attacks is adaptive (they do not
  know the detector; Carlini & Wagner, AISec 2017): ``adaptive_attacks`` is 0.

  The attacks do not depend on the method: each image's attack is seeded from (model, attack, image id), so every
  method of a run is scored on the same adversarial images, the same pairs and the same folds, and the baseline
  values are the same in every method's cell. Adversarial images are cached per model for the batch at hand, so
  a run with several methods attacks each batch once.

- ``adversarial_consistency`` (model scope): dissect a layer on the probe and on its adversarial version (the
  same concept masks; Bau et al., PNAS 2020; Dong et al. 2017), per attack: the share of detectors that keep
  their label, the mean IoU change on the clean label and the mean relative activation change of the units.

The maths lives in plain functions (features, logistic regression, folds, AUROC, TPR at a fixed FPR, bootstrap);
the classes only hold the plugin contract.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import re
import weakref
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from interpbench.core.base import Batch, ComponentError, Metric, Model, RunContext
from interpbench.core.identity import stable_hash
from interpbench.core.tabular import slug
from interpbench.ops.attacks import Adversarial, carlini_wagner_l2, fgsm, pgd_linf
from interpbench.ops.stats import fixed_matvec, roc_curve

# --------------------------------------------------------------------------------------------- attacks

ATTACK_NAME = re.compile(r"^(?P<kind>fgsm|pgd)(?P<eps>\d+(?:\.\d+)?)$|^(?P<cw>cw)$")
DEFAULT_ATTACKS = ("fgsm2", "fgsm4", "fgsm8", "pgd2", "pgd4", "pgd8", "cw")
# The attack parameters both adversarial metrics take (PGD: Madry et al.; CW-L2: Carlini & Wagner's defaults).
ATTACK_DEFAULTS: dict[str, Any] = {
    "pgd_steps": 10,
    "pgd_step_ratio": 0.25,
    "pgd_random_start": True,
    "cw_steps": 1000,
    "cw_binary_search_steps": 9,
    "cw_lr": 0.01,
    "cw_initial_const": 1e-3,
    "cw_kappa": 0.0,
    "cw_abort_early": True,
}


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of a metric: ``name`` (``fgsm8``, ``pgd2``, ``cw``), ``kind`` and its settings."""

    name: str
    kind: str  # "fgsm" | "pgd" | "cw"
    settings: tuple[tuple[str, Any], ...]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.settings)

    def identity(self) -> list[Any]:
        return [self.name, self.kind, [list(kv) for kv in self.settings]]


def parse_attacks(names: Any, params: Mapping[str, Any], who: str) -> list[AttackSpec]:
    """Attack specs from names ``fgsmE`` / ``pgdE`` (epsilon ``E/255`` in pixel units) and ``cw``.

    PGD takes ``pgd_steps``, ``pgd_step_ratio`` (step = ratio * eps) and ``pgd_random_start``; CW takes
    ``cw_steps``, ``cw_binary_search_steps``, ``cw_lr``, ``cw_initial_const``, ``cw_kappa``, ``cw_abort_early``.
    """
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    if not isinstance(names, (list, tuple)) or not names:
        raise ComponentError(
            f"{who}: attacks must be a non-empty list of names such as {list(DEFAULT_ATTACKS)}, got {names!r}")
    specs, seen = [], set()
    for name in names:
        match = ATTACK_NAME.match(str(name))
        if match is None:
            raise ComponentError(
                f"{who}: unknown attack {name!r}; use fgsmE or pgdE (epsilon E/255 in pixel units, e.g. pgd8) or cw"
            )
        if name in seen:
            raise ComponentError(f"{who}: attack {name!r} is listed twice")
        seen.add(name)
        if match["cw"]:
            settings = {k: params[f"cw_{k}"] for k in ("steps", "binary_search_steps", "lr", "initial_const", "kappa",
                                                       "abort_early")}
            specs.append(AttackSpec(str(name), "cw", tuple(settings.items())))
            continue
        eps = float(match["eps"]) / 255
        if match["kind"] == "fgsm":
            specs.append(AttackSpec(str(name), "fgsm", (("eps", eps),)))
        else:
            settings = {"eps": eps, "step_size": eps * float(params["pgd_step_ratio"]), "steps": params["pgd_steps"],
                        "random_start": bool(params["pgd_random_start"])}
            specs.append(AttackSpec(str(name), "pgd", tuple(settings.items())))
    return specs


def image_generators(spec: AttackSpec, model: torch.nn.Module, ids: Sequence[str],
                     device: torch.device) -> list[torch.Generator]:
    """One generator per image, seeded from (model, attack, image id): an image's attack is the same in every
    method's cell and whatever batch it falls in."""
    tag = getattr(model, "spec", type(model).__name__)
    gens = []
    for sid in ids:
        g = torch.Generator(device=device)
        g.manual_seed(stable_hash([tag, spec.identity(), str(sid)]))
        gens.append(g)
    return gens


def run_attack(spec: AttackSpec, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
               ids: Sequence[str]) -> Adversarial:
    """Run ``spec`` on a batch (each image seeded by its id where the attack draws random numbers)."""
    p = spec.params
    if spec.kind == "fgsm":
        return fgsm(model, images, labels, p["eps"])
    if spec.kind == "pgd":
        return pgd_linf(model, images, labels, p["eps"], step_size=p["step_size"], steps=p["steps"],
                        random_start=p["random_start"], generator=image_generators(spec, model, ids, images.device))
    return carlini_wagner_l2(model, images, labels, initial_const=p["initial_const"],
                             binary_search_steps=p["binary_search_steps"], steps=p["steps"], lr=p["lr"],
                             kappa=p["kappa"], abort_early=p["abort_early"])


class _AttackCache:
    """The adversarial images (and their logits) of recent batches, per model (weakly held).

    The runner feeds every method the same batch before moving on, so a few entries per model suffice.
    """

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._by_model: "weakref.WeakKeyDictionary[torch.nn.Module, collections.OrderedDict]" = (
            weakref.WeakKeyDictionary())

    def get(self, model, key):
        entries = self._by_model.get(model)
        if entries is None or key not in entries:
            return None
        entries.move_to_end(key)
        return entries[key]

    def put(self, model, key, value) -> None:
        entries = self._by_model.setdefault(model, collections.OrderedDict())
        entries[key] = value
        while len(entries) > self.size:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._by_model.clear()


ATTACK_CACHE = _AttackCache()


def attack_batch(spec: AttackSpec, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(adversarial images, their logits)``, from :data:`ATTACK_CACHE` when this batch was attacked already."""
    fingerprint = (spec.identity().__repr__(), tuple(str(i) for i in ids), tuple(images.shape),
                   float(images.double().sum()), tuple(labels.tolist()))
    hit = ATTACK_CACHE.get(model, fingerprint)
    if hit is not None:
        return hit
    adversarial = run_attack(spec, model, images, labels, ids).images.detach()
    with torch.no_grad():
        logits = model(adversarial).float()
    ATTACK_CACHE.put(model, fingerprint, (adversarial, logits))
    return adversarial, logits


# --------------------------------------------------------------------------------------------- features


def map_grid_features(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """``B x grid^2``: the map's mass per cell (shifted to a minimum of 0, normalised to sum 1; uniform if flat)."""
    shifted = (maps - maps.amin(dim=(1, 2), keepdim=True)).double()
    pooled = F.adaptive_avg_pool2d(shifted[:, None], grid).flatten(1)
    total = pooled.sum(dim=1, keepdim=True)
    uniform = torch.full_like(pooled, 1.0 / pooled.shape[1])
    return torch.where(total > 0, pooled / total.clamp_min(1e-300), uniform)


DISPERSION_FEATURES = ("log_iqr", "log_std", "iqr_over_range", "entropy", "top10_share")


def map_dispersion_features(maps: torch.Tensor) -> torch.Tensor:
    """``B x 5`` dispersion statistics of each map's values (float64), see :data:`DISPERSION_FEATURES`.

    ML-LOO (Yang et al., AAAI 2020) detects adversarial images by the inter-quartile range of their attribution;
    we add the standard deviation, the IQR relative to the range (scale-free), the entropy of the shifted map as
    a distribution (normalised by log of the number of pixels) and the share of its mass on the top 10% pixels.
    """
    values = maps.flatten(1).double()
    n = values.shape[1]
    q25, q75 = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=values.dtype, device=values.device), dim=1)
    iqr = q75 - q25  # ML-LOO: IQR(phi(x)) = Q3 - Q1 (numpy's linear interpolation)
    std = values.std(dim=1, unbiased=False)
    span = values.amax(dim=1) - values.amin(dim=1)
    tiny = torch.finfo(torch.float64).tiny
    shifted = values - values.amin(dim=1, keepdim=True)
    total = shifted.sum(dim=1, keepdim=True)
    p = torch.where(total > 0, shifted / total.clamp_min(tiny), torch.full_like(shifted, 1.0 / n))
    entropy = -(p * torch.log(p.clamp_min(tiny))).sum(dim=1) / math.log(n) if n > 1 else torch.ones_like(iqr)
    top = p.topk(max(1, math.ceil(0.1 * n)), dim=1).values.sum(dim=1)
    return torch.stack([iqr.clamp_min(tiny).log(), std.clamp_min(tiny).log(),
                        torch.where(span > 0, iqr / span.clamp_min(tiny), torch.zeros_like(iqr)), entropy, top], dim=1)


def map_features(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """The detector's features of ``B x H x W`` maps: grid masses and dispersion statistics (float64, CPU)."""
    return torch.cat([map_grid_features(maps, grid), map_dispersion_features(maps)], dim=1).cpu()


LOGIT_FEATURES = ("max_softmax", "entropy", "margin", "max_logit", "logsumexp", "logit_std")


def logit_features(logits: torch.Tensor) -> torch.Tensor:
    """``B x 6`` method-free features of the model's logits (float64, CPU), see :data:`LOGIT_FEATURES`.

    The maximum softmax probability (Hendrycks & Gimpel, ICLR 2017), the softmax entropy, the top-2 logit margin,
    the maximum logit, the log-sum-exp (the free energy of Liu et al., NeurIPS 2020) and the logits' spread.
    """
    z = logits.double()
    logp = z.log_softmax(dim=1)
    top2 = z.topk(min(2, z.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, 1] if z.shape[1] > 1 else torch.zeros_like(top2[:, 0])
    return torch.stack([logp.amax(dim=1).exp(), -(logp.exp() * logp).sum(dim=1), margin, top2[:, 0],
                        z.logsumexp(dim=1), z.std(dim=1, unbiased=False)], dim=1).cpu()


# --------------------------------------------------------------------------------------------- detector


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


def scalar_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """``1 / (1 + exp(-z))`` element by element with Python's ``math`` (the C library's scalar exp): torch's
    vectorised exp differs from its scalar one by an ulp, so a CPU with other vector units would round otherwise."""
    values = [1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v)) for v in z.tolist()]
    return torch.tensor(values, dtype=torch.float64)


def scalar_softplus(z: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(z))`` element by element with Python's ``math`` (see :func:`scalar_sigmoid`)."""
    values = [v + math.log1p(math.exp(-v)) if v > 0 else math.log1p(math.exp(v)) for v in z.tolist()]
    return torch.tensor(values, dtype=torch.float64)


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
    from interpbench.ops.stats import fixed_matvec, fixed_solve, fixed_sum

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
    from interpbench.ops.stats import fixed_sum

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


def cross_attack_table(values: Mapping[str, float]) -> "Any":
    """The cross-attack AUROC table (rows: the attack trained on, columns: the attack tested on) from a
    metric's flat results (``cross.TRAIN.TEST.auroc``; the diagonal from ``ATTACK.auroc``), as a DataFrame."""
    import pandas as pd

    attacks = sorted({k.split(".")[0] for k in values if k.endswith(".auroc") and k.count(".") == 1},
                     key=lambda a: (DEFAULT_ATTACKS.index(a) if a in DEFAULT_ATTACKS else len(DEFAULT_ATTACKS), a))
    table = pd.DataFrame(index=pd.Index(attacks, name="train \\ test"), columns=attacks, dtype=float)
    for a in attacks:
        for b in attacks:
            key = f"{a}.auroc" if a == b else f"cross.{a}.{b}.auroc"
            table.loc[a, b] = values.get(key, math.nan)
    return table


def write_cross_attack_table(values: Mapping[str, float], out_dir: str | Path,
                             stem: str = "cross-attack") -> list[Path]:
    """``STEM.csv`` and ``STEM.md`` of :func:`cross_attack_table` under ``out_dir``."""
    table = cross_attack_table(values)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    table.to_csv(csv_path, float_format="%.4f")
    cols = list(table.columns)
    lines = ["| train \\ test | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for a, row in table.iterrows():
        lines.append(f"| {a} | " + " | ".join("–" if math.isnan(v) else f"{v:.3f}" for v in row) + " |")
    md_path.write_text("Cross-attack AUROC: detector trained on the row's attack, tested on the column's (held-out "
                       "images only).\n\n" + "\n".join(lines) + "\n")
    return [csv_path, md_path]


def detection_table(results: "Any", value: str = "auroc") -> "Any":
    """The detection table of a run: one row per (model, dataset, method) and one baseline row per (model,
    dataset), one column per attack, cells ``"mean [ci_low, ci_high]"`` of ``value`` (``auroc`` or ``tpr5``).

    ``results`` is the long table of :func:`interpbench.publish.leaderboard.results_table` (or ``results.json``'s
    records as a DataFrame). The baseline row is taken from the first method's cell: it is the same in every cell.
    """
    import pandas as pd

    part = results[(results["metric"] == AdversarialDetection.name) & (results["status"] == "done")]
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    pattern = re.compile(rf"^(?P<base>baseline\.)?(?P<attack>[a-z]+[0-9.]*)\.{re.escape(value)}$")

    def cell(r) -> str:
        if pd.isna(r["ci_low"]):
            return f"{r['mean']:.3f}"
        return f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"

    for _, r in part.iterrows():
        match = pattern.match(str(r["value_name"]))
        if match is None:
            continue
        method = "baseline (softmax/logits)" if match["base"] else r["method"]
        key = (r["model"], r["dataset"], method)
        if match["base"] and match["attack"] in rows.get(key, {}):
            continue
        rows.setdefault(key, {})[match["attack"]] = cell(r)
    attacks = sorted({a for v in rows.values() for a in v},
                     key=lambda a: (DEFAULT_ATTACKS.index(a) if a in DEFAULT_ATTACKS else len(DEFAULT_ATTACKS), a))
    order = sorted(rows, key=lambda k: (k[0], k[1], k[2].startswith("baseline"), k[2]))
    return pd.DataFrame([{"model": k[0], "dataset": k[1], "method": k[2], **{a: rows[k].get(a, "–") for a in attacks}}
                         for k in order])


# --------------------------------------------------------------------------------------------- metric: detection


def _positive_ints(who: str, p: Mapping[str, Any], names: Sequence[str]) -> None:
    """Each of ``p[name]`` an int >= 1, else ComponentError naming the metric and the parameter."""
    for name in names:
        v = p[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ComponentError(f"{who}: {name} must be a positive int, got {v!r}")


def _check_params(who: str, p: Mapping[str, Any]) -> None:
    def positive_number(name: str, allow_zero: bool = False) -> None:
        v = p[name]
        bad_type = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        if bad_type or v < 0 or (v == 0 and not allow_zero):
            raise ComponentError(f"{who}: {name} must be a number {'>=' if allow_zero else '>'} 0, got {v!r}")

    _positive_ints(who, p, ("pgd_steps", "cw_steps", "cw_binary_search_steps"))
    for name in ("pgd_step_ratio", "cw_lr", "cw_initial_const"):
        positive_number(name)
    positive_number("cw_kappa", allow_zero=True)


class AdversarialDetection(Metric):
    """Detect adversarial images from a method's maps: AUROC / TPR at 5% FPR per attack, against a logit baseline.

    Parameters: ``attacks`` (names ``fgsmE``, ``pgdE`` with epsilon ``E/255``, ``cw``; default FGSM and PGD at 2,
    4, 8 and CW L2, docs/protocols.md), ``pgd_steps`` (10), ``pgd_step_ratio`` (step = 0.25 eps), ``pgd_random_start``
    (True); CW L2 as in the detection benchmark of Ma et al. (LID, ICLR 2018; Carlini's ``l2_attack.py`` with
    1,000 iterations): ``cw_binary_search_steps`` 9, ``cw_steps`` 1000, ``cw_lr`` 0.01, ``cw_initial_const`` 1e-3,
    ``cw_kappa`` 0, ``cw_abort_early`` True; ``grid`` (4: the map's mass on a 4 x 4 grid), ``folds`` (5), ``C``
    (1.0, inverse L2 strength of the logistic regression), ``fpr`` (0.05), ``bootstrap`` (1000 replicates over
    images; each reruns the whole cross-validation on its resample, so the interval covers the detector's training
    as well as its test sample), ``cross_attack`` (True).

    Results (flat names, per attack ``A``): ``A.auroc``, ``A.tpr5`` (with ``_ci_low`` / ``_ci_high``), ``A.n``
    (clean/adversarial pairs), ``A.success`` (attack success rate on the correctly classified images),
    ``baseline.A.auroc`` / ``baseline.A.tpr5`` (softmax/logit features, same pairs and folds),
    ``A.auroc_gain`` (method minus baseline, paired bootstrap CI), ``cross.TRAIN.TEST.auroc``; and ``n`` (correctly
    classified images), ``accuracy`` (on the labelled images seen; samples without a ``label`` are left out),
    ``adaptive_attacks`` (0: none of the attacks knows the detector). Attacks with fewer than ``2 * folds``
    successful pairs report only ``A.n`` and ``A.success``.

    Artefacts: in a run (the runner hands a dataset-level metric its ``run_context``, whose ``out_dir`` is
    ``<out>/artifacts/<model>__<dataset>__adversarial_detection``), or where ``out_dir`` is set on the instance
    (an attribute, not a parameter), ``compute()`` writes ``METHOD-cross.csv`` / ``.md`` (the cross-attack table),
    ``METHOD-roc.csv`` (columns ``attack,fpr,tpr``: the ROC points of each attack's detector, from the pooled
    out-of-fold scores), ``METHOD-baseline-roc.csv`` (the same for the method-free features on the method's
    pairs) and ``baseline-roc.csv`` (the baseline of the cell with the most pairs).
    """

    name: ClassVar[str] = "adversarial_detection"
    headline_values: ClassVar[tuple[str, ...]] = ("*.auroc",)

    @classmethod
    def leaderboard_markdown(cls, rows: Any) -> str | None:
        """The section of ``methods.md``: one row per (model, dataset, method, attack) with the detector's AUROC and
        TPR at 5% FPR, the method-free baseline's, the gain and n (the cross-attack table stays in the CSV)."""
        import pandas as pd

        from interpbench.core.tabular import format_value, to_markdown

        done = rows[rows["status"] == "done"]
        values = {(r.model, r.dataset, r.method, str(r.value_name)): r for r in done.itertuples(index=False)}
        out = []
        for (model, dataset, method, name), r in values.items():
            if not name.endswith(".auroc") or name.startswith(("baseline.", "cross.")):
                continue
            attack = name[: -len(".auroc")]

            def cell(key: str) -> str:
                row = values.get((model, dataset, method, key))
                return "" if row is None else format_value(pd.Series(row._asdict()))

            out.append({"model": model, "dataset": dataset, "method": method, "attack": attack,
                        "AUROC ↑": cell(f"{attack}.auroc"), "TPR@5%FPR ↑": cell(f"{attack}.tpr5"),
                        "baseline AUROC": cell(f"baseline.{attack}.auroc"),
                        "AUROC gain ↑": cell(f"{attack}.auroc_gain"), "pairs": cell(f"{attack}.n"),
                        "attack success": cell(f"{attack}.success")})
        if not out:
            return None
        table = pd.DataFrame(out).sort_values(["model", "dataset", "attack"], kind="stable")
        return ("Detector on the method's map features against the same detector on softmax/logit features "
                "(baseline), cross-validated over images; gain: method minus baseline (paired bootstrap).\n\n"
                + to_markdown(table))
    version: ClassVar[str] = "1"
    scope: ClassVar[str] = "explanation"
    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"label"})
    expected_failures: ClassVar[dict[str, str]] = {
        "prefers_oracle_map": "it scores whether maps change under attack, not whether they point at the evidence; "
                              "it has no single headline number",
    }
    defaults: ClassVar[dict[str, Any]] = {
        "attacks": list(DEFAULT_ATTACKS),
        **ATTACK_DEFAULTS,
        "grid": 4,
        "folds": 5,
        "C": 1.0,
        "fpr": 0.05,
        "bootstrap": 1000,
        "cross_attack": True,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        _check_params(self.name, p)
        self.specs = parse_attacks(p["attacks"], p, self.name)
        _positive_ints(self.name, p, ("grid", "bootstrap"))
        if isinstance(p["folds"], bool) or not isinstance(p["folds"], int) or p["folds"] < 2:
            raise ComponentError(f"{self.name}: folds must be an int >= 2 (cross-validation), got {p['folds']!r}")
        if isinstance(p["C"], bool) or not isinstance(p["C"], (int, float)) or not p["C"] > 0:
            raise ComponentError(f"{self.name}: C (inverse regularisation strength) must be > 0, got {p['C']!r}")
        if isinstance(p["fpr"], bool) or not isinstance(p["fpr"], (int, float)) or not 0 < p["fpr"] < 1:
            raise ComponentError(f"{self.name}: fpr must lie strictly between 0 and 1 (default 0.05), got {p['fpr']!r}")
        self.out_dir: Path | None = None
        self.run_context: RunContext | None = None  # set by the runner (its out_dir receives the artefacts)
        self.reset()

    # distributed runs: the ranks' images (distinct ids) in rank order, counts summed
    dist_state: ClassVar[dict[str, Any]] = {"_seen": "sum", "_clean": "cat", "_adv": "cat", "_attempted": "sum"}

    def reset(self) -> None:
        self._seen = 0
        self._clean: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (map features, logit features)
        self._adv: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {s.name: {} for s in self.specs}
        self._attempted = {s.name: 0 for s in self.specs}
        self._method_name: str | None = None  # the method whose maps are scored (Batch.method), for file names

    # ------------------------------------------------------------------ update

    def update(self, model: Model, batch: Batch, maps: torch.Tensor) -> None:
        method = batch.method
        if method is None:
            raise ComponentError(f"{self.name}: batch.method is None; this metric re-runs the method on the "
                                 "adversarial images, so the runner (or caller) must set Batch.method to the method "
                                 "that made the maps")
        self._method_name = getattr(method, "name", None) or type(method).__name__
        images = batch.images
        b, _, h, w = images.shape
        if batch.labels is not None:
            labels = batch.labels.to(images.device).long()
        else:  # some samples lack a label (the runner then sets no Batch.labels): only the labelled ones count
            labels = torch.tensor([int(s["label"]) if s.get("label") is not None else -1 for s in batch.samples],
                                  dtype=torch.long, device=images.device)
        if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != (b, h, w):
            got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ComponentError(f"{self.name}: maps must be B x H x W = {(b, h, w)}, got {got}")
        with torch.no_grad():
            logits = model(images).float()
        predicted = logits.argmax(dim=1)
        correct = (predicted == labels) & (batch.targets.to(images.device).long() == predicted)
        self._seen += int((labels >= 0).sum())
        keep = torch.nonzero(correct).squeeze(1)
        if keep.numel() == 0:
            return
        ids = [str(batch.ids[i]) for i in keep.tolist()]
        clean_images, clean_labels = images[keep], labels[keep]
        clean_maps = map_features(maps[keep].detach().float(), self.params["grid"])
        clean_logits = logit_features(logits[keep])
        for i, sid in enumerate(ids):
            self._clean[sid] = (clean_maps[i], clean_logits[i])
        # attack every kept image with every attack, then explain all successful adversarial images at once
        pending = []
        for spec in self.specs:
            adversarial, adv_logits = attack_batch(spec, model, clean_images, clean_labels, ids)
            adv_predicted = adv_logits.argmax(dim=1)
            success = torch.nonzero(adv_predicted != clean_labels).squeeze(1)
            self._attempted[spec.name] += len(ids)
            if success.numel():
                pending.append((spec, success, adversarial[success], adv_predicted[success], adv_logits[success]))
        if not pending:
            return
        all_images = torch.cat([p[2] for p in pending])
        all_targets = torch.cat([p[3] for p in pending])
        adv_maps = torch.cat([self._explain(method, model, all_images[i:i + b], all_targets[i:i + b])
                              for i in range(0, len(all_images), b)])
        adv_features = map_features(adv_maps, self.params["grid"])
        start = 0
        for spec, success, _, _, adv_logits in pending:
            stop = start + len(success)
            base = logit_features(adv_logits)
            for j, i in enumerate(success.tolist()):
                self._adv[spec.name][ids[i]] = (adv_features[start + j], base[j])
            start = stop

    def _explain(self, method, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        maps = method.explain(model, images, targets)
        if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != (images.shape[0], *images.shape[-2:]):
            got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ComponentError(f"{self.name}: method {method.name!r} returned maps of shape {got} on the adversarial "
                                 f"images, expected {(images.shape[0], *images.shape[-2:])}")
        maps = maps.detach().float()
        if not bool(torch.isfinite(maps).all()):
            raise ComponentError(f"{self.name}: method {method.name!r} returned non-finite maps on adversarial images")
        return maps

    # ------------------------------------------------------------------ compute

    def compute(self) -> dict[str, float]:
        p = self.params
        n_folds, C, fpr = p["folds"], float(p["C"]), float(p["fpr"])
        tag = f"tpr{round(100 * fpr):g}"
        n_clean = len(self._clean)
        out: dict[str, float] = {"n": float(n_clean), "adaptive_attacks": 0.0}
        if self._seen:
            out["accuracy"] = n_clean / self._seen
        fold_of = image_folds(list(self._clean), n_folds)
        fitted: dict[str, tuple[list, list[str]]] = {}
        roc: dict[str, tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {}
        for spec in self.specs:
            pairs = sorted(self._adv[spec.name], key=lambda s: (fold_of[s], s))
            attempted = self._attempted[spec.name]
            out[f"{spec.name}.n"] = float(len(pairs))
            if attempted:
                out[f"{spec.name}.success"] = len(pairs) / attempted
            if len(pairs) < 2 * n_folds:
                continue
            clean_m = torch.stack([self._clean[s][0] for s in pairs])
            clean_b = torch.stack([self._clean[s][1] for s in pairs])
            adv_m = torch.stack([self._adv[spec.name][s][0] for s in pairs])
            adv_b = torch.stack([self._adv[spec.name][s][1] for s in pairs])
            models, sc, sa = detection_scores(clean_m, adv_m, pairs, fold_of, n_folds, C)
            _, bc, ba = detection_scores(clean_b, adv_b, pairs, fold_of, n_folds, C)
            folds = torch.tensor([fold_of[s] for s in pairs])
            seed = stable_hash([self.name, spec.name, pairs])
            weights = torch.from_numpy(bootstrap_weights(len(pairs), p["bootstrap"], seed))
            boot_auc, boot_tpr = bootstrap_detection(clean_m, adv_m, folds, n_folds, C, weights, fpr)
            base_auc, base_tpr = cached_bootstrap_detection(clean_b, adv_b, folds, n_folds, C, weights, fpr)
            roc[spec.name] = (roc_curve(sc, sa), roc_curve(bc, ba))
            for prefix, (c_scores, a_scores), (b_auc, b_tpr) in (
                    (spec.name, (sc, sa), (boot_auc, boot_tpr)),
                    (f"baseline.{spec.name}", (bc, ba), (base_auc, base_tpr))):
                out[f"{prefix}.auroc"] = auroc(c_scores, a_scores)
                out[f"{prefix}.auroc_ci_low"], out[f"{prefix}.auroc_ci_high"] = percentile_interval(b_auc.numpy())
                out[f"{prefix}.{tag}"] = tpr_at_fpr(c_scores, a_scores, fpr)
                out[f"{prefix}.{tag}_ci_low"], out[f"{prefix}.{tag}_ci_high"] = percentile_interval(b_tpr.numpy())
            out[f"{spec.name}.auroc_gain"] = out[f"{spec.name}.auroc"] - out[f"baseline.{spec.name}.auroc"]
            out[f"{spec.name}.auroc_gain_ci_low"], out[f"{spec.name}.auroc_gain_ci_high"] = percentile_interval(
                (boot_auc - base_auc).numpy())
            fitted[spec.name] = (models, pairs)
        if p["cross_attack"]:
            for train, (models, _) in fitted.items():
                for test, (_, pairs) in fitted.items():
                    if train == test:
                        continue
                    clean_m = torch.stack([self._clean[s][0] for s in pairs])
                    adv_m = torch.stack([self._adv[test][s][0] for s in pairs])
                    folds = torch.tensor([fold_of[s] for s in pairs] * 2)
                    scores = out_of_fold_scores(models, torch.cat([clean_m, adv_m]), folds).numpy()
                    ok = np.isfinite(scores[: len(pairs)]) & np.isfinite(scores[len(pairs):])
                    if ok.sum() >= 2:
                        out[f"cross.{train}.{test}.auroc"] = auroc(scores[: len(pairs)][ok], scores[len(pairs):][ok])
        out_dir = self.out_dir
        if out_dir is None and getattr(self, "run_context", None) is not None:
            out_dir = self.run_context.out_dir
        if out_dir is not None:
            self._write_artifacts(Path(out_dir), out, roc)
        return out

    def _write_artifacts(self, out_dir: Path, values: Mapping[str, float], roc: Mapping[str, Any]) -> None:
        """``METHOD-cross.csv`` / ``.md`` (the cross-attack table), ``METHOD-roc.csv`` and
        ``METHOD-baseline-roc.csv`` (columns ``attack,fpr,tpr``: the ROC points of each attack's detector on the
        method's maps and on the method-free features, the same pairs), and ``baseline-roc.csv``: the baseline of
        the method's cell with the most pairs (methods run on fewer images under a per-method limit have their own
        baseline, and ``baseline-roc.pairs.json`` records which count the shared file holds)."""
        import csv
        import json

        method = slug(self._method_name or "detector")
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.params["cross_attack"]:
            write_cross_attack_table(values, out_dir, stem=f"{method}-cross")

        def write(path: Path, which: int) -> None:
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["attack", "fpr", "tpr"])
                for attack, curves in roc.items():
                    fpr, tpr = curves[which]
                    writer.writerows((attack, repr(float(a)), repr(float(b))) for a, b in zip(fpr, tpr))

        write(out_dir / f"{method}-roc.csv", 0)
        write(out_dir / f"{method}-baseline-roc.csv", 1)
        pairs = {attack: int(values[f"{attack}.n"]) for attack in roc}
        record = out_dir / "baseline-roc.pairs.json"
        held = json.loads(record.read_text()) if record.is_file() else {}
        if sum(pairs.values()) > sum(held.get("pairs", {}).values()) or not (out_dir / "baseline-roc.csv").is_file():
            write(out_dir / "baseline-roc.csv", 1)
            record.write_text(json.dumps({"method": self._method_name, "pairs": pairs}, indent=1) + "\n")


# --------------------------------------------------------------------------------------------- metric: consistency


class _ProbeSubset(torch.utils.data.Dataset):
    """The probe images at ``indices`` (in that order), keeping the dataset's attributes (concept names...)."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]

    def __getattr__(self, name: str) -> Any:
        if "dataset" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["dataset"], name)


def adversarial_probe(model: torch.nn.Module, dataset: Any, spec: AttackSpec, *, batch_size: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every probe image attacked (labels: the model's clean top-1 class), on the CPU: ``(images N x C x H x W,
    success bool [N])``. Each image is seeded by (model, attack, probe index)."""
    from interpbench.metrics.dissection import iter_probe

    parts, successes = [], []
    for indices, images, _ in iter_probe(dataset, batch_size):
        images = images.to(device)
        with torch.no_grad():
            labels = model(images).argmax(dim=1)
        adversarial, success = attack_probe_batch(spec, model, images, labels, [f"probe:{int(i)}" for i in indices])
        parts.append(adversarial.cpu())
        successes.append(success.cpu())
    return torch.cat(parts), torch.cat(successes)


def attack_probe_batch(spec: AttackSpec, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(adversarial images, success)`` of a probe batch. FGSM and PGD go through :data:`ATTACK_CACHE` (their
    success is the changed top-1 class), so the two model-scope metrics of a run, which attack the same probe
    images with the same seeds, attack them once; CW (whose success may require a margin ``kappa``) runs as is."""
    if spec.kind == "cw":
        result = run_attack(spec, model, images, labels, ids)
        return result.images.detach(), result.success
    adversarial, logits = attack_batch(spec, model, images, labels, ids)
    return adversarial, logits.argmax(dim=1) != labels


def batched_iou(intersection: torch.Tensor, activation: torch.Tensor, ground_truth: torch.Tensor,
                category_of: torch.Tensor) -> torch.Tensor:
    """IoU (``... x U x C``) from (possibly bootstrap-weighted) tallies ``... x U x C``, ``... x U x K``, ``... x C``:
    :func:`interpbench.ops.dissect.iou_from_tally` with leading replicate dimensions (NetDissect's union)."""
    union = activation[..., category_of] + ground_truth.unsqueeze(-2) - intersection
    return torch.where(union > 0, intersection / union.clamp_min(1e-300), torch.zeros_like(union))


def consistency_measures(clean_iou: torch.Tensor, adv_iou: torch.Tensor,
                         iou_threshold: float) -> dict[str, torch.Tensor]:
    """Per replicate (leading dims), for the clean probe's detectors (arg-max IoU > ``iou_threshold``):

    - ``label_kept``: share that are detectors of the same concept on the adversarial probe (ties of the arg-max
      to the lowest concept index, as dissection's labels);
    - ``iou_change``: mean change of the IoU with the clean label (adversarial minus clean);
    - ``detectors``: number of clean detectors; ``adv_detectors``: number of detectors on the adversarial probe.
    """
    clean_score, clean_label = clean_iou.max(dim=-1)
    adv_score, adv_label = adv_iou.max(dim=-1)
    detector = clean_score > iou_threshold
    kept = detector & (adv_label == clean_label) & (adv_score > iou_threshold)
    change = adv_iou.gather(-1, clean_label.unsqueeze(-1)).squeeze(-1) - clean_score
    count = detector.sum(dim=-1).double()
    nan = torch.full_like(count, math.nan)
    return {
        "label_kept": torch.where(count > 0, kept.sum(dim=-1) / count.clamp_min(1), nan),
        "iou_change": torch.where(count > 0, (change * detector).sum(dim=-1) / count.clamp_min(1), nan),
        "detectors": count,
        "adv_detectors": (adv_score > iou_threshold).sum(dim=-1).double(),
    }


def relative_activation_change(abs_change: torch.Tensor, abs_clean: torch.Tensor) -> torch.Tensor:
    """Mean over units of ``sum |a_adv - a_clean| / sum |a_clean|`` (sums over images and positions; ``... x U``
    in, ``...`` out; units that never activate on the clean probe are left out)."""
    active = abs_clean > 0
    ratio = torch.where(active, abs_change / abs_clean.clamp_min(1e-300), torch.zeros_like(abs_change))
    return ratio.sum(dim=-1) / active.sum(dim=-1).clamp_min(1)


@dataclasses.dataclass
class _BlockTallies:
    """Per-block counts of one layer under one condition (blocks of probe images, for the bootstrap)."""

    intersection: torch.Tensor  # G x U x C
    activation: torch.Tensor  # G x U x K
    ground_truth: torch.Tensor  # G x C

    def weighted(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = weights.double()
        return (torch.einsum("rg,guc->ruc", w, self.intersection), torch.einsum("rg,guk->ruk", w, self.activation),
                w @ self.ground_truth)


def block_tallies(model: torch.nn.Module, dataset: Any, layers: Sequence[str], conditions: Mapping[str, Any],
                  thresholds: Mapping[str, Mapping[str, torch.Tensor]], label_size: tuple[int, int], blocks: int,
                  batch_size: int, device: torch.device):
    """Dissection tallies per block of probe images for each condition (``None``: the clean probe, or a tensor of
    adversarial images), with that condition's thresholds, and the per-block sums of ``|a_cond - a_clean|`` and
    ``|a_clean|`` per unit. Block of image ``i``: ``i * blocks // N``."""
    from interpbench.metrics.dissection import (
        iter_probe,
        layer_activations,
        probe_concepts,
    )
    from interpbench.ops.dissect import Tally, accumulate_tally, encode_concepts

    concepts = probe_concepts(dataset)
    n = len(dataset)
    tallies: dict[tuple[str, str], list[Tally]] = {}
    changes: dict[tuple[str, str], torch.Tensor] = {}
    clean_abs: dict[str, torch.Tensor] = {}
    for indices, images, concept_maps in iter_probe(dataset, batch_size):
        labels = encode_concepts(concept_maps, concepts, label_size, device)
        block = (indices * blocks) // n
        clean_acts = layer_activations(model, images.to(device), layers)
        for cond, adversarial in conditions.items():
            if adversarial is None:
                acts = clean_acts
            else:
                acts = layer_activations(model, adversarial[indices].to(device), layers)
            for layer in layers:
                act = acts[layer]
                key = (cond, layer)
                if key not in tallies:
                    tallies[key] = [Tally.zeros(act.shape[1], concepts, device) for _ in range(blocks)]
                    changes[key] = torch.zeros(blocks, act.shape[1], dtype=torch.float64, device=device)
                if layer not in clean_abs:
                    clean_abs[layer] = torch.zeros(blocks, act.shape[1], dtype=torch.float64, device=device)
                for g in block.unique().tolist():
                    rows = torch.nonzero(block == g).squeeze(1)
                    accumulate_tally(tallies[key][g], act[rows.to(device)], thresholds[cond][layer].to(device),
                                     labels.select(rows.to(device)))
                    diff = (act[rows.to(device)] - clean_acts[layer][rows.to(device)]).abs().double().sum(dim=(0, 2, 3))
                    changes[key][g] += diff
        for layer in layers:
            act = clean_acts[layer].abs().double().sum(dim=(2, 3))
            clean_abs[layer].index_add_(0, block.to(device), act)
    out = {key: _BlockTallies(torch.stack([t.intersection for t in ts]).double().cpu(),
                              torch.stack([t.activation for t in ts]).double().cpu(),
                              torch.stack([t.ground_truth for t in ts]).double().cpu())
           for key, ts in tallies.items()}
    return out, {k: v.cpu() for k, v in changes.items()}, {k: v.cpu() for k, v in clean_abs.items()}


class AdversarialConsistency(Metric):
    """Concept consistency of units under attack (Bau et al., PNAS 2020; Dong et al. 2017; docs/protocols.md).

    Dissect ``layers`` (default: the model's ``cam_layer``) on the probe and on its adversarial version (every
    probe image attacked against the model's clean top-1 class; the concept masks reused). Per layer ``L`` and
    attack ``A``: ``L.A.label_kept`` (share of the clean probe's detectors that are detectors of the same concept
    on the adversarial probe), ``L.A.iou_change`` (mean change of their IoU with the clean label),
    ``L.A.activation_change`` (mean over units of ``sum |a_adv - a_clean| / sum |a_clean|``), each with a 95%
    bootstrap CI over blocks of probe images (``ci_blocks`` blocks, ``bootstrap`` replicates, the clean and the
    adversarial tallies resampled together, thresholds fixed); ``L.A.success`` (share of probe images whose top-1
    class the attack changed), ``L.A.detectors`` (detectors on the adversarial probe), ``L.detectors`` (clean) and
    ``n`` (probe images).

    ``probe``: ``"successful"`` (default; docs/protocols.md's "keep successful attacks only"): per attack, the probe is
    the images whose top-1 class the attack changed, dissected clean and adversarial (``L.A.n`` images,
    ``L.A.clean_detectors`` detectors on their clean versions; ``L.A.label_kept`` counts those); ``"all"``: every
    probe image, the failed attacks (unchanged decisions) included, against the whole probe's clean dissection.

    ``thresholds``: ``"recompute"`` (default: the adversarial probe is dissected as a probe of its own, its
    ``T_k`` from its own activations) or ``"clean"`` (the clean probe's ``T_k``, so a unit's mask grows or shrinks
    with its activation). Attack names and settings as ``adversarial_detection`` (default: PGD at 2, 4, 8 / 255).
    Writes ``LAYER-ATTACK-units.csv`` (per unit: clean and adversarial label and IoU, kept, activation change)
    under the run's artefact directory.
    """

    name: ClassVar[str] = "adversarial_consistency"
    headline_values: ClassVar[tuple[str, ...]] = ("**.label_kept",)
    version: ClassVar[str] = "2"
    scope: ClassVar[str] = "model"
    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"concepts"})
    defaults: ClassVar[dict[str, Any]] = {
        "attacks": ["pgd2", "pgd4", "pgd8"],
        "layers": None,
        "thresholds": "recompute",
        "quantile": 0.005,
        "iou_threshold": 0.04,
        "label_size": None,
        "batch_size": None,
        "ci_blocks": 50,
        "bootstrap": 2000,
        "probe": "successful",
        **ATTACK_DEFAULTS,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        _check_params(self.name, p)
        self.specs = parse_attacks(p["attacks"], p, self.name)
        if p["probe"] not in ("successful", "all"):
            raise ComponentError(f"{self.name}: probe must be 'successful' (only the images the attack fooled, "
                                 f"clean and adversarial) or 'all', got {p['probe']!r}")
        if p["thresholds"] not in ("recompute", "clean"):
            raise ComponentError(f"{self.name}: thresholds must be 'recompute' or 'clean', got {p['thresholds']!r}")
        _positive_ints(self.name, p, ("ci_blocks", "bootstrap"))

    def evaluate(self, model: Model, dataset: Any, ctx: RunContext) -> dict[str, float]:
        from interpbench.metrics.dissection import dissect, resolve_layers

        p = self.params
        layers = resolve_layers(model, p["layers"])
        batch_size = p["batch_size"] or ctx.batch_size
        device = torch.device(ctx.device)
        options = dict(quantile=p["quantile"], iou_threshold=p["iou_threshold"], label_size=p["label_size"],
                       batch_size=batch_size, device=device, top_images=1)
        clean = dissect(model, dataset, layers, **options)
        n = clean.n_images
        weights_seed = stable_hash([self.name, model.spec, n])
        out: dict[str, float] = {"n": float(n)}
        for layer in layers:
            out[f"{layer}.detectors"] = float(clean.detectors(layer).sum())
        for spec in self.specs:
            adversarial, ok = adversarial_probe(model, dataset, spec, batch_size=batch_size, device=device)
            success = float(ok.float().mean())
            for layer in layers:
                out[f"{layer}.{spec.name}.success"] = success
            if p["probe"] == "successful":  # the attack's successes only, clean and adversarial
                keep = torch.nonzero(ok).squeeze(1)
                for layer in layers:
                    out[f"{layer}.{spec.name}.n"] = float(len(keep))
                if len(keep) < 2:
                    continue
                probe = _ProbeSubset(dataset, keep.tolist())
                adversarial = adversarial[keep]
                clean_probe = dissect(model, probe, layers, **options)
                seed = stable_hash([self.name, model.spec, n, spec.name, len(keep)])
            else:
                probe, clean_probe, seed = dataset, clean, weights_seed
            fixed = {layer: clean_probe.layers[layer].thresholds for layer in layers} if p["thresholds"] == "clean" \
                else None

            def replace(images: torch.Tensor, idx: torch.Tensor, adv: torch.Tensor = adversarial) -> torch.Tensor:
                return adv[idx.cpu()].to(images.device)

            result = dissect(model, probe, layers, thresholds=fixed, image_transform=replace, **options)
            thresholds = {"clean": {layer: clean_probe.layers[layer].thresholds for layer in layers},
                          spec.name: {layer: result.layers[layer].thresholds for layer in layers}}
            blocks = min(p["ci_blocks"], clean_probe.n_images)
            tallies, changes, clean_abs = block_tallies(model, probe, layers, {"clean": None, spec.name: adversarial},
                                                        thresholds, clean_probe.label_size, blocks, batch_size, device)
            category_of = clean_probe.concepts.category_of()
            weights = torch.from_numpy(bootstrap_weights(blocks, p["bootstrap"], seed))
            ones = torch.ones(1, blocks, dtype=torch.float64)
            for layer in layers:
                prefix = f"{layer}.{spec.name}"
                boot: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
                for w in (ones, *weights.split(250)):
                    clean_iou = batched_iou(*tallies[("clean", layer)].weighted(w), category_of)
                    adv_iou = batched_iou(*tallies[(spec.name, layer)].weighted(w), category_of)
                    measures = consistency_measures(clean_iou, adv_iou, p["iou_threshold"])
                    measures["activation_change"] = relative_activation_change(
                        w.double() @ changes[(spec.name, layer)], w.double() @ clean_abs[layer])
                    for key, value in measures.items():
                        boot[key].append(value)
                for key in ("label_kept", "iou_change", "activation_change"):
                    values = torch.cat(boot[key])
                    out[f"{prefix}.{key}"] = float(values[0])
                    low, high = percentile_interval(values[1:].numpy())
                    out[f"{prefix}.{key}_ci_low"], out[f"{prefix}.{key}_ci_high"] = low, high
                out[f"{prefix}.detectors"] = float(result.detectors(layer).sum())
                if p["probe"] == "successful":
                    out[f"{prefix}.clean_detectors"] = float(clean_probe.detectors(layer).sum())
                if ctx.out_dir is not None:
                    self._write_units(Path(ctx.out_dir), layer, spec.name, clean_probe, result,
                                      changes[(spec.name, layer)].sum(0), clean_abs[layer].sum(0))
        out = {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}
        return out

    def _write_units(self, out_dir: Path, layer: str, attack: str, clean, adversarial, change, clean_abs) -> None:
        import csv

        out_dir.mkdir(parents=True, exist_ok=True)
        a, b = clean.layers[layer], adversarial.layers[layer]
        threshold = clean.iou_threshold
        rows = []
        for u in range(a.units):
            c_label, a_label = int(a.labels.label[u]), int(b.labels.label[u])
            rows.append({
                "unit": u + 1,
                "clean_category": clean.concepts.describe(c_label)[0],
                "clean_label": clean.concepts.describe(c_label)[1],
                "clean_iou": float(a.labels.score[u]), "clean_detector": bool(a.labels.score[u] > threshold),
                "adv_category": clean.concepts.describe(a_label)[0], "adv_label": clean.concepts.describe(a_label)[1],
                "adv_iou": float(b.labels.score[u]), "adv_detector": bool(b.labels.score[u] > threshold),
                "adv_iou_of_clean_label": float(b.iou[u, c_label]) if c_label >= 0 else 0.0,
                "kept": bool(a.labels.score[u] > threshold and b.labels.score[u] > threshold and c_label == a_label),
                "activation_change": float(change[u] / clean_abs[u]) if clean_abs[u] > 0 else math.nan,
            })
        path = out_dir / f"{slug(layer)}-{attack}-units.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


# --------------------------------------------------------------------------------------------- metric: Dong et al.


def class_similarity_matrix(dataset: Any, choice: Any, classes: int, who: str) -> tuple[torch.Tensor, str]:
    """The class similarity ``A`` and where it came from: ``"dataset"`` (the dataset's ``class_similarity()``; the
    identity when it has none), ``"identity"``, a path to a ``.npy`` / ``.pt`` / ``.csv`` file, or a nested list."""
    from interpbench.ops.consistency import check_similarity

    if isinstance(choice, str) and choice == "dataset":
        hook = getattr(dataset, "class_similarity", None)
        if callable(hook):
            return check_similarity(hook(), classes, who), "dataset"
        return torch.eye(classes, dtype=torch.float64), "identity (the dataset has no class_similarity())"
    if isinstance(choice, str) and choice == "identity":
        return torch.eye(classes, dtype=torch.float64), "identity"
    if isinstance(choice, (str, Path)):
        path = Path(choice)
        if not path.is_file():
            raise ComponentError(f"{who}: similarity {str(choice)!r} is not 'dataset', 'identity' or an existing "
                                 ".npy / .pt / .csv file of a C x C class-similarity matrix")
        if path.suffix == ".npy":
            matrix = torch.from_numpy(np.load(path))
        elif path.suffix == ".pt":
            matrix = torch.load(path, weights_only=True)
        else:
            matrix = torch.from_numpy(np.loadtxt(path, delimiter=",", ndmin=2))
        return check_similarity(matrix, classes, who), f"file {path.name}"
    return check_similarity(torch.tensor(choice, dtype=torch.float64), classes, who), "given"


def _pooled_activations(model: torch.nn.Module, images: torch.Tensor, layers: Sequence[str], pool: str
                        ) -> dict[str, torch.Tensor]:
    from interpbench.metrics.dissection import layer_activations

    acts = layer_activations(model, images, layers)
    return {name: (a.amax(dim=(2, 3)) if pool == "max" else a.mean(dim=(2, 3))).double().cpu()
            for name, a in acts.items()}


class AdversarialClassConsistency(Metric):
    """Dong et al.'s consistency of units, on real images and on their adversarial versions (Dong, Su, Zhu & Bao,
    arXiv 1708.05493, 2017; revised 2019).

    Each unit of ``layers`` (default: the model's ``cam_layer``) is scored by the classes of its ``top_k`` most
    activating images (activation: the spatial maximum of its feature map, ``pool="max"``, or the mean):
    ``consis(n) = p^T A p`` with ``p`` the share of each class among those images and ``A`` the class similarity
    (``similarity``: ``"dataset"``, the dataset's ``class_similarity()``: the shapes world's attribute overlap for
    its shape classes; ``"identity"``; or a user-supplied C x C matrix, as a file or a nested list). Images carry
    the class they show (their label), adversarial ones included.

    The probe: the images the model classifies correctly, each attacked against its label; only the successful
    attacks are kept, and the real score of attack ``A`` is taken on the clean versions of exactly those images,
    so real and adversarial differ by the attack alone. Per layer ``L`` and attack ``A``: ``L.A.real``,
    ``L.A.adversarial`` (mean consistency over the units that vary on both sets) and ``L.A.change`` (adversarial
    minus real), each with a 95% percentile bootstrap CI over images (an image and its adversarial copy resampled
    together; ``bootstrap`` replicates); ``L.A.chance`` (the expected consistency of ``top_k`` images drawn at
    random from the same images: what a unit blind to the class scores), ``L.A.n`` (successful attacks),
    ``L.A.success`` (their share of the correctly classified images), ``L.A.units``; and ``n`` (correctly
    classified images), ``accuracy``. Attacks with fewer than ``2 * top_k`` successes report ``n`` and ``success``
    only. Writes ``LAYER-ATTACK-class-consistency.csv`` (per unit) and ``class-similarity.json`` (the ``A`` used
    and where it came from) under the run's artefact directory.

    Not the same measure as ``adversarial_consistency`` (the share of dissection detectors that keep their
    concept label under attack, with the concept masks reused): both are reported, each under its own name.
    """

    name: ClassVar[str] = "adversarial_class_consistency"
    headline_values: ClassVar[tuple[str, ...]] = ("**.adversarial",)
    version: ClassVar[str] = "1"
    scope: ClassVar[str] = "model"
    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"label"})
    defaults: ClassVar[dict[str, Any]] = {
        "attacks": ["pgd2", "pgd4", "pgd8"],
        "layers": None,
        "top_k": 10,
        "pool": "max",
        "similarity": "dataset",
        "batch_size": None,
        "bootstrap": 1000,
        **ATTACK_DEFAULTS,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        _check_params(self.name, p)
        self.specs = parse_attacks(p["attacks"], p, self.name)
        _positive_ints(self.name, p, ("top_k", "bootstrap"))
        if p["pool"] not in ("max", "mean"):
            raise ComponentError(f"{self.name}: pool must be 'max' (spatial maximum) or 'mean', got {p['pool']!r}")

    def evaluate(self, model: Model, dataset: Any, ctx: RunContext) -> dict[str, float]:
        from interpbench.metrics.dissection import resolve_layers
        from interpbench.ops.consistency import (
            chance_consistency,
            consistency,
            top_label_distribution,
        )

        p = self.params
        layers = resolve_layers(model, p["layers"])
        batch_size = p["batch_size"] or ctx.batch_size
        device = torch.device(ctx.device)
        classes = len(getattr(dataset, "classes", None) or [])
        if classes == 0:
            raise ComponentError(f"{self.name}: dataset {getattr(dataset, 'name', '?')!r} lists no classes; Dong et "
                                 "al.'s consistency needs the class of every image (dataset.classes)")
        similarity, source = class_similarity_matrix(dataset, p["similarity"], classes, self.name)
        if ctx.out_dir is not None:  # which A the numbers used
            import json

            Path(ctx.out_dir).mkdir(parents=True, exist_ok=True)
            (Path(ctx.out_dir) / "class-similarity.json").write_text(json.dumps(
                {"source": source, "classes": [str(c) for c in dataset.classes], "matrix": similarity.tolist()},
                indent=1) + "\n")
        images, labels = [], []
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            images.append(torch.stack([s["image"] for s in samples]))
            labels.append(torch.tensor([int(s["label"]) for s in samples]))
        images_all, labels_all = torch.cat(images), torch.cat(labels)
        clean_acts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        correct = []
        for start in range(0, len(images_all), batch_size):
            x = images_all[start:start + batch_size].to(device)
            with torch.no_grad():
                correct.append((model(x).argmax(dim=1).cpu() == labels_all[start:start + batch_size]))
            for name, a in _pooled_activations(model, x, layers, p["pool"]).items():
                clean_acts[name].append(a)
        keep = torch.nonzero(torch.cat(correct)).squeeze(1)
        clean = {name: torch.cat(v)[keep] for name, v in clean_acts.items()}
        images_ok, labels_ok = images_all[keep], labels_all[keep]
        n = len(keep)
        out: dict[str, float] = {"n": float(n), "accuracy": n / max(len(images_all), 1)}
        seed = stable_hash([self.name, getattr(model, "spec", type(model).__name__), n])
        for spec in self.specs:
            adv_acts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
            success = []
            for start in range(0, n, batch_size):
                x = images_ok[start:start + batch_size].to(device)
                y = labels_ok[start:start + batch_size].to(device)
                ids = [f"probe:{int(i)}" for i in keep[start:start + batch_size]]
                adversarial, ok = attack_probe_batch(spec, model, x, y, ids)
                success.append(ok.cpu())
                for name, a in _pooled_activations(model, adversarial, layers, p["pool"]).items():
                    adv_acts[name].append(a)
            ok = torch.cat(success) if success else torch.zeros(0, dtype=torch.bool)
            hits = torch.nonzero(ok).squeeze(1)
            out[f"{spec.name}.n"] = float(len(hits))
            out[f"{spec.name}.success"] = len(hits) / n if n else math.nan
            k = p["top_k"]
            if len(hits) < 2 * k:
                continue
            y = labels_ok[hits]
            weights = torch.from_numpy(bootstrap_weights(len(hits), p["bootstrap"], stable_hash([seed, spec.name])))
            for name in layers:
                real, adv = clean[name][hits], torch.cat(adv_acts[name])[hits]
                varies = (real.amax(0) > real.amin(0)) & (adv.amax(0) > adv.amin(0))
                real, adv = real[:, varies], adv[:, varies]
                prefix = f"{name}.{spec.name}"
                out[f"{prefix}.units"] = float(int(varies.sum()))
                out[f"{prefix}.chance"] = chance_consistency(y, similarity, k)
                if not bool(varies.any()):
                    continue
                c_real = consistency(top_label_distribution(real, y, classes, k), similarity)
                c_adv = consistency(top_label_distribution(adv, y, classes, k), similarity)
                boot_real, boot_adv = self._bootstrap(real, adv, y, weights, classes, k, similarity)
                for key, value, boot in (("real", c_real.mean(), boot_real), ("adversarial", c_adv.mean(), boot_adv),
                                         ("change", c_adv.mean() - c_real.mean(), boot_adv - boot_real)):
                    # a top-k statistic is not smooth: on a resample the copies of a drawn image fill several of
                    # a unit's top-k places with one class, which shifts the replicates upwards (on shapes:cnn the
                    # percentile interval of the adversarial score lay wholly above the estimate); the interval
                    # takes the bootstrap's spread around the estimate (replicates re-centred on their median)
                    centred = (boot - boot.median() + value).numpy()
                    out[f"{prefix}.{key}"] = float(value)
                    out[f"{prefix}.{key}_ci_low"], out[f"{prefix}.{key}_ci_high"] = percentile_interval(centred)
                if ctx.out_dir is not None:
                    self._write_units(Path(ctx.out_dir), prefix, torch.nonzero(varies).squeeze(1), real, adv, y,
                                      c_real, c_adv, dataset)
        return out

    def _bootstrap(self, real: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor, weights: np.ndarray,
                   classes: int, k: int, similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean consistency over units on each bootstrap resample of the images (resampling counts; an image and
        its adversarial copy together). Copies of a drawn image tie, and the stable sort keeps them adjacent."""
        from interpbench.ops.consistency import consistency

        counts = torch.as_tensor(weights).long()
        index = torch.stack([torch.repeat_interleave(torch.arange(len(labels)), c) for c in counts])  # R x N
        outs = []
        for acts in (real, adv):
            values = []
            for rows in index.split(100):  # top_label_distribution with each replicate's own labels
                order = torch.sort(acts[rows].transpose(-1, -2), dim=-1, descending=True, stable=True).indices
                top = labels[rows].gather(1, order[..., :k].flatten(1)).view(len(rows), -1, k)  # R x U x k
                p = F.one_hot(top, classes).double().sum(dim=-2) / k
                values.append(consistency(p, similarity).mean(dim=-1))
            outs.append(torch.cat(values))
        return outs[0], outs[1]

    def _write_units(self, out_dir: Path, prefix: str, units: torch.Tensor, real: torch.Tensor, adv: torch.Tensor,
                     labels: torch.Tensor, c_real: torch.Tensor, c_adv: torch.Tensor, dataset: Any) -> None:
        import csv

        from interpbench.ops.consistency import top_label_distribution

        names = list(getattr(dataset, "classes", []))
        k = self.params["top_k"]
        classes = len(names)
        top_real = top_label_distribution(real, labels, classes, k).argmax(dim=-1)
        top_adv = top_label_distribution(adv, labels, classes, k).argmax(dim=-1)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = slug(prefix.replace(".", "-"))
        with open(out_dir / f"{stem}-class-consistency.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["unit", "real", "adversarial", "real_top_class", "adversarial_top_class"])
            for j, u in enumerate(units.tolist()):
                writer.writerow([u + 1, f"{float(c_real[j]):.6f}", f"{float(c_adv[j]):.6f}",
                                 names[int(top_real[j])], names[int(top_adv[j])]])


__all__ = [
    "AdversarialClassConsistency",
    "AdversarialConsistency",
    "AdversarialDetection",
    "AttackSpec",
    "ATTACK_CACHE",
    "DEFAULT_ATTACKS",
    "DISPERSION_FEATURES",
    "LOGIT_FEATURES",
    "adversarial_probe",
    "attack_batch",
    "attack_probe_batch",
    "auroc",
    "batched_iou",
    "bootstrap_auroc",
    "bootstrap_detection",
    "bootstrap_tpr",
    "bootstrap_weights",
    "canonical_order",
    "class_similarity_matrix",
    "consistency_measures",
    "cross_attack_table",
    "cross_validated_scores",
    "detection_table",
    "fit_logistic_regression",
    "fit_logistic_regression_batched",
    "image_folds",
    "logit_features",
    "map_dispersion_features",
    "map_features",
    "map_grid_features",
    "out_of_fold_scores",
    "parse_attacks",
    "percentile_interval",
    "relative_activation_change",
    "run_attack",
    "standardize",
    "tpr_at_fpr",
    "write_cross_attack_table",
]
