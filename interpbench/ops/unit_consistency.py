"""Label retention of units under attack: IoU from (bootstrap-weighted) dissection tallies, the share of
detectors that keep their concept label, the IoU change and the relative activation change.

Layer: ops (plain tensor maths, imports nothing from the package). Used by
:class:`interpbench.metrics.adversarial_consistency.AdversarialConsistency` (docs/protocols.md); Dong et al.'s class
consistency is in :mod:`interpbench.ops.consistency`.
"""

from __future__ import annotations

import math

import torch


def batched_iou(intersection: torch.Tensor, activation: torch.Tensor, ground_truth: torch.Tensor,
                category_of: torch.Tensor) -> torch.Tensor:
    """IoU (``... x U x C``) from (possibly bootstrap-weighted) tallies ``... x U x C``, ``... x U x K``, ``... x C``:
    :func:`interpbench.ops.dissect.iou_from_tally` with leading replicate dimensions (NetDissect's union)."""
    union = activation[..., category_of] + ground_truth.unsqueeze(-2) - intersection
    return torch.where(union > 0, intersection / union.clamp_min(1e-300), torch.zeros_like(union))


def consistency_measures(clean_iou: torch.Tensor, adv_iou: torch.Tensor,
                         iou_threshold: float) -> dict[str, torch.Tensor]:
    """Per replicate (leading dims), for the clean probe's detectors (arg-max IoU > ``iou_threshold``):

    - ``label_kept``: share that are detectors of the same concept on the adversarial probe (ties of the arg-max
      to the lowest concept index, as dissection's labels);
    - ``iou_change``: mean change of the IoU with the clean label (adversarial minus clean);
    - ``detectors``: number of clean detectors; ``adv_detectors``: number of detectors on the adversarial probe.
    """
    clean_score, clean_label = clean_iou.max(dim=-1)
    adv_score, adv_label = adv_iou.max(dim=-1)
    detector = clean_score > iou_threshold
    kept = detector & (adv_label == clean_label) & (adv_score > iou_threshold)
    change = adv_iou.gather(-1, clean_label.unsqueeze(-1)).squeeze(-1) - clean_score
    count = detector.sum(dim=-1).double()
    nan = torch.full_like(count, math.nan)
    return {
        "label_kept": torch.where(count > 0, kept.sum(dim=-1) / count.clamp_min(1), nan),
        "iou_change": torch.where(count > 0, (change * detector).sum(dim=-1) / count.clamp_min(1), nan),
        "detectors": count,
        "adv_detectors": (adv_score > iou_threshold).sum(dim=-1).double(),
    }


def relative_activation_change(abs_change: torch.Tensor, abs_clean: torch.Tensor) -> torch.Tensor:
    """Mean over units of ``sum |a_adv - a_clean| / sum |a_clean|`` (sums over images and positions; ``... x U``
    in, ``...`` out; units that never activate on the clean probe are left out)."""
    active = abs_clean > 0
    ratio = torch.where(active, abs_change / abs_clean.clamp_min(1e-300), torch.zeros_like(abs_change))
    return ratio.sum(dim=-1) / active.sum(dim=-1).clamp_min(1)
