"""Baseline "explanations" that ignore the model: uniform noise and a centred Gaussian.

A method that does not beat these on a metric tells us little; the centre baseline in particular is strong on
photo datasets, where objects tend to be in the middle (TorchRay's pointing-game "center" row).
"""

from __future__ import annotations

import math

import torch

from interpbench.core.base import ComponentError, Method
from interpbench.methods.gradients import check_batch


def uniform_noise_maps(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """B x H x W maps of i.i.d. U[0, 1) noise, drawn from torch's global RNG (seeded by the runner)."""
    return torch.rand(batch, height, width, device=device, dtype=torch.float32)


def centered_gaussian(height: int, width: int, sigma: float, device: torch.device | None = None) -> torch.Tensor:
    # exp(-(u^2 + v^2) / (2 sigma^2)), u = (x - W/2)/W, v = (y - H/2)/H at pixel centres: the same map at any size
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height - 0.5
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width - 0.5
    return torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))


class RandomMap(Method):
    """Uniform random noise: the chance level of every metric (stochastic; seeded by the runner)."""

    name = "random"
    version = "1"
    requires_grad = False
    deterministic = False
    defaults: dict = {}

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_batch(self.name, model, images, targets)
        b, _, h, w = images.shape
        return uniform_noise_maps(b, h, w, images.device)


class CenterMap(Method):
    """A centred Gaussian, the same for every image; ``sigma`` is a fraction of the image height / width."""

    name = "center"
    version = "1"
    requires_grad = False
    deterministic = True
    points_at_centre = True
    defaults = {"sigma": 0.25}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        sigma = self.params["sigma"]
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise ComponentError(
                f"center: sigma must be a positive number (a fraction of the image side, e.g. 0.25), got {sigma!r}"
            )

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_batch(self.name, model, images, targets)
        b, _, h, w = images.shape
        gaussian = centered_gaussian(h, w, float(self.params["sigma"]), device=images.device)
        return gaussian.expand(b, h, w).contiguous()
