"""Unit ablation (Bau et al., PNAS 2020; Morcos et al., ICLR 2018) as a model-scope metric and a Python API.

The maths lives in :mod:`interpbench.ops.ablation`; this module runs it over a labelled probe (samples with an
``image`` and a ``label``) and, when the probe also carries concept maps, joins it with the dissection of the same
layer on the same probe.

Python API::

    from interpbench.metrics.ablation import unit_ablation
    result = unit_ablation(model, probe, "layer3")         # AblationResult
    result.single_accuracy                                 # float64 [U+1 x C]: class accuracy, row 0 unablated
    result.order                                           # long [C x U]: units per class, most important first
    result.cumulative                                      # rows: class, k, kind (top/random/other), accuracies
    result.curve                                           # rows: order, removed, fraction, accuracy
    result.summary()                                       # {"layer3.k4.top.class_accuracy": ..., ...}

Passes and memory: one forward pass over the probe caches the layer's activations (``N x U x h x w``, on the
device), the labels and the logits; every ablation after that runs only the part of the network after the layer
(see :class:`interpbench.ops.ablation.TailRunner`), many masks per batch. Distributed runs shard the probe's
batches over the ranks and sum the per-class counts.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from PIL import Image, ImageDraw

from interpbench.core.base import (
    ComponentError,
    Model,
    ModelMetric,
    NotApplicable,
    RunContext,
)
from interpbench.core.state import SINGLE
from interpbench.core.tabular import slug
from interpbench.metrics.dissection import (
    _device,
    dissect,
    in_eval_mode,
    layer_activations,
    resolve_layers,
)
from interpbench.ops.ablation import (
    TailRunner,
    ablation_counts,
    class_selectivity,
    others_order,
    powers_of_two,
    rank_units,
    removal_masks,
    spearman,
    split_halves,
)
from interpbench.ops.dissect import upsample_maps
from interpbench.ops.hooks import capture_outputs

FILLS = ("zero", "mean")


def _collate(samples: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    if not all("label" in s for s in samples):
        raise ComponentError("unit ablation: probe samples need a 'label' (the class index); use a classification "
                             "dataset such as the shapes world")
    return torch.stack([s["image"] for s in samples]), torch.as_tensor([int(s["label"]) for s in samples])


@dataclasses.dataclass
class AblationResult:
    """The ablation study of one layer (tensors on the CPU). Accuracies are per class (the share of the class's
    images classified as it); ``split`` 0 ranks units, 1 measures removals."""

    layer: str
    fill: str
    class_names: list[str]
    mode: str  # "tail" or "hook": how the ablated activations were run
    n_images: int
    class_images: torch.Tensor  # float64 [2 x C]: images per class in the ranking / measurement split
    single_accuracy: torch.Tensor  # float64 [U+1 x C] whole probe; row 0: nothing removed, row 1+u: unit u removed
    single_probability: torch.Tensor  # float64 [U+1 x C]: mean true-class probability, same rows
    order: torch.Tensor  # long [C x U]: per class, units by importance on the ranking split
    selectivity: torch.Tensor  # float64 [U]
    class_means: torch.Tensor  # float64 [U x C]: mean activation per class
    importance: torch.Tensor  # float64 [U]: drop of the class-balanced mean true-class probability, whole probe
    cumulative: list[dict[str, Any]]
    curve: list[dict[str, Any]]
    baseline: torch.Tensor  # float64 [C]: class accuracy on the measurement split, nothing removed

    @property
    def units(self) -> int:
        return int(self.selectivity.numel())

    def accuracy_drop(self) -> torch.Tensor:
        """Float64 ``U x C``: the fall of each class's accuracy when the unit alone is removed (whole probe)."""
        return self.single_accuracy[0:1] - self.single_accuracy[1:]

    def summary(self, ks: Sequence[int] = (1, 2, 4, 8, 16, 32)) -> dict[str, float]:
        out: dict[str, float] = {}
        p = self.layer
        out[f"{p}.baseline_accuracy"] = float(self.baseline.nanmean())
        out[f"{p}.single.max_class_drop"] = float(self.accuracy_drop().max(dim=0).values.nanmean())
        for k in ks:
            for kind in ("top", "random", "other"):
                rows = [r for r in self.cumulative if r["k"] == k and r["kind"] == kind]
                if not rows:
                    continue
                out[f"{p}.k{k}.{kind}.class_accuracy"] = _mean(r["class_accuracy"] for r in rows)
                out[f"{p}.k{k}.{kind}.rest_accuracy"] = _mean(r["rest_accuracy"] for r in rows)
                out[f"{p}.k{k}.{kind}.class_probability"] = _mean(r["class_probability"] for r in rows)
        for order in ("importance", "random", "selectivity"):
            rows = [r for r in self.curve if r["order"] == order and abs(r["fraction"] - 0.5) < 1e-9]
            if rows:
                out[f"{p}.half_removed.{order}.accuracy"] = rows[0]["accuracy"]
        out[f"{p}.rho_selectivity_importance"] = spearman(self.selectivity, self.importance)
        out[f"{p}.units"] = float(self.units)
        return out


