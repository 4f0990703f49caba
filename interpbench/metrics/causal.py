"""Causal metrics: deletion and insertion (Petsiuk, Das, Saenko, "RISE", BMVC 2018; eclique/RISE ``evaluation.py``).

Protocol (docs/protocols.md, "Deletion and insertion"): order the pixels by decreasing saliency (ties by pixel index),
change ``step`` pixels per step (all three channels) from a ``start`` image to a ``finish`` image, record the
softmax probability of the explained class before the first and after every step, and score the curve by its
normalised trapezoid area. Deletion goes from the image to the substrate (the model's mean colour, i.e. zero in
normalised space, RISE's substrate); lower is better. Insertion goes from a blurred copy (11 x 11, sigma 5) to
the image; higher is better.

All (image, step) pairs are built on the device from a rank map and fed to the model in chunks, so the metric
costs about ``B * (n_steps + 1)`` forward passes and little else (``benchmarks/deletion_insertion.py``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from interpbench.core.base import Batch, ComponentError, Model, PerSampleMetric
from interpbench.ops import batching
from interpbench.ops.blur import gaussian_blur

SUBSTRATES = ("mean", "zero", "blur")


# --------------------------------------------------------------------------------------------- maths


def saliency_order(maps: torch.Tensor) -> torch.Tensor:
    """Flat pixel indices ``B x HW`` by decreasing saliency; ties by pixel index, lower first (stable sort)."""
    flat = maps.reshape(maps.shape[0], -1)
    # torch's stable descending sort keeps equal elements in their input order, i.e. lower index first
    return torch.sort(flat, dim=1, descending=True, stable=True).indices


def saliency_rank(maps: torch.Tensor) -> torch.Tensor:
    """Position of each pixel in :func:`saliency_order` (``B x H x W``, 0 = most salient): the inverse permutation."""
    order = saliency_order(maps)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions).view(maps.shape)


def num_causal_steps(num_pixels: int, step: int) -> int:
    """Number of steps that change ``num_pixels`` pixels ``step`` at a time (the last one may be partial)."""
    return (num_pixels + step - 1) // step  # RISE evaluation.py: n_steps = (HW + step - 1) // step


def normalized_auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under each row of ``curve`` (``... x N``), on a [0, 1] x-axis of ``N - 1`` equal steps."""
    if curve.shape[-1] < 2:
        raise ValueError(f"normalized_auc: a curve needs at least 2 points, got {curve.shape[-1]}")
    # RISE evaluation.py auc(): (sum(p) - p[0]/2 - p[-1]/2) / (len(p) - 1)
    return (curve.sum(dim=-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / (curve.shape[-1] - 1)


def validate_maps(maps: Any, image_shape: tuple[int, ...], who: str) -> None:
    """Raise :class:`ComponentError` unless ``maps`` is a finite real ``B x H x W`` tensor for images of
    ``image_shape`` (``B x C x H x W``); ``who`` names the caller in the message."""
    expected = (image_shape[0], *image_shape[-2:])
    if not isinstance(maps, torch.Tensor):
        raise ComponentError(
            f"{who}: maps must be a torch.Tensor of shape B x H x W = {expected}, got {type(maps).__name__}"
        )
    if tuple(maps.shape) != expected:
        raise ComponentError(
            f"{who}: maps must have shape B x H x W = {expected} to match images {tuple(image_shape)}, "
            f"got {tuple(maps.shape)}; the method must return one map per image at the input resolution "
            f"(drop any channel dimension, upsample low-resolution maps)"
        )
    if maps.is_complex() or maps.dtype == torch.bool:
        raise ComponentError(f"{who}: maps must be real numbers, got dtype {maps.dtype}")
    if maps.is_floating_point():
        bad = ~torch.isfinite(maps)
        n_bad = int(bad.sum())
        if n_bad:
            n_nan = int(torch.isnan(maps).sum())
            n_maps = int(bad.flatten(1).any(dim=1).sum())
            raise ComponentError(
                f"{who}: maps contain {n_bad} non-finite values ({n_nan} NaN, {n_bad - n_nan} inf) in {n_maps} of "
                f"{maps.shape[0]} maps; saliency maps must be finite (fix the method, or clean its output with "
                f"torch.nan_to_num)"
            )


def causal_curves(
    model: torch.nn.Module,
    targets: torch.Tensor,
    maps: torch.Tensor,
    start: torch.Tensor,
    finish: torch.Tensor,
    step: int,
    *,
    chunk: int = 128,
) -> torch.Tensor:
    """Softmax probability of ``targets`` along the causal game: ``B x (n_steps + 1)``, float32, on the device.

    At step ``i`` (``0 .. n_steps``, ``n_steps = ceil(HW / step)``) the first ``i * step`` pixels of
    :func:`saliency_order` take their ``finish`` values in all channels and the rest keep their ``start`` values.
    ``start`` and ``finish`` are ``B x C x H x W`` or broadcastable to it with a batch dimension of 1 (e.g. a
    ``1 x C x 1 x 1`` colour). All ``B * (n_steps + 1)`` images are built on the device and run through ``model``
    ``chunk`` at a time under ``torch.no_grad()``.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ComponentError(f"causal_curves: step must be a positive int (pixels per step), got {step!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ComponentError(f"causal_curves: chunk must be a positive int (images per forward pass), got {chunk!r}")
    try:
        shape = torch.broadcast_shapes(start.shape, finish.shape)
    except RuntimeError:
        shape = ()
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ComponentError(f"causal_curves: maps must be a B x H x W tensor, got {got}")
    batch = maps.shape[0]
    if len(shape) != 4 or shape[0] not in (1, batch):
        raise ComponentError(
            f"causal_curves: start {tuple(start.shape)} and finish {tuple(finish.shape)} must broadcast to "
            f"B x C x H x W with B = 1 or the number of maps ({batch})"
        )
    height, width = shape[-2:]
    validate_maps(maps, (batch, shape[1], height, width), "causal_curves")
    device = start.device
    targets = torch.as_tensor(targets, device=device).reshape(-1)
    if targets.shape[0] != batch:
        raise ComponentError(f"causal_curves: need one target per map ({batch}), got {targets.shape[0]}")

    n_points = num_causal_steps(height * width, step) + 1
    # changed pixels at step i: rank < i * step (step capped at HW, which leaves the masks as they are)
    thresholds = torch.arange(n_points, device=device, dtype=torch.int32) * min(step, height * width)
    rank = saliency_rank(maps.to(device)).to(torch.int32).unsqueeze(1)  # B x 1 x H x W
    total = batch * n_points  # pair k = (image k // n_points, step k % n_points)
    pair_targets = targets.repeat_interleave(n_points).unsqueeze(1)
    curves = torch.empty(total, dtype=torch.float32, device=device)
    # buffers reused by every chunk: one pass over the pixels per perturbed image, no gathers, no allocations
    size = min(chunk, total)
    dtype = torch.promote_types(start.dtype, finish.dtype)
    # in the images' memory format: a channels-last model (--channels-last) then takes the buffer without a copy
    layout = torch.channels_last if any(_is_channels_last(t) for t in (start, finish)) else torch.contiguous_format
    inputs = torch.empty((size, shape[1], height, width), dtype=dtype, device=device, memory_format=layout)
    changed = torch.empty((size, 1, height, width), dtype=torch.bool, device=device)
    with torch.no_grad():
        for lo in range(0, total, chunk):
            hi = min(lo + chunk, total)
            for image in range(lo // n_points, (hi - 1) // n_points + 1):  # the images this chunk touches
                first, last = max(lo, image * n_points), min(hi, (image + 1) * n_points)
                steps = thresholds[first - image * n_points : last - image * n_points].view(-1, 1, 1, 1)
                mask = torch.lt(rank[image : image + 1], steps, out=changed[first - lo : last - lo])
                torch.where(mask, _row(finish, image), _row(start, image), out=inputs[first - lo : last - lo])
            logits = model(inputs[: hi - lo]).float()
            if lo == 0:
                _check_targets(targets, logits.shape[1])
            curves[lo:hi] = logits.softmax(dim=1).gather(1, pair_targets[lo:hi]).squeeze(1)
    return curves.view(batch, n_points)


def _is_channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` holds images (more than one pixel and channel) laid out channels-last."""
    return (t.dim() == 4 and t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last))


def _row(t: torch.Tensor, image: int) -> torch.Tensor:
    """Image ``image`` of ``t`` (``1 x C x H x W``), or ``t`` itself when all images share it (batch dim 1)."""
    return t if t.shape[0] == 1 else t[image : image + 1]


def _check_targets(targets: torch.Tensor, num_classes: int) -> None:
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ComponentError(f"causal_curves: targets must be integer class indices, got dtype {targets.dtype}")
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= num_classes:
        raise ComponentError(
            f"causal_curves: targets must be class indices in [0, {num_classes}), got values in [{low}, {high}]"
        )


def causal_substrate(
    images: torch.Tensor, kind: str, mean: torch.Tensor, blur_size: int = 11, blur_sigma: float = 5.0
) -> torch.Tensor:
    """The substrate image: ``"mean"`` the model's mean colour (RISE's zero in normalised space), ``"zero"``
    black, ``"blur"`` a Gaussian blur padded with the mean colour (RISE's insertion start).

    ``"mean"`` and ``"zero"`` come back as a ``1 x C x 1 x 1`` colour that broadcasts over the images.
    """
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    if kind == "mean":
        return mean
    if kind == "zero":
        return torch.zeros_like(mean)
    if kind == "blur":
        return gaussian_blur(images, blur_size, blur_sigma, pad_value=mean)
    raise ComponentError(f"unknown substrate {kind!r}; choose one of {list(SUBSTRATES)}")


def resolve_step(step: int | None, height: int, width: int, steps: int | None = None) -> int:
    """Pixels per step: ``step``; or ``ceil(HW / steps)`` for a given number of steps (RISE's batched evaluation:
    28 steps = 1,792 px at 224 x 224); or, by default, ``height`` pixels (RISE's demo: 224 at 224 x 224), so that
    an ``H x W`` image takes ``W`` steps. RISE only runs square images, where ``H = W``."""
    if steps is not None:
        return -(-height * width // steps)
    return height if step is None else step


# --------------------------------------------------------------------------------------------- metrics


GPU_CHUNK = 128


def auto_chunk(device: torch.device, height: int, width: int) -> int:
    """Images per forward pass when ``chunk`` is None: 128 on a GPU; on a CPU, about four 224 px images' pixels
    (:func:`interpbench.ops.batching.auto_chunk`). The chunk changes the speed, not the curve (up to float
    rounding)."""
    return batching.auto_chunk(device, height, width, gpu=GPU_CHUNK)


class _CausalMetric(PerSampleMetric):
    """Shared code of :class:`Deletion` and :class:`Insertion` (they differ in direction and default substrate)."""

    version: ClassVar[str] = "1"
    deletion: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        step, chunk, size, sigma = p["step"], p["chunk"], p["blur_size"], p["blur_sigma"]
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
            raise ComponentError(
                f"{self.name}: step must be a positive int (pixels per step) or None (H pixels), got {step!r}"
            )
        steps = p["steps"]
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ComponentError(f"{self.name}: steps must be a positive int (number of steps) or None, got {steps!r}")
        if steps is not None and step is not None:
            raise ComponentError(f"{self.name}: give step (pixels per step) or steps (number of steps), not both")
        batching.check_chunk(self.name, chunk)
        if p["substrate"] not in SUBSTRATES:
            raise ComponentError(f"{self.name}: unknown substrate {p['substrate']!r}; choose one of {list(SUBSTRATES)}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
            raise ComponentError(f"{self.name}: blur_size must be a positive odd int, got {size!r}")
        if not isinstance(sigma, (int, float)) or not sigma > 0:
            raise ComponentError(f"{self.name}: blur_sigma must be a number > 0, got {sigma!r}")

    def score(self, model: Model, batch: Batch, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"score": AUC[B], "curve": probabilities[B, n_steps + 1], "step": pixels per step[B]}``."""
        images = batch.images
        validate_maps(maps, images.shape, self.name)
        p = self.params
        step = resolve_step(p["step"], *images.shape[-2:], steps=p["steps"])
        mean = getattr(model, "mean", None)
        if mean is None and p["substrate"] != "zero":
            raise ComponentError(
                f"{self.name}: substrate {p['substrate']!r} needs the model's mean colour (model.mean); "
                f"wrap the network in interpbench.Model or use substrate='zero'"
            )
        mean = 0.0 if mean is None else mean
        substrate = causal_substrate(images, p["substrate"], mean, p["blur_size"], p["blur_sigma"])
        start, finish = (images, substrate) if self.deletion else (substrate, images)
        chunk = p["chunk"] or auto_chunk(images.device, *images.shape[-2:])
        curves = causal_curves(model, batch.targets, maps, start, finish, step, chunk=chunk)
        return {
            "score": normalized_auc(curves),
            "curve": curves,
            "step": torch.full((len(images),), step, dtype=torch.long, device=curves.device),
        }


class Deletion(_CausalMetric):
    """RISE deletion: remove pixels by decreasing saliency into the mean colour; AUC of the class probability.

    Lower is better. Parameters: ``step`` pixels per step (None: ``H``, the image height) or ``steps`` (a number
    of steps, ``ceil(HW / steps)`` pixels each), ``substrate`` ``"mean"`` (RISE; zero in normalised space) / ``"zero"`` (black) / ``"blur"``, ``blur_size`` / ``blur_sigma`` (for ``"blur"``),
    ``chunk`` images per forward pass (None: :func:`auto_chunk`, by device and image size).
    """

    name: ClassVar[str] = "deletion"
    headline_values: ClassVar[tuple[str, ...]] = ("deletion",)
    higher_is_better: ClassVar[bool] = False
    deletion: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        "step": None,
        "steps": None,
        "substrate": "mean",
        "blur_size": 11,
        "blur_sigma": 5.0,
        "chunk": None,
    }


class Insertion(_CausalMetric):
    """RISE insertion: paste pixels by decreasing saliency into a blurred copy; AUC of the class probability.

    Higher is better. Parameters as :class:`Deletion`; ``substrate`` (the start image) defaults to ``"blur"``
    (Gaussian 11 x 11, sigma 5, padded with the mean colour, as RISE's blur of the normalised image).
    """

    name: ClassVar[str] = "insertion"
    headline_values: ClassVar[tuple[str, ...]] = ("insertion",)
    higher_is_better: ClassVar[bool] = True
    deletion: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {
        "step": None,
        "steps": None,
        "substrate": "blur",
        "blur_size": 11,
        "blur_sigma": 5.0,
        "chunk": None,
    }


__all__ = [
    "SUBSTRATES",
    "Deletion",
    "Insertion",
    "causal_curves",
    "causal_substrate",
    "normalized_auc",
    "num_causal_steps",
    "resolve_step",
    "saliency_order",
    "saliency_rank",
    "validate_maps",
]
