"""Unit drift maths: how the units and the explanations of a model change from model A to model B.

PROTOCOLS.md, "Unit drift under transfer, fine-tuning, distillation, compression". Plain tensor functions:

- :func:`linear_cka`: linear centred kernel alignment of two representations of the same examples (Kornblith,
  Norouzi, Lee, Hinton, ICML 2019), invariant to orthogonal transforms (e.g. a rotation of the units);
- :class:`CrossCorrelation`: streaming Pearson correlation between every unit of A and every unit of B over the
  probe (images x positions), the similarity that matches units (Li, Yosinski, Clune, Lipson, Hopcroft,
  "Convergent learning", ICLR 2016);
- :func:`hungarian_partners` (one-to-one, ``scipy.optimize.linear_sum_assignment``) and :func:`best_partners`
  (each unit of A to its most correlated unit of B, Li et al.'s semi-matching);
- :func:`unit_drift_measures`: concept and category retention, the category-switch matrix (with "none"), the IoU
  change on A's concept, the rank correlation of each unit's IoU profile and the activation correlation of
  each unit with its partner, given two dissections (Bau et al., CVPR 2017) and a partner per unit of A;
- :func:`rank_correlation_rows` (Spearman, average ranks for ties) and :func:`top_fraction_overlap`: how much a
  saliency map changed (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from interpbench.base import ComponentError

# --------------------------------------------------------------------------------------------- CKA


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of ``x`` (``n x p``) and ``y`` (``n x q``), rows the same ``n`` examples.

    Kornblith et al. 2019, eq. (5): ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` with centred columns, computed
    in float64 through the ``n x n`` Gram matrices when ``n`` is the smaller side (``<K_X, K_Y>_F = ||Y^T X||_F^2``).
    NaN when either representation is constant over the examples (the index is undefined).
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ComponentError(f"linear_cka: expected n x p and n x q matrices of the same examples, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] < 2:
        raise ComponentError(f"linear_cka: needs at least 2 examples, got {x.shape[0]}")
    x = x.double() - x.double().mean(dim=0, keepdim=True)
    y = y.double() - y.double().mean(dim=0, keepdim=True)
    n = x.shape[0]
    if n <= max(x.shape[1], y.shape[1]):
        kx, ky = x @ x.T, y @ y.T
        cross, norm_x, norm_y = (kx * ky).sum(), kx.norm(), ky.norm()
    else:
        cross, norm_x, norm_y = (y.T @ x).square().sum(), (x.T @ x).norm(), (y.T @ y).norm()
    denominator = norm_x * norm_y
    if not bool(denominator > 0):
        return math.nan
    return float((cross / denominator).clamp(0.0, 1.0))


# --------------------------------------------------------------------------------------------- correlation


class CrossCorrelation:
    """Pearson correlation between each column of ``a`` (``U`` units) and each column of ``b`` (``V`` units),
    accumulated over a stream of row blocks (float64 moments, shifted by the first block's means for accuracy).

    ``result()`` gives ``(corr [U x V], valid_a [U], valid_b [V])``: a unit that is constant over every row has no
    correlation (``valid`` False) and gets 0.
    """

    def __init__(self, units_a: int, units_b: int, device: torch.device | str | None = None) -> None:
        self.units_a, self.units_b = int(units_a), int(units_b)
        f64 = torch.float64
        self.n = 0
        self.shift_a: torch.Tensor | None = None
        self.shift_b: torch.Tensor | None = None
        self.sum_a = torch.zeros(units_a, dtype=f64, device=device)
        self.sum_b = torch.zeros(units_b, dtype=f64, device=device)
        self.sq_a = torch.zeros(units_a, dtype=f64, device=device)
        self.sq_b = torch.zeros(units_b, dtype=f64, device=device)
        self.cross = torch.zeros(units_a, units_b, dtype=f64, device=device)

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add ``n x U`` and ``n x V`` rows (the same ``n`` observations of both sets of units)."""
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0] or a.shape[1] != self.units_a \
                or b.shape[1] != self.units_b:
            raise ComponentError(f"CrossCorrelation: expected n x {self.units_a} and n x {self.units_b} rows, got "
                                 f"{tuple(a.shape)} and {tuple(b.shape)}")
        a, b = a.to(self.cross.device, torch.float64), b.to(self.cross.device, torch.float64)
        if self.shift_a is None:
            self.shift_a, self.shift_b = a.mean(dim=0), b.mean(dim=0)
        a, b = a - self.shift_a, b - self.shift_b
        self.n += a.shape[0]
        self.sum_a += a.sum(dim=0)
        self.sum_b += b.sum(dim=0)
        self.sq_a += a.square().sum(dim=0)
        self.sq_b += b.square().sum(dim=0)
        self.cross += a.T @ b

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.n < 2:
            raise ComponentError(f"CrossCorrelation: needs at least 2 observations, got {self.n}")
        mean_a, mean_b = self.sum_a / self.n, self.sum_b / self.n
        var_a = (self.sq_a / self.n - mean_a.square()).clamp_min(0)
        var_b = (self.sq_b / self.n - mean_b.square()).clamp_min(0)
        cov = self.cross / self.n - torch.outer(mean_a, mean_b)
        # a unit whose every value equals the first block's mean sums exactly to zero: constant, no correlation
        valid_a, valid_b = var_a > 0, var_b > 0
        scale = torch.outer(var_a.sqrt(), var_b.sqrt())
        ok = torch.outer(valid_a, valid_b)
        corr = torch.where(ok, cov / torch.where(ok, scale, torch.ones_like(scale)), torch.zeros_like(cov))
        return corr.clamp(-1.0, 1.0), valid_a, valid_b


