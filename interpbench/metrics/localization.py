"""Localisation metrics: does the saliency map point at the explained object?

- ``pointing_game``: Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016 / IJCV 2018, with
  the benchmark conventions of TorchRay (``torchray/benchmark/pointing_game.py`` and
  ``examples/attribution_benchmark.py``). One trial per (image, class present); the map is resized bilinearly
  (``align_corners=False``) to the original image size; for gradient-like maps under TorchRay's protocol it is then
  smoothed (Gaussian, sigma = 0.02 x the longer side, replicate padding: ``torchray/attribution/common.py``
  ``saliency(smooth=0.02)``); its arg-max (the first maximum in row-major order) is the point; a trial is a hit
  when some ground-truth pixel ``(u, v)`` has ``(u - x)^2 + (v - y)^2 < tolerance^2``. The tolerance follows the
  dataset: the one it declares (``pointing_tolerance``: TorchRay's 15 px on VOC / COCO / ImageNet, 2 px on the
  64 px shapes world), else 15 px scaled by the original image's longer side over 500 px (VOC's). Accuracy is
  ``hits / (hits + misses)`` per class, then the mean over classes. "all" and "difficult" subsets; VOC pairs whose
  boxes are all marked ``difficult`` are skipped (in both subsets, as TorchRay does).
- ``energy_pointing_game``: Wang et al., "Score-CAM", CVPR-W 2020, as their ``energyPointGame.py`` computes it: the
  share of the map's energy (the map summed as it is) inside the class's bounding boxes, on trials whose boxes
  cover less than half of the image. ``energy_pointing_game_masks``: the same share of the map's *positive* mass
  inside the segmentation masks where a sample has them (boxes elsewhere), on every trial.
- ``grid_pointing_game``: Böhle, Fritz, Schiele, CVPR 2021 (CoDA-Nets) and Rao, Böhle, Schiele, "Towards better
  understanding attribution methods", CVPR 2022 (GridPG; reference code sukrutrao/Attribution-Evaluation): 2 x 2
  grids of images of four different classes that the model classifies correctly with confidence >= 0.99; each
  cell's class is explained on the whole grid; the score is the share of positive attribution inside that cell.
- ``shortcut_localization``: a planted-shortcut test of the claim that explanations expose spurious correlations
  (Fong & Vedaldi, ICCV 2017): on shapes-world images whose corner patch has the colour of another class than the
  object (``interpbench.datasets.shortcut``), where the map's positive mass and its arg-max fall (patch or
  object), with the model's accuracy with and without the patch.

Every score is invariant to a positive rescaling of the maps (a method's maps are defined up to a positive
scale): guards are exact for all-zero maps or relative to the map's own mass, never absolute thresholds.

Ground truth read from samples (the loaders in ``interpbench.datasets`` define these fields):

- ``orig_size`` ``(H0, W0)``: the original image size, when the image was resized for the model (VOC, COCO,
  ImageNet). Then ``orig_boxes`` (class -> float ``N x 4`` xyxy) and ``orig_masks`` (class -> bool ``H0 x W0``)
  hold the regions in original pixels, and the map is resized to ``H0 x W0`` (the published protocol). Without
  ``orig_size`` (the shapes world, generated at the model's size), ``boxes`` / ``masks`` at the map's size are used.
- Boxes are xyxy in pixel-edge coordinates: pixel ``(x, y)`` (integer indices) is inside ``[x0, y0, x1, y1]`` when
  its centre ``(x + 0.5, y + 0.5)`` is; a VOC box ``xmin..xmax`` (1-based, inclusive) is ``[xmin - 1, xmax)``.
- ``difficult`` (class -> bool ``N``): PASCAL's per-box flags. ``pointing_difficult`` (class -> bool): the
  (image, class) pair belongs to the "difficult" subset; when absent it is computed from the boxes with the
  published definition (:func:`interpbench.ops.regions.difficult_pair`).
- ``labels``: the classes present (the distractors of the difficult definition).
- ``pointing_tolerance`` (pixels of the original image) and ``pointing_protocol`` (``"torchray"``: the VOC / COCO
  loaders' published-protocol mode, images resized to a shorter side of 224 keeping the aspect ratio): what the
  dataset declares for the pointing game.

Trials whose explained class has no region in the image (``--target predicted`` when the model predicts a class
that is not there, e.g. on the shapes world) have no ground truth: they are left out and counted in
``no_region``. TorchRay explains ground-truth classes only (``--target label`` on a multi-label dataset).

Confidence intervals (``NAME_ci_low`` / ``NAME_ci_high``): 95% percentile bootstrap over *images* (all trials of an
image are resampled together, since they share the image; grids for the grid game), recomputing the statistic
(the class-mean accuracy for the pointing game) on each resample, 2000 resamples with a fixed seed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from interpbench.core.base import (
    Batch,
    ComponentError,
    DatasetMetric,
    Model,
    NotApplicable,
)
from interpbench.ops.regions import (
    ENERGY_MAX_BOX_AREA,
    TORCHRAY_SMOOTH,
    TORCHRAY_SMOOTHED,
    _all_boxes_difficult,
    _image_id,
    _pair_difficult,
    _region,
    _Trials,
    argmax_points,
    boxes_to_mask,
    choose_grid_classes,
    class_mean_ratio,
    cluster_bootstrap_ci,
    dataset_tolerance,
    energy_share,
    grid_cell_masks,
    make_grids,
    pointing_hits,
    positive_share,
    region_distance,
    region_fraction,
    resize_maps,
    smooth_maps,
)

# --------------------------------------------------------------------------------------------- checks


def _targets_list(batch: Batch) -> list[int]:
    return [int(t) for t in batch.targets.detach().cpu().tolist()]


def _check_maps(name: str, maps: torch.Tensor, batch: Batch) -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3 or maps.shape[0] != len(batch):
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ComponentError(f"{name}: maps must be B x H x W with B = {len(batch)} (one per trial), got {shape}")


def _positive_number(name: str, key: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        kind = "non-negative" if allow_zero else "positive"
        raise ComponentError(f"{name}: {key} must be a {kind} number, got {value!r}")


# --------------------------------------------------------------------------------------------- metrics


class _LocalisationGame(DatasetMetric):
    """Shared code of the pointing and energy games: trials, regions at the original size, skips, subsets."""

    version: ClassVar[str] = "1"
    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"boxes"})
    per_class: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params["region"] not in ("auto", "masks", "boxes"):
            raise ComponentError(f"{self.name}: region must be 'auto' (masks where a sample has them, else boxes), "
                                 f"'masks' or 'boxes', got {self.params['region']!r}")
        n_boot = self.params["n_boot"]
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
            raise ComponentError(f"{self.name}: n_boot must be a positive int (bootstrap resamples), got {n_boot!r}")
        # distributed runs: the ranks' trials put end to end in rank order are the one-process trials
        self.add_state("trials", _Trials(), reduce="cat")
        self.add_state("no_region", 0, reduce="sum")
        self.add_state("skipped_difficult", 0, reduce="sum")
        self.add_state("skipped_large", 0, reduce="sum")
        # per trial, what _trial_settings returned (for the summary)
        self.add_state("settings", [], reduce="cat")

    def _trial_settings(self, sample: dict, batch: Batch, size: tuple[int, int]) -> tuple[float, ...]:
        """Per-trial settings (hashable) that trials scored together must share, e.g. a tolerance."""
        return ()

    def _keep(self, sample: dict, target: int, region: torch.Tensor, size: tuple[int, int]) -> bool:
        """Whether a trial with a region is scored (False: counted in ``skipped_large``)."""
        return True

    def _trial_values(self, maps: torch.Tensor, regions: torch.Tensor, size: tuple[int, int],
                      points: torch.Tensor | None, settings: tuple[float, ...]) -> torch.Tensor:
        raise NotImplementedError

    def _centre_points(self, batch: Batch) -> bool:
        return False

    def update(self, model: Model, batch: Batch, maps: torch.Tensor) -> None:
        _check_maps(self.name, maps, batch)
        map_size = (int(maps.shape[-2]), int(maps.shape[-1]))
        targets = _targets_list(batch)
        groups: dict[tuple, list[tuple[int, torch.Tensor, bool]]] = defaultdict(list)
        for i, (sample, target) in enumerate(zip(batch.samples, targets)):
            if _all_boxes_difficult(sample, target):
                self.skipped_difficult += 1
                continue
            region, size, _ = _region(sample, target, map_size, self.params["region"])
            if region is None:
                self.no_region += 1
                continue
            if not self._keep(sample, target, region, size):
                self.skipped_large += 1
                continue
            settings = self._trial_settings(sample, batch, size)
            groups[(size, settings)].append((i, region, _pair_difficult(sample, target, size)))
        centre = self._centre_points(batch)
        for (size, settings), trials in groups.items():
            index = torch.tensor([i for i, _, _ in trials], device=maps.device)
            regions = torch.stack([r for _, r, _ in trials]).to(maps.device)
            points = None
            if centre:  # TorchRay attribution_benchmark.py, method "center": point = (W / 2, H / 2)
                points = torch.tensor([[size[1] / 2, size[0] / 2]], device=maps.device).expand(len(trials), 2)
            values = self._trial_values(maps.index_select(0, index), regions, size, points,
                                        settings).detach().cpu().tolist()
            for (i, _, difficult), value in zip(trials, values):
                self.trials.add(_image_id(batch.samples[i]), targets[i], float(value), difficult)
                self.settings.append(settings)

    def _settings_summary(self) -> dict[str, float]:
        return {}

    def compute(self) -> dict[str, float]:
        if not len(self.trials):
            raise ComponentError(
                f"{self.name}: no trial had a ground-truth region ({self.no_region} trials whose class is not in the "
                f"image, {self.skipped_difficult} skipped as all-difficult, {self.skipped_large} skipped for boxes "
                "covering too much of the image); with --target predicted the model's classes must be those of the "
                "dataset's boxes; use --target label on a multi-label dataset")
        out = self.trials.summary(self.name, self.per_class, self.params["n_boot"], self.params["seed"])
        out["no_region"] = float(self.no_region)
        out["skipped_difficult"] = float(self.skipped_difficult)
        out.update(self._settings_summary())
        return out


def _auto_or_number(name: str, key: str, value: Any, allow_zero: bool = False) -> None:
    if value != "auto":
        _positive_number(name, key, value, allow_zero=allow_zero)


class PointingGame(_LocalisationGame):
    """Pointing game (Zhang et al. 2016; TorchRay conventions): class-mean hit rate, "all" and "difficult" subsets.

    Parameters:

    - ``tolerance``: ``"auto"`` (default) follows the dataset: the tolerance it declares in its samples
      (``pointing_tolerance``: TorchRay's 15 px on VOC, COCO and ImageNet; 2 px on the 64 px shapes world), else
      15 px scaled by the original image's longer side over VOC's ~500 px; or a number of pixels of the original
      image for every trial.
    - ``smooth``: Gaussian smoothing of the resized map before the arg-max, sigma = ``smooth`` x its longer side,
      for the methods in ``smooth_methods`` only. ``"auto"`` (default): TorchRay's 0.02 on samples of a dataset in
      TorchRay's protocol (``pointing_protocol: torchray``, the default of ``voc07-test`` and ``coco14-val``),
      none elsewhere; a number applies it on every dataset (0: never).
    - ``smooth_methods``: the methods whose maps are smoothed (TorchRay's benchmark: gradient, guided backprop,
      deconvnet; ``batch.method.name``).
    - ``region`` (``"auto"``: masks where the sample has them (COCO, shapes), else boxes (VOC, ImageNet)),
      ``centre_point`` (True: the ``center`` baseline is scored with TorchRay's centre point (W/2, H/2) instead of
      its map's arg-max, so that its numbers are the published ones by construction; its map's arg-max lies within
      a pixel of it), ``n_boot`` / ``seed`` (the CI).

    Result: ``pointing_game`` (all trials) and ``difficult`` (the difficult subset; absent when no pair is), the
    class-mean accuracy in [0, 1], each with ``_ci_low`` / ``_ci_high``; ``n`` (trials), ``n_difficult``,
    ``no_region`` (trials whose class is not in the image: left out), ``skipped_difficult`` (VOC pairs whose boxes
    are all difficult: left out); what ran: ``tolerance`` (mean over trials, pixels of the original image),
    ``smooth`` (mean sigma fraction over trials, 0 when no map was smoothed), ``torchray_protocol`` (share of
    trials from a dataset in TorchRay's protocol).

    On the shapes world (64 px, tolerance 2 px) the centre baseline is still fairly strong: the labelled object is
    large (radius 16-24% of the side) and covers the image centre in about half of the images (VOC 2007: centre
    69.6%); use the grid game to compare methods without that bias.
    """

    name: ClassVar[str] = "pointing_game"
    headline_values: ClassVar[tuple[str, ...]] = ("pointing_game", "difficult")
    defaults: ClassVar[dict[str, Any]] = {"tolerance": "auto", "smooth": "auto",
                                          "smooth_methods": list(TORCHRAY_SMOOTHED), "region": "auto",
                                          "centre_point": True, "n_boot": 2000, "seed": 0}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        _auto_or_number(self.name, "tolerance", self.params["tolerance"])
        _auto_or_number(self.name, "smooth", self.params["smooth"], allow_zero=True)
        methods = self.params["smooth_methods"]
        if isinstance(methods, str) or not isinstance(methods, (list, tuple)) or not all(
                isinstance(m, str) for m in methods):
            raise ComponentError(f"{self.name}: smooth_methods must be a list of method names, e.g. "
                                 f"{list(TORCHRAY_SMOOTHED)}, got {methods!r}")
        self.params["smooth_methods"] = list(methods)

    def _centre_points(self, batch: Batch) -> bool:
        return bool(self.params["centre_point"]) and bool(getattr(batch.method, "points_at_centre", False))

    def _trial_settings(self, sample, batch, size):
        p = self.params
        torchray = sample.get("pointing_protocol") == "torchray"
        tolerance = p["tolerance"] if p["tolerance"] != "auto" else dataset_tolerance(
            size, sample.get("pointing_tolerance"))
        smooth = 0.0
        if getattr(batch.method, "name", None) in p["smooth_methods"]:
            smooth = (TORCHRAY_SMOOTH if torchray else 0.0) if p["smooth"] == "auto" else float(p["smooth"])
        return (float(tolerance), smooth, float(torchray))

    def _trial_values(self, maps, regions, size, points, settings):
        tolerance, smooth, _ = settings
        if points is None:
            points = argmax_points(smooth_maps(resize_maps(maps, size), smooth))
        return pointing_hits(points, regions, tolerance).float()

    def _settings_summary(self):
        values = np.asarray(self.settings, dtype=np.float64).reshape(-1, 3)
        return dict(zip(("tolerance", "smooth", "torchray_protocol"), values.mean(axis=0).tolist()))


class EnergyPointingGame(_LocalisationGame):
    """Energy-based pointing game (Wang et al., Score-CAM, CVPR-W 2020), as their ``energyPointGame.py`` scores it.

    Per trial, the share of the map's energy inside the class's bounding boxes, ``sum(m * box) / sum(m)``
    (:func:`energy_share`), with the map as the method returns it (``map="raw"``): Score-CAM's maps are
    non-negative, and so is the share; a signed map (gradients, integrated gradients) is summed as it is too, so
    that negative evidence inside the boxes lowers the share, and its share can leave [0, 1] when the sums cancel
    (``signed`` counts those trials). ``map="positive"`` scores the positive part instead (:func:`positive_share`).
    Only trials whose boxes (their union) cover less than ``max_box_area`` (0.5) of the image are scored, as in
    the paper (``skipped_large`` counts the others; ``None``: every trial). The reference scores one box per image;
    the union of the class's boxes is the region here. Its mask ``empty[x1:x2, y1:y2]`` indexes rows by x (the
    transposed box on its square maps); rows are y here, as its later forks correct.

    Same trials, resizing (to the original image), skips and subsets as ``pointing_game``; the result is the mean
    over trials (``energy_pointing_game`` for all trials, ``difficult``, with bootstrap CIs over images), not a
    class mean; ``skipped_large``; ``signed`` (trials whose map has negative values); ``region_masks`` (1 when
    the region was segmentation masks: the ``energy_pointing_game_masks`` variant).
    """

    name: ClassVar[str] = "energy_pointing_game"
    headline_values: ClassVar[tuple[str, ...]] = ("energy_pointing_game",)
    per_class: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {"region": "boxes", "map": "raw", "max_box_area": ENERGY_MAX_BOX_AREA,
                                          "n_boot": 2000, "seed": 0}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.add_state("signed", 0, reduce="sum")
        if self.params["map"] not in ("raw", "positive"):
            raise ComponentError(f"{self.name}: map must be 'raw' (the map summed as it is: Score-CAM's reference) or "
                                 f"'positive' (its positive part), got {self.params['map']!r}")
        area = self.params["max_box_area"]
        if area is not None:
            _positive_number(self.name, "max_box_area", area)
            if area > 1:
                raise ComponentError(f"{self.name}: max_box_area is a share of the image in (0, 1] (0.5: Wang et al.) "
                                     f"or None (every trial), got {area!r}")

    def _keep(self, sample, target, region, size):
        area = self.params["max_box_area"]
        if area is None:
            return True
        boxes = (sample.get("orig_boxes") if "orig_size" in sample else sample.get("boxes")) or {}
        covered = region if target not in boxes else boxes_to_mask(boxes[target], size)
        return region_fraction(covered) < area

    def _trial_settings(self, sample, batch, size):
        return ()

    def _trial_values(self, maps, regions, size, points, settings):
        maps = resize_maps(maps, size)
        self.signed += int((maps.flatten(1).min(dim=1).values < 0).sum())
        if self.params["map"] == "positive":
            return positive_share(maps, regions)
        return energy_share(maps, regions)

    def _settings_summary(self):
        return {"skipped_large": float(self.skipped_large), "signed": float(self.signed),
                "region_masks": float(self.params["region"] != "boxes")}


class EnergyPointingGameMasks(EnergyPointingGame):
    """The energy pointing game on segmentation masks: the share of the map's positive mass inside the class's
    masks where a sample has them (COCO, shapes), its boxes elsewhere (VOC, ImageNet), on every trial.

    A variant of ``energy_pointing_game`` (Wang et al. 2020 score bounding boxes and the raw map, on boxes covering
    less than half of the image): masks are the tighter region, and the positive part keeps the share in [0, 1]
    for signed maps. Parameters and result as ``energy_pointing_game``, with defaults ``region="auto"``,
    ``map="positive"``, ``max_box_area=None``.
    """

    name: ClassVar[str] = "energy_pointing_game_masks"
    headline_values: ClassVar[tuple[str, ...]] = ("energy_pointing_game_masks",)
    defaults: ClassVar[dict[str, Any]] = {"region": "auto", "map": "positive", "max_box_area": None,
                                          "n_boot": 2000, "seed": 0}


class GridPointingGame(DatasetMetric):
    """Grid pointing game (Böhle et al. 2021; Rao, Böhle, Schiele, CVPR 2022): needs no annotation beyond labels.

    ``update`` runs the model on each batch and keeps the images it classifies correctly (the prediction when a
    sample has no label) with softmax confidence >= ``confidence`` (0.99, Rao et al.). ``compute`` draws up to
    ``grids`` 2 x 2 grids of four images of four different classes (each image used once, seeded by ``seed``),
    runs the run's method (``batch.method``) on each grid once per cell with that cell's class as the target, and
    scores the share of the map's positive mass inside the cell (0 when the map has no positive mass). Grids are
    ``2H x 2W`` (the model must accept that size, as a fully convolutional network with global pooling does); with
    ``fit_input=True`` they are resized to ``H x W`` instead. The candidates are the model's own (Rao et al. keep the
    images that all the compared models classify confidently, so that every model sees the same grids); all
    methods on one model see the same grids (same candidates, same seed).

    Result: ``grid_pointing_game`` (mean localisation score) with a bootstrap CI over grids, ``pointing`` (share of
    trials whose map's arg-max lies in the right cell), ``n`` (trials = 4 x grids), ``grids``, ``candidates`` (confident images),
    ``classes`` (classes with a confident image). Chance level: 0.25.
    """

    name: ClassVar[str] = "grid_pointing_game"
    headline_values: ClassVar[tuple[str, ...]] = ("grid_pointing_game",)
    version: ClassVar[str] = "1"
    _reason = "the conformance kit's reference world has 3 classes; a 2 x 2 grid needs 4 (NotApplicable, by design)"
    expected_failures: ClassVar[dict[str, str]] = dict.fromkeys(
        ("compute_finite", "reset_clears_state", "batch_split_invariance", "prefers_oracle_map"), _reason)
    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset()
    defaults: ClassVar[dict[str, Any]] = {"confidence": 0.99, "grids": 500, "scale": 2, "fit_input": False,
                                          "seed": 0, "n_boot": 2000}
    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        confidence = p["confidence"]
        if not isinstance(confidence, (int, float)) or isinstance(confidence, bool) or not 0 <= confidence <= 1:
            raise ComponentError(f"{self.name}: confidence must be a probability in [0, 1] (0.99 in Rao et al.), "
                                 f"got {p['confidence']!r}")
        for key in ("grids", "scale", "n_boot"):
            if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
                raise ComponentError(f"{self.name}: {key} must be a positive int, got {p[key]!r}")
        if p["scale"] < 2:
            raise ComponentError(f"{self.name}: scale must be >= 2 (a {p['scale']} x {p['scale']} grid has no "
                                 "other cell), got {p['scale']!r}")
        # distributed runs: the ranks' confident images per class put end to end in rank order; compute() uses each
        # class's first `cap` (_cap), the images one process keeps, in dataset order
        self.add_state("pool", defaultdict(list), reduce="cat")
        self.add_state("seen", 0, reduce="sum")
        self.add_state("chunk", 1, reduce="max")
        # the model and method of the last batch: every rank holds its own (the same), never sent
        self.add_state("model", None, reduce=None)
        self.add_state("method", None, reduce=None)

    def update(self, model: Model, batch: Batch, maps: torch.Tensor) -> None:
        if batch.method is None:
            raise ComponentError(f"{self.name}: the batch carries no method (batch.method); the grid game explains "
                                 "its own grids with the run's method, so call it through the runner or set "
                                 "Batch(method=...)")
        self.model, self.method = model, batch.method
        self.chunk = max(self.chunk, len(batch))
        cap = self._cap(model)
        with torch.no_grad():
            probs = model(batch.images).float().softmax(dim=1)
        conf, pred = probs.max(dim=1)
        labels = [s.get("label") for s in batch.samples]
        for i, (c, p) in enumerate(zip(conf.tolist(), pred.tolist())):
            label = labels[i]
            cls = int(p) if label is None else int(label)
            # Rao et al. filter_high_conf_data: prediction == label and softmax(label) >= threshold
            if cls != int(p) or c < self.params["confidence"] or len(self.pool[cls]) >= cap:
                continue
            image = batch.images[i].detach().cpu()
            quantised = (image * 255).round()
            # keep 8-bit images as uint8 (lossless), others (e.g. the rendered shapes world) as they are
            self.pool[cls].append(quantised.to(torch.uint8) if torch.equal(quantised / 255, image) else image.clone())
        self.seen += len(batch)

    def _cap(self, model: Model | None) -> int:
        """Confident images kept per class: enough for ``grids`` grids of ``scale**2`` classes, plus one."""
        cells = self.params["scale"] ** 2
        return max(1, math.ceil(cells * self.params["grids"] / max(getattr(model, "num_classes", 1), 1))) + 1

    def compute(self) -> dict[str, float]:
        p = self.params
        cells = p["scale"] ** 2
        cap = self._cap(self.model)  # one process keeps no more (update); merged ranks may hold more
        pools = {c: min(len(v), cap) for c, v in self.pool.items() if v}
        if len(pools) < cells or self.model is None:
            raise NotApplicable(
                f"{self.name}: only {len(pools)} classes have images the model classifies correctly with confidence "
                f">= {p['confidence']} (of {self.seen} images); a {p['scale']} x {p['scale']} grid needs {cells} "
                "different classes: use more images or lower the confidence (grid_pointing_game.confidence=...)")
        rng = np.random.default_rng(p["seed"])
        grids = choose_grid_classes(pools, p["grids"], rng, cells)
        model, method = self.model, self.method
        device = model.device if hasattr(model, "device") else torch.device("cpu")
        scores, hits, grid_ids = [], [], []
        chunk_grids = max(1, self.chunk // cells)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(p["seed"])
            for start in range(0, len(grids), chunk_grids):
                part = grids[start:start + chunk_grids]
                images = torch.stack([torch.stack([self._image(c, k) for c, k in grid]) for grid in part]).to(device)
                grid_images = make_grids(images, p["scale"])  # G x 3 x sH x sW
                if p["fit_input"]:  # the grid shrunk to one cell's (the model's input) size
                    grid_images = F.interpolate(grid_images, size=tuple(images.shape[-2:]), mode="bilinear",
                                                align_corners=False, antialias=True)
                inputs = grid_images.repeat_interleave(cells, dim=0)  # trial (grid g, cell k) = g * cells + k
                targets = torch.tensor([c for grid in part for c, _ in grid], device=device)
                try:
                    maps = method.explain(model, inputs, targets)
                except NotApplicable:
                    raise
                except Exception as exc:  # noqa: BLE001 - name the likely cause
                    raise ComponentError(
                        f"{self.name}: method {getattr(method, 'name', method)!r} failed on {p['scale']}x{p['scale']} "
                        f"grids of {tuple(inputs.shape[-2:])} px ({type(exc).__name__}: {exc}); if the model needs "
                        f"its input size, use grid_pointing_game.fit_input=true") from exc
                if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != (len(inputs), *inputs.shape[-2:]):
                    expected = (len(inputs), *inputs.shape[-2:])
                    raise ComponentError(f"{self.name}: method returned maps of shape "
                                         f"{tuple(getattr(maps, 'shape', ()))}, expected {expected}")
                maps = maps.detach().float()
                mask_h, mask_w = maps.shape[-2] // p["scale"], maps.shape[-1] // p["scale"]
                cell_masks = grid_cell_masks(mask_h, mask_w, p["scale"], device=maps.device)
                if tuple(cell_masks.shape[-2:]) != tuple(maps.shape[-2:]):  # odd sizes: pad the last row/column
                    cell_masks = F.pad(cell_masks, (0, maps.shape[-1] - cell_masks.shape[-1],
                                                    0, maps.shape[-2] - cell_masks.shape[-2]))
                regions = cell_masks.repeat(len(part), 1, 1)
                scores += positive_share(maps, regions).cpu().tolist()
                points = argmax_points(maps)
                hits += regions[torch.arange(len(maps), device=maps.device), points[:, 1], points[:, 0]].cpu().tolist()
                grid_ids += [start + g for g in range(len(part)) for _ in range(cells)]
        num = np.zeros((len(grids), 1))
        den = np.zeros((len(grids), 1))
        hit = np.zeros((len(grids), 1))
        np.add.at(num, (np.asarray(grid_ids), 0), scores)
        np.add.at(hit, (np.asarray(grid_ids), 0), np.asarray(hits, dtype=np.float64))
        np.add.at(den, (np.asarray(grid_ids), 0), 1.0)
        lo, hi = cluster_bootstrap_ci(num, den, p["n_boot"], p["seed"])
        plo, phi = cluster_bootstrap_ci(hit, den, p["n_boot"], p["seed"])
        return {self.name: class_mean_ratio(num, den), f"{self.name}_ci_low": lo, f"{self.name}_ci_high": hi,
                "pointing": class_mean_ratio(hit, den), "pointing_ci_low": plo, "pointing_ci_high": phi,
                "n": float(len(scores)), "grids": float(len(grids)),
                "candidates": float(sum(pools.values())), "classes": float(len(pools))}

    def _image(self, cls: int, k: int) -> torch.Tensor:
        image = self.pool[cls][k]
        return image.float() / 255 if image.dtype == torch.uint8 else image


class ShortcutLocalization(DatasetMetric):
    """Planted shortcut (the ``shapes-shortcut`` world): do the maps point at the corner patch or at the object?

    Samples (``interpbench.datasets.shortcut``) carry ``patch_mask`` (bool H x W), ``patch_label`` (the class the
    patch colour stands for), ``shape_label`` / ``label`` (the object's class), ``masks`` (the object regions,
    patch pixels removed) and ``clean_image`` (the same image without the patch). On test images the patch and the
    object disagree.

    Per trial: ``patch_mass`` / ``object_mass`` (share of positive map mass on the patch / on the object of class
    ``label``), ``patch_hit`` / ``object_hit`` (the map's arg-max is nearer to the patch than to the object / nearer
    to the object than to the patch, distances to the regions' nearest pixels; a parameter-free pointing rule,
    since the patch (6 px) is smaller than a CAM cell (8 px) and a fixed tolerance would favour one resolution).
    Model behaviour on the same images: ``acc_patched`` (prediction = object class, with the
    conflicting patch), ``follows_patch`` (prediction = patch class), ``acc_clean`` (prediction = object class on
    ``clean_image``). A model that uses the shortcut has ``acc_clean`` high, ``acc_patched`` low, ``follows_patch``
    high; an explanation that exposes it has high ``patch_mass`` and ``patch_hit``.
    """

    name: ClassVar[str] = "shortcut_localization"
    headline_values: ClassVar[tuple[str, ...]] = ("patch_hit", "object_hit")
    version: ClassVar[str] = "1"
    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"patch_mask", "patch_label", "clean_image", "masks"})
    defaults: ClassVar[dict[str, Any]] = {"n_boot": 2000, "seed": 0}
    VALUES: ClassVar[tuple[str, ...]] = ("patch_mass", "object_mass", "patch_hit", "object_hit", "acc_patched",
                                         "follows_patch", "acc_clean")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        # distributed runs: per-trial lists, in rank order
        self.add_state("values", {k: [] for k in self.VALUES}, reduce="cat")

    def update(self, model: Model, batch: Batch, maps: torch.Tensor) -> None:
        _check_maps(self.name, maps, batch)
        missing = [k for k in ("patch_mask", "patch_label", "label", "clean_image")
                   if any(k not in s for s in batch.samples)]
        if missing:
            raise ComponentError(f"{self.name}: samples lack {missing}; run it on the 'shapes-shortcut' dataset")
        size = tuple(maps.shape[-2:])
        device = maps.device
        patch = torch.stack([torch.as_tensor(s["patch_mask"]).bool() for s in batch.samples]).to(device)
        labels = [int(s.get("shape_label", s["label"])) for s in batch.samples]  # the object's class
        empty = torch.zeros(size, dtype=torch.bool)
        objects = torch.stack([torch.as_tensor((s.get("masks") or {}).get(c, empty)).bool()
                               for s, c in zip(batch.samples, labels)]).to(device)
        points = argmax_points(maps)
        to_patch, to_object = region_distance(points, patch), region_distance(points, objects)
        clean = torch.stack([torch.as_tensor(s["clean_image"]) for s in batch.samples]).to(batch.images.device)
        with torch.no_grad():
            pred = model(batch.images).argmax(dim=1).cpu()
            pred_clean = model(clean).argmax(dim=1).cpu()
        label_t = torch.tensor(labels)
        patch_t = torch.tensor([int(s["patch_label"]) for s in batch.samples])
        new = {
            "patch_mass": positive_share(maps, patch), "object_mass": positive_share(maps, objects),
            "patch_hit": (to_patch < to_object).float(), "object_hit": (to_object < to_patch).float(),
            "acc_patched": (pred == label_t).float(), "follows_patch": (pred == patch_t).float(),
            "acc_clean": (pred_clean == label_t).float(),
        }
        for key, value in new.items():
            self.values[key] += value.detach().cpu().double().tolist()

    def compute(self) -> dict[str, float]:
        n = len(self.values["patch_mass"])
        if n == 0:
            raise ComponentError(f"{self.name}: no samples were scored; run it on the 'shapes-shortcut' dataset")
        out: dict[str, float] = {}
        ones = np.ones((n, 1))
        for key, values in self.values.items():
            column = np.asarray(values, dtype=np.float64)[:, None]
            out[key] = class_mean_ratio(column, ones)
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = cluster_bootstrap_ci(column, ones, self.params["n_boot"],
                                                                               self.params["seed"])
        out["n"] = float(n)
        return out

