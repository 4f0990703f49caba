"""What the two drift metrics of a pair ``A=>B`` share: model A of the pair and the number format of their tables.

Layer: metrics (imports core only). The metrics are :class:`interpbench.metrics.unit_drift.UnitDrift` and
:class:`interpbench.metrics.explanation_drift.ExplanationDrift` (docs/protocols.md, "Unit drift under transfer,
fine-tuning, distillation, compression"); :mod:`interpbench.models.derived` builds the pairs.
"""

from __future__ import annotations

import math

import torch

from interpbench.core.base import Model, NotApplicable


def reference_of(model: Model, metric: str) -> Model:
    """Model A of a pair, or NotApplicable naming the fix."""
    reference = getattr(model, "reference", None)
    if not isinstance(reference, torch.nn.Module):
        raise NotApplicable(f"{metric}: model {getattr(model, 'spec', model)!r} is not a pair; compare two models "
                            "with a pair spec 'A=>B' (e.g. 'shapes:cnn=>shapes:cnn.shape2color', `interpbench run "
                            "--pairs A=>B` or `interpbench drift --from A --to B`)")
    return reference


def _fmt(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


__all__ = ["reference_of"]
