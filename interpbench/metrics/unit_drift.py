"""Unit drift between the two models of a pair ``A=>B`` (docs/protocols.md, "Unit drift under transfer,
fine-tuning, distillation, compression"; :mod:`interpbench.models.derived` builds the pairs).

``unit_drift`` (model scope): dissect A and B on the same probe (Bau et al., CVPR 2017; thresholds recomputed per
model), then for each compared layer: linear CKA (Kornblith et al., ICML 2019; debiased by default, Nguyen, Raghu
& Kornblith, ICLR 2021, with its noise floor, on a fixed number of images), detector and unique-concept counts and
their change per category, the overlap of the detected concept sets, and for each matching of A's units to B's
(``aligned``: unit k is unit k, when the layer has the same shape in both; ``hungarian``: one-to-one by activation
correlation; ``best``: each unit to its most correlated partner, Li et al., ICLR 2016) the concept and category
retention, the IoU change on A's concept, the IoU-profile rank correlation, the activation correlation with the
partner and the category-switch matrix (with "none"). Writes the per-unit table, the switch matrices (CSV and a
heatmap PNG) and both dissections under the run's artefact directory.

Layer: metrics. Maths (CKA, unit matching, the drift measures): :mod:`interpbench.ops.drift`; model A of a pair:
:mod:`interpbench.metrics.drift_pairs`. Tables for the leaderboard: :func:`drift_table`, :func:`cka_table`,
:func:`unit_drift_markdown`. Explanation drift (the model-randomisation sanity check) is
:mod:`interpbench.metrics.explanation_drift`.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Sequence

import pandas as pd
import torch
from PIL import Image, ImageDraw

from interpbench.core.base import ComponentError, Model, ModelMetric, RunContext
from interpbench.core.tabular import slug, to_markdown
from interpbench.metrics.dissection import (
    dissect,
    iter_probe,
    layer_activations,
    resolve_layers,
)
from interpbench.metrics.drift_pairs import _fmt, reference_of
from interpbench.ops.drift import (
    CrossCorrelation,
    GramAccumulator,
    best_partners,
    cka_values,
    concept_set_overlap,
    hungarian_partners,
    identity_partners,
    switch_dict,
    switch_labels,
    unit_drift_measures,
    unit_rows,
)

MATCHINGS = ("aligned", "hungarian", "best")


UNIT_MEASURES = ("concept_retention", "category_retention", "iou_change", "iou_profile_rho", "activation_correlation")


def layer_pairs(model_a: Model, model_b: Model, layers: Any) -> list[tuple[str, str]]:
    """``[(layer of A, layer of B)]``: None -> the two cam_layers; ``"layer3"`` (the same name in both);
    ``"layer3:blocks.5"`` (A's layer, then B's); several joined by commas or given as a list."""
    if layers is None or layers == "" or layers == []:
        return [(model_a.cam_layer, model_b.cam_layer)]
    items = [p.strip() for p in layers.split(",") if p.strip()] if isinstance(layers, str) else [str(x) for x in layers]
    out = []
    for item in items:
        a, sep, b = item.partition(":")
        out.append((a.strip(), (b if sep else a).strip()))
    if not out or any(not a or not b for a, b in out):
        raise ComponentError(f"unit_drift: layers {layers!r} must name layers as 'NAME' or 'LAYER_OF_A:LAYER_OF_B', "
                             "comma-separated (e.g. 'layer3' or 'layer3:blocks.5')")
    resolve_layers(model_a, [a for a, _ in out])
    resolve_layers(model_b, [b for _, b in out])
    return out


def same_layer_shape(model_a: Model, model_b: Model, layer_a: str, layer_b: str) -> bool:
    """Units are aligned when the layer has the same name and the same parameter shapes in both networks."""
    if layer_a != layer_b:
        return False
    shapes = [{n: tuple(p.shape) for n, p in m.module(layer_a).named_parameters()} for m in (model_a, model_b)]
    return shapes[0] == shapes[1]


def layer_key(layer_a: str, layer_b: str) -> str:
    return layer_a if layer_a == layer_b else f"{layer_a}->{layer_b}"


@torch.no_grad()
def paired_activations(model_a: Model, model_b: Model, dataset: Any, pairs: Sequence[tuple[str, str]], *,
                       batch_size: int, device: torch.device, cka_pairs: Sequence[tuple[str, str]] = (),
                       cka_images: int = 256, cka_mb: float = 512, cka_permutations: int = 10, progress=None
                       ) -> tuple[dict[tuple[str, str], CrossCorrelation], dict[tuple[str, str], dict[str, float]],
                                  int, int]:
    """One pass over the probe through both models: the unit cross-correlations of each layer pair of ``pairs``
    (over images and positions, at the smaller resolution when they differ); then linear CKA of each layer pair of
    ``pairs`` and ``cka_pairs`` on the flattened feature maps of the first ``min(cka_images, probe size)`` probe
    images (:func:`cka_grams`: one ``n x n`` Gram matrix per layer, so the number of images does not depend on the
    layers or on ``cka_mb``, which only sets how many images go through the models at once). Returns
    ``(correlations, {pair: {"cka", "cka_floor", "cka_biased", "cka_biased_floor"}}, images, images used for
    CKA)``."""
    cka_all = list(dict.fromkeys([*pairs, *cka_pairs]))
    layers_a = sorted({a for a, _ in pairs})
    layers_b = sorted({b for _, b in pairs})
    corr: dict[tuple[str, str], CrossCorrelation] = {}
    kept: list[torch.Tensor] = []
    n_kept, n = 0, 0
    total = math.ceil(len(dataset) / batch_size)
    for step, (_, images, _) in enumerate(iter_probe(dataset, batch_size)):
        take = max(0, min(len(images), int(cka_images) - n_kept))
        if take:  # the CKA images themselves (pixels, not features), in probe order
            kept.append(images[:take].cpu())
            n_kept += take
        if pairs:
            images = images.to(device, non_blocking=True)
            acts_a = layer_activations(model_a, images, layers_a)
            acts_b = layer_activations(model_b, images, layers_b)
            for pair in pairs:
                a, b = acts_a[pair[0]], acts_b[pair[1]]
                size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
                if pair not in corr:
                    corr[pair] = CrossCorrelation(a.shape[1], b.shape[1], device)
                corr[pair].update(unit_rows(a, size), unit_rows(b, size))
        n += len(images)
        if progress is not None:
            progress(step + 1, total)
    cka: dict[tuple[str, str], dict[str, float]] = {}
    if n_kept >= 2 and cka_all:
        grams_a, grams_b = cka_grams(model_a, model_b, torch.cat(kept), cka_all, device=device, cka_mb=cka_mb)
        for la, lb in cka_all:
            cka[(la, lb)] = cka_values(grams_a[la], grams_b[lb], cka_permutations)
    return corr, cka, n, n_kept


@torch.no_grad()
def cka_grams(model_a: Model, model_b: Model, images: torch.Tensor, pairs: Sequence[tuple[str, str]], *,
              device: torch.device, cka_mb: float = 512) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The ``n x n`` linear Gram matrices (float64) of each compared layer of A and of B on ``images``
    (``n x 3 x H x W``), built block by block (:class:`interpbench.ops.drift.GramAccumulator`): the images go
    through the models ``block`` at a time, ``block`` the most whose flattened features (two blocks, both models,
    float64) fit in ``cka_mb`` MB (at least 4), and the off-diagonal blocks ``(i, j)`` recompute block ``j``. Memory
    is ``n^2`` per layer plus two blocks' features; the Gram matrices (and CKA) do not depend on ``cka_mb``, which
    only trades memory for forward passes (``B (B + 1) / 2`` blocks per model for ``B`` blocks)."""
    layers_a = sorted({a for a, _ in pairs})
    layers_b = sorted({b for _, b in pairs})
    n = len(images)

    def features(lo: int, hi: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        x = images[lo:hi].to(device, non_blocking=True)
        acts_a = layer_activations(model_a, x, layers_a)
        acts_b = layer_activations(model_b, x, layers_b)
        return ({k: v.flatten(1) for k, v in acts_a.items()}, {k: v.flatten(1) for k, v in acts_b.items()})

    first_a, first_b = features(0, 1)
    per_image = 8 * (sum(v.shape[1] for v in first_a.values()) + sum(v.shape[1] for v in first_b.values()))
    block = max(4, min(n, int(cka_mb * 2**20 // max(2 * per_image, 1))))
    edges = [(lo, min(n, lo + block)) for lo in range(0, n, block)]
    acc_a = {name: GramAccumulator(n, device) for name in layers_a}
    acc_b = {name: GramAccumulator(n, device) for name in layers_b}
    for i, (lo_i, hi_i) in enumerate(edges):
        feats_i = features(lo_i, hi_i)
        for j, (lo_j, hi_j) in enumerate(edges[:i + 1]):
            feats_j = feats_i if j == i else features(lo_j, hi_j)
            for acc, fi, fj in ((acc_a, feats_i[0], feats_j[0]), (acc_b, feats_i[1], feats_j[1])):
                for name in acc:
                    acc[name].add(slice(lo_i, hi_i), fi[name], slice(lo_j, hi_j), fj[name])
    return ({k: v.result() for k, v in acc_a.items()}, {k: v.result() for k, v in acc_b.items()})


def shared_layers(model_a: Model, model_b: Model) -> list[tuple[str, str]]:
    """The named stages both models have (by name, A's order): CKA compares them pairwise."""
    names_b = set(model_b._layer_names)
    return [(name, name) for name in model_a._layer_names if name in names_b]


class UnitDrift(ModelMetric):
    """How the units of model A changed in model B (a pair ``A=>B``): dissection of both on the same probe,
    concept / category retention and the category-switch matrix under three matchings, IoU change, IoU-profile
    rank correlation, activation correlation, detector counts, concept-set overlap and linear CKA.

    Parameters: ``layers`` (None: A's cam_layer against B's; ``"layer3"``; ``"LAYER_A:LAYER_B"``; comma-separated
    or a list), ``matchings`` (``"aligned,hungarian,best"``; ``aligned`` only where the layer has the same shape in
    both models), ``quantile`` / ``iou_threshold`` / ``label_size`` / ``cache_mb`` (dissection), ``batch_size``
    (None: the run's), ``cka_layers`` (``"all"``: also every other named layer both models share; ``"compared"``),
    ``cka_images`` (CKA on the first N probe images, 256, all of them when the probe is smaller; ``cka_n`` in the
    results says how many; the number does not depend on the layers or on memory), ``cka_mb`` (512: how many
    images' features go through at once while the ``n x n`` Gram matrices are built; changes the time, not the
    values), ``cka_permutations`` (10: shuffles of the images for the noise floor).

    CKA (Kornblith et al., ICML 2019) is by default the debiased one, with the unbiased HSIC of Song et al. (JMLR
    2012) as Nguyen, Raghu & Kornblith (ICLR 2021) use it: independent features read near 0 however many features
    there are, where the plug-in estimate drifts towards 1 when features outnumber images. Each CKA comes with the
    plug-in value (``cka_biased``) and both estimators' noise floors (``cka_floor``, ``cka_biased_floor``: the
    mean over ``cka_permutations`` shuffles of B's images against A's, the value of features with no
    correspondence).

    Results per compared layer ``L`` (``L`` is ``LAYER_A->LAYER_B`` when the names differ): ``L.cka``,
    ``L.cka_floor``, ``L.cka_biased``, ``L.cka_biased_floor``,
    ``L.detectors_a`` / ``_b``, ``L.unique_a`` / ``_b``, per category ``L.CAT.detectors_change`` /
    ``L.CAT.unique_change`` (B minus A, one label per unit), ``L.concept_overlap`` (Jaccard of the detected
    concept sets), per matching ``M``: ``L.M.concept_retention``, ``L.M.category_retention``, ``L.M.iou_change``,
    ``L.M.iou_profile_rho``, ``L.M.activation_correlation``, and the switch matrix of the first applicable matching
    as ``L.switch.A->B`` counts (``L.switch_matching``: 0 aligned, 1 hungarian, 2 best); the four CKA values for
    every other shared layer; ``n`` (probe images) and ``cka_n`` (images of every CKA). A measure with nothing to
    average over (e.g. retention when A has no detector) is left out.
    """

    name: ClassVar[str] = "unit_drift"
    headline_values: ClassVar[tuple[str, ...]] = ("**.cka", "**.aligned.concept_retention")
    version: ClassVar[str] = "2"  # 2: debiased CKA on a fixed number of images, noise floors

    @classmethod
    def leaderboard_markdown(cls, rows: Any) -> str | None:
        """The section of ``representations.md``: the drift table and CKA per layer (every value stays in the CSV)."""
        return unit_drift_markdown(rows) or None
    scope: ClassVar[str] = "model"
    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"concepts"})
    defaults: ClassVar[dict[str, Any]] = {
        "layers": None,
        "matchings": "aligned,hungarian,best",
        "quantile": 0.005,
        "iou_threshold": 0.04,
        "label_size": None,
        "batch_size": None,
        "cache_mb": 2048,
        "cka_images": 256,
        "cka_mb": 512,
        "cka_layers": "all",
        "cka_permutations": 10,
    }

    def _matchings(self) -> list[str]:
        value = self.params["matchings"]
        names = [m.strip() for m in value.split(",")] if isinstance(value, str) else [str(m) for m in value]
        unknown = [m for m in names if m not in MATCHINGS]
        if unknown or not names:
            raise ComponentError(f"unit_drift: matchings {value!r}: choose among {list(MATCHINGS)}, comma-separated")
        return names

    def evaluate(self, model: Model, dataset: Any, ctx: RunContext) -> dict[str, float]:
        p = self.params
        model_a = reference_of(model, self.name)
        matchings = self._matchings()
        if not isinstance(p["cka_images"], int) or p["cka_images"] < 2:
            raise ComponentError(f"unit_drift: cka_images {p['cka_images']!r} must be an int >= 2")
        if not isinstance(p["cka_permutations"], int) or p["cka_permutations"] < 1:
            raise ComponentError(f"unit_drift: cka_permutations {p['cka_permutations']!r} must be an int >= 1")
        if not isinstance(p["cka_mb"], (int, float)) or p["cka_mb"] <= 0:
            raise ComponentError(f"unit_drift: cka_mb {p['cka_mb']!r} must be a positive number of megabytes")
        if p["cka_layers"] not in ("all", "compared"):
            raise ComponentError(f"unit_drift: cka_layers {p['cka_layers']!r}: choose 'all' (every named layer both "
                                 "models share, and the compared layers) or 'compared'")
        pairs = layer_pairs(model_a, model, p["layers"])
        batch_size = p["batch_size"] or ctx.batch_size
        device = ctx.device
        phases = 3

        def phase(i: int):  # dissect A, dissect B, the paired pass: a third of the progress each
            if ctx.progress is None:
                return None
            return lambda done, total: ctx.progress(i * 1000 + (1000 * done) // max(total, 1), phases * 1000)

        common = dict(quantile=p["quantile"], iou_threshold=p["iou_threshold"], label_size=p["label_size"],
                      batch_size=batch_size, device=device, cache_mb=p["cache_mb"])
        dis_a = dissect(model_a, dataset, sorted({a for a, _ in pairs}), progress=phase(0), **common)
        dis_b = dissect(model, dataset, sorted({b for _, b in pairs}), progress=phase(1), **common)
        cka_pairs = shared_layers(model_a, model) if p["cka_layers"] == "all" else []
        corr, cka, n, n_cka = paired_activations(model_a, model, dataset, pairs, batch_size=batch_size, device=device,
                                                 cka_pairs=cka_pairs, cka_images=p["cka_images"],
                                                 cka_mb=p["cka_mb"], cka_permutations=p["cka_permutations"],
                                                 progress=phase(2))
        concepts = dis_a.concepts
        category_of = concepts.category_of()
        thr = float(p["iou_threshold"])
        out: dict[str, float] = {"n": float(n), "cka_n": float(n_cka)}
        for (la, lb), measures in cka.items():
            if (la, lb) not in pairs:
                out.update({f"{layer_key(la, lb)}.{k}": v for k, v in measures.items() if math.isfinite(v)})
        report: dict[str, Any] = {"pairs": [list(x) for x in pairs], "layers": {},
                                  "cka": {layer_key(*k): v for k, v in cka.items()}}
        written_units: dict[str, list[dict[str, Any]]] = {}
        switches: dict[str, dict[str, torch.Tensor]] = {}
        for la, lb in pairs:
            key = layer_key(la, lb)
            da, db = dis_a.layers[la], dis_b.layers[lb]
            counts_a, counts_b = dis_a.layer_summary(la), dis_b.layer_summary(lb)
            values: dict[str, float] = {}
            values.update(cka.get((la, lb), {}))
            values.update(detectors_a=counts_a["detectors"], detectors_b=counts_b["detectors"],
                          unique_a=counts_a["unique"], unique_b=counts_b["unique"])
            for category in concepts.categories:
                values[f"{category}.detectors_change"] = (counts_b[f"{category}.detectors"]
                                                          - counts_a[f"{category}.detectors"])
                values[f"{category}.unique_change"] = counts_b[f"{category}.unique"] - counts_a[f"{category}.unique"]
            det_a, det_b = dis_a.detectors(la), dis_b.detectors(lb)
            values["concept_overlap"] = concept_set_overlap(da.labels.label, det_a, db.labels.label, det_b)
            correlation, valid_a, valid_b = corr[(la, lb)].result()
            correlation, valid_a, valid_b = correlation.cpu(), valid_a.cpu(), valid_b.cpu()
            partners = {}
            for matching in matchings:
                if matching == "aligned":
                    if not same_layer_shape(model_a, model, la, lb):
                        continue
                    partners[matching] = identity_partners(da.units, db.units)
                elif matching == "hungarian":
                    partners[matching] = hungarian_partners(correlation)
                else:
                    partners[matching] = best_partners(correlation)
            rows: list[dict[str, Any]] = []
            switches[key] = {}
            for matching, partner in partners.items():
                change = unit_drift_measures(da.iou, db.iou, da.labels.label, db.labels.label, category_of,
                                             concepts.num_categories, thr, partner, correlation, valid_a, valid_b)
                summary = change.summary()
                summary.pop("detectors_a", None)
                values.update({f"{matching}.{k}": v for k, v in summary.items()})
                switches[key][matching] = change.switch
                rows += self._unit_rows(matching, change, da, db, concepts)
            if partners:
                first = next(iter(partners))
                values["switch_matching"] = float(MATCHINGS.index(first))
                values.update(switch_dict(switches[key][first], concepts.categories))
            out.update({f"{key}.{k}": float(v) for k, v in values.items() if math.isfinite(float(v))})
            written_units[key] = rows
            report["layers"][key] = values
        if ctx.out_dir is not None:
            self._write(Path(ctx.out_dir), dis_a, dis_b, written_units, switches, concepts, report, model_a, model)
        return out

    @staticmethod
    def _unit_rows(matching: str, change, da, db, concepts) -> list[dict[str, Any]]:
        rows = []
        for u in range(len(change.partner)):
            partner = int(change.partner[u])
            cat_a, label_a = concepts.describe(int(da.labels.label[u]))
            if partner >= 0:
                cat_b, label_b = concepts.describe(int(db.labels.label[partner]))
                iou_b = float(db.labels.score[partner])
            else:
                cat_b, label_b, iou_b = "-", "-", 0.0
            rows.append({"matching": matching, "unit": u + 1, "partner": partner + 1 if partner >= 0 else 0,
                         "detector_a": int(change.detector_a[u]), "category_a": cat_a, "label_a": label_a,
                         "iou_a": float(change.iou_a[u]), "category_b": cat_b, "label_b": label_b, "iou_b": iou_b,
                         "iou_b_on_label_a": float(change.iou_b_on_a[u]),
                         "kept_concept": int(change.kept_concept[u]), "kept_category": int(change.kept_category[u]),
                         "iou_profile_rho": _blank_nan(float(change.profile_rho[u])),
                         "activation_correlation": _blank_nan(float(change.correlation[u]))})
        return rows

    def _write(self, out: Path, dis_a, dis_b, units, switches, concepts, report, model_a, model_b) -> None:
        out.mkdir(parents=True, exist_ok=True)
        dis_a.write(out / "from")
        dis_b.write(out / "to")
        names = switch_labels(concepts.categories)
        columns = ["matching", "unit", "partner", "detector_a", "category_a", "label_a", "iou_a", "category_b",
                   "label_b", "iou_b", "iou_b_on_label_a", "kept_concept", "kept_category", "iou_profile_rho",
                   "activation_correlation"]
        for key, rows in units.items():
            with open(out / f"{slug(key)}-units.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, columns)
                writer.writeheader()
                writer.writerows(rows)
            with open(out / f"{slug(key)}-switch.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["matching", "from \\ to", *names])
                for matching, matrix in switches[key].items():
                    for i, name in enumerate(names):
                        writer.writerow([matching, name, *[int(v) for v in matrix[i]]])
            if switches[key]:
                switch_heatmap(switches[key], names, out / f"{slug(key)}-switch.png",
                               title=f"{model_a.spec} => {getattr(model_b, 'target', model_b.spec)}, {key}")
        info = {"params": self.params, "from": model_a.spec, "to": getattr(model_b, "target", model_b.spec),
                "categories": list(concepts.categories), **report}
        (out / "drift.json").write_text(json.dumps(info, indent=1, default=str))


def _blank_nan(value: float) -> float | str:
    return "" if math.isnan(value) else value


def switch_heatmap(matrices: dict[str, torch.Tensor], names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """A PNG of category-switch matrices side by side (one per matching): rows A's category of each unit ("none":
    not a detector), columns its partner's in B; each cell shows the count, shaded by its share of the row."""
    cell, label_w, header, pad = 44, 64, 34, 12
    k = len(names)
    panel_w = label_w + k * cell
    width = pad + len(matrices) * (panel_w + pad)
    height = header + 16 + k * cell + 24
    canvas = Image.new("RGB", (max(width, 8 * len(title) + 2 * pad), height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 4), title, fill="black")
    for m, (matching, matrix) in enumerate(matrices.items()):
        left = pad + m * (panel_w + pad)
        draw.text((left + label_w, 18), f"{matching}: rows A, columns B", fill="black")
        counts = matrix.double()
        shares = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
        top = header + 16
        for j, name in enumerate(names):
            draw.text((left + label_w + j * cell + 3, top - 14), name[:7], fill="black")
        for i, name in enumerate(names):
            y = top + i * cell
            draw.text((left + 2, y + cell // 2 - 6), name[:9], fill="black")
            for j in range(k):
                x = left + label_w + j * cell
                s = float(shares[i, j])
                colour = (int(255 - 215 * s), int(255 - 170 * s), int(255 - 60 * s))
                draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=colour, outline=(200, 200, 200))
                draw.text((x + 6, y + cell // 2 - 6), str(int(counts[i, j])), fill="white" if s > 0.55 else "black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _split_value(name: str) -> tuple[str, str | None, str]:
    """``"blocks.6.hungarian.concept_retention"`` -> ``("blocks.6", "hungarian", "concept_retention")``."""
    head, _, measure = name.rpartition(".")
    layer, _, matching = head.rpartition(".")
    if matching in MATCHINGS:
        return layer, matching, measure
    return head, None, measure


def drift_table(table: Any) -> Any:
    """The unit-drift table of a run (from :func:`interpbench.publish.results.results_table`): one row per (pair,
    dataset, layer, matching) with detectors and unique concepts A -> B, CKA, concept overlap and the unit
    measures. Empty when the run has no ``unit_drift`` result."""
    part = table[(table["metric"] == UnitDrift.name) & (table["status"] == "done")]
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    layer_values: dict[tuple[str, str, str], dict[str, float]] = {}
    cka_n = _cka_images(part)
    for _, r in part.iterrows():
        name = str(r["value_name"])
        if name in ("n", "cka_n") or ".switch." in f".{name}" or name.endswith((".switch_matching",
                                                                                ".detectors_change", ".unique_change")):
            continue
        layer, matching, measure = _split_value(name)
        if matching is None:
            layer_values.setdefault((r["model"], r["dataset"], layer), {})[measure] = float(r["mean"])
        else:
            rows.setdefault((r["model"], r["dataset"], layer, matching), {})[measure] = float(r["mean"])
    out = []
    groups = list(dict.fromkeys(key[:3] for key in rows))
    order = sorted(rows, key=lambda key: (groups.index(key[:3]), MATCHINGS.index(key[3])))
    for model, dataset, layer, matching in order:
        values = rows[(model, dataset, layer, matching)]
        lv = layer_values.get((model, dataset, layer), {})
        out.append({
            "pair": model, "dataset": dataset, "layer": layer, "matching": matching,
            "detectors A→B": f"{lv.get('detectors_a', math.nan):.0f} → {lv.get('detectors_b', math.nan):.0f}",
            "unique A→B": f"{lv.get('unique_a', math.nan):.0f} → {lv.get('unique_b', math.nan):.0f}",
            "CKA": _fmt(lv.get("cka")), "CKA floor": _fmt(lv.get("cka_floor")),
            "CKA images": _count(cka_n.get((model, dataset))), "concept overlap": _fmt(lv.get("concept_overlap")),
            **{m.replace("_", " "): _fmt(values.get(m)) for m in UNIT_MEASURES},
        })
    return pd.DataFrame(out)


def _cka_images(part: Any) -> dict[tuple[str, str], float]:
    """``{(pair, dataset): images of every CKA}`` from the ``cka_n`` values."""
    rows = part[part["value_name"].astype(str) == "cka_n"]
    return {(r["model"], r["dataset"]): float(r["mean"]) for _, r in rows.iterrows()}


def cka_table(table: Any) -> Any:
    """Linear CKA per layer of each pair of a run: one row per (pair, dataset, layer) with the number of images,
    the debiased CKA and its noise floor (B's images shuffled against A's), the plug-in (biased) CKA and its floor."""
    part = table[(table["metric"] == UnitDrift.name) & (table["status"] == "done")]
    cka_n = _cka_images(part)
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    columns = {"cka": "CKA", "cka_floor": "CKA floor", "cka_biased": "CKA (biased)",
               "cka_biased_floor": "CKA (biased) floor"}
    for _, r in part.iterrows():
        layer, _, measure = str(r["value_name"]).rpartition(".")
        if measure not in columns or not layer:
            continue
        row = rows.setdefault((r["model"], r["dataset"], layer), {
            "pair": r["model"], "dataset": r["dataset"], "layer": layer,
            "images": _count(cka_n.get((r["model"], r["dataset"]))), **{c: "–" for c in columns.values()}})
        row[columns[measure]] = _fmt(float(r["mean"]))
    return pd.DataFrame(list(rows.values()))


def unit_drift_markdown(table: Any) -> str:
    """The "Unit drift" section for ``representations.md`` (empty string when the run has no unit_drift result)."""
    drift = drift_table(table)
    if drift.empty:
        return ""
    return ("Both models dissected on the same probe. Retention: share of A's detectors "
            "whose partner in B detects the same concept (category). Matchings: aligned (the same unit), hungarian "
            "(one-to-one by activation correlation), best (each unit's most correlated partner). Category-switch "
            "matrices: artifacts/*__unit_drift/*-switch.png (CSV beside them).\n\n" + to_markdown(drift)
            + "\nLinear CKA (Kornblith et al. 2019) per layer, A against B, on the first `images` probe images: "
            "debiased (unbiased HSIC, Song et al. 2012, as in Nguyen, Raghu & Kornblith 2021) and, for comparison "
            "with older papers, the plug-in (biased) estimate, which drifts towards 1 when features outnumber "
            "images. Floor: the same estimator with B's images shuffled against A's, what no similarity reads "
            "as.\n\n" + to_markdown(cka_table(table)))


def _count(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.0f}"


__all__ = [
    "UnitDrift",
    "cka_grams",
    "cka_table",
    "drift_table",
    "layer_pairs",
    "paired_activations",
    "switch_heatmap",
    "unit_drift_markdown",
]
