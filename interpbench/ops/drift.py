"""Unit drift maths: how the units and the explanations of a model change from model A to model B.

docs/protocols.md, "Unit drift under transfer, fine-tuning, distillation, compression". Plain tensor functions:

- :func:`linear_cka` / :func:`cka_from_grams`: linear centred kernel alignment of two representations of the same
  examples (Kornblith, Norouzi, Lee, Hinton, ICML 2019), invariant to orthogonal transforms (e.g. a rotation of the
  units), by default with the unbiased HSIC (:func:`hsic_unbiased`, Song et al., JMLR 2012; for CKA Nguyen, Raghu
  & Kornblith, ICLR 2021), the plug-in one (:func:`hsic_biased`) beside it; :class:`GramAccumulator` builds the
  ``n x n`` Gram matrices block by block, :func:`permuted_cka` gives the value of unrelated examples and
  :func:`cka_values` the four values ``unit_drift`` reports per layer pair (both estimators and their floors);
- :class:`CrossCorrelation`: streaming Pearson correlation between every unit of A and every unit of B over the
  probe (images x positions), the similarity that matches units (Li, Yosinski, Clune, Lipson, Hopcroft,
  "Convergent learning", ICLR 2016);
- :func:`hungarian_partners` (one-to-one, ``scipy.optimize.linear_sum_assignment``) and :func:`best_partners`
  (each unit of A to its most correlated unit of B, Li et al.'s semi-matching);
- :func:`unit_drift_measures`: concept and category retention, the category-switch matrix (with "none"), the IoU
  change on A's concept, the rank correlation of each unit's IoU profile and the activation correlation of
  each unit with its partner, given two dissections (Bau et al., CVPR 2017) and a partner per unit of A;
- :func:`rank_correlation_rows` (Spearman, average ranks for ties), :func:`top_fraction_overlap` and
  :func:`map_ssim`: how much a saliency map changed (Adebayo et al., "Sanity checks for saliency maps", NeurIPS
  2018).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from interpbench.core.base import ComponentError

# --------------------------------------------------------------------------------------------- CKA


def gram(x: torch.Tensor) -> torch.Tensor:
    """The linear kernel (Gram) matrix ``x x^T`` of ``n`` examples (rows of ``x``, ``n x p``), float64 ``n x n``."""
    if x.dim() != 2:
        raise ComponentError(f"gram: expected an n x p matrix of examples, got shape {tuple(x.shape)}")
    x = x.double()
    return x @ x.T


def hsic_biased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """The plug-in HSIC estimate ``tr(K H L H) / (n - 1)^2`` (Gretton et al. 2005; the one Kornblith et al. 2019
    use for CKA), ``H`` the centring matrix. Biased: for independent features it is of order ``1/n`` and not 0."""
    kc = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
    n = k.shape[0]
    return (kc * l).sum() / (n - 1) ** 2


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """The unbiased HSIC estimate of Song, Smola, Gretton, Bedo, Borgwardt (JMLR 2012, eq. 5), ``n >= 4``:

    ``[tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))``, ``K~`` and ``L~`` the
    Gram matrices with their diagonals set to 0. Its expectation is the population HSIC, 0 for independent
    representations however many features they have (the estimator of Nguyen, Raghu & Kornblith, ICLR 2021).
    """
    n = k.shape[0]
    if n < 4:
        raise ComponentError(f"hsic_unbiased: needs at least 4 examples, got {n}")
    kt = k - torch.diag_embed(torch.diagonal(k))
    lt = l - torch.diag_embed(torch.diagonal(l))
    trace = (kt * lt).sum()  # tr(K~ L~), both symmetric
    sums = kt.sum() * lt.sum() / ((n - 1) * (n - 2))
    cross = (kt.sum(dim=0) * lt.sum(dim=0)).sum() * 2 / (n - 2)  # 1^T K~ L~ 1 = (K~ 1) . (L~ 1)
    return (trace + sums - cross) / (n * (n - 3))


def cka_from_grams(k: torch.Tensor, l: torch.Tensor, debiased: bool = True) -> float:
    """CKA of two ``n x n`` Gram matrices of the same examples: ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``,
    with the unbiased HSIC (``debiased``, default; Nguyen, Raghu & Kornblith, ICLR 2021) or the plug-in one
    (Kornblith et al., ICML 2019). The debiased value lies in [-1, 1] (the unbiased HSIC is an inner product of
    U-centred matrices) and is near 0 for unrelated representations; the biased one lies in [0, 1] and drifts
    towards 1 when features outnumber examples. NaN when a representation is constant over the examples."""
    if k.dim() != 2 or k.shape[0] != k.shape[1] or k.shape != l.shape:
        raise ComponentError(f"cka_from_grams: expected two n x n Gram matrices of the same examples, got "
                             f"{tuple(k.shape)} and {tuple(l.shape)}")
    k, l = k.double(), l.double()
    hsic = hsic_unbiased if debiased else hsic_biased
    if debiased and k.shape[0] < 4:
        raise ComponentError(f"debiased CKA needs at least 4 examples, got {k.shape[0]}")
    if k.shape[0] < 2:
        raise ComponentError(f"CKA needs at least 2 examples, got {k.shape[0]}")
    xx, yy = hsic(k, k), hsic(l, l)
    denominator = (xx * yy).clamp_min(0).sqrt()
    if not bool(denominator > 0):
        return math.nan
    return float((hsic(k, l) / denominator).clamp(-1.0 if debiased else 0.0, 1.0))


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = True) -> float:
    """Linear CKA of ``x`` (``n x p``) and ``y`` (``n x q``), rows the same ``n`` examples, in float64.

    Kornblith et al. 2019, eq. (5) on the linear kernels ``K = X X^T``, ``L = Y Y^T``; by default with the
    unbiased HSIC of Song et al. 2012 (:func:`hsic_unbiased`, ``n >= 4``), so that independent features read near
    0 (n = 128 images of p = 2048 features: the plug-in estimate reads about 0.9). ``debiased=False``: the
    plug-in estimate of Kornblith et al., for comparison with papers that report it. Invariant to orthogonal
    transforms and isotropic scaling of either representation. NaN when either is constant over the examples.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ComponentError(f"linear_cka: expected n x p and n x q matrices of the same examples, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
    need = 4 if debiased else 2
    if x.shape[0] < need:
        raise ComponentError(f"linear_cka: needs at least {need} examples, got {x.shape[0]}"
                             + (" (the debiased estimate; debiased=False needs 2)" if debiased else ""))
    return cka_from_grams(gram(x), gram(y), debiased)


def permuted_cka(k: torch.Tensor, l: torch.Tensor, permutations: int = 10, seed: int = 0,
                 debiased: bool = True) -> float:
    """The noise floor of CKA on these representations: the mean CKA of ``K`` against ``L`` with its examples
    shuffled (``L[pi][:, pi]`` for ``permutations`` seeded random permutations ``pi``), i.e. what the estimator
    reads when example ``i`` of A is compared with another example of B: no correspondence, the same marginal
    statistics. About 0 for the debiased estimate; for the plug-in one the value that "no similarity" reads as."""
    if permutations < 1:
        raise ComponentError(f"permuted_cka: permutations {permutations!r} must be >= 1")
    generator = torch.Generator().manual_seed(int(seed))
    values = []
    for _ in range(permutations):
        order = torch.randperm(k.shape[0], generator=generator).to(l.device)
        values.append(cka_from_grams(k, l[order][:, order], debiased))
    return float(sum(values) / len(values))


def cka_values(k: torch.Tensor, l: torch.Tensor, permutations: int = 10) -> dict[str, float]:
    """``cka`` (debiased: unbiased HSIC, Song et al. 2012; Nguyen, Raghu & Kornblith 2021; from 4 images),
    ``cka_biased`` (plug-in HSIC, Kornblith et al. 2019), and each one's noise floor (``cka_floor``,
    ``cka_biased_floor``): the same estimator with the images of B shuffled against A's (:func:`permuted_cka`,
    ``permutations`` seeded draws), what "no similarity" reads as on these features."""
    out = {"cka_biased": cka_from_grams(k, l, debiased=False),
           "cka_biased_floor": permuted_cka(k, l, permutations, seed=0, debiased=False)}
    if k.shape[0] >= 4:
        out["cka"] = cka_from_grams(k, l)
        out["cka_floor"] = permuted_cka(k, l, permutations, seed=0)
    return out


class GramAccumulator:
    """The ``n x n`` Gram matrix of ``n`` examples built block by block, so that its memory is ``n^2`` float64
    whatever the number of features: :meth:`add` takes the features of two blocks of examples (rows ``rows_i``
    and ``rows_j`` of the ``n``) and fills the blocks ``(i, j)`` and ``(j, i)``. Parts computed apart (e.g. on
    different ranks, each with its own blocks) combine with :meth:`merge` (a sum: every block is filled once)."""

    def __init__(self, n: int, device: torch.device | str | None = None) -> None:
        if n < 1:
            raise ComponentError(f"GramAccumulator: n {n!r} must be >= 1")
        self.n = int(n)
        self.matrix = torch.zeros(self.n, self.n, dtype=torch.float64, device=device)
        self.filled = torch.zeros(self.n, self.n, dtype=torch.bool, device=device)

    def add(self, rows_i: slice, x_i: torch.Tensor, rows_j: slice, x_j: torch.Tensor) -> None:
        x_i = x_i.reshape(x_i.shape[0], -1).to(self.matrix.device, torch.float64)
        x_j = x_j.reshape(x_j.shape[0], -1).to(self.matrix.device, torch.float64)
        if x_i.shape[1] != x_j.shape[1]:
            raise ComponentError(f"GramAccumulator: the two blocks have {x_i.shape[1]} and {x_j.shape[1]} features")
        block = x_i @ x_j.T
        if tuple(self.matrix[rows_i, rows_j].shape) != tuple(block.shape):
            raise ComponentError(f"GramAccumulator: rows {rows_i} x {rows_j} do not match blocks of "
                                 f"{x_i.shape[0]} and {x_j.shape[0]} examples (n = {self.n})")
        if bool(self.filled[rows_i, rows_j].any()):
            raise ComponentError(f"GramAccumulator: block {rows_i} x {rows_j} was already added")
        self.matrix[rows_i, rows_j] = block
        self.matrix[rows_j, rows_i] = block.T
        self.filled[rows_i, rows_j] = True
        self.filled[rows_j, rows_i] = True

    def merge(self, other: "GramAccumulator") -> None:
        if other.n != self.n:
            raise ComponentError(f"GramAccumulator.merge: n {other.n} against {self.n}")
        if bool((self.filled & other.filled.to(self.filled.device)).any()):
            raise ComponentError("GramAccumulator.merge: both parts filled the same block")
        self.matrix += other.matrix.to(self.matrix.device)
        self.filled |= other.filled.to(self.filled.device)

    def result(self) -> torch.Tensor:
        if not bool(self.filled.all()):
            raise ComponentError(f"GramAccumulator: {int((~self.filled).sum())} of {self.n ** 2} entries were never "
                                 "added; add every pair of blocks (i, j), j <= i")
        return self.matrix


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
    # lazy: scipy.optimize is slow to import and only this matching needs it
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


def map_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang, Bovik, Sheikh, Simoncelli, IEEE TIP 2004) of two saliency maps per image
    (``B x H x W`` each), float64 ``[B]``: the third similarity of Adebayo et al. 2018. Each map is first scaled to
    [0, 1] by its own minimum and maximum (a constant map becomes 0), then
    ``skimage.metrics.structural_similarity`` with its defaults (7 x 7 uniform window, K1 = 0.01, K2 = 0.03) and
    ``data_range=1``. Maps smaller than 7 pixels on a side use the largest odd window that fits."""
    # lazy: scikit-image is slow to import and only SSIM needs it
    from skimage.metrics import structural_similarity

    if a.shape != b.shape or a.dim() != 3:
        raise ComponentError(f"map_ssim: expected two B x H x W tensors, got {tuple(a.shape)} and {tuple(b.shape)}")

    def unit_range(x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().double().reshape(x.shape[0], -1)
        lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
        span = hi - lo
        return torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                           torch.zeros_like(flat)).view(x.shape).cpu().numpy()

    x, y = unit_range(a), unit_range(b)
    side = min(a.shape[1], a.shape[2])
    window = min(7, side if side % 2 else side - 1)
    if window < 3:
        raise ComponentError(f"map_ssim: maps of {a.shape[1]} x {a.shape[2]} pixels are too small for SSIM (>= 3)")
    return torch.tensor([structural_similarity(x[i], y[i], data_range=1.0, win_size=window) for i in range(len(x))],
                        dtype=torch.float64)


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
    """The measures of docs/protocols.md ("Unit drift") for A's units and their ``partner`` in B.

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
    "GramAccumulator",
    "UnitChanges",
    "average_ranks",
    "best_partners",
    "cka_from_grams",
    "cka_values",
    "concept_set_overlap",
    "gram",
    "hsic_biased",
    "hsic_unbiased",
    "hungarian_partners",
    "identity_partners",
    "linear_cka",
    "map_rank_correlation",
    "map_ssim",
    "permuted_cka",
    "pearson_rows",
    "rank_correlation_rows",
    "switch_dict",
    "switch_labels",
    "top_fraction_overlap",
    "unit_drift_measures",
    "unit_rows",
]
