"""ROAR and KAR: remove and retrain, keep and retrain (Hooker, Erhan, Kindermans & Kim, "A Benchmark for
Interpretability Methods in Deep Neural Networks", NeurIPS 2019).

For each fraction ``t`` (default 10 %, 20 %, ..., 90 %) and each seed (default 0, 1, 2): replace the
``round(t * H * W)`` most salient pixels of every training and test image, ranked by the method's map (ROAR), or
all but those (KAR), by the per-channel mean of the model's world (the model's normalisation mean, i.e. zero in its
input space, as Hooker et al. fill with the per-channel dataset mean); retrain a network from scratch on the
modified training images (:mod:`interpbench.models.retrain`: the model's from-scratch recipe, reduced); report its
accuracy on the modified test images. A map that marks what the label depends on makes ROAR accuracy fall faster
than ``random``'s, and KAR accuracy stay higher.

Values: ``roar`` / ``kar``: the area under the mean accuracy curve over the fractions (trapezoid rule, divided by
the span: the curve's mean height; :func:`interpbench.ops.roar.curve_area`); ROAR lower is better, KAR higher.
``acc@10`` .. ``acc@90``: the accuracy per fraction (percent in the name), the mean over seeds. ``acc@0``: the
retrained network on intact images (method-independent; the reference the curves start from). Every one of these
carries an interval over the seeds: the minimum and maximum (:func:`interpbench.ops.roar.seed_interval`; with three
seeds a t-interval would rest on two degrees of freedom, so the range is shown instead). ``n`` (test images),
``n_train`` (training images). Artefact (in a run): ``METHOD-curves.csv`` (mode, fraction, seed, accuracy) in the
cell's artefact folder.

Why a dataset-level metric: ``update`` collects the test images the run explains, their maps and labels (and the
model and ``batch.method``); ``compute`` needs all of them at once, plus the method's maps on the model's
training split, which it computes in batches on the run's device with ``batch.method``, explaining the model's
prediction (the run's default target), under a seed derived from the model and the method (the same for ROAR and
KAR, which then share them). It is not a model-scope metric because
its number belongs to a method, and the run's cells, resume and tables are per method. Retrained accuracies are
cached (:func:`interpbench.models.retrain.cached_result`) under the identity of everything that made them (the
model's weights, the method's name, version and parameters, the content of the maps, fraction, mode, seed, recipe,
world version), so a re-run or a resumed run does not retrain. Models without a from-scratch recipe are not
applicable (only the shapes CNNs have one). docs/protocols.md (ROAR and KAR) lists the deviations from the paper.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path
from typing import Any, ClassVar

import torch

from interpbench.core.base import Batch, ComponentError, DatasetMetric, Model
from interpbench.core.identity import stable_hash
from interpbench.core.tabular import slug
from interpbench.metrics.causal import validate_maps
from interpbench.models.retrain import (
    RETRAIN_DEFAULTS,
    cached_result,
    check_recipe,
    retrain_identity,
    retrain_task,
    retrained_accuracy,
    training_split,
)
from interpbench.models.weights import update_digest
from interpbench.ops.roar import curve_area, replace_pixels, seed_interval

log = logging.getLogger(__name__)

PAPER_FRACTIONS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
DEFAULT_SEEDS = [0, 1, 2]
_TRAIN_MAPS: dict[tuple, torch.Tensor] = {}  # the last training maps computed (ROAR and KAR of a method share them)


def fraction_name(fraction: float) -> str:
    """The value name of a fraction's accuracy: ``acc@10`` for 0.1 (percent; a fractional percent's point becomes
    ``p``, since a dot separates the parts of value names)."""
    return "acc@" + f"{float(fraction) * 100:.6g}".replace(".", "p")


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        update_digest(h, t)
    return h.hexdigest()[:20]


class _RemoveAndRetrain(DatasetMetric):
    """Shared code of :class:`Roar` and :class:`Kar`."""

    version: ClassVar[str] = "1"
    keep: ClassVar[bool] = False
    needs: ClassVar[frozenset[str]] = frozenset({"label"})
    internal_values: ClassVar[tuple[str, ...]] = ("n_train",)
    defaults: ClassVar[dict[str, Any]] = {
        "fractions": list(PAPER_FRACTIONS),
        "seeds": list(DEFAULT_SEEDS),
        "recipe": dict(RETRAIN_DEFAULTS),
        "baseline": True,
        "chunk": 64,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        fractions = p["fractions"]
        if (not isinstance(fractions, (list, tuple)) or not fractions
                or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1 for f in fractions)
                or any(b <= a for a, b in zip(fractions, fractions[1:]))):
            raise ComponentError(f"{self.name}: fractions must be a non-empty increasing list of fractions of pixels "
                                 f"in (0, 1) (e.g. {PAPER_FRACTIONS}), got {fractions!r}")
        p["fractions"] = [float(f) for f in fractions]
        seeds = p["seeds"]
        if (not isinstance(seeds, (list, tuple)) or not seeds or len(set(seeds)) != len(seeds)
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
            raise ComponentError(f"{self.name}: seeds must be a non-empty list of distinct ints >= 0 (one retraining "
                                 f"per seed and fraction; default {DEFAULT_SEEDS}), got {seeds!r}")
        p["seeds"] = [int(s) for s in seeds]
        p["recipe"] = check_recipe(p["recipe"], self.name)
        if not isinstance(p["baseline"], bool):
            raise ComponentError(f"{self.name}: baseline must be True or False (retrain on intact images too, "
                                 f"reported as acc@0), got {p['baseline']!r}")
        if isinstance(p["chunk"], bool) or not isinstance(p["chunk"], int) or p["chunk"] < 1:
            raise ComponentError(f"{self.name}: chunk must be a positive int (training images explained per call), "
                                 f"got {p['chunk']!r}")
        self.add_state("_images", [], reduce="cat")
        self.add_state("_maps", [], reduce="cat")
        self.add_state("_labels", [], reduce="cat")
        self.add_state("_model", None, reduce=None)
        self.add_state("_method", None, reduce=None)

    # ------------------------------------------------------------------ update

    def update(self, model: Model, batch: Batch, maps: torch.Tensor) -> None:
        validate_maps(maps, batch.images.shape, self.name)
        if batch.method is None:
            raise ComponentError(f"{self.name}: batch.method is None; remove-and-retrain explains the training images "
                                 "with the method that made the maps, so the runner (or caller) must set Batch.method")
        retrain_task(model)  # NotApplicable for a model without a from-scratch recipe
        if batch.labels is not None:
            labels = batch.labels.detach().cpu().long()
        else:
            missing = [sid for sid, s in zip(batch.ids, batch.samples) if s.get("label") is None]
            if missing:
                raise ComponentError(f"{self.name}: samples {missing[:3]} have no 'label'; accuracy needs labels")
            labels = torch.tensor([int(s["label"]) for s in batch.samples], dtype=torch.long)
        self._images.append(batch.images.detach().float().cpu())
        self._maps.append(maps.detach().float().cpu())
        self._labels.append(labels)
        self._model, self._method = model, batch.method

    # ------------------------------------------------------------------ compute

    def _device(self) -> torch.device:
        ctx = self.run_context
        return torch.device(ctx.device) if ctx is not None else self._model.device

    def training_maps(self, model: Model, method: Any, images: torch.Tensor) -> torch.Tensor:
        """The method's maps of the model's prediction on ``images`` (CPU, ``N x H x W``), ``chunk`` images per call
        on the run's device, each chunk under its own seed (from the model's weights, the method's identity and the
        chunk's index, so ROAR and KAR retrain on the same maps; the last few are kept in memory for that)."""
        device, chunk = self._device(), self.params["chunk"]
        method_id = method.describe() if hasattr(method, "describe") else {"name": str(method)}
        key = (model.spec, str((model.weights or {}).get("sha256")), repr(method_id), _digest(images), chunk,
               str(device))
        if key in _TRAIN_MAPS:
            return _TRAIN_MAPS[key]
        base = stable_hash([model.spec, (model.weights or {}).get("sha256"), method_id])
        out = []
        for i in range(0, len(images), chunk):
            x = images[i:i + chunk].to(device)
            with torch.no_grad():
                targets = model(x).argmax(dim=1)
            rng_devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=rng_devices):
                torch.manual_seed(stable_hash([base, "roar-train-maps", i]))
                maps = method.explain(model, x, targets)
            validate_maps(maps, x.shape, f"{self.name} (training maps of {getattr(method, 'name', method)!r})")
            out.append(maps.detach().float().cpu())
        _TRAIN_MAPS[key] = torch.cat(out)
        while len(_TRAIN_MAPS) > 2:
            _TRAIN_MAPS.pop(next(iter(_TRAIN_MAPS)))
        return _TRAIN_MAPS[key]

    def compute(self) -> dict[str, float]:
        if not self._images:
            raise ComponentError(f"{self.name}: no images were scored (update was never called)")
        p, rec = self.params, self.params["recipe"]
        model, method = self._model, self._method
        task = retrain_task(model)
        device = self._device()
        test_images, test_maps = torch.cat(self._images), torch.cat(self._maps)
        test_labels = torch.cat(self._labels)
        train_images, train_labels = training_split(task, rec["n_train"])
        train_maps = self.training_maps(model, method, train_images)
        fill = model.mean.detach().flatten().cpu()
        test_digest = _digest(test_images, test_labels)
        model_id = {"spec": model.spec, "weights": (model.weights or {}).get("sha256")}
        method_id = method.describe() if hasattr(method, "describe") else {"name": str(method)}
        mode = "kar" if self.keep else "roar"

        def run(seed: int, fraction: float | None) -> float:
            identity = {**retrain_identity(task, seed, rec), "n_train": len(train_images), "test": test_digest,
                        "fill": fill.tolist()}
            if fraction is None:  # intact images: method-independent
                identity["fraction"] = 0.0
                train, test = (train_images, train_labels), (test_images, test_labels)
            else:
                identity.update(mode=mode, fraction=fraction, model=model_id, method=method_id,
                                maps=_digest(train_maps, test_maps))
                train = (replace_pixels(train_images, train_maps, fraction, fill, keep=self.keep), train_labels)
                test = (replace_pixels(test_images, test_maps, fraction, fill, keep=self.keep), test_labels)
            result = cached_result(identity, lambda: {"accuracy": retrained_accuracy(task, train, test, seed, rec,
                                                                                     device)})
            log.info("%s %s t=%s seed %d: accuracy %.4f (%s)", self.name, method_id.get("name"), fraction, seed,
                     result["accuracy"], "cached" if result["cached"] else f"{result['seconds']:.1f} s")
            return result["accuracy"]

        fractions, seeds = p["fractions"], p["seeds"]
        curves = {s: [run(s, f) for f in fractions] for s in seeds}  # seed -> accuracy per fraction
        out: dict[str, float] = {}

        def put(name: str, values: list[float]) -> None:
            out[name] = sum(values) / len(values)
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = seed_interval(values)

        put(self.name, [curve_area(fractions, curves[s]) for s in seeds])
        for j, f in enumerate(fractions):
            put(fraction_name(f), [curves[s][j] for s in seeds])
        if p["baseline"]:
            put("acc@0", [run(s, None) for s in seeds])
        out["n"] = float(len(test_images))
        out["n_train"] = float(len(train_images))
        self._write_curves(curves, method_id.get("name") or "method")
        return out

    def _write_curves(self, curves: dict[int, list[float]], method_name: str) -> None:
        out_dir = self.out_dir
        if out_dir is None and self.run_context is not None:
            out_dir = self.run_context.out_dir
        if out_dir is None:
            return
        path = Path(out_dir) / f"{slug(method_name)}-curves.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["mode", "fraction", "seed", "accuracy"])
            for seed, accs in curves.items():
                writer.writerows(("kar" if self.keep else "roar", repr(fr), seed, repr(a))
                                 for fr, a in zip(self.params["fractions"], accs))


