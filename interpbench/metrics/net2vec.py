"""Net2Vec concept embeddings (Fong & Vedaldi, "Net2Vec: Quantifying and explaining how concepts are encoded by
filters in deep neural networks", CVPR 2018): how much better a concept is segmented by a learned linear
combination of a layer's units than by its best single unit.

Protocol (docs/protocols.md, "Concept embeddings over several units"):

- the probe is split (seeded) into a training and a held-out part;
- per concept ``c``: weights ``w_c`` (one per unit) and a bias ``b_c``; the predicted mask is
  ``sigmoid(w_c . A(x) + b_c) > 0.5``, ``A`` upsampled bilinearly to the label resolution (the combination is
  computed before upsampling: bilinear weights sum to 1, so the two orders agree);
- training: per-pixel binary cross-entropy with Net2Vec's class balance, positives weighted by
  ``alpha_c = 1 - sum_x |L_c(x)| / S_c`` and negatives by ``1 - alpha_c`` (``S_c`` the pixels of the training
  images that carry ``c``'s category), over the training images that carry ``c``'s category;
- score: the set IoU on the held-out images, computed like dissection's (the mask's pixels count in the union
  only on images that carry ``c``'s category), beside the single-unit baseline: the unit with the best dissection
  IoU on the training part (thresholds ``T_k`` of the whole probe), scored on the held-out part.

The objective is convex in ``(w_c, b_c)``; it is minimised by full-batch L-BFGS on standardised activations (per-unit
mean and standard deviation of the training part), all concepts at once. Fong & Vedaldi train with SGD on Broden;
an SGD budget that suits Broden's 63k images stops far from the optimum on a probe of a few hundred images, and
L-BFGS's answer depends neither on a learning rate nor on a data order.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from interpbench.core.base import ComponentError, Model, ModelMetric, RunContext
from interpbench.core.tabular import slug
from interpbench.metrics.dissection import (
    ImageTransform,
    _device,
    _label_size,
    in_eval_mode,
    iter_probe,
    layer_activations,
    probe_concepts,
    resolve_layers,
)
from interpbench.ops.dissect import (
    ConceptSet,
    ProbeLabels,
    Tally,
    accumulate_tally,
    concat_labels,
    encode_concepts,
    ground_truth_counts,
    iou_from_tally,
    quantile_position,
    threshold_from_top,
    upsample_maps,
)

# --------------------------------------------------------------------------------------------- maths


def concept_targets(labels: ProbeLabels, start: int, stop: int) -> torch.Tensor:
    """Bool ``B x (stop - start) x (H*W)``: pixel ``p`` of image ``b`` carries flat concept ``start + j`` (a pixel
    label, or an image-level label, which covers the whole image)."""
    carried = labels.region_onehot()[..., start:stop] > 0  # B x R x Cc
    index = labels.regions.long().unsqueeze(2).expand(-1, -1, stop - start)
    return carried.gather(1, index).transpose(1, 2)


def combination_logits(activations: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       size: tuple[int, int]) -> torch.Tensor:
    """``B x C x (H*W)``: ``w_c . A(x) + b_c`` upsampled bilinearly to ``size`` (Net2Vec eq. 1, before the sigmoid)."""
    low = torch.einsum("buhw,cu->bchw", activations, weight) + bias.view(1, -1, 1, 1)
    batch, concepts = low.shape[:2]
    return upsample_maps(low.reshape(batch * concepts, *low.shape[-2:]), size).reshape(batch, concepts, -1)


def balanced_bce(logits: torch.Tensor, targets: torch.Tensor, alpha: torch.Tensor, carries: torch.Tensor,
                 norm: torch.Tensor) -> torch.Tensor:
    """Net2Vec's class-balanced per-pixel BCE, summed over concepts: positives weighted ``alpha_c``, negatives
    ``1 - alpha_c``, only on images that carry the concept's category, each concept normalised by ``norm_c``.

    With ``s = softplus(z)``: ``-log(1 - sigmoid(z)) = s`` and ``-log sigmoid(z) = s - z``, so per concept
    ``(1 - alpha) sum_neg s + alpha sum_pos (s - z)``.
    """
    y = targets.to(logits.dtype)
    soft = F.softplus(logits)
    on_all = soft.sum(dim=2)  # B x C
    on_pos = (soft * y).sum(dim=2)
    z_pos = (logits * y).sum(dim=2)
    per_image = (1 - alpha) * (on_all - on_pos) + alpha * (on_pos - z_pos)
    return ((per_image * carries).sum(dim=0) / norm.clamp_min(1)).sum()


def category_pixels(labels: ProbeLabels, concepts: ConceptSet) -> torch.Tensor:
    """Per concept, the pixels of the images that carry its category (int64 ``C``)."""
    area = labels.size[0] * labels.size[1]
    per_category = labels.presence.long().sum(dim=0) * area
    return per_category[concepts.category_of(labels.presence.device)]


def fit_net2vec(activations: torch.Tensor, labels: ProbeLabels, concepts: ConceptSet, *, steps: int = 100,
                batch_size: int = 64, max_elements: int = 1 << 24,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Learn ``(weight C x U, bias C)`` on standardised activations; returns ``(weight, bias, mean U, std U)``.

    ``activations``: ``N x U x h x w`` of the training images; ``labels``: their :class:`ProbeLabels`. The loss
    (:func:`balanced_bce`) is convex; it is minimised by full-batch L-BFGS (strong Wolfe line search, at most
    ``steps`` iterations; each evaluation is one pass over the training images, ``batch_size`` at a time, so the
    result does not depend on a data order or a learning rate). Concepts are trained in blocks small enough that
    ``batch x block x H*W <= max_elements``; the blocks are independent.
    """
    n, units = activations.shape[:2]
    device = activations.device
    mean = activations.mean(dim=(0, 2, 3))
    std = activations.std(dim=(0, 2, 3)).clamp_min(1e-6)
    pixels = labels.size[0] * labels.size[1]
    positives = ground_truth_counts(labels, concepts.num_concepts).double()
    norm_all = category_pixels(labels, concepts).double()
    alpha_all = (1 - positives / norm_all.clamp_min(1)).float()  # Net2Vec: alpha = 1 - sum |L_c| / S
    category_of = concepts.category_of(device)
    block = max(1, max_elements // max(1, batch_size * pixels))
    weight = torch.zeros(concepts.num_concepts, units, device=device)
    bias = torch.zeros(concepts.num_concepts, device=device)
    standardised = (activations - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    for start in range(0, concepts.num_concepts, block):
        stop = min(concepts.num_concepts, start + block)
        w = torch.zeros(stop - start, units, device=device, requires_grad=True)
        b = torch.zeros(stop - start, device=device, requires_grad=True)
        alpha, norm = alpha_all[start:stop], norm_all[start:stop].float()
        optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=20, tolerance_grad=1e-6,
                                      tolerance_change=1e-9, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=False)
            total = torch.zeros((), device=device)
            for lo in range(0, n, batch_size):
                rows = torch.arange(lo, min(n, lo + batch_size), device=device)
                part = labels.select(rows)
                carries = part.presence[:, category_of[start:stop]].float()
                logits = combination_logits(standardised[rows], w, b, labels.size)
                loss = balanced_bce(logits, concept_targets(part, start, stop), alpha, carries, norm)
                loss.backward()
                total += loss.detach()
            return total

        optimizer.step(closure)
        weight[start:stop], bias[start:stop] = w.detach(), b.detach()
    return weight, bias, mean, std


@torch.no_grad()
def combination_tally(activations: torch.Tensor, labels: ProbeLabels, concepts: ConceptSet, weight: torch.Tensor,
                      bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *, batch_size: int = 64,
                      max_elements: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Set-IoU counts of the predicted masks ``w_c . A + b_c > 0``: ``(intersection, activation, ground_truth)``,
    int64 per concept, with the category-conditioned union of dissection."""
    n = activations.shape[0]
    device = activations.device
    num = concepts.num_concepts
    pixels = labels.size[0] * labels.size[1]
    category_of = concepts.category_of(device)
    inter = torch.zeros(num, dtype=torch.long, device=device)
    act = torch.zeros(num, dtype=torch.long, device=device)
    truth = torch.zeros(num, dtype=torch.long, device=device)
    block = max(1, max_elements // max(1, batch_size * pixels))
    for lo in range(0, n, batch_size):
        rows = torch.arange(lo, min(n, lo + batch_size), device=device)
        x = (activations[rows] - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        part = labels.select(rows)
        for start in range(0, num, block):
            stop = min(num, start + block)
            masks = combination_logits(x, weight[start:stop], bias[start:stop], labels.size) > 0
            targets = concept_targets(part, start, stop)
            carries = part.presence[:, category_of[start:stop]]
            inter[start:stop] += (masks & targets).sum(dim=(0, 2))
            act[start:stop] += (masks.sum(dim=2) * carries).sum(dim=0)
            truth[start:stop] += targets.sum(dim=(0, 2))
    return inter, act, truth


def set_iou(intersection: torch.Tensor, activation: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``I / (A + G - I)`` in float64 (0 where the union is empty)."""
    union = (activation + truth - intersection).double()
    return torch.where(union > 0, intersection.double() / union.clamp_min(1), torch.zeros_like(union))


# --------------------------------------------------------------------------------------------- runner


def collect_probe(model: nn.Module, dataset: Any, layer: str, *, batch_size: int = 32,
                  device: torch.device | str | None = None, label_size: int | Sequence[int] | None = None,
                  image_transform: ImageTransform | None = None, workers: int = 0
                  ) -> tuple[torch.Tensor, ProbeLabels, ConceptSet]:
    """All activations (``N x U x h x w``) of ``layer`` and the probe's labels, on the device."""
    concepts = probe_concepts(dataset)
    device = _device(model, device)
    acts, labels, size = [], [], None
    for indices, images, concept_maps in iter_probe(dataset, batch_size, workers):
        if size is None:
            size = _label_size(label_size, images, concept_maps)
        images = images.to(device)
        if image_transform is not None:
            images = image_transform(images, indices.to(device))
        acts.append(layer_activations(model, images, [layer])[layer])
        labels.append(encode_concepts(concept_maps, concepts, size, device))
    if not acts:
        raise ComponentError("net2vec: the probe dataset is empty")
    return torch.cat(acts), concat_labels(labels), concepts


@in_eval_mode
def net2vec(model: nn.Module, dataset: Any, layer: str, *, train_fraction: float = 0.5, quantile: float = 0.005,
            steps: int = 100, batch_size: int = 64, seed: int = 0,
            label_size: int | Sequence[int] | None = None, device: torch.device | str | None = None,
            image_transform: ImageTransform | None = None) -> list[dict[str, Any]]:
    """Net2Vec on one layer: one row per concept present in both parts of the probe, with ``net2vec_iou``,
    ``single_iou`` (best training unit, held-out IoU), ``single_unit`` (1-based), the pixel counts and
    ``top5_weight_share`` (share of ``sum |w_c|`` on standardised activations carried by the 5 largest weights)."""
    if not 0.0 < train_fraction < 1.0:
        raise ComponentError(f"net2vec: train_fraction {train_fraction!r} must lie strictly between 0 and 1")
    acts, labels, concepts = collect_probe(model, dataset, layer, batch_size=batch_size, device=device,
                                           label_size=label_size, image_transform=image_transform)
    n, units, h, w = acts.shape
    n_train = int(round(n * train_fraction))
    if n_train < 1 or n_train >= n:
        raise ComponentError(f"net2vec: {n} probe images cannot be split with train_fraction {train_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(acts.device)
    train, held = order[:n_train], order[n_train:]
    # single units: dissection thresholds of the whole probe, tallies of each part
    k = quantile_position(n * h * w, quantile)[0]
    top = torch.topk(acts.transpose(0, 1).reshape(units, -1), k, dim=1).values
    thresholds = threshold_from_top(top, n * h * w, quantile)
    ious = []
    for part in (train, held):
        tally = Tally.zeros(units, concepts, acts.device)
        for lo in range(0, len(part), batch_size):
            rows = part[lo:lo + batch_size]
            accumulate_tally(tally, acts[rows], thresholds, labels.select(rows))
        ious.append(iou_from_tally(tally, concepts))
    best_unit = ious[0].argmax(dim=0)
    single = ious[1].gather(0, best_unit.unsqueeze(0)).squeeze(0)
    # combinations
    weight, bias, mean, std = fit_net2vec(acts[train], labels.select(train), concepts, steps=steps,
                                          batch_size=batch_size)
    inter, act, truth = combination_tally(acts[held], labels.select(held), concepts, weight, bias, mean, std,
                                          batch_size=batch_size)
    combined = set_iou(inter, act, truth)
    _, _, train_truth = combination_tally(acts[train], labels.select(train), concepts, weight, bias, mean, std,
                                          batch_size=batch_size)
    magnitude = weight.abs()
    share = magnitude.topk(min(5, units), dim=1).values.sum(dim=1) / magnitude.sum(dim=1).clamp_min(1e-12)
    rows = []
    for j in range(concepts.num_concepts):
        if int(truth[j]) == 0 or int(train_truth[j]) == 0:
            continue
        category, name = concepts.describe(j)
        rows.append({"concept": name, "category": category, "net2vec_iou": float(combined[j]),
                     "single_iou": float(single[j]), "single_unit": int(best_unit[j]) + 1,
                     "train_pixels": int(train_truth[j]), "heldout_pixels": int(truth[j]),
                     "top5_weight_share": float(share[j])})
    return rows


def summarize(rows: list[dict[str, Any]], categories: Sequence[str]) -> dict[str, float]:
    """Means over concepts of ``net2vec_iou`` and ``single_iou``, the share where the combination is better, per
    category too."""
    def block(part: list[dict[str, Any]]) -> dict[str, float]:
        if not part:
            return {"concepts": 0.0, "net2vec_iou": math.nan, "single_iou": math.nan, "net2vec_better": math.nan}
        return {"concepts": float(len(part)),
                "net2vec_iou": sum(r["net2vec_iou"] for r in part) / len(part),
                "single_iou": sum(r["single_iou"] for r in part) / len(part),
                "net2vec_better": sum(r["net2vec_iou"] > r["single_iou"] for r in part) / len(part)}

    out = block(rows)
    for category in categories:
        out.update({f"{category}.{k}": v for k, v in block([r for r in rows if r["category"] == category]).items()
                    if k != "net2vec_better"})
    return out


class Net2Vec(ModelMetric):
    """Net2Vec (Fong & Vedaldi, CVPR 2018): held-out set IoU of a learned combination of units per concept,
    beside the best single unit's. Results per layer: ``concepts``, ``net2vec_iou``, ``single_iou`` (means over
    concepts), ``net2vec_better`` (share of concepts), and per category the means; ``LAYER-net2vec.csv`` per concept.
    """

    name: ClassVar[str] = "net2vec"
    headline_values: ClassVar[tuple[str, ...]] = ("**.net2vec_iou",)
    version: ClassVar[str] = "1"
    scope: ClassVar[str] = "model"
    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"concepts"})
    defaults: ClassVar[dict[str, Any]] = {
        "layers": None,
        "train_fraction": 0.5,
        "quantile": 0.005,
        "steps": 100,
        "batch_size": 64,
        "label_size": None,
    }

    def evaluate(self, model: Model, dataset: Any, ctx: RunContext) -> dict[str, float]:
        p = self.params
        concepts = probe_concepts(dataset)
        out: dict[str, float] = {}
        for layer in resolve_layers(model, p["layers"]):
            rows = net2vec(model, dataset, layer, train_fraction=p["train_fraction"], quantile=p["quantile"],
                           steps=p["steps"], batch_size=p["batch_size"], seed=ctx.seed % (2**31),
                           label_size=p["label_size"], device=ctx.device)
            out.update({f"{layer}.{k}": v for k, v in summarize(rows, concepts.categories).items()})
            if ctx.out_dir is not None:
                path = Path(ctx.out_dir) / f"{slug(layer)}-net2vec.csv"
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "w", newline="") as f:
                    writer = csv.DictWriter(f, ["concept", "category", "net2vec_iou", "single_iou", "single_unit",
                                                "train_pixels", "heldout_pixels", "top5_weight_share"])
                    writer.writeheader()
                    writer.writerows(rows)
        out["n"] = float(len(dataset))
        return out


__all__ = [
    "Net2Vec",
    "balanced_bce",
    "category_pixels",
    "collect_probe",
    "combination_logits",
    "combination_tally",
    "concept_targets",
    "fit_net2vec",
    "net2vec",
    "set_iou",
    "summarize",
]
