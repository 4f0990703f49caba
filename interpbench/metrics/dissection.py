"""Network dissection (Bau, Zhou, Khosla, Oliva, Torralba, CVPR 2017) as a model-scope metric and a Python API.

The maths lives in :mod:`interpbench.ops.dissect`; this module runs it over a probe dataset (samples with an
``image`` and ``concepts``, and a ``concept_names()`` function) and reports it.

Python API (used by the unit-drift and adversarial-consistency measures)::

    from interpbench.metrics.dissection import dissect
    result = dissect(model, probe, ["layer3"])            # DissectionResult
    result.layers["layer3"].thresholds                     # T_k, float64 [U]
    result.layers["layer3"].iou                            # IoU, float64 [U x C] (C = result.concepts.num_concepts)
    result.layers["layer3"].labels.label                   # arg-max concept per unit (-1: none)
    result.detectors("layer3")                             # bool [U]
    result.unit_label("layer3", 5)                         # ("color", "red", 0.61) or None
    result.summary()                                       # {"layer3.detectors": ..., "layer3.color.unique": ...}
    result.write(out_dir)                                  # tally CSVs + summary JSON

``dissect(..., image_transform=f)`` replaces each batch of probe images by ``f(images, indices)`` on the device
before the forward pass (e.g. adversarial versions: the ground-truth concepts are reused);
``dissect(..., thresholds={"layer3": T})`` reuses fixed thresholds instead of computing them.
:func:`layer_activations` and :func:`collect_activations` give the raw feature maps (e.g. to match units of two
models by activation correlation).

Memory and passes: thresholds need every activation before the tally can start, so the probe is read twice. When
the activations of all layers and the encoded labels of the whole probe fit in ``cache_mb`` they are kept on the
device after the first pass and the second pass reads them (one forward per image); otherwise the second pass
reloads the data and runs the model again (two forwards per image, memory bounded by a batch).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
import json
import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

import torch
from PIL import Image, ImageDraw
from torch import nn

from interpbench.core.base import (
    ComponentError,
    Model,
    ModelMetric,
    RunContext,
)
from interpbench.core.state import SINGLE
from interpbench.core.tabular import slug
from interpbench.ops.dissect import (
    ConceptSet,
    ProbeLabels,
    StreamingTopK,
    Tally,
    UnitLabels,
    accumulate_tally,
    count_detectors,
    encode_concepts,
    gathered_top,
    iou_from_tally,
    label_units,
    quantile_position,
    sum_tally,
    threshold_from_top,
    upsample_maps,
)
from interpbench.ops.hooks import capture_outputs, named_module
from interpbench.ops.tokens import feature_map_or_raise

ImageTransform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------- probe access


def in_eval_mode(fn: Callable) -> Callable:
    """Run ``fn(model, ...)`` with the model in eval mode (batch norm statistics frozen), restoring its mode."""
    @functools.wraps(fn)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        was_training = model.training
        model.eval()
        try:
            return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)

    return wrapper


def probe_concepts(dataset: Any) -> ConceptSet:
    """The probe's :class:`ConceptSet`, from ``dataset.concept_names()`` (``{category: ["-", names...]}``)."""
    names = getattr(dataset, "concept_names", None)
    if not callable(names):
        raise ComponentError(
            f"dataset {getattr(dataset, 'name', type(dataset).__name__)!r} has no concept_names(): a dissection probe "
            "must say which concepts its label codes mean (e.g. the 'shapes' world or a Broden directory)"
        )
    return ConceptSet.from_names(names())


def resolve_layers(model: nn.Module, layers: str | Sequence[str] | None) -> list[str]:
    """Layer names: ``None`` -> the model's ``cam_layer`` (its last convolutional stage); ``"a,b"`` or a list."""
    if layers is None or layers == "" or layers == []:
        default = getattr(model, "cam_layer", None)
        if default is None:
            raise ComponentError("dissection: no layers given and the model has no cam_layer; pass layers=['name']")
        return [default]
    if isinstance(layers, str):
        layers = [part.strip() for part in layers.split(",") if part.strip()]
    names = [str(name) for name in layers]
    if len(set(names)) != len(names):
        raise ComponentError(f"dissection: layers {names} name a layer twice")
    return names


def _modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    root = model.net if isinstance(model, Model) else model
    owner = f"model {model.spec!r}" if isinstance(model, Model) else "model"
    return {name: named_module(root, name, owner) for name in names}


