"""Units under attack: the two model-scope adversarial metrics (docs/protocols.md, "Adversarial detection with
explanations").

- ``adversarial_consistency``: dissect a layer on the probe and on its adversarial version (the same concept
  masks; Bau et al., PNAS 2020; Dong et al. 2017), per attack: the share of detectors that keep their label, the
  mean IoU change on the clean label and the mean relative activation change of the units.
- ``adversarial_class_consistency``: Dong et al.'s consistency of units (``p^T A p`` over the classes of each
  unit's top-activating images), on real images and on their adversarial versions.

Layer: metrics. The probe is attacked through :func:`interpbench.metrics.adversarial.attack_probe_batch` (the attack
cache shared with ``adversarial_detection``, which lives in :mod:`interpbench.metrics.adversarial` with the attack
parameters' checks); what the metrics read off the probe (block tallies, pooled activations, the class similarity)
is in :mod:`interpbench.metrics.adversarial_units`; the maths in :mod:`interpbench.ops.unit_consistency` (label
retention from dissection tallies) and :mod:`interpbench.ops.consistency` (Dong et al.'s ``p^T A p``).
"""

from __future__ import annotations

import collections
import csv
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from interpbench.core.base import ComponentError, Model, ModelMetric, RunContext
from interpbench.core.identity import stable_hash
from interpbench.core.tabular import slug
from interpbench.metrics.adversarial import (
    _check_params,
    _positive_ints,
    adversarial_probe,
    attack_probe_batch,
)
from interpbench.metrics.adversarial_units import (
    _pooled_activations,
    _ProbeSubset,
    block_tallies,
    class_similarity_matrix,
)
from interpbench.metrics.dissection import dissect, resolve_layers
from interpbench.ops.attack_specs import ATTACK_DEFAULTS, parse_attacks
from interpbench.ops.consistency import (
    chance_consistency,
    consistency,
    top_label_distribution,
)
from interpbench.ops.stats import bootstrap_weights, percentile_interval
from interpbench.ops.unit_consistency import (
    batched_iou,
    consistency_measures,
    relative_activation_change,
)

# --------------------------------------------------------------------------------------------- metric: labels kept


class AdversarialConsistency(ModelMetric):
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


class AdversarialClassConsistency(ModelMetric):
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


__all__ = ["AdversarialClassConsistency", "AdversarialConsistency"]
