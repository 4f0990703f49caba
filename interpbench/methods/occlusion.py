"""Occlusion (Zeiler & Fergus, "Visualizing and understanding convolutional networks", ECCV 2014, sec. 4.2).

A window slides over the image with a stride; each position replaces the pixels under it (all channels) with a
baseline colour, and the drop of the target's score, ``f(x) - f(x_occluded)``, is credited to those pixels. A
pixel's saliency is the mean drop over the windows that cover it. Window positions follow captum's ``Occlusion``
(``0, stride, ...``, ``ceil((H - window) / stride) + 1`` of them, the last one cut off at the border), so with the
same window, stride, baseline and score this equals captum's attribution (of any channel).

All (window, image) pairs are built on the device and evaluated ``chunk`` at a time.
"""

from __future__ import annotations

from typing import Any

import torch

from interpbench.core.base import ComponentError, Method
from interpbench.methods.gradients import check_batch, finite_maps, target_logits
from interpbench.methods.perturbation import _positive, target_probabilities
from interpbench.methods.rise import baseline_colour, check_baseline
from interpbench.ops import batching
from interpbench.ops.masks import full_precision, occlusion_windows

SCORES = ("probability", "logit")


def target_scores(method: str, logits: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    """The target's softmax probability or its logit, per row -> Tensor[B]."""
    if score == "probability":
        return target_probabilities(method, logits, targets)
    return target_logits(method, logits.float(), targets)


def occlusion_saliency(
    model, images: torch.Tensor, targets: torch.Tensor, windows: torch.Tensor, *, baseline: torch.Tensor,
    score: str = "probability", chunk: int = 256,
) -> torch.Tensor:
    # Zeiler & Fergus 2014, sec. 4.2 (captum Occlusion): S(u) = sum_k [u in W_k] (f(x) - f(x_k)) / sum_k [u in W_k]
    b = len(images)
    n = len(windows)
    with torch.no_grad():
        clean = target_scores("occlusion", model(images), targets, score)
        drops = torch.empty(n, b, device=images.device)
        pairs = torch.arange(n * b, device=images.device)  # pair j = window * B + image
        for lo in range(0, n * b, chunk):
            j = pairs[lo : lo + chunk]
            k, i = j // b, j % b
            window = windows[k][:, None]  # J x 1 x H x W
            x = images[i] * (1 - window) + baseline * window
            drops.view(-1)[lo : lo + len(j)] = clean[i] - target_scores("occlusion", model(x), targets[i], score)
        with full_precision(images.device):
            total = torch.einsum("kb,khw->bhw", drops.float(), windows)
    return total / windows.sum(dim=0)


class Occlusion(Method):
    """Sliding-window occlusion.

    Parameters: ``window`` (side in pixels; default ``None``: an eighth of the shorter image side, rounded, 28 px
    at 224 px, 8 px at 64 px), ``stride`` (default ``None``: half the window, rounded down, at least 1),
    ``baseline`` ``"mean"`` (the model's mean colour, i.e. zero in normalised space, the deletion metric's
    substrate) or a grey level in ``[0, 1]``, ``score`` ``"probability"`` (softmax of the target, default) or
    ``"logit"``, ``chunk`` (images per forward pass; None: 256 on a GPU, by image size on a CPU,
    :func:`interpbench.ops.batching.auto_chunk`; no effect on the result).
    """

    name = "occlusion"
    version = "1"
    requires_grad = False
    deterministic = True
    defaults = {"window": None, "stride": None, "baseline": "mean", "score": "probability", "chunk": None}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        for key in ("window", "stride"):
            if p[key] is not None:
                _positive(self.name, key, p[key], integer=True)
        batching.check_chunk(self.name, p["chunk"])
        check_baseline(self.name, p["baseline"])
        if p["score"] not in SCORES:
            raise ComponentError(f"occlusion: parameter score must be one of {list(SCORES)}, got {p['score']!r}")

    def geometry(self, size: tuple[int, int]) -> tuple[int, int]:
        """(window, stride) in pixels for an image of ``size``; ComponentError when they do not fit."""
        window = self.params["window"]
        window = max(1, round(min(size) / 8)) if window is None else int(window)
        stride = self.params["stride"]
        stride = max(1, window // 2) if stride is None else int(stride)
        if window > min(size):
            raise ComponentError(f"occlusion: window {window} px is larger than the image {tuple(size)}; "
                                 f"use window <= {min(size)}")
        if stride > window:
            raise ComponentError(f"occlusion: stride {stride} px is larger than the window {window} px, so some "
                                 f"pixels would never be occluded; use stride <= window")
        return window, stride

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)
        size = tuple(images.shape[-2:])
        window, stride = self.geometry(size)
        windows = occlusion_windows(size, (window, window), (stride, stride), device=images.device)
        maps = occlusion_saliency(model, images.float(), targets, windows,
                                  baseline=baseline_colour(model, images.float(), self.params["baseline"]),
                                  score=self.params["score"],
                                  chunk=batching.resolve_chunk(self.params["chunk"], images, gpu=256))
        return finite_maps(self.name, model, maps)
