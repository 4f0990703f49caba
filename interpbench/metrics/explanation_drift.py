"""Explanation drift between the two models of a pair ``A=>B`` and the model-randomisation sanity check
(docs/protocols.md; :mod:`interpbench.models.derived` builds the pairs).

``explanation_drift`` (explanation scope): the method's maps for the same images on A (computed here, for the class
chosen from A where A and B share a label space, and with the same random draws as B's maps) against the runner's
maps on B: Spearman rank correlation of the maps and of their absolute values, SSIM and top-10% overlap per image,
beside how much the predictions changed. On a sanity pair ``A=>A~cascade:L`` (every stage re-initialised) it gives
the verdict of the model-randomisation test (Adebayo et al., NeurIPS 2018).

Layer: metrics. Maths (rank correlation, SSIM, top-fraction overlap): :mod:`interpbench.ops.drift`; model A of a
pair: :mod:`interpbench.metrics.drift_pairs`. Tables for the leaderboard: :func:`sanity_table`,
:func:`sanity_markdown`. Unit drift (dissection and CKA of the two models) is :mod:`interpbench.metrics.unit_drift`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd
import torch

from interpbench.core.base import Batch, ComponentError, DatasetMetric, Model
from interpbench.core.config import PAIR, parse_cascade
from interpbench.core.identity import stable_hash
from interpbench.core.state import first_filled
from interpbench.core.tabular import to_markdown, wide_table
from interpbench.metrics.drift_pairs import _fmt, reference_of
from interpbench.models.derived import shares_label_space
from interpbench.ops.drift import map_rank_correlation, map_ssim, top_fraction_overlap
from interpbench.ops.stats import bootstrap_ci


class ExplanationDrift(DatasetMetric):
    """How much a method's maps change from model A to model B of a pair, for the same images and the same class.

    For each batch the metric explains model A itself (``batch.method`` on ``model.reference``) under the seed the
    runner used for B's maps (``batch.seed``), so a stochastic method draws the same noise for both. The class:
    where A and B share a label space (a sanity cascade, a pruned model, a student of the same task) both models
    explain one class per image, chosen once from A: the batch's targets, which the runner takes from A
    (:meth:`interpbench.models.derived.PairModel.choose_targets`: A's prediction, or the label with ``--target label``), as
    Adebayo et al. (NeurIPS 2018) explain the same input and class before and after randomising; where they do not
    (fine-tuning to another task), B's maps explain B's class and A's its own top-1 (``class_from_a`` 0 says so).
    ``reference_target``: ``"auto"`` (that rule), ``"predicted"`` (A always explains its own top-1, whatever B
    explained) or ``"same"`` (the batch's targets; needs a shared label space).

    Per image: Spearman rank correlation of the two maps and of their absolute values (average ranks for ties; two
    identical constant maps count 1, a constant map against another 0), SSIM of the two maps (each scaled to
    [0, 1]; :func:`interpbench.ops.drift.map_ssim`) -- the paper's three measures -- and the overlap of their top
    ``top_fraction`` pixels.

    Results: ``explanation_drift`` (1 - mean rank correlation: 0 when the maps did not change), ``rank_correlation``,
    ``rank_correlation_abs``, ``ssim``, ``topN_overlap`` (N = 100 x top_fraction), each with a 95% bootstrap
    interval over images; ``class_from_a`` (1: both models explained the class chosen from A; 0: each its own);
    when A and B share a label space ``prediction_agreement`` (share of images with the same top-1 class) and
    ``prediction_tv`` (mean total-variation distance of the softmax outputs); ``n``. On a sanity pair
    ``A=>A~cascade:K`` also ``randomized_stages`` (K) and ``stages`` (L), and on the full-randomisation row (K = L)
    ``sanity_pass``: 1 when the mean rank correlation with the original maps is below ``sanity_threshold`` (0.5),
    else 0 (the method's maps barely depend on the model's weights: it fails the model-randomisation test of
    Adebayo et al. 2018, who gave no numeric cut-off; 0.5 is this benchmark's, a parameter recorded in the
    manifest).
    """

    name: ClassVar[str] = "explanation_drift"
    headline_values: ClassVar[tuple[str, ...]] = ("explanation_drift",)
    version: ClassVar[str] = "2"  # 2: one class per image, chosen from A, where A and B share a label space

    @classmethod
    def leaderboard_markdown(cls, rows: Any) -> str | None:
        """The section of ``methods.md``: every value per (pair, method), then the sanity check's verdicts."""
        done = rows[~rows["value_name"].astype(str).isin(["randomized_stages", "stages"])]
        return to_markdown(wide_table(done, "explanation")) + sanity_markdown(rows)
    scope: ClassVar[str] = "explanation"
    higher_is_better: ClassVar[bool] = True  # in the randomisation test, drift is what a model-dependent map shows
    defaults: ClassVar[dict[str, Any]] = {"top_fraction": 0.1, "reference_target": "auto",
                                          "sanity_threshold": 0.5}
    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params["reference_target"] not in ("auto", "predicted", "same"):
            raise ComponentError(f"explanation_drift: reference_target {self.params['reference_target']!r}: choose "
                                 "'auto' (the class chosen from A where A and B share a label space, else A's own "
                                 "top-1), 'predicted' (A's own top-1 class) or 'same' (the class explained on B)")
        fraction = self.params["top_fraction"]
        if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ComponentError(f"explanation_drift: top_fraction {fraction!r} must lie in (0, 1] (default 0.1)")
        # Distributed runs: the per-image lists of tensors put end to end in rank order (the one-process order, which
        # the bootstrap intervals depend on); the pair's description from any rank that saw a batch (all hold the same).
        for name in ("_rho", "_rho_abs", "_ssim", "_overlap", "_agree", "_tv"):
            self.add_state(name, [], reduce="cat")  # list[torch.Tensor]
        self.add_state("_pair", {}, reduce=first_filled)

    def update(self, model: Model, batch: Batch, maps: torch.Tensor) -> None:
        reference = reference_of(model, self.name)
        method = batch.method
        if method is None:
            raise ComponentError(f"{self.name}: batch.method is None; this metric explains model A with the method "
                                 "that made the maps, so the runner (or caller) must set Batch.method")
        images = batch.images
        b, _, h, w = images.shape
        if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != (b, h, w):
            got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ComponentError(f"{self.name}: maps must be B x H x W = {(b, h, w)}, got {got}")
        same_space = shares_label_space(reference, model)
        # full precision even under the runner's --precision autocast: the targets were chosen from A's fp32 logits
        with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
            logits_a, logits_b = reference(images.float()).float(), model(images.float()).float()
        rule = self.params["reference_target"]
        if rule == "same" and not same_space:
            raise ComponentError(f"{self.name}: reference_target='same' needs one label space, but A predicts "
                                 f"{reference.label_space!r} and B {model.label_space!r}; use 'auto'")
        if rule == "predicted" or (rule == "auto" and not same_space):
            targets_a = logits_a.argmax(dim=1)
        else:
            targets_a = batch.targets.to(images.device)
            if rule == "auto":
                _check_chosen_from_a(targets_a, logits_a, batch.labels, self.name)
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(batch.seed)  # the runner drew B's maps from this seed: the same noise for A
            maps_a = method.explain(reference, images, targets_a)
        if not isinstance(maps_a, torch.Tensor) or tuple(maps_a.shape) != (b, h, w):
            got = tuple(maps_a.shape) if isinstance(maps_a, torch.Tensor) else type(maps_a).__name__
            raise ComponentError(f"{self.name}: method {method.name!r} returned maps of shape {got} on model A "
                                 f"({reference.spec}), expected {(b, h, w)}")
        maps_a = maps_a.detach().float()
        if not bool(torch.isfinite(maps_a).all()):
            raise ComponentError(f"{self.name}: method {method.name!r} returned non-finite maps on model A "
                                 f"({reference.spec})")
        maps_b = maps.detach().float()
        self._rho.append(map_rank_correlation(maps_a, maps_b).cpu())
        self._rho_abs.append(map_rank_correlation(maps_a.abs(), maps_b.abs()).cpu())
        self._ssim.append(map_ssim(maps_a, maps_b).cpu())
        self._overlap.append(top_fraction_overlap(maps_a, maps_b, float(self.params["top_fraction"])).cpu())
        if same_space:
            self._agree.append((logits_a.argmax(1) == logits_b.argmax(1)).double().cpu())
            tv = 0.5 * (logits_a.softmax(1) - logits_b.softmax(1)).abs().sum(1)
            self._tv.append(tv.double().cpu())
        self._pair = {**dict(getattr(model, "pair_info", {}) or {}), "class_from_a": same_space}

    def compute(self) -> dict[str, float]:
        if not self._rho:
            raise ComponentError(f"{self.name}: no batch was seen; nothing to compute")
        out: dict[str, float] = {}
        rho = torch.cat(self._rho).numpy()
        top = f"top{round(100 * float(self.params['top_fraction']))}_overlap"
        series = {"explanation_drift": 1.0 - rho, "rank_correlation": rho,
                  "rank_correlation_abs": torch.cat(self._rho_abs).numpy(), "ssim": torch.cat(self._ssim).numpy(),
                  top: torch.cat(self._overlap).numpy()}
        if self._agree:
            series["prediction_agreement"] = torch.cat(self._agree).numpy()
            series["prediction_tv"] = torch.cat(self._tv).numpy()
        for name, values in series.items():
            out[name] = float(values.mean())
            lo, hi = bootstrap_ci(values, stable_hash([self.name, name, len(values)]))
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = lo, hi
        out["n"] = float(len(rho))
        out["class_from_a"] = float(bool(self._pair.get("class_from_a")))
        if "sanity_depth" in self._pair:
            depth, total = int(self._pair["sanity_depth"]), int(self._pair["sanity_stages"])
            out["randomized_stages"], out["stages"] = float(depth), float(total)
            if depth == total:
                out["sanity_pass"] = float(out["rank_correlation"] < float(self.params["sanity_threshold"]))
        return out


def _check_chosen_from_a(targets: torch.Tensor, logits_a: torch.Tensor, labels: torch.Tensor | None,
                         metric: str) -> None:
    """Both models of a pair with one label space explain the class chosen from A: each batch target must be A's
    prediction (up to a tie in A's logits) or the image's label. The runner chooses them so
    (``PairModel.choose_targets``); a caller that took B's predictions would compare maps of two classes."""
    gap = logits_a.max(dim=1).values - logits_a.gather(1, targets.view(-1, 1)).squeeze(1)
    ok = gap <= 1e-5 * (1 + logits_a.abs().max(dim=1).values)
    if labels is not None and labels.dim() == 1 and labels.shape == targets.shape:
        ok |= labels.to(targets.device) == targets
    if not bool(ok.all()):
        raise ComponentError(
            f"{metric}: {int((~ok).sum())} of {len(ok)} batch targets are neither model A's prediction nor the label; "
            "A and B share a label space, so both must explain the class chosen from A (Adebayo et al. 2018): take "
            "the targets from model.choose_targets(images) (the runner does), or set reference_target='predicted'")


SANITY_MEASURES = (("rank_correlation", "Spearman ρ"), ("rank_correlation_abs", "Spearman ρ, absolute maps"),
                   ("ssim", "SSIM"))


def sanity_table(table: Any) -> Any:
    """The model-randomisation check of a run: one row per (model, dataset, method, measure) with the measure's
    mean at each randomisation depth (Adebayo et al. 2018's three: Spearman rank correlation of the maps, of their
    absolute values, SSIM), and on the rank-correlation row the verdict of the full-randomisation depth (``pass`` /
    ``FAIL``). Both models explain the class chosen from the original model. Empty when the run has no sanity
    pair."""
    part = table[(table["metric"] == ExplanationDrift.name) & (table["status"] == "done")]
    if part.empty:
        return pd.DataFrame()
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for (model, dataset, method), values in part.groupby(["model", "dataset", "method"], sort=False):
        model = str(model)
        if PAIR not in model:
            continue
        a, _, b = model.partition(PAIR)
        cascade = parse_cascade(b.strip())
        if cascade is None or cascade[0] != a.strip():
            continue
        named = dict(zip(values["value_name"], values["mean"]))
        if "stages" not in named:
            continue
        depth = f"depth {int(named['randomized_stages'])}/{int(named['stages'])}"
        for value_name, label in SANITY_MEASURES:
            if value_name not in named:
                continue
            row = rows.setdefault((a.strip(), dataset, method, value_name),
                                  {"model": a.strip(), "dataset": dataset, "method": method, "measure": label})
            row[depth] = _fmt(named[value_name])
            if value_name == "rank_correlation" and "sanity_pass" in named:
                row["randomisation test"] = "pass" if named["sanity_pass"] >= 0.5 else "FAIL"
    frame = pd.DataFrame(list(rows.values()))
    if frame.empty:
        return frame
    depth_cols = sorted([c for c in frame.columns if c.startswith("depth ")],
                        key=lambda c: int(c.split()[1].split("/")[0]))
    rest = [c for c in ("randomisation test",) if c in frame.columns]
    return frame[["model", "dataset", "method", "measure", *depth_cols, *rest]].fillna("")


def sanity_markdown(table: Any) -> str:
    """The "Model-randomisation sanity check" section for ``methods.md`` (empty string without sanity pairs)."""
    sanity = sanity_table(table)
    if sanity.empty:
        return ""
    return ("\n### Model-randomisation sanity check (Adebayo et al., NeurIPS 2018)\n\nSimilarity between each "
            "method's maps on the model and on the model with its top k of L stages re-initialised (cascading "
            "randomisation), both explaining the same class of each image, chosen once from the original model: "
            "mean Spearman rank correlation of the maps and of their absolute values, and mean SSIM (maps scaled "
            "to [0, 1]). A method whose maps stay correlated (rho >= sanity_threshold, 0.5) when every stage is "
            "re-initialised does not depend on the model's weights: FAIL.\n\n" + to_markdown(sanity))


__all__ = ["ExplanationDrift", "sanity_markdown", "sanity_table"]