def _device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(model, Model):
        return model.device
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _collate(samples: list[dict]) -> tuple[torch.Tensor, list[dict]]:
    try:
        images = torch.stack([s["image"] for s in samples])
    except RuntimeError as exc:
        shapes = sorted({tuple(s["image"].shape) for s in samples})
        raise ComponentError(f"dissection: probe images differ in size {shapes}; load the probe with a fixed size") from exc
    return images, [s.get("concepts") or {} for s in samples]


def iter_probe(dataset: Any, batch_size: int, workers: int = 0,
               batches: range | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[dict]]]:
    """``(indices, images, concept dicts)`` per batch, in dataset order; ``batches``: only these batch numbers (a
    rank's block in a distributed dissection), default all."""
    if batches is None:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                             collate_fn=_collate)
        numbers: Iterable[int] = itertools.count()
    else:
        n = len(dataset)
        numbers = batches
        sampler = [range(b * batch_size, min(n, (b + 1) * batch_size)) for b in batches]
        if not sampler:
            return
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=_collate)
    for b, (images, concepts) in zip(numbers, loader):
        yield torch.arange(b * batch_size, b * batch_size + len(images)), images, concepts


@torch.no_grad()
def layer_activations(model: nn.Module, images: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Float32 ``B x U x h x w`` outputs of ``layers`` on ``images`` (one forward pass, no gradient).

    A transformer's token layer is folded into its patch grid (a unit is a channel over the patches; prefix tokens
    dropped): :func:`interpbench.ops.tokens.as_feature_map`."""
    modules = _modules(model, layers)
    with capture_outputs(modules, detach=True) as capture:
        model(images)
    out = {}
    for name in layers:
        value = feature_map_or_raise("dissection", name, model, capture[name], modules[name],
                                     tuple(images.shape[-2:]),
                                     "dissect a convolutional stage or a transformer block (e.g. the model's cam_layer)")
        if capture.modified_in_place(name):
            raise ComponentError(
                f"dissection: the output of layer {name!r} was changed in place by a later operation (e.g. "
                "ReLU(inplace=True)); dissect the module that produces the final value (e.g. that ReLU)"
            )
        out[name] = value.float().contiguous()
    return out


@in_eval_mode
def collect_activations(model: nn.Module, dataset: Any, layers: str | Sequence[str] | None = None, *,
                        batch_size: int = 32, device: torch.device | str | None = None, reduce: str | None = None,
                        image_transform: ImageTransform | None = None, workers: int = 0) -> dict[str, torch.Tensor]:
    """Every probe image's feature maps per layer, on the CPU: ``N x U x h x w``, or ``N x U`` with
    ``reduce="mean"`` / ``"max"`` over positions (e.g. to correlate the units of two models)."""
    if reduce not in (None, "mean", "max"):
        raise ComponentError(f"collect_activations: reduce {reduce!r} must be None, 'mean' or 'max'")
    names = resolve_layers(model, layers)
    device = _device(model, device)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for indices, images, _ in iter_probe(dataset, batch_size, workers):
        images = images.to(device)
        if image_transform is not None:
            images = image_transform(images, indices.to(device))
        for name, act in layer_activations(model, images, names).items():
            if reduce == "mean":
                act = act.mean(dim=(2, 3))
            elif reduce == "max":
                act = act.amax(dim=(2, 3))
            parts[name].append(act.cpu())
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def _label_size(label_size: int | Sequence[int] | None, images: torch.Tensor, concept_maps: list[dict]) -> tuple[int, int]:
    """``label_size`` as ``(H, W)``; None: the first pixel-level concept map of the batch (else the image size)."""
    if label_size is not None:
        if isinstance(label_size, int) and not isinstance(label_size, bool) and label_size > 0:
            return (label_size, label_size)
        try:
            size = tuple(int(s) for s in label_size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            size = ()
        if len(size) != 2 or min(size) < 1:
            raise ComponentError(f"dissection: label_size {label_size!r} must be a positive int or (H, W), or None")
        return size  # type: ignore[return-value]
    for maps in concept_maps:
        for value in maps.values():
            value = torch.as_tensor(value)
            if value.dim() >= 2:
                return tuple(int(s) for s in value.shape[-2:])  # type: ignore[return-value]
    return tuple(int(s) for s in images.shape[-2:])  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- results


@dataclasses.dataclass
class LayerDissection:
    """One layer's dissection: thresholds, counts, IoU, labels and the top-activating probe images per unit."""

    name: str
    feature_size: tuple[int, int]
    thresholds: torch.Tensor  # float64 [U]
    tally: Tally  # int64 counts
    iou: torch.Tensor  # float64 [U x C]
    labels: UnitLabels
    top_images: torch.Tensor  # long [U x k]: probe indices by peak activation, descending
    top_peaks: torch.Tensor  # float [U x k]

    @property
    def units(self) -> int:
        return int(self.thresholds.numel())


