"""ROAR / KAR maths (Hooker, Erhan, Kindermans & Kim, "A Benchmark for Interpretability Methods in Deep Neural
Networks", NeurIPS 2019): which pixels of an image a map removes or keeps at a fraction ``t``, the images with the
others replaced, and the area under an accuracy-against-fraction curve.

Pixels are ranked as deletion ranks them (:mod:`interpbench.metrics.causal`): decreasing saliency, ties by the
lower flat pixel index first (a stable sort), so every map, flat ones included, gives one exact order. At fraction
``t`` exactly ``round(t * H * W)`` pixels (all channels of each) are marked: ROAR replaces the marked (most salient)
pixels, KAR keeps them and replaces all the others.

Layer: ops (plain tensor maths; imports nothing from the package). The metrics built on these are in
:mod:`interpbench.metrics.roar`; the retraining in :mod:`interpbench.models.retrain`.
"""

from __future__ import annotations

from typing import Sequence

import torch


def pixel_count(fraction: float, num_pixels: int) -> int:
    """How many pixels fraction ``fraction`` of ``num_pixels`` marks: ``round(fraction * num_pixels)`` (Python's
    rounding, as ROAD's removal masks)."""
    return int(round(float(fraction) * num_pixels))


def top_pixels(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """``B x H x W`` bool: the ``round(fraction * H * W)`` most salient pixels of each map (decreasing saliency,
    ties by lower flat index first)."""
    if maps.dim() != 3:
        raise ValueError(f"top_pixels: maps must be B x H x W, got shape {tuple(maps.shape)}")
    flat = maps.reshape(maps.shape[0], -1)
    count = pixel_count(fraction, flat.shape[1])
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices  # stable: equal values keep index order
    marked = torch.zeros_like(flat, dtype=torch.bool)
    marked.scatter_(1, order[:, :count], True)
    return marked.view(maps.shape)


def replace_pixels(images: torch.Tensor, maps: torch.Tensor, fraction: float, fill: torch.Tensor | float, *,
                   keep: bool = False) -> torch.Tensor:
    """``images`` (``B x C x H x W``) with pixels replaced by ``fill`` (a number or a ``C`` / ``1 x C x 1 x 1``
    per-channel value): ROAR (``keep=False``) replaces the ``round(fraction * H * W)`` most salient pixels of each
    map, KAR (``keep=True``) keeps those and replaces the rest."""
    marked = top_pixels(maps.to(images.device), fraction)
    replaced = ~marked if keep else marked
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    if fill.dim() == 1:
        fill = fill.view(1, -1, 1, 1)
    return torch.where(replaced.unsqueeze(1), fill, images)


def curve_area(fractions: Sequence[float], values: Sequence[float] | torch.Tensor) -> float:
    """Area under a curve of ``values`` against ``fractions`` (increasing), by the trapezoid rule, divided by the
    span ``fractions[-1] - fractions[0]``: the curve's mean height, in the values' units (accuracy). One point: its
    value."""
    xs = [float(f) for f in fractions]
    ys = [float(v) for v in values]
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"curve_area: {len(xs)} fractions and {len(ys)} values; give one value per fraction")
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError(f"curve_area: fractions must increase, got {xs}")
    if len(xs) == 1:
        return ys[0]
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))
    return area / (xs[-1] - xs[0])


def seed_interval(values: Sequence[float]) -> tuple[float, float]:
    """The spread over seeds shown as the interval of a ROAR value: the minimum and maximum over the seeds (with the
    3 seeds of the protocol a t-interval would rest on 2 degrees of freedom; the range makes no distributional
    claim)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("seed_interval: no values")
    return min(vals), max(vals)


__all__ = ["curve_area", "pixel_count", "replace_pixels", "seed_interval", "top_pixels"]
