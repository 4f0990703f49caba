"""Adversarial examples and explanations (docs/protocols.md, "Adversarial detection with explanations"): the
detection metric and the attack glue that every adversarial metric goes through.

- ``adversarial_detection`` (explanation scope, dataset level). Do a method's maps reveal adversarial images?
  (Fong & Vedaldi, ICCV 2017; features as in ML-LOO, Yang et al., AAAI 2020.) Clean images the model classifies
  correctly are attacked (FGSM and PGD-Linf at 2/255, 4/255, 8/255, Carlini-Wagner L2); successful attacks only
  are kept. The method explains the predicted class of the clean image (the runner's maps) and of the adversarial
  image (the same method, re-run here). From each map: its mass on a small grid (shifted to a minimum of 0 and
  normalised to sum 1) and dispersion statistics (log inter-quartile range as in ML-LOO, log standard deviation,
  IQR over range, normalised entropy, share of the top 10% pixels). A logistic regression separates clean from
  adversarial maps, cross-validated over disjoint images: folds are drawn over image ids, so an image and its
  adversarial copies (of every attack) always fall on the same side. Reported per attack: AUROC and TPR at 5% FPR
  of the pooled out-of-fold scores (95% percentile bootstrap CIs over images: an image and its adversarial copy are
  resampled together and the whole cross-validation, fits included, is rerun on each resample),
  n, the attack's success rate; the same detector on method-free features (softmax and logit statistics) as the
  baseline an explanation has to beat (``baseline.ATTACK.*``), and the paired difference ``ATTACK.auroc_gain``
  (method minus baseline, paired bootstrap CI); the cross-attack table ``cross.TRAIN.TEST.auroc`` (train on one
  attack's training folds, test on another attack's held-out folds). None of the attacks is adaptive (they do not
  know the detector; Carlini & Wagner, AISec 2017): ``adaptive_attacks`` is 0.

  The attacks do not depend on the method: each image's attack is seeded from (model, attack, image id), so every
  method of a run is scored on the same adversarial images, the same pairs and the same folds, and the baseline
  values are the same in every method's cell. Adversarial images are cached per model for the batch at hand, so
  a run with several methods attacks each batch once.

The two model-scope metrics on units under attack, ``adversarial_consistency`` (dissection labels kept under
attack; Bau et al., PNAS 2020) and ``adversarial_class_consistency`` (Dong et al. 2017), are in
:mod:`interpbench.metrics.adversarial_consistency`; they attack the probe through :func:`attack_probe_batch` here,
so the attack cache is shared with detection.

The maths lives in plain functions in ops/ (layer ops): attack names and settings, per-image seeding and the cache
of adversarial images in :mod:`interpbench.ops.attack_specs`; the detector's features in
:mod:`interpbench.ops.detection_features`; folds, logistic regressions, out-of-fold scores and the bootstrap of the
whole cross-validation in :mod:`interpbench.ops.detection`; AUROC, TPR at a fixed FPR, bootstrap weights and
percentile intervals in :mod:`interpbench.ops.stats`. The cross-attack table is in
:mod:`interpbench.metrics.adversarial_tables`. This module (layer metrics) holds the detection metric, its results
table, the attack parameters' checks and the glue between the metrics and the attack cache.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from interpbench.core.base import (
    Batch,
    ComponentError,
    DatasetMetric,
    Model,
    RunContext,
)
from interpbench.core.identity import stable_hash
from interpbench.core.tabular import format_value, slug, to_markdown
from interpbench.metrics.adversarial_tables import write_cross_attack_table
from interpbench.metrics.dissection import iter_probe
from interpbench.ops.attack_specs import (
    ATTACK_CACHE,
    ATTACK_DEFAULTS,
    DEFAULT_ATTACKS,
    AttackSpec,
    parse_attacks,
    run_attack,
)
from interpbench.ops.detection import (
    bootstrap_detection,
    cached_bootstrap_detection,
    detection_scores,
    fit_logistic_regression_batched,
    image_folds,
    out_of_fold_scores,
)
from interpbench.ops.detection_features import logit_features, map_features
from interpbench.ops.stats import (
    auroc,
    bootstrap_weights,
    percentile_interval,
    roc_curve,
    tpr_at_fpr,
)

# --------------------------------------------------------------------------------------------- attacks
# The cache and the attacks are in ops/attack_specs.py; this glue stays with the metrics, which reach
# ``run_attack`` through this module (tests/test_adversarial.py counts the calls to it). The probe attacks serve
# the two model-scope metrics of metrics/adversarial_consistency.py: they share the cache with detection.


def attack_batch(spec: AttackSpec, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(adversarial images, their logits)``, from :data:`ATTACK_CACHE` when this batch was attacked already."""
    fingerprint = (spec.identity().__repr__(), tuple(str(i) for i in ids), tuple(images.shape),
                   float(images.double().sum()), tuple(labels.tolist()))
    hit = ATTACK_CACHE.get(model, fingerprint)
    if hit is not None:
        return hit
    adversarial = run_attack(spec, model, images, labels, ids).images.detach()
    with torch.no_grad():
        logits = model(adversarial).float()
    ATTACK_CACHE.put(model, fingerprint, (adversarial, logits))
    return adversarial, logits