@dataclasses.dataclass
class DissectionResult:
    """The dissection of some layers of a model on a probe (all tensors on the CPU)."""

    concepts: ConceptSet
    layers: dict[str, LayerDissection]
    n_images: int
    quantile: float
    iou_threshold: float
    label_size: tuple[int, int]

    def detectors(self, layer: str) -> torch.Tensor:
        """Bool ``[U]``: the unit's best IoU exceeds ``iou_threshold``."""
        return self.layers[layer].labels.detectors(self.iou_threshold)

    def unit_label(self, layer: str, unit: int) -> tuple[str, str, float] | None:
        """``(category, concept, IoU)`` of a detector unit, or None when the unit is not a detector."""
        labels = self.layers[layer].labels
        if not float(labels.score[unit]) > self.iou_threshold:
            return None
        category, name = self.concepts.describe(int(labels.label[unit]))
        return category, name, float(labels.score[unit])

    def layer_summary(self, layer: str) -> dict[str, float]:
        return count_detectors(self.layers[layer].labels, self.concepts, self.iou_threshold)

    def summary(self) -> dict[str, float]:
        """Flat ``{"LAYER.detectors": ..., "LAYER.CATEGORY.unique_multi": ..., "n": images}`` (see count_detectors)."""
        out: dict[str, float] = {}
        for layer in self.layers:
            out.update({f"{layer}.{key}": value for key, value in self.layer_summary(layer).items()})
        out["n"] = float(self.n_images)
        return out

    def table(self, layer: str) -> list[dict[str, Any]]:
        """Rows of NetDissect-Lite's ``tally.csv`` (units by decreasing score, ``unit`` 1-based), plus ``threshold``."""
        dis = self.layers[layer]
        labels, tally, concepts = dis.labels, dis.tally, self.concepts
        order = sorted(range(dis.units), key=lambda u: (-float(labels.score[u]), u))
        rows = []
        for u in order:
            category, name = concepts.describe(int(labels.label[u]))
            row: dict[str, Any] = {"unit": u + 1, "category": category, "label": name, "score": float(labels.score[u])}
            for k, cat in enumerate(concepts.categories):
                j = int(labels.category_label[u, k])
                row[f"{cat}-label"] = concepts.describe(j)[1]
                row[f"{cat}-truth"] = int(tally.ground_truth[j]) if j >= 0 else 0
                row[f"{cat}-activation"] = int(tally.activation[u, k])
                row[f"{cat}-intersect"] = int(tally.intersection[u, j]) if j >= 0 else 0
                row[f"{cat}-iou"] = float(labels.category_score[u, k])
            row["threshold"] = float(dis.thresholds[u])
            rows.append(row)
        return rows

    def columns(self) -> list[str]:
        per_category = [f"{c}-{field}" for c in self.concepts.categories
                        for field in ("label", "truth", "activation", "intersect", "iou")]
        return ["unit", "category", "label", "score", *per_category, "threshold"]

    def write(self, out_dir: str | Path) -> list[Path]:
        """``LAYER-tally.csv`` per layer and ``dissection.json`` (summary and parameters) under ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for layer in self.layers:
            path = out / f"{slug(layer)}-tally.csv"
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, self.columns())
                writer.writeheader()
                writer.writerows(self.table(layer))
            written.append(path)
        info = {"quantile": self.quantile, "iou_threshold": self.iou_threshold, "label_size": list(self.label_size),
                "n_images": self.n_images, "categories": list(self.concepts.categories),
                "layers": {layer: {"units": d.units, "feature_size": list(d.feature_size)} for layer, d in self.layers.items()},
                "summary": self.summary()}
        path = out / "dissection.json"
        path.write_text(json.dumps(info, indent=1))
        written.append(path)
        return written


# --------------------------------------------------------------------------------------------- dissect


@in_eval_mode
def dissect(
    model: nn.Module,
    dataset: Any,
    layers: str | Sequence[str] | None = None,
    *,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    label_size: int | Sequence[int] | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    cache_mb: float = 2048,
    top_images: int = 4,
    image_transform: ImageTransform | None = None,
    thresholds: Mapping[str, torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 0,
    dist: Any = None,
) -> DissectionResult:
    """Dissect ``layers`` of ``model`` on the probe ``dataset`` (Bau et al. 2017; docs/protocols.md).

    ``label_size``: the label resolution (None: the probe's own concept maps, e.g. 112 x 112 for Broden at 224);
    ``thresholds``: fixed ``T_k`` per layer (float ``[U]``) instead of the probe's quantile; ``image_transform``:
    ``f(images, indices) -> images`` applied to each batch on the device (deterministic, it may run twice).
    ``dist``: the :class:`interpbench.core.state.Dist` of a distributed run. Each rank then reads a contiguous
    block of the probe's batches; the exact thresholds come from the ranks' top activations (the top ``k`` of the
    union of each rank's top ``k``), the tallies are summed over the ranks, and every rank returns what one process
    would.
    """
    dist = SINGLE if dist is None else dist
    if not 0.0 <= iou_threshold < 1.0:
        raise ComponentError(f"dissection: iou_threshold {iou_threshold!r} must lie in [0, 1) (default 0.04)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ComponentError(f"dissection: batch_size {batch_size!r} must be a positive int")
    quantile_position(1, quantile)  # validates the quantile
    concepts = probe_concepts(dataset)
    names = resolve_layers(model, layers)
    _modules(model, names)  # unknown layer names fail here, before any work
    device = _device(model, device)
    n_images = len(dataset)
    if n_images == 0:
        raise ComponentError("dissection: the probe dataset is empty")
    size = None if label_size is None else _label_size(label_size, torch.empty(0), [])
    n_batches = math.ceil(n_images / batch_size)
    block = dist.shard(n_batches)  # this rank's batches (all of them in one process)
    block_images = max(0, min(n_images, block.stop * batch_size) - block.start * batch_size)
    if thresholds is not None and set(names) - set(thresholds):
        raise ComponentError(f"dissection: thresholds given for {sorted(thresholds)} but not for layer(s) "
                             f"{sorted(set(names) - set(thresholds))}; give one tensor of T_k per dissected layer")
    fixed = None if thresholds is None else {n: torch.as_tensor(thresholds[n], dtype=torch.float64) for n in names}
    if size is None and dist.world > 1:  # the label size of the probe's first batch, as one process reads it
        size = dist.from_main(lambda: _label_size(label_size, *next(iter_probe(dataset, batch_size, 0, range(1)))[1:]))
    budget = cache_mb * 2**20
    done, total = 0, 2 * len(block)

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    def batches() -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor], ProbeLabels]]:
        nonlocal size
        for indices, images, concept_maps in iter_probe(dataset, batch_size, workers,
                                                        block if dist.world > 1 else None):
            if size is None:
                size = _label_size(label_size, images, concept_maps)
            images = images.to(device, non_blocking=True)
            if image_transform is not None:
                images = image_transform(images, indices.to(device))
            acts = layer_activations(model, images, names)
            yield indices, acts, encode_concepts(concept_maps, concepts, size, device)

    # pass 1: exact top values (thresholds), top images per unit, and the cache when it fits
    top_values: dict[str, StreamingTopK] = {}
    top_imgs: dict[str, StreamingTopK] = {}
    shapes: dict[str, tuple[int, int, int]] = {}
    cache: list[tuple[dict[str, torch.Tensor], ProbeLabels]] | None = []

    def start_layer(name: str, units: int, h: int, w: int) -> None:
        shapes[name] = (units, h, w)
        k_needed = quantile_position(n_images * h * w, quantile)[0]
        top_values[name] = StreamingTopK(k_needed, units, device)
        top_imgs[name] = StreamingTopK(min(top_images, n_images) if top_images > 0 else 1, units, device,
                                       with_indices=True)

    def first_pass() -> None:
        nonlocal cache
        for indices, acts, labels in batches():
            for name, act in acts.items():
                b, units, h, w = act.shape
                if name not in shapes:
                    start_layer(name, units, h, w)
                elif shapes[name] != (units, h, w):
                    raise ComponentError(f"dissection: layer {name!r} output {(units, h, w)} on one batch and "
                                         f"{shapes[name]} on another; the probe images must all have the same size")
                if fixed is None:
                    top_values[name].update(act.transpose(0, 1).reshape(units, -1))
                top_imgs[name].update(act.amax(dim=(2, 3)).transpose(0, 1), indices.to(device))
            if cache is not None:
                per_image = (sum(a[0].numel() * a.element_size() for a in acts.values())
                             + labels.nbytes() / len(labels))
                if per_image * block_images > budget:
                    cache = None
                else:
                    cache.append((acts, labels))
            tick()

    dist.agree(first_pass)  # a failure on one rank fails every rank here, before the collectives below
    if dist.world > 1:  # a rank with no batch (more ranks than batches) takes the layers' shapes from the others
        for rank_shapes in dist.all_gather_objects(shapes):
            for name, shape in rank_shapes.items():
                if name not in shapes:
                    start_layer(name, *shape)
                elif shapes[name] != shape:
                    raise ComponentError(f"dissection: layer {name!r} output {shape} on one rank and {shapes[name]} "
                                         "on another; the probe images must all have the same size")

    final_thresholds: dict[str, torch.Tensor] = {}
    for name in names:
        units, h, w = shapes[name]
        if fixed is not None:
            if fixed[name].shape != (units,):
                raise ComponentError(f"dissection: thresholds[{name!r}] has shape {tuple(fixed[name].shape)}, "
                                     f"layer {name!r} has {units} units")
            final_thresholds[name] = fixed[name].to(device)
        else:
            values, _ = top_values[name].result()
            values = gathered_top(dist, values, top_values[name].k)[0]
            final_thresholds[name] = threshold_from_top(values, n_images * h * w, quantile)

    # pass 2: the tally (each rank its block, then summed over the ranks)
    tallies = {name: Tally.zeros(shapes[name][0], concepts, device) for name in names}

    def second_pass() -> None:
        nonlocal cache
        source = ((acts, labels) for acts, labels in cache) if cache is not None else ((a, l) for _, a, l in batches())
        for acts, labels in source:
            for name in names:
                accumulate_tally(tallies[name], acts[name], final_thresholds[name], labels)
            tick()
        cache = None

    dist.agree(second_pass)
    out: dict[str, LayerDissection] = {}
    for name in names:
        tally = sum_tally(dist, tallies[name]).to("cpu")
        iou = iou_from_tally(tally, concepts)
        peaks, indices = top_imgs[name].result()
        peaks, indices = gathered_top(dist, peaks, top_imgs[name].k, indices)
        out[name] = LayerDissection(name=name, feature_size=shapes[name][1:], thresholds=final_thresholds[name].cpu(),
                                    tally=tally, iou=iou, labels=label_units(iou, concepts),
                                    top_images=indices.cpu(), top_peaks=peaks.cpu())
    return DissectionResult(concepts, out, n_images, float(quantile), float(iou_threshold), size)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- figure


@in_eval_mode
def unit_figure(model: nn.Module, dataset: Any, result: DissectionResult, layer: str, path: str | Path, *,
                units: int = 8, images: int = 4, image_transform: ImageTransform | None = None,
                device: torch.device | str | None = None) -> Path:
    """A PNG of the best units of ``layer``: each row a unit (label, category, IoU) and its top-activating probe
    images, the unit's mask (``A_k > T_k`` at the image resolution) shown bright with a yellow border, the rest
    dimmed (as NetDissect's unit images)."""
    dis = result.layers[layer]
    order = sorted(range(dis.units), key=lambda u: (-float(dis.labels.score[u]), u))[:units]
    picks = {u: [int(i) for i in dis.top_images[u, :images]] for u in order}
    needed = sorted({i for rows in picks.values() for i in rows})
    device = _device(model, device)
    batch = torch.stack([dataset[i]["image"] for i in needed]).to(device)
    if image_transform is not None:
        batch = image_transform(batch, torch.tensor(needed, device=device))
    acts = layer_activations(model, batch, [layer])[layer]
    height, width = batch.shape[-2:]
    scale = max(1, math.ceil(112 / max(height, width)))
    tile_h, tile_w, header, pad = height * scale, width * scale, 14, 4
    canvas = Image.new("RGB", (pad + images * (tile_w + pad), pad + len(order) * (header + tile_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    tiles = [(row, col, u, needed.index(index)) for row, u in enumerate(order) for col, index in enumerate(picks[u])]
    units_t = torch.tensor([u for _, _, u, _ in tiles], device=acts.device)
    images_t = torch.tensor([j for _, _, _, j in tiles], device=acts.device)
    maps = upsample_maps(acts[images_t, units_t], (height, width), torch.float64)  # all tiles at once
    masks = (maps > dis.thresholds.to(maps.device)[units_t].view(-1, 1, 1)).cpu()
    inner = -torch.nn.functional.max_pool2d(-masks[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
    outlines = masks & ~inner  # the masks' borders, drawn in yellow
    shown = batch.float().clamp(0, 1).cpu()[images_t.cpu()]
    shown = torch.where(masks[:, None], shown, 0.3 * shown)
    shown = torch.where(outlines[:, None], torch.tensor([1.0, 0.9, 0.0]).view(1, 3, 1, 1), shown)
    pixels = (shown.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    for row, u in enumerate(order):
        top = pad + row * (header + tile_h + pad)
        category, name = result.concepts.describe(int(dis.labels.label[u]))
        detector = "" if float(dis.labels.score[u]) > result.iou_threshold else "  (not a detector)"
        draw.text((pad, top), f"unit {u + 1}: {name} ({category})  IoU {float(dis.labels.score[u]):.3f}{detector}",
                  fill="black")
    for t, (row, col, _, _) in enumerate(tiles):
        tile = Image.fromarray(pixels[t]).resize((tile_w, tile_h), Image.NEAREST)
        canvas.paste(tile, (pad + col * (tile_w + pad), pad + row * (header + tile_h + pad) + header))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


# --------------------------------------------------------------------------------------------- metric


class Dissection(ModelMetric):
    """Network dissection (Bau et al., CVPR 2017): interpretable units and unique concepts per layer.

    Parameters: ``layers`` (None: the model's ``cam_layer``; a name, ``"a,b"`` or a list), ``quantile`` (0.005,
    the top activation quantile that sets ``T_k``), ``iou_threshold`` (0.04), ``label_size`` (None: the probe's
    label resolution), ``batch_size`` (None: the run's), ``cache_mb`` (device memory for the one-forward path),
    ``figure_units`` / ``figure_images`` (the PNG). Results per layer: ``units``, ``detectors``, ``unique``,
    ``unique_multi`` and per category ``detectors``, ``unique``, ``detectors_multi``, ``unique_multi``
    (see :func:`interpbench.ops.dissect.count_detectors`). Writes ``LAYER-tally.csv`` (NetDissect-Lite columns),
    ``LAYER-top-units.png`` and ``dissection.json`` under the run's artefact directory.
    """

    name: ClassVar[str] = "dissection"
    headline_values: ClassVar[tuple[str, ...]] = ("**.detectors", "**.unique")
    version: ClassVar[str] = "1"
    scope: ClassVar[str] = "model"
    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"concepts"})
    distributed: ClassVar[bool] = True  # evaluate() shards the probe over ctx.dist (see dissect)
    defaults: ClassVar[dict[str, Any]] = {
        "layers": None,
        "quantile": 0.005,
        "iou_threshold": 0.04,
        "label_size": None,
        "batch_size": None,
        "cache_mb": 2048,
        "figure_units": 8,
        "figure_images": 4,
    }

    def evaluate(self, model: Model, dataset: Any, ctx: RunContext) -> dict[str, float]:
        p = self.params
        result = dissect(model, dataset, p["layers"], quantile=p["quantile"], iou_threshold=p["iou_threshold"],
                         label_size=p["label_size"], batch_size=p["batch_size"] or ctx.batch_size, device=ctx.device,
                         cache_mb=p["cache_mb"], top_images=p["figure_images"], progress=ctx.progress,
                         workers=ctx.workers, dist=ctx.dist)
        if ctx.out_dir is not None:  # None on the ranks other than 0 of a distributed run
            result.write(ctx.out_dir)
            for layer in result.layers:
                unit_figure(model, dataset, result, layer, Path(ctx.out_dir) / f"{slug(layer)}-top-units.png",
                            units=p["figure_units"], images=p["figure_images"], device=ctx.device)
        return result.summary()


__all__ = [
    "Dissection",
    "DissectionResult",
    "LayerDissection",
    "collect_activations",
    "dissect",
    "iter_probe",
    "layer_activations",
    "probe_concepts",
    "resolve_layers",
    "unit_figure",
]