class Roar(_RemoveAndRetrain):
    """ROAR, remove and retrain: replace the top fraction of pixels by the map in training and test images, retrain
    from scratch, read the test accuracy. Lower (area under the accuracy curve) is better.

    Parameters: ``fractions`` (default 0.1 .. 0.9), ``seeds`` (retraining seeds, default 0, 1, 2), ``recipe`` (the
    retraining recipe, :data:`interpbench.models.retrain.RETRAIN_DEFAULTS`), ``baseline`` (also retrain on intact
    images: ``acc@0``), ``chunk`` (training images explained per call)."""

    name: ClassVar[str] = "roar"
    higher_is_better: ClassVar[bool] = False
    headline_values: ClassVar[tuple[str, ...]] = ("roar",)
    keep: ClassVar[bool] = False


class Kar(_RemoveAndRetrain):
    """KAR, keep and retrain: keep only the top fraction of pixels by the map, replace the rest, retrain, read the
    test accuracy. Higher is better. Parameters as :class:`Roar`."""

    name: ClassVar[str] = "kar"
    higher_is_better: ClassVar[bool] = True
    headline_values: ClassVar[tuple[str, ...]] = ("kar",)
    keep: ClassVar[bool] = True


__all__ = ["DEFAULT_SEEDS", "PAPER_FRACTIONS", "Kar", "Roar", "fraction_name"]
