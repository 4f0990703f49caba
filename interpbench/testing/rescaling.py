"""Conformance check: a metric of explanations scores ``c * maps`` as it scores ``maps``, for every ``c > 0``.

A method's maps are defined up to a positive scale (a gradient map of a logit and of ten times that logit, a
map normalised to sum 1 or to a maximum of 1, all say the same), so no metric of explanations may change when the
maps are rescaled. Guards against "no mass" written as absolute thresholds (``mass <= 1e-7``) break this: a map of
total mass 1 scaled by 1e-9 then scores 0. :func:`rescaling_checks` scores a graded, signed map of unit absolute
mass (per image), then the same map times each factor (1e-9 and 1e9 by default), and expects the same scores:
per-sample scores within ``rtol`` (relative to the largest unscaled score, at least 1), every value of a dataset-level
result within ``rtol`` of the unscaled one.

The maps reach the metric twice: as the ``maps`` argument, and through ``batch.method`` for metrics that explain
more images themselves (the grid game, adversarial detection, explanation drift): the batch's method returns the
same map times the factor.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from interpbench.core.base import Batch, Method, Metric, Model
from interpbench.testing.metrics import _dataset_result, _scores
from interpbench.testing.report import (
    Check,
    CheckReport,
    apply_expected_failures,
    run_checks,
)
from interpbench.testing.world import (
    _instance,
    _label,
    reference_batch,
    reference_model,
    region_mask,
)

FACTORS = (1e-9, 1e9)
RTOL = 1e-5


def graded_maps(images: torch.Tensor) -> torch.Tensor:
    """``B x H x W`` signed maps of unit absolute mass per image: the reference region plus a ramp and a pattern
    that depends on the image (so that maps differ, arg-maxes are unique and some values are negative)."""
    b, _, h, w = images.shape
    region = region_mask((h, w)).to(images.device, torch.float32)
    ys = torch.linspace(0, 1, h, device=images.device)[:, None]
    xs = torch.linspace(0, 1, w, device=images.device)[None, :]
    ramp = 0.3 * ys + 0.2 * xs - 0.25
    maps = region[None] + ramp[None] + 0.1 * (images.float().mean(dim=1) - 0.5)
    return maps / maps.abs().flatten(1).sum(dim=1).view(-1, 1, 1)


class ScaledMethod(Method):
    """The graded map of :func:`graded_maps` times ``factor``: what the batch's method returns in the check."""

    name = "rescaling:graded"

    def __init__(self, factor: float = 1.0, **params: Any) -> None:
        super().__init__(**params)
        self.factor = float(factor)

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return graded_maps(images) * self.factor


def _agree(a: Any, b: Any, rtol: float) -> tuple[bool, str]:
    if isinstance(a, torch.Tensor):
        scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
        diff = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        return diff <= rtol * scale, f"largest difference {diff:.3g}"
    if a.keys() != b.keys():
        return False, f"different keys: {sorted(set(a) ^ set(b))}"
    bad = {k: (a[k], b[k]) for k in a if abs(a[k] - b[k]) > rtol * max(1.0, abs(a[k]))}
    return not bad, (f"values that moved: {bad}" if bad else f"{len(a)} values equal")


def rescaling_checks(metric: Metric, *, model: Model | None = None, samples: list[dict] | None = None,
                     factors: tuple[float, ...] = FACTORS, rtol: float = RTOL) -> list[Check]:
    """One check per factor, ``rescaled_maps_<factor>``, on the reference world (or on ``model`` and ``samples``,
    for metrics that need other models or ground truth)."""
    label = _label(metric)
    state: dict[str, Any] = {}

    def world() -> tuple[Model, Batch]:
        if not state:
            state["model"] = model if model is not None else reference_model()
            state["batch"] = reference_batch(model=state["model"], samples=samples)
        return state["model"], state["batch"]

    def result(factor: float) -> Any:
        m, batch = world()
        method = ScaledMethod(factor)
        batch = dataclasses.replace(batch, method=method)
        maps = method.explain(m, batch.images, batch.targets)
        if metric.per_sample:
            return _scores(metric, m, batch, maps)
        return _dataset_result(metric, m, [(batch, maps)])

    def check_factor(factor: float):
        def rescaled_maps():
            plain, scaled = result(1.0), result(factor)
            ok, detail = _agree(plain, scaled, rtol)
            assert ok, (f"metric {label!r}: maps multiplied by {factor:g} changed its result ({detail}); a method's "
                        "maps are defined up to a positive scale, so make every guard on a map's mass relative to "
                        "the map (or exact for all-zero maps)")
            return detail
        return rescaled_maps

    return [Check(f"rescaled_maps_{factor:g}", check_factor(factor)) for factor in factors]


def check_rescaling(metric: Metric | type | str, *, params: dict[str, Any] | None = None,
                    expected_failures: dict[str, str] | None = None, **kwargs: Any) -> CheckReport:
    """Run :func:`rescaling_checks` on a metric (an instance, or a class or registered name built with ``params``)."""
    metric = _instance(metric, "metrics", Metric, params)
    checks = rescaling_checks(metric, **kwargs)
    names = {c.name for c in checks}
    own = {k: v for k, v in (getattr(metric, "expected_failures", {}) or {}).items() if k in names}
    return apply_expected_failures(run_checks(f"metric {_label(metric)}", checks), {**own, **(expected_failures or {})})


__all__ = ["FACTORS", "ScaledMethod", "check_rescaling", "graded_maps", "rescaling_checks"]