def adversarial_probe(model: torch.nn.Module, dataset: Any, spec: AttackSpec, *, batch_size: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every probe image attacked (labels: the model's clean top-1 class), on the CPU: ``(images N x C x H x W,
    success bool [N])``. Each image is seeded by (model, attack, probe index)."""
    parts, successes = [], []
    for indices, images, _ in iter_probe(dataset, batch_size):
        images = images.to(device)
        with torch.no_grad():
            labels = model(images).argmax(dim=1)
        adversarial, success = attack_probe_batch(spec, model, images, labels, [f"probe:{int(i)}" for i in indices])
        parts.append(adversarial.cpu())
        successes.append(success.cpu())
    return torch.cat(parts), torch.cat(successes)


def attack_probe_batch(spec: AttackSpec, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(adversarial images, success)`` of a probe batch. FGSM and PGD go through :data:`ATTACK_CACHE` (their
    success is the changed top-1 class), so the two model-scope metrics of a run, which attack the same probe
    images with the same seeds, attack them once; CW (whose success may require a margin ``kappa``) runs as is."""
    if spec.kind == "cw":
        result = run_attack(spec, model, images, labels, ids)
        return result.images.detach(), result.success
    adversarial, logits = attack_batch(spec, model, images, labels, ids)
    return adversarial, logits.argmax(dim=1) != labels


# --------------------------------------------------------------------------------------------- attack parameters
# Checked alike by the three adversarial metrics (detection here, the two consistency metrics in
# metrics/adversarial_consistency.py).


def _positive_ints(who: str, p: Mapping[str, Any], names: Sequence[str]) -> None:
    """Each of ``p[name]`` an int >= 1, else ComponentError naming the metric and the parameter."""
    for name in names:
        v = p[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ComponentError(f"{who}: {name} must be a positive int, got {v!r}")


def _check_params(who: str, p: Mapping[str, Any]) -> None:
    def positive_number(name: str, allow_zero: bool = False) -> None:
        v = p[name]
        bad_type = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        if bad_type or v < 0 or (v == 0 and not allow_zero):
            raise ComponentError(f"{who}: {name} must be a number {'>=' if allow_zero else '>'} 0, got {v!r}")

    _positive_ints(who, p, ("pgd_steps", "cw_steps", "cw_binary_search_steps"))
    for name in ("pgd_step_ratio", "cw_lr", "cw_initial_const"):
        positive_number(name)
    positive_number("cw_kappa", allow_zero=True)


# --------------------------------------------------------------------------------------------- results table


def detection_table(results: "Any", value: str = "auroc") -> "Any":
    """The detection table of a run: one row per (model, dataset, method) and one baseline row per (model,
    dataset), one column per attack, cells ``"mean [ci_low, ci_high]"`` of ``value`` (``auroc`` or ``tpr5``).

    ``results`` is the long table of :func:`interpbench.publish.results.results_table` (or ``results.json``'s
    records as a DataFrame). The baseline row is taken from the first method's cell: it is the same in every cell.
    """
    part = results[(results["metric"] == AdversarialDetection.name) & (results["status"] == "done")]
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    pattern = re.compile(rf"^(?P<base>baseline\.)?(?P<attack>[a-z]+[0-9.]*)\.{re.escape(value)}$")

    def cell(r) -> str:
        if pd.isna(r["ci_low"]):
            return f"{r['mean']:.3f}"
        return f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"

    for _, r in part.iterrows():
        match = pattern.match(str(r["value_name"]))
        if match is None:
            continue
        method = "baseline (softmax/logits)" if match["base"] else r["method"]
        key = (r["model"], r["dataset"], method)
        if match["base"] and match["attack"] in rows.get(key, {}):
            continue
        rows.setdefault(key, {})[match["attack"]] = cell(r)
    attacks = sorted({a for v in rows.values() for a in v},
                     key=lambda a: (DEFAULT_ATTACKS.index(a) if a in DEFAULT_ATTACKS else len(DEFAULT_ATTACKS), a))
    order = sorted(rows, key=lambda k: (k[0], k[1], k[2].startswith("baseline"), k[2]))
    return pd.DataFrame([{"model": k[0], "dataset": k[1], "method": k[2], **{a: rows[k].get(a, "–") for a in attacks}}
                         for k in order])


# --------------------------------------------------------------------------------------------- metric: detection


class AdversarialDetection(DatasetMetric):
    """Detect adversarial images from a method's maps: AUROC / TPR at 5% FPR per attack, against a logit baseline.

    Parameters: ``attacks`` (names ``fgsmE``, ``pgdE`` with epsilon ``E/255``, ``cw``; default FGSM and PGD at 2,
    4, 8 and CW L2, docs/protocols.md), ``pgd_steps`` (10), ``pgd_step_ratio`` (step = 0.25 eps), ``pgd_random_start``
    (True); CW L2 as in the detection benchmark of Ma et al. (LID, ICLR 2018; Carlini's ``l2_attack.py`` with
    1,000 iterations): ``cw_binary_search_steps`` 9, ``cw_steps`` 1000, ``cw_lr`` 0.01, ``cw_initial_const`` 1e-3,
    ``cw_kappa`` 0, ``cw_abort_early`` True; ``grid`` (4: the map's mass on a 4 x 4 grid), ``folds`` (5), ``C``
    (1.0, inverse L2 strength of the logistic regression), ``fpr`` (0.05), ``bootstrap`` (1000 replicates over
    images; each reruns the whole cross-validation on its resample, so the interval covers the detector's training
    as well as its test sample), ``cross_attack`` (True).

    Results (flat names, per attack ``A``): ``A.auroc``, ``A.tpr5`` (with ``_ci_low`` / ``_ci_high``), ``A.n``
    (clean/adversarial pairs), ``A.success`` (attack success rate on the correctly classified images),
    ``baseline.A.auroc`` / ``baseline.A.tpr5`` (softmax/logit features, same pairs and folds),
    ``A.auroc_gain`` (method minus baseline, paired bootstrap CI), ``cross.TRAIN.TEST.auroc``; and ``n`` (correctly
    classified images), ``accuracy`` (on the labelled images seen; samples without a ``label`` are left out),
    ``adaptive_attacks`` (0: none of the attacks knows the detector). Attacks with fewer than ``2 * folds``
    successful pairs report only ``A.n`` and ``A.success``.

    Artefacts: in a run (the runner hands a dataset-level metric its ``run_context``, whose ``out_dir`` is
    ``<out>/artifacts/<model>__<dataset>__adversarial_detection``), or where ``out_dir`` is set on the instance
    (an attribute, not a parameter), ``compute()`` writes ``METHOD-cross.csv`` / ``.md`` (the cross-attack table),
    ``METHOD-roc.csv`` (columns ``attack,fpr,tpr``: the ROC points of each attack's detector, from the pooled
    out-of-fold scores), ``METHOD-baseline-roc.csv`` (the same for the method-free features on the method's
    pairs) and ``baseline-roc.csv`` (the baseline of the cell with the most pairs).
    """

    name: ClassVar[str] = "adversarial_detection"
    headline_values: ClassVar[tuple[str, ...]] = ("*.auroc",)
    #: the method-free baseline detector and the cross-attack detectors: laid out apart from the method's own
    internal_values: ClassVar[tuple[str, ...]] = ("baseline.**", "cross.**")

    @classmethod
    def leaderboard_markdown(cls, rows: Any) -> str | None:
        """The section of ``methods.md``: one row per (model, dataset, method, attack) with the detector's AUROC and
        TPR at 5% FPR, the method-free baseline's, the gain and n (the cross-attack table stays in the CSV)."""
        done = rows[rows["status"] == "done"]
        values = {(r.model, r.dataset, r.method, str(r.value_name)): r for r in done.itertuples(index=False)}
        out = []
        for (model, dataset, method, name), r in values.items():
            if not name.endswith(".auroc") or cls.is_internal(name):
                continue
            attack = name[: -len(".auroc")]

            def cell(key: str) -> str:
                row = values.get((model, dataset, method, key))
                return "" if row is None else format_value(pd.Series(row._asdict()))

            out.append({"model": model, "dataset": dataset, "method": method, "attack": attack,
                        "AUROC ↑": cell(f"{attack}.auroc"), "TPR@5%FPR ↑": cell(f"{attack}.tpr5"),
                        "baseline AUROC": cell(f"baseline.{attack}.auroc"),
                        "AUROC gain ↑": cell(f"{attack}.auroc_gain"), "pairs": cell(f"{attack}.n"),
                        "attack success": cell(f"{attack}.success")})
        if not out:
            return None
        table = pd.DataFrame(out).sort_values(["model", "dataset", "attack"], kind="stable")
        return ("Detector on the method's map features against the same detector on softmax/logit features "
                "(baseline), cross-validated over images; gain: method minus baseline (paired bootstrap).\n\n"
                + to_markdown(table))
    version: ClassVar[str] = "1"
    scope: ClassVar[str] = "explanation"
    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"label"})
    expected_failures: ClassVar[dict[str, str]] = {
        "prefers_oracle_map": "it scores whether maps change under attack, not whether they point at the evidence; "
                              "it has no single headline number",
    }
    defaults: ClassVar[dict[str, Any]] = {
        "attacks": list(DEFAULT_ATTACKS),
        **ATTACK_DEFAULTS,
        "grid": 4,
        "folds": 5,
        "C": 1.0,
        "fpr": 0.05,
        "bootstrap": 1000,
        "cross_attack": True,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        _check_params(self.name, p)
        self.specs = parse_attacks(p["attacks"], p, self.name)
        _positive_ints(self.name, p, ("grid", "bootstrap"))
        if isinstance(p["folds"], bool) or not isinstance(p["folds"], int) or p["folds"] < 2:
            raise ComponentError(f"{self.name}: folds must be an int >= 2 (cross-validation), got {p['folds']!r}")
        if isinstance(p["C"], bool) or not isinstance(p["C"], (int, float)) or not p["C"] > 0:
            raise ComponentError(f"{self.name}: C (inverse regularisation strength) must be > 0, got {p['C']!r}")
        if isinstance(p["fpr"], bool) or not isinstance(p["fpr"], (int, float)) or not 0 < p["fpr"] < 1:
            raise ComponentError(f"{self.name}: fpr must lie strictly between 0 and 1 (default 0.05), got {p['fpr']!r}")
        self.out_dir: Path | None = None
        self.run_context: RunContext | None = None  # set by the runner (its out_dir receives the artefacts)
        # distributed runs: the ranks' images (distinct ids) in rank order, counts summed
        self.add_state("_seen", 0, reduce="sum")
        self.add_state("_clean", {}, reduce="cat")  # id -> (map features, logit features)
        self.add_state("_adv", {s.name: {} for s in self.specs}, reduce="cat")  # attack -> id -> features
        self.add_state("_attempted", {s.name: 0 for s in self.specs}, reduce="sum")
        # the method whose maps are scored (Batch.method), for file names: each rank's own, never sent
        self.add_state("_method_name", None, reduce=None)

    # ------------------------------------------------------------------ update

    def update(self, model: Model, batch: Batch, maps: torch.Tensor) -> None:
        method = batch.method
        if method is None:
            raise ComponentError(f"{self.name}: batch.method is None; this metric re-runs the method on the "
                                 "adversarial images, so the runner (or caller) must set Batch.method to the method "
                                 "that made the maps")
        self._method_name = getattr(method, "name", None) or type(method).__name__
        images = batch.images
        b, _, h, w = images.shape
        if batch.labels is not None:
            labels = batch.labels.to(images.device).long()
        else:  # some samples lack a label (the runner then sets no Batch.labels): only the labelled ones count
            labels = torch.tensor([int(s["label"]) if s.get("label") is not None else -1 for s in batch.samples],
                                  dtype=torch.long, device=images.device)
        if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != (b, h, w):
            got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ComponentError(f"{self.name}: maps must be B x H x W = {(b, h, w)}, got {got}")
        with torch.no_grad():
            logits = model(images).float()
        predicted = logits.argmax(dim=1)
        correct = (predicted == labels) & (batch.targets.to(images.device).long() == predicted)
        self._seen += int((labels >= 0).sum())
        keep = torch.nonzero(correct).squeeze(1)
        if keep.numel() == 0:
            return
        ids = [str(batch.ids[i]) for i in keep.tolist()]
        clean_images, clean_labels = images[keep], labels[keep]
        clean_maps = map_features(maps[keep].detach().float(), self.params["grid"])
        clean_logits = logit_features(logits[keep])
        for i, sid in enumerate(ids):
            self._clean[sid] = (clean_maps[i], clean_logits[i])
        # attack every kept image with every attack, then explain all successful adversarial images at once
        pending = []
        for spec in self.specs:
            adversarial, adv_logits = attack_batch(spec, model, clean_images, clean_labels, ids)
            adv_predicted = adv_logits.argmax(dim=1)
            success = torch.nonzero(adv_predicted != clean_labels).squeeze(1)
            self._attempted[spec.name] += len(ids)
            if success.numel():
                pending.append((spec, success, adversarial[success], adv_predicted[success], adv_logits[success]))
        if not pending:
            return
        all_images = torch.cat([p[2] for p in pending])
        all_targets = torch.cat([p[3] for p in pending])
        adv_maps = torch.cat([self._explain(method, model, all_images[i:i + b], all_targets[i:i + b])
                              for i in range(0, len(all_images), b)])
        adv_features = map_features(adv_maps, self.params["grid"])
        start = 0
        for spec, success, _, _, adv_logits in pending:
            stop = start + len(success)
            base = logit_features(adv_logits)
            for j, i in enumerate(success.tolist()):
                self._adv[spec.name][ids[i]] = (adv_features[start + j], base[j])
            start = stop

    def _explain(self, method, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        maps = method.explain(model, images, targets)
        if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != (images.shape[0], *images.shape[-2:]):
            got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ComponentError(f"{self.name}: method {method.name!r} returned maps of shape {got} on the adversarial "
                                 f"images, expected {(images.shape[0], *images.shape[-2:])}")
        maps = maps.detach().float()
        if not bool(torch.isfinite(maps).all()):
            raise ComponentError(f"{self.name}: method {method.name!r} returned non-finite maps on adversarial images")
        return maps

    # ------------------------------------------------------------------ compute

    def compute(self) -> dict[str, float]:
        p = self.params
        n_folds, C, fpr = p["folds"], float(p["C"]), float(p["fpr"])
        tag = f"tpr{round(100 * fpr):g}"
        n_clean = len(self._clean)
        out: dict[str, float] = {"n": float(n_clean), "adaptive_attacks": 0.0}
        if self._seen:
            out["accuracy"] = n_clean / self._seen
        fold_of = image_folds(list(self._clean), n_folds)
        fitted: dict[str, tuple[list, list[str]]] = {}
        roc: dict[str, tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {}
        for spec in self.specs:
            pairs = sorted(self._adv[spec.name], key=lambda s: (fold_of[s], s))
            attempted = self._attempted[spec.name]
            out[f"{spec.name}.n"] = float(len(pairs))
            if attempted:
                out[f"{spec.name}.success"] = len(pairs) / attempted
            if len(pairs) < 2 * n_folds:
                continue
            clean_m = torch.stack([self._clean[s][0] for s in pairs])
            clean_b = torch.stack([self._clean[s][1] for s in pairs])
            adv_m = torch.stack([self._adv[spec.name][s][0] for s in pairs])
            adv_b = torch.stack([self._adv[spec.name][s][1] for s in pairs])
            models, sc, sa = detection_scores(clean_m, adv_m, pairs, fold_of, n_folds, C)
            _, bc, ba = detection_scores(clean_b, adv_b, pairs, fold_of, n_folds, C)
            folds = torch.tensor([fold_of[s] for s in pairs])
            seed = stable_hash([self.name, spec.name, pairs])
            weights = torch.from_numpy(bootstrap_weights(len(pairs), p["bootstrap"], seed))
            boot_auc, boot_tpr = bootstrap_detection(clean_m, adv_m, folds, n_folds, C, weights, fpr)
            base_auc, base_tpr = cached_bootstrap_detection(clean_b, adv_b, folds, n_folds, C, weights, fpr)
            roc[spec.name] = (roc_curve(sc, sa), roc_curve(bc, ba))
            for prefix, (c_scores, a_scores), (b_auc, b_tpr) in (
                    (spec.name, (sc, sa), (boot_auc, boot_tpr)),
                    (f"baseline.{spec.name}", (bc, ba), (base_auc, base_tpr))):
                out[f"{prefix}.auroc"] = auroc(c_scores, a_scores)
                out[f"{prefix}.auroc_ci_low"], out[f"{prefix}.auroc_ci_high"] = percentile_interval(b_auc.numpy())
                out[f"{prefix}.{tag}"] = tpr_at_fpr(c_scores, a_scores, fpr)
                out[f"{prefix}.{tag}_ci_low"], out[f"{prefix}.{tag}_ci_high"] = percentile_interval(b_tpr.numpy())
            out[f"{spec.name}.auroc_gain"] = out[f"{spec.name}.auroc"] - out[f"baseline.{spec.name}.auroc"]
            out[f"{spec.name}.auroc_gain_ci_low"], out[f"{spec.name}.auroc_gain_ci_high"] = percentile_interval(
                (boot_auc - base_auc).numpy())
            fitted[spec.name] = (models, pairs)
        if p["cross_attack"]:
            for train, (models, _) in fitted.items():
                for test, (_, pairs) in fitted.items():
                    if train == test:
                        continue
                    clean_m = torch.stack([self._clean[s][0] for s in pairs])
                    adv_m = torch.stack([self._adv[test][s][0] for s in pairs])
                    folds = torch.tensor([fold_of[s] for s in pairs] * 2)
                    scores = out_of_fold_scores(models, torch.cat([clean_m, adv_m]), folds).numpy()
                    ok = np.isfinite(scores[: len(pairs)]) & np.isfinite(scores[len(pairs):])
                    if ok.sum() >= 2:
                        out[f"cross.{train}.{test}.auroc"] = auroc(scores[: len(pairs)][ok], scores[len(pairs):][ok])
        out_dir = self.out_dir
        if out_dir is None and getattr(self, "run_context", None) is not None:
            out_dir = self.run_context.out_dir
        if out_dir is not None:
            self._write_artifacts(Path(out_dir), out, roc)
        return out

    def _write_artifacts(self, out_dir: Path, values: Mapping[str, float], roc: Mapping[str, Any]) -> None:
        """``METHOD-cross.csv`` / ``.md`` (the cross-attack table), ``METHOD-roc.csv`` and
        ``METHOD-baseline-roc.csv`` (columns ``attack,fpr,tpr``: the ROC points of each attack's detector on the
        method's maps and on the method-free features, the same pairs), and ``baseline-roc.csv``: the baseline of
        the method's cell with the most pairs (methods run on fewer images under a per-method limit have their own
        baseline, and ``baseline-roc.pairs.json`` records which count the shared file holds)."""
        method = slug(self._method_name or "detector")
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.params["cross_attack"]:
            write_cross_attack_table(values, out_dir, stem=f"{method}-cross")

        def write(path: Path, which: int) -> None:
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["attack", "fpr", "tpr"])
                for attack, curves in roc.items():
                    fpr, tpr = curves[which]
                    writer.writerows((attack, repr(float(a)), repr(float(b))) for a, b in zip(fpr, tpr))

        write(out_dir / f"{method}-roc.csv", 0)
        write(out_dir / f"{method}-baseline-roc.csv", 1)
        pairs = {attack: int(values[f"{attack}.n"]) for attack in roc}
        record = out_dir / "baseline-roc.pairs.json"
        held = json.loads(record.read_text()) if record.is_file() else {}
        if sum(pairs.values()) > sum(held.get("pairs", {}).values()) or not (out_dir / "baseline-roc.csv").is_file():
            write(out_dir / "baseline-roc.csv", 1)
            record.write_text(json.dumps({"method": self._method_name, "pairs": pairs}, indent=1) + "\n")


__all__ = [
    "AdversarialDetection",
    "adversarial_probe",
    "attack_batch",
    "attack_probe_batch",
    "detection_table",
    # from ops/, still reachable here: attack_batch looks run_attack up in this module (tests count its calls),
    # and the detector's pieces a caller replays next to the metric
    "ATTACK_CACHE",
    "AttackSpec",
    "DEFAULT_ATTACKS",
    "bootstrap_detection",
    "bootstrap_weights",
    "detection_scores",
    "fit_logistic_regression_batched",
    "parse_attacks",
    "percentile_interval",
    "run_attack",
]
