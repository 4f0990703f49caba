"""The adversarial detector's features: a map's mass on a coarse grid and dispersion statistics of its values
(ML-LOO), and the method-free softmax / logit statistics of the baseline detector.

Layer: ops (plain tensor maths, imports nothing from the package). Used by
:class:`interpbench.metrics.adversarial.AdversarialDetection` (docs/protocols.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def map_grid_features(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """``B x grid^2``: the map's mass per cell (shifted to a minimum of 0, normalised to sum 1; uniform if flat)."""
    shifted = (maps - maps.amin(dim=(1, 2), keepdim=True)).double()
    pooled = F.adaptive_avg_pool2d(shifted[:, None], grid).flatten(1)
    total = pooled.sum(dim=1, keepdim=True)
    uniform = torch.full_like(pooled, 1.0 / pooled.shape[1])
    return torch.where(total > 0, pooled / total.clamp_min(1e-300), uniform)


DISPERSION_FEATURES = ("log_iqr", "log_std", "iqr_over_range", "entropy", "top10_share")


def map_dispersion_features(maps: torch.Tensor) -> torch.Tensor:
    """``B x 5`` dispersion statistics of each map's values (float64), see :data:`DISPERSION_FEATURES`.

    ML-LOO (Yang et al., AAAI 2020) detects adversarial images by the inter-quartile range of their attribution;
    we add the standard deviation, the IQR relative to the range (scale-free), the entropy of the shifted map as
    a distribution (normalised by log of the number of pixels) and the share of its mass on the top 10% pixels.
    """
    values = maps.flatten(1).double()
    n = values.shape[1]
    q25, q75 = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=values.dtype, device=values.device), dim=1)
    iqr = q75 - q25  # ML-LOO: IQR(phi(x)) = Q3 - Q1 (numpy's linear interpolation)
    std = values.std(dim=1, unbiased=False)
    span = values.amax(dim=1) - values.amin(dim=1)
    tiny = torch.finfo(torch.float64).tiny
    shifted = values - values.amin(dim=1, keepdim=True)
    total = shifted.sum(dim=1, keepdim=True)
    p = torch.where(total > 0, shifted / total.clamp_min(tiny), torch.full_like(shifted, 1.0 / n))
    entropy = -(p * torch.log(p.clamp_min(tiny))).sum(dim=1) / math.log(n) if n > 1 else torch.ones_like(iqr)
    top = p.topk(max(1, math.ceil(0.1 * n)), dim=1).values.sum(dim=1)
    return torch.stack([iqr.clamp_min(tiny).log(), std.clamp_min(tiny).log(),
                        torch.where(span > 0, iqr / span.clamp_min(tiny), torch.zeros_like(iqr)), entropy, top], dim=1)


def map_features(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """The detector's features of ``B x H x W`` maps: grid masses and dispersion statistics (float64, CPU)."""
    return torch.cat([map_grid_features(maps, grid), map_dispersion_features(maps)], dim=1).cpu()


LOGIT_FEATURES = ("max_softmax", "entropy", "margin", "max_logit", "logsumexp", "logit_std")


def logit_features(logits: torch.Tensor) -> torch.Tensor:
    """``B x 6`` method-free features of the model's logits (float64, CPU), see :data:`LOGIT_FEATURES`.

    The maximum softmax probability (Hendrycks & Gimpel, ICLR 2017), the softmax entropy, the top-2 logit margin,
    the maximum logit, the log-sum-exp (the free energy of Liu et al., NeurIPS 2020) and the logits' spread.
    """
    z = logits.double()
    logp = z.log_softmax(dim=1)
    top2 = z.topk(min(2, z.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, 1] if z.shape[1] > 1 else torch.zeros_like(top2[:, 0])
    return torch.stack([logp.amax(dim=1).exp(), -(logp.exp() * logp).sum(dim=1), margin, top2[:, 0],
                        z.logsumexp(dim=1), z.std(dim=1, unbiased=False)], dim=1).cpu()
