"""Optimised perturbation masks: meaningful perturbation (``mask``) and extremal perturbation (``extremal``).

- ``mask``: Fong & Vedaldi, "Interpretable explanations of black boxes by meaningful perturbation", ICCV 2017,
  deletion game, following the official code (ruthcfong/perturb_explanations ``optimize_mask.py`` and its
  ``defaults.py``).
- ``extremal``: Fong, Patrick & Vedaldi, "Understanding deep networks via extremal perturbations and smooth masks",
  ICCV 2019, preservation game, following TorchRay (``torchray/attribution/extremal_perturbation.py``) with the
  settings of its attribution benchmark (``examples/attribution_benchmark.py``).

Both optimise the masks of every image of the batch (and, for ``extremal``, every area) as one tensor: one forward
and one backward pass of ``B`` (or ``B x A``) perturbed images per iteration. The losses are summed over images;
images do not interact in an eval-mode model, so each mask gets the gradient of its own loss. Only the masks get
gradients (``torch.autograd.grad``): the model's parameters keep ``.grad`` untouched and its mode is not changed.

Spatial hyper-parameters are stated in pixels at 224 px, the size of the papers, and scale with the shorter side
of the input (:func:`interpbench.ops.masks.scaled`); at 224 px they are exactly the published values. Two of
``mask``'s follow the image rather than the input's pixels (:func:`perturbation_sigma`, :func:`mask_grid`): its
blur is stated in pixels of the original photograph, as the official code blurs before resizing, and its mask
has the paper's 28 x 28 cells over the image at every input size, so that the L1 and TV sums weigh the same.
"""

from __future__ import annotations

import fractions
import math
from typing import Any

import torch
import torch.nn.functional as F

from interpbench.core.base import ComponentError, Method
from interpbench.methods.gradients import check_batch, finite_maps, target_logits
from interpbench.ops import batching
from interpbench.ops.masks import (
    REFERENCE_SIZE,
    area_loss,
    area_reference,
    blur_pyramid,
    blurred_discs,
    gaussian_smooth,
    nearest_downsample,
    nearest_upsample,
    pyramid_lookup,
    scaled,
    smooth_max_grid,
    smooth_max_masks,
    total_variation,
)

# --------------------------------------------------------------------------------------------- validation


def _positive(method: str, name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0) and (not integer or int(value) == value)
    if not ok:
        kind = "integer" if integer else "number"
        bound = ">= 0" if allow_zero else "> 0"
        raise ComponentError(f"{method}: parameter {name} must be a finite {kind} {bound}, got {value!r}")


def _model_mean(model, images: torch.Tensor) -> torch.Tensor:
    """The model's mean colour ``1 x 3 x 1 x 1`` (zero in its normalised space), or mid-grey without one."""
    mean = getattr(model, "mean", None)
    if isinstance(mean, torch.Tensor) and mean.numel() == images.shape[1]:
        return mean.to(images).reshape(1, -1, 1, 1)
    return torch.full((1, images.shape[1], 1, 1), 0.5, dtype=images.dtype, device=images.device)


