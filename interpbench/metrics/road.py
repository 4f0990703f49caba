"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and Efficient Evaluation
Strategy for Attribution Methods", ICML 2022).

Deletion with a filling that does not leak the removed pixels' shape: for each removal fraction ``f``, remove the
``round(f * H * W)`` most (MoRF) or least (LeRF) salient pixels (all channels; ties by pixel index, as deletion),
fill them by noisy linear imputation (each removed pixel the weighted mean of its eight neighbours, solved exactly,
plus Gaussian noise; :mod:`interpbench.ops.imputation`) and read the softmax probability of the explained class.
The curve holds one probability per fraction (default 10 %, 20 %, ..., 90 %, the paper's); the score is its mean,
which is pytorch-grad-cam's ``ROADMostRelevantFirstAverage`` / ``ROADLeastRelevantFirstAverage`` with
``return_diff=False`` (and the area under the curve on a unit axis with one step per fraction). MoRF: lower is
better (removing what the map marks should destroy the class); LeRF: higher is better.

The noise (``noise``, default 0.01, ROAD's) is a standard deviation in the model's normalised input space, as the
reference code applies it to normalised tensors; here images are in [0, 1], so it is ``noise * model.std`` per
channel. It is drawn per (image, fraction) from a generator seeded with the batch's seed (derived from the cell),
so reruns give the same curves. The imputation of all images and fractions of a batch is solved together on the
device (batched conjugate gradient), ``solve_chunk`` image-fraction pairs at a time.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from interpbench.core.base import Batch, ComponentError, Model, PerSampleMetric
from interpbench.metrics.causal import _check_targets, saliency_rank, validate_maps
from interpbench.ops import batching
from interpbench.ops.imputation import noisy_linear_imputation

PAPER_FRACTIONS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
GPU_CHUNK = 128  # images per forward pass on a GPU
GPU_SOLVE_CHUNK = 1024  # image-fraction pairs per batched solve on a GPU


def removal_masks(maps: torch.Tensor, fractions: list[float], most_relevant_first: bool) -> torch.Tensor:
    """``B x F x H x W`` bool: the ``round(f * H * W)`` most (or least) salient pixels of each map, per fraction.

    Pixels are ranked as in deletion (decreasing saliency, ties by lower pixel index first); least relevant first
    ranks ``-maps`` the same way."""
    rank = saliency_rank(maps if most_relevant_first else -maps)  # B x H x W, 0 = first removed
    hw = maps.shape[-2] * maps.shape[-1]
    counts = torch.tensor([int(round(f * hw)) for f in fractions], device=maps.device).view(1, -1, 1, 1)
    return rank.unsqueeze(1) < counts


def road_curves(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    fractions: list[float],
    *,
    most_relevant_first: bool,
    noise: torch.Tensor | float = 0.0,
    seed: int | None = 0,
    chunk: int = 16,
    solve_chunk: int = 16,
    tol: float = 1e-4,
    max_iter: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Softmax probability of ``targets`` after removing and imputing each fraction: ``B x F`` float32, and the
    solver's info (largest ``iterations`` and ``residual`` over the solves).

    ``images`` are what ``model`` takes (``B x C x H x W``); ``noise`` the noise's standard deviation in that
    space (a number or a ``1 x C x 1 x 1`` tensor); pair ``(b, j)`` draws its noise from seed
    ``seed + b * F + j`` (None: the global RNG).
    """
    batch, n_frac = images.shape[0], len(fractions)
    removed = removal_masks(maps.to(images.device), fractions, most_relevant_first).flatten(0, 1)  # (B*F) x H x W
    pair_images = torch.arange(batch, device=images.device).repeat_interleave(n_frac)
    pair_targets = torch.as_tensor(targets, device=images.device).reshape(-1).repeat_interleave(n_frac)
    curves = torch.empty(batch * n_frac, dtype=torch.float32, device=images.device)
    info = {"iterations": 0.0, "residual": 0.0}
    total = batch * n_frac
    with torch.no_grad():
        for lo in range(0, total, solve_chunk):
            hi = min(lo + solve_chunk, total)
            seeds = None if seed is None else [seed + k for k in range(lo, hi)]
            filled, solved = noisy_linear_imputation(images[pair_images[lo:hi]], removed[lo:hi], noise, seeds,
                                                     tol=tol, max_iter=max_iter)
            info = {k: max(info[k], solved[k]) for k in info}
            for a in range(0, hi - lo, chunk):
                b = min(a + chunk, hi - lo)
                logits = model(filled[a:b]).float()
                if lo == 0 and a == 0:
                    _check_targets(pair_targets, logits.shape[1])
                curves[lo + a : lo + b] = logits.softmax(dim=1).gather(1, pair_targets[lo + a : lo + b, None])[:, 0]
    return curves.view(batch, n_frac), info


class _Road(PerSampleMetric):
    """Shared code of :class:`RoadMoRF` and :class:`RoadLeRF`."""

    version: ClassVar[str] = "1"
    most_relevant_first: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        "fractions": list(PAPER_FRACTIONS),
        "noise": 0.01,
        "tol": 1e-4,
        "max_iter": None,
        "chunk": None,
        "solve_chunk": None,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        fractions = p["fractions"]
        if (not isinstance(fractions, (list, tuple)) or not fractions
                or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1 for f in fractions)):
            raise ComponentError(f"{self.name}: fractions must be a non-empty list of removal fractions in [0, 1) "
                                 f"(e.g. {PAPER_FRACTIONS}), got {fractions!r}")
        self.params["fractions"] = [float(f) for f in fractions]
        if not isinstance(p["noise"], (int, float)) or isinstance(p["noise"], bool) or p["noise"] < 0:
            raise ComponentError(f"{self.name}: noise must be a number >= 0 (standard deviation in the model's "
                                 f"normalised space; ROAD's 0.01), got {p['noise']!r}")
        if not isinstance(p["tol"], (int, float)) or not 0 < p["tol"] < 1:
            raise ComponentError(f"{self.name}: tol must be a number in (0, 1) (relative residual of the "
                                 f"imputation), got {p['tol']!r}")
        if p["max_iter"] is not None and (isinstance(p["max_iter"], bool) or not isinstance(p["max_iter"], int)
                                          or p["max_iter"] < 1):
            raise ComponentError(f"{self.name}: max_iter must be a positive int or None, got {p['max_iter']!r}")
        batching.check_chunk(self.name, p["chunk"])
        batching.check_chunk(self.name, p["solve_chunk"])

    def score(self, model: Model, batch: Batch, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"score": mean probability[B], "curve": probabilities[B, F], "iterations": CG iterations[B]}``."""
        images = batch.images
        validate_maps(maps, images.shape, self.name)
        p = self.params
        std = getattr(model, "std", None)
        noise = p["noise"] if std is None else p["noise"] * std.to(images.device, images.dtype).reshape(1, -1, 1, 1)
        chunk = batching.resolve_chunk(p["chunk"], images, gpu=GPU_CHUNK)
        solve_chunk = batching.resolve_chunk(p["solve_chunk"], images, gpu=GPU_SOLVE_CHUNK)
        curves, info = road_curves(model, images, batch.targets, maps, p["fractions"],
                                   most_relevant_first=self.most_relevant_first, noise=noise,
                                   seed=int(batch.seed) % 2**62, chunk=chunk, solve_chunk=solve_chunk,
                                   tol=p["tol"], max_iter=p["max_iter"])
        return {
            "score": curves.mean(dim=1),
            "curve": curves,
            "iterations": torch.full((len(images),), info["iterations"], device=curves.device),
        }


class RoadMoRF(_Road):
    """ROAD, most relevant first: remove the top fraction of pixels, impute, read the class probability.

    Lower is better. Parameters: ``fractions`` (removed fractions; default 0.1 .. 0.9), ``noise`` (ROAD's 0.01,
    in normalised space), ``tol`` / ``max_iter`` (the imputation's conjugate gradient), ``chunk`` (images per
    forward pass) and ``solve_chunk`` (image-fraction pairs imputed together); None chooses by device and size.
    """

    name: ClassVar[str] = "road_morf"
    higher_is_better: ClassVar[bool] = False
    most_relevant_first: ClassVar[bool] = True


class RoadLeRF(_Road):
    """ROAD, least relevant first: remove the bottom fraction of pixels; higher is better. Parameters as
    :class:`RoadMoRF`."""

    name: ClassVar[str] = "road_lerf"
    higher_is_better: ClassVar[bool] = True
    most_relevant_first: ClassVar[bool] = False


__all__ = ["PAPER_FRACTIONS", "RoadLeRF", "RoadMoRF", "removal_masks", "road_curves"]
