"""The geometry and statistics of localisation on tensors: where a saliency map points, how much of it lies in a
region, and the class-mean accuracy with its bootstrap CI.

Layer: ``ops`` (plain tensor maths; imports only from ``core`` and ``ops``). The localisation metrics
(``interpbench.metrics.localization``, whose module docstring describes the protocols) and the localisation
datasets (``interpbench.datasets.voc`` / ``coco`` / ``imagenet_loc``, which flag "difficult" pairs with the same
definition) share it.

- Conventions: TorchRay's pointing tolerance (15 px of the original image; scaled by the longer side over VOC's
  ~500 px where a dataset declares none) and its smoothing of gradient-like maps (``torchray/attribution/common.py``
  ``saliency(smooth=0.02)``); the "difficult" (image, class) pair of Zhang et al., "Top-down neural attention by
  excitation backprop", ECCV 2016 (the class's boxes cover < 1/4 of the image and a distractor class is present);
  xyxy boxes in pixel-edge coordinates as bool masks.
- Maps: arg-max points, bilinear resizing (``align_corners=False``), hits within a tolerance (TorchRay
  ``PointingGame.evaluate``), distances to a region, the share of a map's positive mass (Rao et al. 2022, GridPG)
  or of its energy (Wang et al. 2020, Score-CAM) inside a region, grid cells and grids (Rao, Böhle, Schiele,
  CVPR 2022).
- Samples: the ground-truth region of a trial, read from a sample's fields (``orig_size``, ``orig_boxes`` /
  ``orig_masks``, ``boxes`` / ``masks``, ``difficult``, ``pointing_difficult``, ``labels``).
- Statistics: the class-mean ratio (TorchRay ``PointingGame.accuracy``), its percentile bootstrap CI resampling
  clusters (images or grids), and ``_Trials``, the per-trial records a metric summarises with them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from interpbench.core.base import ComponentError
from interpbench.ops.masks import gaussian_smooth

TORCHRAY_TOLERANCE = 15  # pixels of the original image (TorchRay PointingGame default)
TOLERANCE_REFERENCE_SIDE = 500  # TorchRay's 15 px are pixels of VOC images, whose longer side is ~500 px
TORCHRAY_SMOOTH = 0.02  # attribution_benchmark.py: smooth=0.02 x the longer side for gradient-like saliency
TORCHRAY_SMOOTHED = ("gradient", "guided_backprop", "deconvnet")  # the methods attribution_benchmark.py smooths
DIFFICULT_AREA = 0.25  # Zhang et al. 2016: the class's boxes cover less than 1/4 of the image
ENERGY_MAX_BOX_AREA = 0.5  # Wang et al. 2020: only boxes covering less than half of the image
# Rao et al. 2022 get_localization_score_single score 0 when the positive mass is <= 1e-7 (absolute, for maps of
# a fixed scale); here the positive mass is compared with the map's absolute mass, so that a rescaled map scores
# the same: a share is 0 when the positive mass is <= GRID_EPS x the absolute mass (round-off level in float32),
# in particular for an all-zero map
GRID_EPS = 1e-7


# --------------------------------------------------------------------------------------------- maths


def argmax_points(maps: torch.Tensor) -> torch.Tensor:
    """The point of each map, ``B x 2`` long ``(x, y)``: its maximum, the first one in row-major order on ties."""
    # TorchRay _saliency_to_point: argmax of the flattened map -> (index % W, index // W); torch.argmax returns
    # the first maximal index
    if maps.dim() != 3:
        raise ComponentError(f"argmax_points: maps must be B x H x W, got shape {tuple(maps.shape)}")
    flat = maps.flatten(1).argmax(dim=1)
    width = maps.shape[-1]
    return torch.stack([flat % width, torch.div(flat, width, rounding_mode="floor")], dim=1)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``B x H x W`` maps resized to ``size`` = (H0, W0), bilinear, ``align_corners=False`` (TorchRay resize_saliency)."""
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps.float()
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def boxes_to_mask(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The union of ``N x 4`` xyxy boxes as a bool ``H x W`` mask: pixels whose centre lies inside a box."""
    # pixel (x, y) is in [x0, y0, x1, y1] when x0 <= x + 0.5 < x1 and y0 <= y + 0.5 < y1; for VOC's 1-based
    # inclusive xmin..xmax stored as [xmin - 1, xmax) this is TorchRay's voc_as_mask, mask[ymin-1:ymax, xmin-1:xmax]
    height, width = int(size[0]), int(size[1])
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    xs = torch.arange(width, dtype=torch.float64, device=boxes.device) + 0.5
    ys = torch.arange(height, dtype=torch.float64, device=boxes.device) + 0.5
    in_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])  # N x W
    in_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])  # N x H
    return (in_y[:, :, None] & in_x[:, None, :]).any(dim=0)


def pointing_hits(points: torch.Tensor, regions: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Bool ``B``: some pixel of ``regions[b]`` (bool ``B x H x W``) lies strictly within ``tolerance`` of ``points[b]``.

    ``points`` are ``(x, y)`` in pixel-index coordinates (may be fractional, e.g. TorchRay's centre point).
    """
    # TorchRay PointingGame.evaluate: accept = (v - y)^2 + (u - x)^2 < tolerance^2 over pixel indices (u, v);
    # hit = (mask & accept).any()
    height, width = regions.shape[-2:]
    points = points.to(device=regions.device, dtype=torch.float32)
    ys = torch.arange(height, dtype=torch.float32, device=regions.device)
    xs = torch.arange(width, dtype=torch.float32, device=regions.device)
    dy2 = (ys[None] - points[:, 1:2]) ** 2  # B x H
    dx2 = (xs[None] - points[:, 0:1]) ** 2  # B x W
    accept = (dy2[:, :, None] + dx2[:, None, :]) < float(tolerance) ** 2
    return (accept & regions).flatten(1).any(dim=1)


def region_distance(points: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Float ``B``: Euclidean distance from ``points[b]`` (x, y) to the nearest pixel of ``regions[b]`` (inf if empty)."""
    height, width = regions.shape[-2:]
    points = points.to(device=regions.device, dtype=torch.float32)
    ys = torch.arange(height, dtype=torch.float32, device=regions.device)
    xs = torch.arange(width, dtype=torch.float32, device=regions.device)
    d2 = (ys[None] - points[:, 1:2])[:, :, None] ** 2 + (xs[None] - points[:, 0:1])[:, None, :] ** 2
    d2 = torch.where(regions, d2, torch.full_like(d2, math.inf))
    return d2.flatten(1).min(dim=1).values.sqrt()


def positive_share(maps: torch.Tensor, regions: torch.Tensor, eps: float = GRID_EPS) -> torch.Tensor:
    """Share of each map's positive mass inside its region: ``sum(relu(m) * r) / sum(relu(m))``.

    0 when the positive mass is at most ``eps`` times the map's absolute mass ``sum(|m|)`` (an all-zero map, or
    positive values at round-off level): a relative guard, so that ``c * m`` scores as ``m`` for every ``c > 0``
    (Rao et al. 2022's GridPG score uses an absolute 1e-7). Computed in float64.
    """
    # Wang et al. 2020 (Score-CAM), energy-based pointing game; Rao et al. 2022, GridPG localisation score
    flat = maps.detach().double().flatten(1)
    positive = flat.clamp(min=0)
    inside = (positive * regions.flatten(1).to(positive.dtype)).sum(dim=1)
    total = positive.sum(dim=1)
    keep = total > eps * flat.abs().sum(dim=1)
    return torch.where(keep, inside / torch.where(keep, total, torch.ones_like(total)), torch.zeros_like(total)).float()


def energy_share(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Share of each map's energy inside its region, the map summed as it is: ``sum(m * r) / sum(m)``.

    Wang et al. 2020 (Score-CAM), ``energyPointGame.py``: ``energy_bbox / energy_whole`` with the saliency map
    as given (non-negative for Score-CAM). On a signed map the raw sums can cancel, and the share may leave
    [0, 1]; an all-zero total (an all-zero map) gives 0 instead of the reference's NaN. Invariant to ``c * m``,
    ``c > 0``. Computed in float64.
    """
    flat = maps.detach().double().flatten(1)
    inside = (flat * regions.flatten(1).to(flat.dtype)).sum(dim=1)
    total = flat.sum(dim=1)
    nonzero = total != 0
    return torch.where(nonzero, inside / torch.where(nonzero, total, torch.ones_like(total)),
                       torch.zeros_like(total)).float()


def dataset_tolerance(size: tuple[int, int], declared: float | None = None) -> float:
    """The pointing game's tolerance in pixels of an image of ``size`` (H, W): the dataset's ``declared`` one, else
    TorchRay's 15 px scaled by the longer side over VOC's ~500 px (15 px at 500 px, 1.92 px at 64 px)."""
    if declared is not None:
        return float(declared)
    return TORCHRAY_TOLERANCE * max(int(size[0]), int(size[1])) / TOLERANCE_REFERENCE_SIDE


def smooth_maps(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """``B x H x W`` maps blurred with a Gaussian of sigma ``fraction x max(H, W)``, replicate padding.

    TorchRay ``saliency(..., smooth=fraction)`` (``torchray/attribution/common.py``): after resizing to the image
    size, ``imsmooth(saliency, sigma=smooth * max(saliency.shape[2:]), padding_mode='replicate')``, a separable
    kernel over ``|i| <= ceil(4 sigma)`` summing to 1.
    """
    if fraction <= 0:
        return maps
    sigma = float(fraction) * max(int(maps.shape[-2]), int(maps.shape[-1]))
    return gaussian_smooth(maps[:, None].float(), sigma, padding="replicate")[:, 0]


def region_fraction(region: torch.Tensor) -> float:
    """The share of the image a bool ``H x W`` region covers."""
    return float(region.sum()) / max(region.numel(), 1)


def difficult_pair(area_fraction: float, other_classes: int) -> bool:
    """Zhang et al. 2016, sec. 5.1: the class's boxes cover < 1/4 of the image and a distractor class is present."""
    return area_fraction < DIFFICULT_AREA and other_classes > 0


def difficult_pairs(boxes: dict[int, torch.Tensor], size: tuple[int, int]) -> dict[int, bool]:
    """The "difficult" flag of every class of an image from its boxes (class -> ``N x 4`` xyxy at ``size``)."""
    classes = [int(c) for c in boxes]
    return {c: difficult_pair(region_fraction(boxes_to_mask(boxes[c], size)), len(classes) - 1) for c in classes}


def class_mean_ratio(numerators: np.ndarray, denominators: np.ndarray) -> float:
    """Mean over classes (columns with a positive denominator) of ``sum(numerator) / sum(denominator)``.

    With per-image hit counts and trial counts (``images x classes``) this is the pointing-game accuracy
    (TorchRay ``PointingGame.accuracy``: per-class ``hits / (hits + misses)``, mean over classes); with one column
    it is the pooled mean. TorchRay also counts classes without any trial as accuracy 0 in the mean; on the full
    VOC07 / COCO14 sets every class has trials, so the two agree there.
    """
    num = np.asarray(numerators, dtype=np.float64).sum(axis=0)
    den = np.asarray(denominators, dtype=np.float64).sum(axis=0)
    keep = den > 0
    if not keep.any():
        return math.nan
    return float((num[keep] / den[keep]).mean())


def cluster_bootstrap_ci(numerators: np.ndarray, denominators: np.ndarray, n_boot: int = 2000, seed: int = 0,
                         level: float = 0.95, chunk: int = 100) -> tuple[float, float]:
    """Percentile bootstrap CI of :func:`class_mean_ratio`, resampling rows (images or grids) with replacement.

    ``numerators`` / ``denominators``: ``rows x classes``. Efron & Tibshirani 1993, ch. 13, on clusters: each
    resample draws ``rows`` rows; the per-class sums are a product of the resample's row multiplicities with the
    matrices, ``chunk`` resamples at a time.
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    rows = num.shape[0]
    if rows == 0:
        return (math.nan, math.nan)
    if rows == 1:
        value = class_mean_ratio(num, den)
        return (value, value)
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        draws = rng.integers(0, rows, size=(k, rows))
        weights = np.bincount((draws + rows * np.arange(k)[:, None]).ravel(), minlength=k * rows).reshape(k, rows)
        n, d = weights @ num, weights @ den  # k x classes
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(d > 0, n / np.where(d > 0, d, 1.0), np.nan)
        stats.append(np.nanmean(ratio, axis=1))
    stats = np.concatenate(stats)
    alpha = (1 - level) / 2
    return (float(np.nanquantile(stats, alpha)), float(np.nanquantile(stats, 1 - alpha)))


def grid_cell_masks(height: int, width: int, scale: int = 2, device: Any = None) -> torch.Tensor:
    """Bool ``scale^2 x (scale * H) x (scale * W)`` masks of the cells of a grid of ``H x W`` images, row-major."""
    # Rao et al. 2022 get_localization_score_single: cell k is rows (k // n) * H .. + H, columns (k % n) * W .. + W
    cells = torch.zeros(scale * scale, scale * height, scale * width, dtype=torch.bool, device=device)
    for k in range(scale * scale):
        r, c = divmod(k, scale)
        cells[k, r * height:(r + 1) * height, c * width:(c + 1) * width] = True
    return cells


def make_grids(images: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """``G x scale^2 x 3 x H x W`` cell images -> ``G x 3 x (scale H) x (scale W)`` grids, cells in row-major order."""
    # Rao et al. 2022 generate_grid_dataset.py create_grid: images pasted at native size into an n x n grid
    g, k, c, h, w = images.shape
    if k != scale * scale:
        raise ComponentError(f"make_grids: {k} images per grid, expected {scale * scale} for a {scale} x {scale} grid")
    rows = images.view(g, scale, scale, c, h, w).permute(0, 3, 1, 4, 2, 5)  # G x C x row x H x col x W
    return rows.reshape(g, c, scale * h, scale * w)


def choose_grid_classes(pools: dict[int, int], n_grids: int, rng: np.random.Generator,
                        cells: int = 4) -> list[list[tuple[int, int]]]:
    """Grids of ``cells`` (class, k-th image of that class) with distinct classes, each image used at most once.

    ``pools``: class -> number of candidate images. Each grid takes ``cells`` distinct classes uniformly at random
    among those with images left (Rao et al. 2022 draw a random permutation of all classes and redraw while one of
    the first ``cells`` has none left: the same distribution), in a random cell order; stops at ``n_grids`` or when
    fewer than ``cells`` classes have images left.
    """
    left = {c: n for c, n in pools.items() if n > 0}
    used = {c: 0 for c in left}
    grids = []
    while len(grids) < n_grids:
        avail = sorted(c for c, n in left.items() if used[c] < n)
        if len(avail) < cells:
            break
        picked = rng.choice(len(avail), size=cells, replace=False)
        grid = []
        for i in picked:
            c = avail[int(i)]
            grid.append((c, used[c]))
            used[c] += 1
        grids.append(grid)
    return grids


# --------------------------------------------------------------------------------------------- samples


def _image_id(sample: dict) -> str:
    return str(sample.get("image_id", sample.get("id")))


def _region(sample: dict, target: int, map_size: tuple[int, int],
            kind: str) -> tuple[torch.Tensor | None, tuple[int, int], str]:
    """The ground-truth region of ``target`` in ``sample``: (bool mask or None, its size, "masks"/"boxes"/"")."""
    if "orig_size" in sample:
        size = (int(sample["orig_size"][0]), int(sample["orig_size"][1]))
        masks, boxes = sample.get("orig_masks") or {}, sample.get("orig_boxes") or {}
    else:
        size = map_size
        masks, boxes = sample.get("masks") or {}, sample.get("boxes") or {}
    if kind in ("auto", "masks") and target in masks:
        mask = torch.as_tensor(masks[target]).bool()
        if tuple(mask.shape) != size:
            raise ComponentError(f"sample {sample.get('id')!r}: mask of class {target} is {tuple(mask.shape)}, expected "
                                 f"{size} ({'orig_size' if 'orig_size' in sample else 'the map size'})")
        return mask, size, "masks"
    if kind in ("auto", "boxes") and target in boxes:
        return boxes_to_mask(boxes[target], size), size, "boxes"
    return None, size, ""


def _pair_difficult(sample: dict, target: int, size: tuple[int, int]) -> bool:
    flags = sample.get("pointing_difficult")
    if flags is not None and target in flags:
        return bool(flags[target])
    boxes = sample.get("orig_boxes") if "orig_size" in sample else sample.get("boxes")
    boxes = boxes or {}
    present = {int(c) for c in sample.get("labels", [])} | {int(c) for c in boxes}
    if target not in boxes:
        return False
    return difficult_pair(region_fraction(boxes_to_mask(boxes[target], size)), len(present - {target}))


def _all_boxes_difficult(sample: dict, target: int) -> bool:
    # TorchRay PointingGameBenchmark.evaluate: skip VOC (image, class) pairs whose boxes are all `difficult`
    flags = (sample.get("difficult") or {}).get(target)
    if flags is None:
        return False
    flags = torch.as_tensor(flags).bool()
    return flags.numel() > 0 and bool(flags.all())


# --------------------------------------------------------------------------------------------- trials


class _Trials:
    """Per-trial records of a dataset-level localisation metric: image id, class, value, difficult flag."""

    def __init__(self) -> None:
        self.images: list[str] = []
        self.classes: list[int] = []
        self.values: list[float] = []
        self.difficult: list[bool] = []

    def add(self, image: str, cls: int, value: float, difficult: bool) -> None:
        self.images.append(image)
        self.classes.append(cls)
        self.values.append(value)
        self.difficult.append(difficult)

    def __len__(self) -> int:
        return len(self.values)

    def matrices(self, select: np.ndarray, per_class: bool) -> tuple[np.ndarray, np.ndarray]:
        """(sum of values, number of trials) per image (rows) and class (columns, or one column)."""
        images = [i for i, s in zip(self.images, select) if s]
        if not images:
            return np.zeros((0, 1)), np.zeros((0, 1))
        rows = {name: r for r, name in enumerate(dict.fromkeys(images))}
        classes = np.asarray(self.classes)[select] if per_class else np.zeros(len(images), dtype=np.int64)
        cols = {c: k for k, c in enumerate(sorted(set(classes.tolist())))}
        num = np.zeros((len(rows), len(cols)))
        den = np.zeros((len(rows), len(cols)))
        r = np.asarray([rows[i] for i in images])
        k = np.asarray([cols[c] for c in classes.tolist()])
        np.add.at(num, (r, k), np.asarray(self.values)[select])
        np.add.at(den, (r, k), 1.0)
        return num, den

    def summary(self, headline: str, per_class: bool, n_boot: int, seed: int) -> dict[str, float]:
        """``headline`` (all trials) and ``difficult`` (the difficult subset), with CIs and counts."""
        out: dict[str, float] = {}
        difficult = np.asarray(self.difficult, dtype=bool)
        for name, select in ((headline, np.ones(len(self), dtype=bool)), ("difficult", difficult)):
            if not select.any():  # no difficult pair: no number (results must be finite)
                continue
            num, den = self.matrices(select, per_class)
            out[name] = class_mean_ratio(num, den) if len(num) else math.nan
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = cluster_bootstrap_ci(num, den, n_boot, seed)
        out["n"] = float(len(self))
        out["n_difficult"] = float(difficult.sum())
        return out