def target_probabilities(method: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax probability of each row's target class -> Tensor[B] (float32 softmax)."""
    return target_logits(method, logits.float().log_softmax(dim=1), targets).exp()


# --------------------------------------------------------------------------------------------- meaningful perturbation

DISC_SIGMA = 10.0  # blur of the initialisation's discs, px at 224 (official create_blurred_circular_mask, sigma=10)


def perturbation_sigma(blur_radius: float, original_size: float, side: int) -> float:
    """Std (input pixels) of the perturbation blur: ``blur_radius`` px of an ``original_size`` px photograph whose
    side became the input's ``side`` px, i.e. ``blur_radius * side / original_size``.

    Fong & Vedaldi's official code (``optimize_mask.py``, ``get_blurred_img``) blurs the photograph at full
    resolution (PIL ``GaussianBlur(10)``) and only then resizes it to the 228 px jitter canvas; a Gaussian blur
    commutes with the resize when sigma scales with it, so blurring the resized input with this sigma is the same
    perturbation. A 500 px ImageNet photograph at 224 px: 4.48 px; on the 228 px canvas, 10 x 228 / 500 = 4.56 px,
    the reference's value (the jitter canvas is the input enlarged to ``224 + jitter``, as there).
    """
    return float(blur_radius) * side / float(original_size)


def mask_grid(height: int, width: int, mask_scale: int) -> tuple[tuple[int, int], fractions.Fraction]:
    """Cells of the deletion mask for an ``height x width`` input: ``((h, w), cell side in input pixels)``.

    The cell is ``mask_scale`` px at 224 px scaled with the shorter side (Fong & Vedaldi: a 28 x 28 mask for a
    224 x 224 input, 8 px cells), an exact fraction: the mask has 28 x 28 cells over a square input of any size,
    so its L1 and TV sums, and with them the weight of ``l1_coeff`` and ``tv_coeff`` against the class
    probability, do not change with the input size. With 8 px cells at every size a 64 px input had an 8 x 8
    mask whose sums weigh 12x less, and the optimised masks deleted most of the image.
    """
    cell = fractions.Fraction(mask_scale * min(height, width), REFERENCE_SIZE)
    return (math.ceil(height / cell), math.ceil(width / cell)), cell


def circle_init(
    model, images: torch.Tensor, null: torch.Tensor, targets: torch.Tensor, mask_size: tuple[int, int],
    *, radii: torch.Tensor, sigma: float, threshold: float = 1e-2, chunk: int = 256,
) -> torch.Tensor:
    """Initial masks ``B x 1 x h x w`` of the official code (``test_circular_masks`` + ``generate_learned_mask``).

    Delete centred blurred discs of growing radius (``x = img (1 - disc) + blurred disc``); take the first radius
    whose target probability ``p_r`` is within ``threshold`` of the largest disc's, i.e.
    ``(p_r - p_last) / (p_clean - p_last) < threshold`` (the largest radius when none is); the mask is ``1 - disc``,
    min-max scaled to bytes and resized to ``h x w`` by nearest neighbour, as ``scipy.misc.imresize`` does.
    """
    b, _, h, w = images.shape
    keep = 1 - blurred_discs((h, w), radii, sigma)[:, None]  # R x 1 x H x W, 0 inside the disc
    n_r = len(radii)
    with torch.no_grad():
        clean = target_probabilities("mask", model(images), targets)
        scores = torch.empty(b, n_r, device=images.device)
        pairs = torch.arange(b * n_r, device=images.device)  # pair k = image * R + radius
        for lo in range(0, b * n_r, chunk):
            k = pairs[lo : lo + chunk]
            img, r = k // n_r, k % n_r
            x = images[img] * keep[r] + null[img] * (1 - keep[r])
            scores.view(-1)[lo : lo + len(k)] = target_probabilities("mask", model(x), targets[img])
    last = scores[:, -1:]
    percs = (scores - last) / (clean[:, None] - last)
    below = percs < threshold
    largest = torch.full((b,), n_r - 1, dtype=torch.long, device=images.device)
    first = torch.where(below.any(dim=1), below.float().argmax(dim=1), largest)
    init = keep[first, 0]  # B x H x W
    low = init.flatten(1).min(dim=1).values.view(-1, 1, 1)
    span = init.flatten(1).max(dim=1).values.view(-1, 1, 1) - low
    span = torch.where(span > 0, span, torch.ones_like(span))  # scipy's bytescale: a constant image -> 0
    as_bytes = ((init - low) * (255 / span)).clamp(0, 255).add(0.5).floor()
    return nearest_downsample(as_bytes, mask_size)[:, None] / 255


def jitter_crops(big: torch.Tensor, offsets: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-image ``H x W`` crops of ``big`` (``B x C x H' x W'``) at ``offsets`` (``B x 2``, row and column)."""
    h, w = size
    rows = offsets[:, 0:1] + torch.arange(h, device=big.device)  # B x H
    cols = offsets[:, 1:2] + torch.arange(w, device=big.device)  # B x W
    batch = torch.arange(len(big), device=big.device)[:, None, None]
    return big.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def deletion_game_loss(
    model, m: torch.Tensor, images: torch.Tensor, null: torch.Tensor, targets: torch.Tensor, *,
    mask_scale: int | fractions.Fraction, mask_sigma: float, l1_coeff: float, tv_coeff: float, tv_beta: float,
) -> torch.Tensor:
    # Fong & Vedaldi 2017, eq. 3: sum over images of p_target(x(m)) + l1 ||1 - m||_1 + tv TV_beta(m) -> scalar;
    # mask_scale: the side of a cell in input pixels (see mask_grid)
    h, w = images.shape[-2:]
    up = nearest_upsample(m, mask_scale, (h, w))
    smooth = up + (gaussian_smooth(up, mask_sigma, padding="replicate") - up).detach()  # straight-through blur
    x = images * smooth + null * (1 - smooth)
    return (
        target_probabilities("mask", model(x), targets).sum()
        + l1_coeff * (m - 1).abs().flatten(1).sum(dim=1).sum()
        + tv_coeff * total_variation(m[:, 0], tv_beta).sum()
    )


def meaningful_perturbation(
    model, images: torch.Tensor, targets: torch.Tensor, *, iterations: int = 300, lr: float = 0.1,
    l1_coeff: float = 1e-4, tv_coeff: float = 1e-2, tv_beta: float = 3.0, mask_scale: int = 8,
    blur_radius: float = 10.0, original_size: float = 500.0, mask_blur_radius: float = 5.0, jitter: int = 4,
    init: str = "circle", chunk: int = 256,
) -> torch.Tensor:
    """Deletion-game masks ``B x H x W`` (1 keeps a pixel, 0 replaces it by the blurred image).

    Fong & Vedaldi 2017, eq. 3 (official ``optimize_mask``): minimise over ``m`` in ``[0, 1]^(h x w)``
    ``p_target(x_j(m)) + l1_coeff ||1 - m||_1 + tv_coeff TV_beta(m)`` with Adam (``lr``, betas 0.9/0.999, eps 1e-8),
    projecting ``m`` back onto ``[0, 1]`` after each step. ``x(m) = img M + blur(img) (1 - M)`` with
    ``M = blur_5(upsample_nearest(m))``; the official code blurs ``M`` with PIL, which has no gradient, so the
    gradient passes the mask blur unchanged (a straight-through step), as there. ``x_j``: a random crop of the
    image (and its blurred copy) resized to ``H + jitter``, a new offset in ``[0, jitter)`` per iteration and
    image. The L1 and TV terms are sums over the ``h x w`` cells (:func:`mask_grid`: 28 x 28 for a square input of
    any size), not means. Radii are Gaussian standard deviations (PIL's ``GaussianBlur(radius)``): ``blur_radius``
    in pixels of an ``original_size`` px photograph (:func:`perturbation_sigma`), ``mask_blur_radius`` and
    ``jitter`` in pixels at 224 px; edges are replicated, as PIL does.
    """
    b, _, h, w = images.shape
    side = min(h, w)
    mask_size, cell = mask_grid(h, w, mask_scale)
    blur_sigma = perturbation_sigma(blur_radius, original_size, side)
    mask_sigma = scaled(mask_blur_radius, side)
    jitter_px = math.ceil(scaled(jitter, side)) if jitter > 0 else 0
    images = images.detach()
    null = gaussian_smooth(images, blur_sigma, padding="replicate")
    if init == "circle":
        radii = torch.arange(0, 175, 5, dtype=torch.float32, device=images.device) * side / 224
        m = circle_init(model, images, null, targets, mask_size, radii=radii, sigma=scaled(DISC_SIGMA, side),
                        chunk=chunk)
    else:
        m = torch.rand(b, 1, *mask_size).to(images.device)  # global RNG, drawn on the CPU
    if jitter_px > 1:
        big = F.interpolate(torch.cat([images, null]), size=(h + jitter_px, w + jitter_px), mode="bilinear",
                            align_corners=False)
        big_images, big_null = big[:b], big[b:]
    m = m.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([m], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    with torch.enable_grad():
        for _ in range(iterations):
            if jitter_px > 1:
                offsets = torch.randint(jitter_px, (b, 2)).to(images.device)  # global RNG, drawn on the CPU
                img_j, null_j = jitter_crops(big_images, offsets, (h, w)), jitter_crops(big_null, offsets, (h, w))
            else:
                img_j, null_j = images, null
            loss = deletion_game_loss(model, m, img_j, null_j, targets, mask_scale=cell, mask_sigma=mask_sigma,
                                      l1_coeff=l1_coeff, tv_coeff=tv_coeff, tv_beta=tv_beta)
            (grad,) = torch.autograd.grad(loss, m)
            m.grad = grad
            optimizer.step()
            with torch.no_grad():
                m.clamp_(0, 1)
    with torch.no_grad():
        up = nearest_upsample(m.detach(), cell, (h, w))
        return gaussian_smooth(up, mask_sigma, padding="replicate")[:, 0]


class MeaningfulPerturbation(Method):
    """Fong & Vedaldi 2017 (deletion game, official code's defaults); the saliency is ``1 - m``.

    Parameters (spatial ones in pixels at 224 px, scaled with the input's shorter side): ``iterations`` 300,
    ``lr`` 0.1 (Adam), ``l1_coeff`` 1e-4 (on ``sum |1 - m|``), ``tv_coeff`` 1e-2 and ``tv_beta`` 3,
    ``mask_scale`` 8 (8 px cells at 224 px: a 28 x 28 mask over a square input of any size, :func:`mask_grid`),
    ``blur_radius`` 10 and ``original_size`` 500 (the perturbation: a Gaussian blur of std 10 px of a 500 px
    photograph, as the official code blurs ImageNet photographs before resizing them; ``blur_radius * side /
    original_size`` input pixels, 4.48 at 224 px, :func:`perturbation_sigma`; ``original_size=224`` gives the
    std of 10 px at 224 px of interpbench before version 2), ``mask_blur_radius`` 5 (blur of the upsampled mask),
    ``jitter`` 4
    (random crop offsets in ``[0, jitter)``; rounded up when scaled), ``init`` ``"circle"`` (the official
    initialisation, see :func:`circle_init`) or ``"random"`` (uniform), ``chunk`` (images per forward pass of
    the initialisation search; None: 256 on a GPU, by image size on a CPU,
    :func:`interpbench.ops.batching.auto_chunk`; no effect on the result).
    """

    name = "mask"
    version = "2"  # 2: blur of the original photograph (original_size), 28 x 28 cells at every input size
    requires_grad = True
    deterministic = False  # random jitter offsets each iteration (and the "random" initialisation)
    defaults = {
        "iterations": 300,
        "lr": 0.1,
        "l1_coeff": 1e-4,
        "tv_coeff": 1e-2,
        "tv_beta": 3.0,
        "mask_scale": 8,
        "blur_radius": 10.0,
        "original_size": 500.0,
        "mask_blur_radius": 5.0,
        "jitter": 4,
        "init": "circle",
        "chunk": None,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        for key in ("iterations", "mask_scale"):
            _positive(self.name, key, p[key], integer=True)
        batching.check_chunk(self.name, p["chunk"])
        _positive(self.name, "jitter", p["jitter"], integer=True, allow_zero=True)
        for key in ("lr", "tv_beta", "original_size"):
            _positive(self.name, key, p[key])
        for key in ("l1_coeff", "tv_coeff", "blur_radius", "mask_blur_radius"):
            _positive(self.name, key, p[key], allow_zero=True)
        if p["init"] not in ("circle", "random"):
            raise ComponentError(
                f"mask: parameter init must be 'circle' (the official code) or 'random', got {p['init']!r}"
            )

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)
        p = self.params
        m = meaningful_perturbation(
            model, images.float(), targets, iterations=int(p["iterations"]), lr=float(p["lr"]),
            l1_coeff=float(p["l1_coeff"]), tv_coeff=float(p["tv_coeff"]), tv_beta=float(p["tv_beta"]),
            mask_scale=int(p["mask_scale"]), blur_radius=float(p["blur_radius"]),
            original_size=float(p["original_size"]), mask_blur_radius=float(p["mask_blur_radius"]), jitter=int(p["jitter"]), init=p["init"],
            chunk=batching.resolve_chunk(p["chunk"], images, gpu=256),
        )
        return finite_maps(self.name, model, 1 - m)


# --------------------------------------------------------------------------------------------- extremal perturbation


def extremal_perturbation(
    model, images: torch.Tensor, targets: torch.Tensor, areas: list[float], *, iterations: int = 800,
    lr: float = 0.01, momentum: float = 0.9, step: int = 7, sigma: float = 21.0, num_levels: int = 8,
    max_blur: float = 20.0, regul_weight: float = 300.0, regul_growth: float = 1.0035, flip_jitter: bool = True,
    return_full: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Preservation-game masks ``B x A x H x W``, one per image and area (TorchRay ``extremal_perturbation``).

    Fong, Patrick, Vedaldi 2019, eq. 5-7: maximise over the mask parameters in ``[0, 1]``
    ``logit_target(perturb(x, m)) - lambda_t ||vecsort(m) - r_a||^2 / N``, with ``m`` the smooth-max mask of the
    parameters (step, sigma), ``perturb`` the blur pyramid lookup (``num_levels`` levels up to ``max_blur``),
    ``lambda_t = regul_weight * regul_growth^t``. SGD (``lr``, momentum and dampening ``momentum``) from all-ones
    parameters, clamped to ``[0, 1]`` after each step; the image is flipped left-right on even iterations
    (``flip_jitter``). Returns the masks of the last iteration's forward pass (and, with ``return_full``, the
    full masks with their margin, on which the area term is computed).
    """
    b, c, h, w = images.shape
    n_areas = len(areas)
    images = images.detach()
    with torch.no_grad():
        pyramid = blur_pyramid(images, num_levels, max_blur, pad_value=_model_mean(model, images))
    grid = smooth_max_grid((h, w), step, sigma, device=images.device)
    params = torch.ones(b * n_areas, 1, *grid.shape_in, device=images.device, requires_grad=True)
    area_t = torch.as_tensor(areas, dtype=torch.float64, device=images.device)
    reference = area_reference(area_t, grid.shape_out[0] * grid.shape_out[1]).repeat(b, 1)  # (B*A) x N
    optimizer = torch.optim.SGD([params], lr=lr, momentum=momentum, dampening=momentum)
    repeated_targets = targets.repeat_interleave(n_areas)
    weight = regul_weight
    with torch.enable_grad():
        for t in range(iterations):
            cropped, full = smooth_max_masks(params, grid)
            x = pyramid_lookup(pyramid, cropped.view(b, n_areas, 1, h, w)).reshape(b * n_areas, c, h, w)
            if flip_jitter and t % 2 == 0:
                x = x.flip(-1)
            reward = target_logits("extremal", model(x).float(), repeated_targets)
            energy = (reward - weight * area_loss(full, reference)).sum()
            (grad,) = torch.autograd.grad(-energy, params)
            params.grad = grad
            optimizer.step()
            with torch.no_grad():
                params.clamp_(0, 1)
            weight *= regul_growth
    masks = cropped.detach().view(b, n_areas, h, w)
    if return_full:
        return masks, full.detach().view(b, n_areas, *grid.shape_out)
    return masks


class ExtremalPerturbation(Method):
    """Fong, Patrick & Vedaldi 2019 with TorchRay's benchmark settings; the saliency is the sum of the masks.

    Parameters: ``areas`` [0.025, 0.05, 0.1, 0.2] (the VOC benchmark's), ``iterations`` 800, ``lr`` 0.01 and
    ``momentum`` 0.9 (SGD), ``step`` 7 and ``sigma`` 21 (smooth-max mask generator), ``num_levels`` 8 and
    ``max_blur`` 20 (blur pyramid, padded with the model's mean colour: zero in normalised space, as TorchRay
    blurs normalised images), ``regul_weight`` 300 and ``regul_growth`` 1.0035 (area term), ``flip_jitter`` True,
    ``smooth`` 0.09 (each mask is blurred with a Gaussian of std ``smooth * min(H, W)`` before the sum, as the
    benchmark does; 0 for the raw sum). ``step``, ``sigma`` and ``max_blur`` are pixels at 224 px and scale with
    the input's shorter side (``step`` rounded, at least 1). The reward is the target's logit (TorchRay's
    ``simple_reward``).
    """

    name = "extremal"
    version = "1"
    requires_grad = True
    deterministic = True  # all-ones start, deterministic flips
    defaults = {
        "areas": [0.025, 0.05, 0.1, 0.2],
        "iterations": 800,
        "lr": 0.01,
        "momentum": 0.9,
        "step": 7,
        "sigma": 21.0,
        "num_levels": 8,
        "max_blur": 20.0,
        "regul_weight": 300.0,
        "regul_growth": 1.0035,
        "flip_jitter": True,
        "smooth": 0.09,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        areas = p["areas"]
        if isinstance(areas, (int, float)) and not isinstance(areas, bool):
            areas = [areas]
        if (not isinstance(areas, (list, tuple)) or not areas
                or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and 0 < a < 1 for a in areas)):
            raise ComponentError(f"extremal: parameter areas must be a list of fractions in (0, 1), e.g. "
                                 f"[0.025, 0.05, 0.1, 0.2], got {p['areas']!r}")
        p["areas"] = [float(a) for a in areas]
        for key in ("iterations", "step"):
            _positive(self.name, key, p[key], integer=True)
        if not isinstance(p["num_levels"], int) or p["num_levels"] < 2:
            raise ComponentError(f"extremal: parameter num_levels must be an integer >= 2, got {p['num_levels']!r}")
        for key in ("lr", "sigma", "max_blur", "regul_growth"):
            _positive(self.name, key, p[key])
        for key in ("momentum", "regul_weight", "smooth"):
            _positive(self.name, key, p[key], allow_zero=True)
        if not isinstance(p["flip_jitter"], bool):
            raise ComponentError(f"extremal: parameter flip_jitter must be true or false, got {p['flip_jitter']!r}")

    def masks(self, model, images: torch.Tensor, targets: torch.Tensor, *, return_full: bool = False):
        """The per-area masks ``B x A x H x W`` before smoothing (see :func:`extremal_perturbation`)."""
        targets = check_batch(self.name, model, images, targets)
        p = self.params
        side = min(images.shape[-2:])
        return extremal_perturbation(
            model, images.float(), targets, p["areas"], iterations=int(p["iterations"]), lr=float(p["lr"]),
            momentum=float(p["momentum"]), step=max(1, round(scaled(p["step"], side))),
            sigma=scaled(p["sigma"], side), num_levels=int(p["num_levels"]), max_blur=scaled(p["max_blur"], side),
            regul_weight=float(p["regul_weight"]), regul_growth=float(p["regul_growth"]),
            flip_jitter=p["flip_jitter"], return_full=return_full,
        )

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        masks = self.masks(model, images, targets)
        smooth = float(self.params["smooth"]) * min(images.shape[-2:])
        if smooth > 0:  # TorchRay imsmooth(mask, sigma=smooth * min(H, W), padding_mode="constant"): zero padding
            masks = gaussian_smooth(masks, smooth)
        return finite_maps(self.name, model, masks.sum(dim=1))
