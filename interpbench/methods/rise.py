"""RISE: randomized input sampling (Petsiuk, Das, Saenko, "RISE: Randomized input sampling for explanation of
black-box models", BMVC 2018; reference code eclique/RISE ``explanations.py``).

``N`` random binary grids (``s x s`` cells, each kept with probability ``p``) are upsampled bilinearly to
``(s + 1) * cell`` and cropped at a random shift (:func:`interpbench.ops.masks.rise_masks`); the saliency of a
pixel is the mean target probability over the masked images, weighted by the mask at that pixel, normalised by
``N * p`` (eq. 6 of the paper, ``sal / N / p1`` in the reference code). Masked pixels take the model's mean colour
(RISE multiplies the *normalised* image by the mask, i.e. fades it to zero in normalised space).

One set of masks serves the whole batch (``RISEBatch`` in the reference code); masks are built on the device a
chunk at a time and every (mask, image) pair of a chunk goes through the model in one forward pass.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from interpbench.core.base import ComponentError, Method
from interpbench.methods.gradients import check_batch, finite_maps
from interpbench.methods.perturbation import (
    _model_mean,
    _positive,
    target_probabilities,
)
from interpbench.ops import batching
from interpbench.ops.masks import full_precision, rise_masks


def draw_rise_grids(
    num_masks: int, grid_size: int, p: float, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary grids ``N x s x s`` (1 with probability ``p``) and shifts ``N x 2`` in ``[0, ceil(H / s))`` x
    ``[0, ceil(W / s))``, from torch's global RNG on the CPU (the same numbers on every device)."""
    grids = (torch.rand(num_masks, grid_size, grid_size) < p).float()
    cell = (math.ceil(size[0] / grid_size), math.ceil(size[1] / grid_size))
    shifts = torch.stack([torch.randint(cell[0], (num_masks,)), torch.randint(cell[1], (num_masks,))], dim=1)
    return grids, shifts


def rise_saliency(
    model, images: torch.Tensor, targets: torch.Tensor, grids: torch.Tensor, shifts: torch.Tensor, *,
    p: float, baseline: torch.Tensor, chunk: int = 256,
) -> torch.Tensor:
    # Petsiuk et al. 2018, eq. 6: S(x, c) = 1 / (N p) sum_i P_c(x . M_i) M_i  -> B x H x W
    b, _, h, w = images.shape
    n = len(grids)
    per_chunk = max(1, chunk // b)  # masks per forward pass; every image of the batch with each of them
    saliency = torch.zeros(b, h, w, device=images.device, dtype=torch.float32)
    with torch.no_grad():
        for lo in range(0, n, per_chunk):
            part = slice(lo, lo + per_chunk)
            masks = rise_masks(grids[part].to(images.device), shifts[part].to(images.device), (h, w))  # K x H x W
            k = len(masks)
            m = masks[:, None, None]  # K x 1 x 1 x H x W
            x = baseline + m * (images[None] - baseline)  # K x B x C x H x W
            probs = target_probabilities("rise", model(x.reshape(k * b, *images.shape[1:])), targets.repeat(k))
            with full_precision(images.device):
                saliency += torch.einsum("kb,khw->bhw", probs.view(k, b).float(), masks.float())
    return saliency / (n * p)


class RISE(Method):
    """RISE with ``num_masks`` masks (default 8,000, TorchRay's), ``grid_size`` 7, ``p`` 0.5 (the probability that
    a cell is kept), ``baseline`` ``"mean"`` (the model's mean colour) or a grey level in ``[0, 1]``, and ``chunk``
    (images per forward pass; None: 256 on a GPU, by image size on a CPU, :func:`interpbench.ops.batching.auto_chunk`;
    no effect on the result). Masks are drawn from torch's global RNG (seeded by the runner), one set per call
    shared by the images of the batch."""

    name = "rise"
    version = "1"
    requires_grad = False
    deterministic = False
    defaults = {"num_masks": 8000, "grid_size": 7, "p": 0.5, "baseline": "mean", "chunk": None}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        for key in ("num_masks", "grid_size"):
            _positive(self.name, key, p[key], integer=True)
        batching.check_chunk(self.name, p["chunk"])
        if not (isinstance(p["p"], (int, float)) and not isinstance(p["p"], bool) and 0 < p["p"] <= 1):
            raise ComponentError(
                f"rise: parameter p (probability that a cell is kept) must be in (0, 1], got {p['p']!r}"
            )
        check_baseline(self.name, p["baseline"])

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)
        p = self.params
        h, w = images.shape[-2:]
        grids, shifts = draw_rise_grids(int(p["num_masks"]), int(p["grid_size"]), float(p["p"]), (h, w))
        maps = rise_saliency(model, images.float(), targets, grids, shifts, p=float(p["p"]),
                             baseline=baseline_colour(model, images.float(), p["baseline"]),
                             chunk=batching.resolve_chunk(p["chunk"], images, gpu=256))
        return finite_maps(self.name, model, maps)


def check_baseline(method: str, value: Any) -> None:
    """``"mean"`` or a number in [0, 1]; ComponentError otherwise."""
    if value == "mean":
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return
    raise ComponentError(
        f"{method}: parameter baseline must be 'mean' (the model's mean colour) or a grey level in [0, 1] "
        f"(pixel space), got {value!r}"
    )


def baseline_colour(model, images: torch.Tensor, value: Any) -> torch.Tensor:
    """The colour that replaces removed pixels, ``1 x C x 1 x 1`` in pixel space."""
    if value == "mean":
        return _model_mean(model, images)
    return torch.full((1, images.shape[1], 1, 1), float(value), dtype=images.dtype, device=images.device)