def _mean(values: Any) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


@in_eval_mode
def unit_ablation(model: torch.nn.Module, dataset: Any, layer: str, *, fill: str = "zero", ks: Sequence[int] | None = None,
                  random_draws: int = 4, fractions: Sequence[float] = tuple(i / 10 for i in range(11)),
                  seed: int = 0, batch_size: int = 64, device: torch.device | str | None = None,
                  max_rows: int = 4096, cache_mb: float = 2048, tail: str = "auto", workers: int = 0,
                  dist: Any = None) -> AblationResult:
    """Remove units of ``layer`` and measure every class's accuracy (Bau et al. 2020; Morcos et al. 2018).

    ``fill``: what a removed unit outputs, ``"zero"`` (the papers) or ``"mean"`` (its mean over the probe's images
    and positions). The probe is split in two halves, per class, seeded with ``seed``
    (:func:`interpbench.ops.ablation.split_halves`): units are ranked per class on the first (the drop of the class's accuracy when the unit alone is removed, ties broken by the drop of
    its mean true-class probability) and the removal of several units is measured on the second. ``ks``: the numbers
    of units removed per class (default 1, 2, 4, ... up to all), each against ``random_draws`` random sets of ``k``
    units and the ``k`` units most important to the other classes. ``fractions``: the whole-layer curve, units
    removed by importance (class-balanced mean true-class probability drop on the first half), by selectivity
    (highest first) and at random. ``tail``: ``"auto"`` (the network after the layer alone when it can be cut
    there, else whole-network passes with a hook), ``"tail"`` or ``"hook"``.
    """
    dist = SINGLE if dist is None else dist
    if fill not in FILLS:
        raise ComponentError(f"unit ablation: fill {fill!r} must be one of {FILLS}")
    if random_draws < 1:
        raise ComponentError(f"unit ablation: random_draws {random_draws!r} must be at least 1")
    root = model.net if isinstance(model, Model) else model
    runner = TailRunner(model, root, layer, mode=tail)
    device = _device(model, device)
    class_names = list(getattr(model, "class_names", None) or getattr(dataset, "classes", None) or [])
    n_images = len(dataset)
    if n_images < 4:
        raise ComponentError(f"unit ablation: the probe has {n_images} images; it needs at least 4 (two per half)")

    # pass 1: the layer's activations, labels and logits of this rank's block
    n_batches = math.ceil(n_images / batch_size)
    block = dist.shard(n_batches)
    sampler = [range(b * batch_size, min(n_images, (b + 1) * batch_size)) for b in block]
    cache: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]] = []
    budget, used = cache_mb * 2**20, 0.0
    module = dict(root.named_modules())[layer]
    units = None

    def first_pass() -> None:
        nonlocal units, used
        if not sampler:
            return
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=_collate)
        for rows, (images, labels) in zip(sampler, loader):
            images, labels = images.to(device), labels.to(device)
            with torch.no_grad(), capture_outputs({layer: module}, detach=True) as capture:
                logits = model(images)
            acts = capture[layer]
            if not isinstance(acts, torch.Tensor) or acts.dim() < 2:
                raise NotApplicable(f"unit ablation: layer {layer!r} does not output a B x U (x h x w) tensor")
            if capture.modified_in_place(layer):
                raise ComponentError(f"unit ablation: the output of layer {layer!r} was changed in place later (e.g. "
                                     "ReLU(inplace=True)); ablate the module that produces the final value")
            acts = acts.float()
            if units is None:
                units = acts.shape[1]
                runner.check(acts, logits)
            keep_images = images if runner.mode == "hook" else None
            used += acts.numel() * 4 + (0 if keep_images is None else keep_images.numel() * 4)
            if used > budget:
                raise ComponentError(f"unit ablation: the cached activations of layer {layer!r} exceed cache_mb "
                                     f"{cache_mb}; raise cache_mb or use a smaller probe (--limit)")
            cache.append((acts, keep_images, labels, torch.as_tensor(list(rows), device=device)))

    dist.agree(first_pass)  # an error on one rank fails every rank here, before the collectives below
    units = _agreed_units(dist, units, layer)
    mine = torch.cat([l.cpu() for _, _, l, _ in cache]) if cache else torch.zeros(0, dtype=torch.long)
    every = torch.cat(dist.all_gather_objects(mine)) if dist.world > 1 else mine  # rank blocks in dataset order
    split_of = split_halves(every, seed).to(device)
    cache = [(a, i, l, split_of[rows]) for a, i, l, rows in cache]
    num_classes = len(class_names) if class_names else None
    if num_classes is None:
        largest = max((int(l.max()) + 1 for _, _, l, _ in cache), default=0)
        num_classes = max(dist.all_gather_objects(largest)) if dist.world > 1 else largest
    if num_classes < 2:
        raise ComponentError("unit ablation: the model has fewer than two classes")

    # per-class statistics: images per split, mean activation per class (selectivity), mean per unit (fill)
    class_images = torch.zeros(2, num_classes, dtype=torch.float64, device=device)
    class_sums = torch.zeros(units, num_classes, dtype=torch.float64, device=device)
    unit_sum = torch.zeros(units + 1, dtype=torch.float64, device=device)  # last: positions counted
    for acts, _, labels, splits in cache:
        for s in (0, 1):
            class_images[s] += torch.bincount(labels[splits == s], minlength=num_classes).double()
        per_image = acts.double().flatten(2).mean(dim=2) if acts.dim() > 2 else acts.double()
        class_sums.index_add_(1, labels, per_image.T)
        unit_sum[:units] += acts.double().transpose(0, 1).reshape(units, -1).sum(dim=1)
        unit_sum[units] += acts[:, 0].numel()
    for t in (class_images, class_sums, unit_sum):
        dist.all_reduce_sum(t)
    counts = class_images.sum(dim=0)
    class_means = class_sums / counts.clamp(min=1)
    fill_values = None if fill == "zero" else (unit_sum[:units] / unit_sum[units].clamp(min=1)).float()

    def run(keep: torch.Tensor, split: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed (over ranks) correct counts and probability sums ``M x C`` of ``keep`` on a split (None: all)."""
        correct = torch.zeros(len(keep), num_classes, dtype=torch.float64, device=device)
        probability = torch.zeros_like(correct)
        for acts, images, labels, splits in cache:
            rows = torch.ones_like(labels, dtype=torch.bool) if split is None else splits == split
            if not rows.any():
                continue
            c, p = ablation_counts(runner, acts[rows], None if images is None else images[rows], labels[rows], keep,
                                   num_classes, fill=fill_values, max_rows=max_rows)
            correct += c
            probability += p
        return dist.all_reduce_sum(correct), dist.all_reduce_sum(probability)

    # pass 2: every unit alone, per split
    single = removal_masks(units, [[]] + [[u] for u in range(units)], device)
    correct_rank, prob_rank = run(single, 0)
    correct_measure, prob_measure = run(single, 1)
    whole_acc = ((correct_rank + correct_measure) / counts.clamp(min=1)).cpu()
    whole_prob = ((prob_rank + prob_measure) / counts.clamp(min=1)).cpu()
    whole_acc[:, counts.cpu() == 0] = float("nan")
    whole_prob[:, counts.cpu() == 0] = float("nan")
    rank_acc = (correct_rank / class_images[0].clamp(min=1)).cpu()
    rank_prob = (prob_rank / class_images[0].clamp(min=1)).cpu()
    order = rank_units(rank_acc[0:1] - rank_acc[1:], rank_prob[0:1] - rank_prob[1:])
    present = (class_images[0] > 0).cpu()
    split_importance = (rank_prob[0:1] - rank_prob[1:])[:, present].mean(dim=1)
    importance = (whole_prob[0:1] - whole_prob[1:])[:, (counts > 0).cpu()].mean(dim=1)
    selectivity = class_selectivity(class_means.cpu())

    # pass 3: cumulative removals per class and the whole-layer curve, on the measurement split
    ks = sorted({int(k) for k in (ks or powers_of_two(units)) if 1 <= int(k) <= units})
    rng = torch.Generator().manual_seed(int(seed) % (2**63) + 1)
    removed: list[list[int]] = [[]]
    meta: list[dict[str, Any]] = [{"kind": "none"}]
    for c in range(num_classes):
        for k in ks:
            top = [int(u) for u in order[c, :k]]
            removed.append(top)
            meta.append({"class": c, "k": k, "kind": "top", "draw": 0})
            taken = set(top)
            other = [u for u in others_order(order, c) if u not in taken][:k]
            if len(other) == k:
                removed.append(other)
                meta.append({"class": c, "k": k, "kind": "other", "draw": 0})
            for d in range(random_draws):
                removed.append([int(u) for u in torch.randperm(units, generator=rng)[:k]])
                meta.append({"class": c, "k": k, "kind": "random", "draw": d})
    by_importance = [int(u) for u in torch.argsort(-split_importance, stable=True)]
    by_selectivity = [int(u) for u in torch.argsort(-selectivity, stable=True)]
    random_orders = [[int(u) for u in torch.randperm(units, generator=rng)] for _ in range(random_draws)]
    for f in fractions:
        n = int(round(float(f) * units))
        for name, orders in (("importance", [by_importance]), ("selectivity", [by_selectivity]),
                             ("random", random_orders)):
            for d, o in enumerate(orders):
                removed.append(o[:n])
                meta.append({"curve": name, "fraction": float(f), "removed": n, "draw": d})
    correct, probability = run(removal_masks(units, removed, device), 1)
    measure_n = class_images[1].cpu()
    acc = (correct.cpu() / measure_n.clamp(min=1))
    acc[:, measure_n == 0] = float("nan")
    prob = (probability.cpu() / measure_n.clamp(min=1))
    prob[:, measure_n == 0] = float("nan")
    baseline = acc[0]

    cumulative: list[dict[str, Any]] = []
    grouped: dict[tuple[int, int, str], list[int]] = {}
    for m, info in enumerate(meta):
        if "class" in info:
            grouped.setdefault((info["class"], info["k"], info["kind"]), []).append(m)
    for (c, k, kind), rows in grouped.items():
        class_acc = [float(acc[m, c]) for m in rows]
        rest = [float(acc[m, [j for j in range(num_classes) if j != c]].nanmean()) for m in rows]
        cumulative.append({"class": c, "k": k, "kind": kind, "class_accuracy": _mean(class_acc),
                           "rest_accuracy": _mean(rest), "class_probability": _mean(float(prob[m, c]) for m in rows),
                           "baseline_class_accuracy": float(baseline[c]),
                           "baseline_rest_accuracy": float(baseline[[j for j in range(num_classes) if j != c]].nanmean()),
                           "units": removed[rows[0]] if kind != "random" else []})
    curve: list[dict[str, Any]] = []
    curve_groups: dict[tuple[str, float], list[int]] = {}
    for m, info in enumerate(meta):
        if "curve" in info:
            curve_groups.setdefault((info["curve"], info["fraction"]), []).append(m)
    for (name, f), rows in curve_groups.items():
        curve.append({"order": name, "fraction": f, "removed": meta[rows[0]]["removed"],
                      "accuracy": _mean(float(acc[m].nanmean()) for m in rows)})
    return AblationResult(layer=layer, fill=fill, class_names=class_names or [str(c) for c in range(num_classes)],
                          mode=runner.mode, n_images=n_images, class_images=class_images.cpu(),
                          single_accuracy=whole_acc, single_probability=whole_prob, order=order,
                          selectivity=selectivity, class_means=class_means.cpu(), importance=importance,
                          cumulative=cumulative, curve=curve, baseline=baseline)


def _agreed_units(dist: Any, units: int | None, layer: str) -> int:
    seen = [u for u in dist.all_gather_objects(units) if u is not None] if dist.world > 1 else [units]
    seen = [u for u in seen if u is not None]
    if not seen:
        raise ComponentError("unit ablation: the probe dataset is empty")
    if len(set(seen)) != 1:
        raise ComponentError(f"unit ablation: layer {layer!r} has {sorted(set(seen))} units on different ranks")
    return int(seen[0])


# --------------------------------------------------------------------------------------------- dissection join


def join_dissection(result: AblationResult, dissection: Any, top: int = 4) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per class, its ``top`` most important units with their dissection labels (concept, category, IoU, detector),
    and the rank correlations (Spearman) of the units' best IoU with their importance and with their selectivity."""
    layer = dissection.layers[result.layer]
    score = layer.labels.score.double()
    if score.numel() != result.units:
        raise ComponentError(f"unit ablation: dissection of {result.layer!r} has {score.numel()} units, "
                             f"ablation {result.units}")
    drop = result.accuracy_drop()
    rows = []
    for c, name in enumerate(result.class_names):
        for rank in range(min(top, result.units)):
            u = int(result.order[c, rank])
            category, concept = dissection.concepts.describe(int(layer.labels.label[u]))
            rows.append({"class": name, "rank": rank + 1, "unit": u + 1, "accuracy_drop": float(drop[u, c]),
                         "concept": concept, "category": category, "iou": float(score[u]),
                         "detector": bool(float(score[u]) > dissection.iou_threshold),
                         "selectivity": float(result.selectivity[u])})
    values = {f"{result.layer}.rho_iou_importance": spearman(score, result.importance),
              f"{result.layer}.rho_iou_selectivity": spearman(score, result.selectivity)}
    matches = [r for r in rows if r["rank"] == 1]
    same = [r["detector"] and r["concept"] == r["class"] for r in matches]
    values[f"{result.layer}.top1_detects_class"] = sum(same) / len(same) if same else float("nan")
    return rows, values


@in_eval_mode
def class_units_figure(model: torch.nn.Module, dataset: Any, result: AblationResult, dissection: Any, path: str | Path,
                       *, units: int = 2, images: int = 3, device: torch.device | str | None = None) -> Path:
    """A PNG with one row per (class, one of its ``units`` most important units): the unit's dissection label and
    IoU, its accuracy drop for the class, and its top-activating probe images with the unit's mask (``A_k > T_k``)
    bright and the rest dimmed, as dissection's unit images."""
    dis = dissection.layers[result.layer]
    drop = result.accuracy_drop()
    rows = [(c, int(result.order[c, r])) for c in range(len(result.class_names)) for r in range(min(units, result.units))]
    picks = {u: [int(i) for i in dis.top_images[u, :images]] for _, u in rows}
    needed = sorted({i for chosen in picks.values() for i in chosen})
    device = _device(model, device)
    batch = torch.stack([dataset[i]["image"] for i in needed]).to(device)
    acts = layer_activations(model, batch, [result.layer])[result.layer]
    height, width = batch.shape[-2:]
    scale = max(1, math.ceil(96 / max(height, width)))
    tile_h, tile_w, header, pad = height * scale, width * scale, 14, 4
    columns = max(len(p) for p in picks.values())
    canvas = Image.new("RGB", (max(pad + columns * (tile_w + pad), 420), pad + len(rows) * (header + tile_h + pad)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for row, (c, u) in enumerate(rows):
        top = pad + row * (header + tile_h + pad)
        category, concept = dissection.concepts.describe(int(dis.labels.label[u]))
        iou = float(dis.labels.score[u])
        draw.text((pad, top), f"{result.class_names[c]}: unit {u + 1}, {concept} ({category}) IoU {iou:.3f}, "
                              f"accuracy drop {float(drop[u, c]):+.2f}", fill="black")
        for col, index in enumerate(picks[u]):
            j = needed.index(index)
            mask = upsample_maps(acts[j, u][None], (height, width), torch.float64)[0] > float(dis.thresholds[u])
            shown = batch[j].float().clamp(0, 1).cpu()
            shown = torch.where(mask.cpu()[None], shown, 0.3 * shown)
            pixels = (shown.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            tile = Image.fromarray(pixels).resize((tile_w, tile_h), Image.NEAREST)
            canvas.paste(tile, (pad + col * (tile_w + pad), top + header))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


# --------------------------------------------------------------------------------------------- artefacts


def write_tables(result: AblationResult, out_dir: str | Path, class_units: list[dict[str, Any]] | None = None,
                 labels: dict[int, tuple[str, float]] | None = None) -> list[Path]:
    """``LAYER-ablation-units.csv`` (per unit: importance, selectivity, per-class accuracy drop, dissection label),
    ``LAYER-ablation-classes.csv`` (per class, k and kind), ``LAYER-ablation-curve.csv``,
    ``LAYER-ablation-class-units.csv`` (with a dissection), ``LAYER-ablation-k.png`` (matplotlib) and
    ``LAYER-ablation.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = slug(result.layer)
    written = []
    drop = result.accuracy_drop()
    path = out / f"{stem}-ablation-units.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["unit", "importance", "selectivity", "concept", "iou",
                    *[f"drop-{n}" for n in result.class_names]])
        for u in sorted(range(result.units), key=lambda u: (-float(result.importance[u]), u)):
            concept, iou = (labels or {}).get(u, ("", float("nan")))
            w.writerow([u + 1, float(result.importance[u]), float(result.selectivity[u]), concept, iou,
                        *[float(drop[u, c]) for c in range(len(result.class_names))]])
    written.append(path)
    path = out / f"{stem}-ablation-classes.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "k", "kind", "class_accuracy", "rest_accuracy", "class_probability",
                    "baseline_class_accuracy", "baseline_rest_accuracy", "units"])
        for r in sorted(result.cumulative, key=lambda r: (r["class"], r["k"], r["kind"])):
            w.writerow([result.class_names[r["class"]], r["k"], r["kind"], r["class_accuracy"], r["rest_accuracy"],
                        r["class_probability"], r["baseline_class_accuracy"], r["baseline_rest_accuracy"],
                        " ".join(str(u + 1) for u in r["units"])])
    written.append(path)
    path = out / f"{stem}-ablation-curve.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["order", "fraction", "removed", "accuracy"])
        w.writeheader()
        w.writerows(sorted(result.curve, key=lambda r: (r["order"], r["fraction"])))
    written.append(path)
    if class_units:
        path = out / f"{stem}-ablation-class-units.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, list(class_units[0]))
            w.writeheader()
            w.writerows(class_units)
        written.append(path)
    figure = plot_k(result, out / f"{stem}-ablation-k.png")
    if figure is not None:
        written.append(figure)
    path = out / f"{stem}-ablation.json"
    path.write_text(json.dumps({"layer": result.layer, "fill": result.fill, "mode": result.mode,
                                "n_images": result.n_images, "classes": result.class_names,
                                "images_per_class": result.class_images.tolist(), "summary": result.summary()},
                               indent=1))
    written.append(path)
    return written


def plot_k(result: AblationResult, path: Path) -> Path | None:
    """Class accuracy against the number of units removed (top, other classes' and random units), one panel per
    class, log2 x axis; None when matplotlib is not installed."""
    try:  # lazy: matplotlib is optional, loaded only when the figure is drawn
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    classes = len(result.class_names)
    cols = min(4, classes)
    rows = math.ceil(classes / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False, sharey=True)
    styles = {"top": ("tab:red", "its top units"), "other": ("tab:blue", "other classes' top units"),
              "random": ("tab:gray", "random units")}
    for c, name in enumerate(result.class_names):
        ax = axes[c // cols][c % cols]
        for kind, (color, label) in styles.items():
            pts = sorted((r["k"], r["class_accuracy"]) for r in result.cumulative if r["class"] == c and r["kind"] == kind)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=label, markersize=3)
        ax.set_xscale("log", base=2)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(-0.05, 1.05)
    for c in range(classes, rows * cols):
        axes[c // cols][c % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.supxlabel(f"units of {result.layer} removed (k)")
    fig.supylabel("class accuracy")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- metric


class MemoryProbe(torch.utils.data.Dataset):
    """A probe's samples read once and held in memory, with its ``concept_names()`` and ``classes``."""

    def __init__(self, dataset: Any) -> None:
        self.samples = [dataset[i] for i in range(len(dataset))]
        self.concept_names = dataset.concept_names
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]


class UnitAblation(ModelMetric):
    """Unit ablation (Bau et al., PNAS 2020; Morcos et al., ICLR 2018): what each class loses when units of a layer
    are removed, beside what dissection says the units detect.

    Parameters: ``layers`` (None: the model's ``cam_layer``), ``fill`` (``"zero"`` or ``"mean"``), ``ks`` (None:
    1, 2, 4, ... all units), ``random_draws`` (4), ``batch_size`` (None: the run's), ``max_rows`` (rows per tail
    pass), ``cache_mb``, ``dissect`` (join with the dissection of the layer when the probe has concepts),
    ``quantile`` / ``iou_threshold`` (that dissection's), ``class_units`` (units per class in the join table),
    ``memory_probe`` (with the join in one process, probes up to this many images are read into memory once),
    ``figure_units`` / ``figure_images`` (the PNG of each class's top units, with a dissection).
    Results per layer: ``baseline_accuracy``; ``kK.{top,other,random}.{class,rest}_accuracy`` (mean over classes of
    the class's accuracy, and of the other classes' mean accuracy, after removing ``k`` units, on the measurement
    half) and ``kK.{top,other,random}.class_probability`` (the class's mean true-class probability) for k = 1, 2,
    4, 8, 16, 32; ``single.max_class_drop``; ``half_removed.{importance,selectivity,random}.accuracy``;
    ``rho_selectivity_importance`` and, with a dissection, ``rho_iou_importance``, ``rho_iou_selectivity`` and
    ``top1_detects_class``.
    """

    name: ClassVar[str] = "unit_ablation"
    headline_values: ClassVar[tuple[str, ...]] = ("**.k8.top.class_accuracy", "**.k8.random.class_accuracy",
                                                  "**.rho_iou_importance", "**.rho_selectivity_importance")
    version: ClassVar[str] = "1"
    scope: ClassVar[str] = "model"
    higher_is_better: ClassVar[bool] = False  # lower class accuracy after removing its top units: units that matter
    needs: ClassVar[frozenset[str]] = frozenset({"label"})
    distributed: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        "layers": None,
        "fill": "zero",
        "ks": None,
        "random_draws": 4,
        "batch_size": None,
        "max_rows": 4096,
        "cache_mb": 2048,
        "dissect": True,
        "quantile": 0.005,
        "iou_threshold": 0.04,
        "class_units": 4,
        "memory_probe": 1024,  # probes up to this many images are read once into memory (one process)
        "figure_units": 2,  # units per class in LAYER-ablation-class-units.png
        "figure_images": 3,  # top-activating images per unit there
    }

    def evaluate(self, model: Model, dataset: Any, ctx: RunContext) -> dict[str, float]:
        p = self.params
        out: dict[str, float] = {}
        names = resolve_layers(model, p["layers"])
        dissection = None
        joined = p["dissect"] and callable(getattr(dataset, "concept_names", None))
        if joined and (ctx.dist is None or ctx.dist.world == 1) and len(dataset) <= p["memory_probe"]:
            dataset = MemoryProbe(dataset)  # the dissection and the ablation read the probe once, not twice
        if joined:
            dissection = dissect(model, dataset, names, quantile=p["quantile"], iou_threshold=p["iou_threshold"],
                                 batch_size=p["batch_size"] or ctx.batch_size, device=ctx.device,
                                 workers=ctx.workers, dist=ctx.dist, top_images=p["figure_images"])
        for layer in names:
            result = unit_ablation(model, dataset, layer, fill=p["fill"], ks=p["ks"], random_draws=p["random_draws"],
                                   seed=ctx.seed % (2**31), batch_size=p["batch_size"] or ctx.batch_size,
                                   device=ctx.device, max_rows=p["max_rows"], cache_mb=p["cache_mb"],
                                   workers=ctx.workers, dist=ctx.dist)
            out.update(result.summary())
            class_units, labels = None, None
            if dissection is not None:
                class_units, values = join_dissection(result, dissection, p["class_units"])
                out.update(values)
                dis = dissection.layers[layer]
                labels = {u: (dissection.concepts.describe(int(dis.labels.label[u]))[1], float(dis.labels.score[u]))
                          for u in range(dis.units)}
            if ctx.out_dir is not None:
                write_tables(result, ctx.out_dir, class_units, labels)
                if dissection is not None:
                    class_units_figure(model, dataset, result, dissection,
                                       Path(ctx.out_dir) / f"{slug(layer)}-ablation-class-units.png",
                                       units=p["figure_units"], images=p["figure_images"], device=ctx.device)
        out["n"] = float(len(dataset))
        return out


__all__ = [
    "AblationResult",
    "UnitAblation",
    "class_units_figure",
    "join_dissection",
    "plot_k",
    "unit_ablation",
    "write_tables",
]