def unit_rows(activations: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``B x U x h x w`` feature maps as ``(B*h*w) x U`` observations (each image and position one row), after
    average pooling to ``size`` when given (two layers of different resolutions are compared at the smaller)."""
    if activations.dim() != 4:
        raise ComponentError(f"unit_rows: expected B x U x h x w feature maps, got shape {tuple(activations.shape)}")
    if size is not None and tuple(activations.shape[-2:]) != tuple(size):
        activations = torch.nn.functional.adaptive_avg_pool2d(activations, size)
    return activations.permute(0, 2, 3, 1).reshape(-1, activations.shape[1])


# --------------------------------------------------------------------------------------------- matching


def hungarian_partners(corr: torch.Tensor) -> torch.Tensor:
    """One-to-one matching of A's units (rows) to B's (columns) maximising the summed correlation
    (``scipy.optimize.linear_sum_assignment``; Li et al. 2016). LongTensor ``[U]``: the partner, -1 when A has
    more units than B and the unit is left unmatched."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(corr.detach().double().cpu().numpy(), maximize=True)
    partner = torch.full((corr.shape[0],), -1, dtype=torch.long)
    partner[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(cols, dtype=torch.long)
    return partner.to(corr.device)


def best_partners(corr: torch.Tensor) -> torch.Tensor:
    """Each unit of A to its most correlated unit of B (Li et al. 2016's semi-matching; ties: lowest index)."""
    return corr.argmax(dim=1)


def identity_partners(units_a: int, units_b: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Aligned units: unit ``k`` of A is unit ``k`` of B (-1 beyond B's width)."""
    partner = torch.arange(units_a, device=device)
    return torch.where(partner < units_b, partner, torch.full_like(partner, -1))


# --------------------------------------------------------------------------------------------- rank statistics


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks ``1..p`` of each row of ``x`` (``n x p``), tied values sharing their average rank (float64)."""
    n, p = x.shape
    values, order = torch.sort(x, dim=1, stable=True)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = torch.cumsum(starts.long(), dim=1) - 1 + p * torch.arange(n, device=x.device).unsqueeze(1)
    ordinal = torch.arange(1, p + 1, device=x.device, dtype=torch.float64).expand(n, p)
    flat = group.reshape(-1)
    sums = torch.zeros(n * p, dtype=torch.float64, device=x.device).index_add_(0, flat, ordinal.reshape(-1))
    counts = torch.zeros(n * p, dtype=torch.float64, device=x.device).index_add_(
        0, flat, torch.ones(n * p, dtype=torch.float64, device=x.device))
    ranks_sorted = (sums / counts.clamp_min(1))[flat].view(n, p)
    return torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted)


def pearson_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``x`` with the same row of ``y`` (float64; NaN for a constant row)."""
    x = x.double() - x.double().mean(dim=1, keepdim=True)
    y = y.double() - y.double().mean(dim=1, keepdim=True)
    denominator = x.norm(dim=1) * y.norm(dim=1)
    return torch.where(denominator > 0, (x * y).sum(dim=1) / denominator.clamp_min(1e-300),
                       torch.full_like(denominator, math.nan)).clamp(-1.0, 1.0)


def rank_correlation_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of each row of ``x`` (``n x p``) with the same row of ``y``: the Pearson
    correlation of their average ranks (Spearman 1904). NaN where a row is constant."""
    if x.shape != y.shape or x.dim() != 2:
        raise ComponentError(f"rank_correlation_rows: expected two n x p tensors, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
    return pearson_rows(average_ranks(x), average_ranks(y))


def map_rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation between two saliency maps per image (``B x H x W`` each), float64 ``[B]``.

    A constant map has no ranking: two identical maps count 1 (nothing changed), a constant map against a
    different one 0.
    """
    x, y = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    rho = rank_correlation_rows(x, y)
    same = (x == y).all(dim=1)
    return torch.where(torch.isnan(rho), same.double(), rho)


def top_fraction_overlap(a: torch.Tensor, b: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """Share of the top ``fraction`` pixels (``k = ceil(fraction * H * W)``) of each map of ``a`` that are also in
    the top ``k`` of the same map of ``b`` (ties broken by pixel index, as the deletion metric's order), ``[B]``."""
    if not 0.0 < fraction <= 1.0:
        raise ComponentError(f"top_fraction_overlap: fraction {fraction!r} must lie in (0, 1] (default 0.1)")
    x, y = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    k = max(1, math.ceil(fraction * x.shape[1]))
    top_x = torch.sort(x, dim=1, descending=True, stable=True).indices[:, :k]
    top_y = torch.sort(y, dim=1, descending=True, stable=True).indices[:, :k]
    in_x = torch.zeros_like(x, dtype=torch.bool).scatter_(1, top_x, True)
    in_y = torch.zeros_like(y, dtype=torch.bool).scatter_(1, top_y, True)
    return (in_x & in_y).sum(dim=1).double() / k


# --------------------------------------------------------------------------------------------- unit measures


@dataclasses.dataclass
class UnitChanges:
    """The drift of A's units to their partners in B (one matching), with per-unit values.

    Per unit of A (tensors ``[U]``): ``partner`` (-1: none), ``kept_concept`` / ``kept_category`` (A detector
    whose partner is a B detector of the same concept / category), ``iou_a`` (A's best IoU), ``iou_b_on_a``
    (the partner's IoU on A's concept; 0 without a partner), ``profile_rho`` (Spearman correlation of the two IoU
    profiles over all concepts; NaN where one is constant), ``correlation`` (activation correlation with the
    partner; NaN where undefined). ``switch``: ``(K+1) x (K+1)`` counts of A's category (row; "none" last: not a
    detector) against the partner's (column).
    """

    partner: torch.Tensor
    detector_a: torch.Tensor
    kept_concept: torch.Tensor
    kept_category: torch.Tensor
    iou_a: torch.Tensor
    iou_b_on_a: torch.Tensor
    profile_rho: torch.Tensor
    correlation: torch.Tensor
    switch: torch.Tensor

    def summary(self) -> dict[str, float]:
        """Means over A's detectors (retention, IoU change) or over units where the value is defined; a measure
        with nothing to average over is left out (results must be finite)."""
        out: dict[str, float] = {}
        det = self.detector_a
        n_det = int(det.sum())
        out["detectors_a"] = float(n_det)
        if n_det:
            out["concept_retention"] = float(self.kept_concept[det].double().mean())
            out["category_retention"] = float(self.kept_category[det].double().mean())
            out["iou_change"] = float((self.iou_b_on_a[det] - self.iou_a[det]).double().mean())
        rho = self.profile_rho[~torch.isnan(self.profile_rho)]
        if rho.numel():
            out["iou_profile_rho"] = float(rho.mean())
        corr = self.correlation[~torch.isnan(self.correlation)]
        if corr.numel():
            out["activation_correlation"] = float(corr.mean())
        return out


def unit_drift_measures(iou_a: torch.Tensor, iou_b: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor,
                        category_of: torch.Tensor, num_categories: int, iou_threshold: float, partner: torch.Tensor,
                        correlation: torch.Tensor | None = None, valid_a: torch.Tensor | None = None,
                        valid_b: torch.Tensor | None = None) -> UnitChanges:
    """The measures of PROTOCOLS.md for A's units and their ``partner`` in B.

    ``iou_a`` ``[U x C]``, ``iou_b`` ``[V x C]``: dissection IoUs (Bau et al. 2017) on the same probe and concepts;
    ``label_a`` / ``label_b``: each unit's arg-max concept (-1 none); ``category_of`` ``[C]``: each concept's
    category; ``partner`` ``[U]`` (-1 none); ``correlation`` ``[U x V]`` with ``valid_*`` (non-constant units).
    A unit keeps its concept when it is a detector (best IoU > ``iou_threshold``) and its partner is a detector
    with the same arg-max concept; it keeps its category when the partner's concept is of the same category.
    """
    units, concepts = iou_a.shape
    if iou_b.shape[1] != concepts:
        raise ComponentError(f"unit drift: A and B were dissected with different concept sets ({concepts} vs "
                             f"{iou_b.shape[1]} concepts); dissect both on the same probe")
    device = iou_a.device
    category_of = category_of.to(device)
    partner = partner.to(device)
    matched = partner >= 0
    p = partner.clamp_min(0)
    score_a = iou_a.max(dim=1).values if units else iou_a.new_zeros(0)
    score_b = iou_b.max(dim=1).values if iou_b.shape[0] else iou_b.new_zeros(0)
    det_a = (score_a > iou_threshold) & (label_a >= 0)
    det_b = (score_b > iou_threshold) & (label_b.to(device) >= 0)
    label_b = label_b.to(device)
    partner_det = matched & det_b[p]
    partner_label = torch.where(partner_det, label_b[p], torch.full_like(p, -1))
    cat_a = torch.where(det_a, category_of[label_a.clamp_min(0)], torch.full_like(p, num_categories))
    cat_b = torch.where(partner_det, category_of[partner_label.clamp_min(0)], torch.full_like(p, num_categories))
    kept_concept = det_a & partner_det & (partner_label == label_a)
    kept_category = det_a & partner_det & (cat_b == cat_a)
    iou_b_on_a = torch.where(matched & (label_a >= 0), iou_b[p, label_a.clamp_min(0)].to(iou_a.dtype),
                             torch.zeros_like(score_a))
    profile = torch.full((units,), math.nan, dtype=torch.float64, device=device)
    if matched.any():
        rows = torch.nonzero(matched).squeeze(1)
        profile[rows] = rank_correlation_rows(iou_a[rows], iou_b[p[rows]])
    corr = torch.full((units,), math.nan, dtype=torch.float64, device=device)
    if correlation is not None and matched.any():
        ok = matched.clone()
        if valid_a is not None:
            ok &= valid_a.to(device)
        if valid_b is not None:
            ok &= valid_b.to(device)[p]
        rows = torch.nonzero(ok).squeeze(1)
        corr[rows] = correlation.to(device, torch.float64)[rows, p[rows]]
    switch = torch.zeros(num_categories + 1, num_categories + 1, dtype=torch.long, device=device)
    switch.index_put_((cat_a, cat_b), torch.ones_like(cat_a), accumulate=True)
    return UnitChanges(partner=partner, detector_a=det_a, kept_concept=kept_concept, kept_category=kept_category,
                     iou_a=score_a, iou_b_on_a=iou_b_on_a, profile_rho=profile, correlation=corr, switch=switch)


def concept_set_overlap(label_a: torch.Tensor, detector_a: torch.Tensor, label_b: torch.Tensor,
                        detector_b: torch.Tensor) -> float:
    """Jaccard overlap of the sets of concepts detected in A and in B (unit-free: needs no matching); 1 when both
    sets are empty."""
    set_a = set(label_a[detector_a].tolist())
    set_b = set(label_b[detector_b].tolist())
    union = set_a | set_b
    return 1.0 if not union else len(set_a & set_b) / len(union)


def switch_labels(categories: tuple[str, ...] | list[str]) -> list[str]:
    """Row / column names of the switch matrix: the categories, then ``"none"``."""
    return [*categories, "none"]


def switch_dict(switch: torch.Tensor, categories: tuple[str, ...] | list[str]) -> dict[str, float]:
    """``{"switch.A->B": count}`` for every cell of the switch matrix."""
    names = switch_labels(categories)
    return {f"switch.{a}->{b}": float(switch[i, j]) for i, a in enumerate(names) for j, b in enumerate(names)}


__all__: list[Any] = [
    "CrossCorrelation",
    "UnitChanges",
    "average_ranks",
    "best_partners",
    "concept_set_overlap",
    "hungarian_partners",
    "identity_partners",
    "linear_cka",
    "map_rank_correlation",
    "pearson_rows",
    "rank_correlation_rows",
    "switch_dict",
    "switch_labels",
    "top_fraction_overlap",
    "unit_drift_measures",
    "unit_rows",
]
