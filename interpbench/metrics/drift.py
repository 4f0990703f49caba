"""The two drift metrics of a pair ``A=>B`` together (docs/protocols.md, "Unit drift under transfer, fine-tuning,
distillation, compression"): the import path of both families and the leaderboard text that joins their sections.

Layer: metrics. Each family has its own module: ``unit_drift`` (dissection of both models, unit matchings, CKA) in
:mod:`interpbench.metrics.unit_drift`, ``explanation_drift`` (maps of A against maps of B, the model-randomisation
sanity check) in :mod:`interpbench.metrics.explanation_drift`; what both share (model A of a pair) in
:mod:`interpbench.metrics.drift_pairs`; the maths in :mod:`interpbench.ops.drift`. This module re-exports their
public names, so ``from interpbench.metrics.drift import UnitDrift, sanity_table`` keeps working.
"""

from __future__ import annotations

from typing import Any

from interpbench.metrics.explanation_drift import (
    ExplanationDrift,
    sanity_markdown,
    sanity_table,
)
from interpbench.metrics.unit_drift import (
    UnitDrift,
    cka_grams,
    cka_table,
    drift_table,
    layer_pairs,
    paired_activations,
    switch_heatmap,
    unit_drift_markdown,
)


def drift_markdown(table: Any) -> str:
    """Both sections (:func:`unit_drift_markdown` and :func:`sanity_markdown`)."""
    return unit_drift_markdown(table) + sanity_markdown(table)


__all__ = [
    "ExplanationDrift",
    "UnitDrift",
    "cka_grams",
    "cka_table",
    "drift_markdown",
    "drift_table",
    "layer_pairs",
    "paired_activations",
    "sanity_markdown",
    "sanity_table",
    "switch_heatmap",
    "unit_drift_markdown",
]
