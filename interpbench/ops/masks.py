"""Tensor code for perturbation methods: Gaussian smoothing, blur pyramids, smooth-max masks, RISE masks, windows.

Every function works on batches on the tensors' device. The maths follow the reference implementations named in
each docstring (ruthcfong/perturb_explanations, facebookresearch/TorchRay, eclique/RISE, captum); tests in
``tests/test_methods_perturbation.py`` check the ones with a library reference against it.

Spatial hyper-parameters of the published methods are given in pixels for 224 px inputs; :func:`scaled` maps them
to other input sizes in proportion to the shorter side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fractions
import functools
import math

import torch
import torch.nn.functional as F

REFERENCE_SIZE = 224  # the input size at which the published spatial hyper-parameters are stated
# Elements of one temporary of the smooth-max generator: on a GPU up to 512 MB of float32; on a CPU 16 MB, which
# stays in cache (twice as fast per mask as one large group, measured with shapes:cnn-sized masks).
MAX_TERMS = 1 << 27
MAX_TERMS_CPU = 1 << 22


def full_precision(device: torch.device | str):
    """A context that turns autocast off on ``device``: masks, blurs and saliency sums stay in float32 when the
    runner explains under ``--precision bf16/fp16`` (only the model's forward passes run in low precision)."""
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda", "xpu", "mps"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def _autocast_off(fn):
    """Run ``fn`` with autocast off on the device of its first tensor argument (see :func:`full_precision`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensor = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if tensor is None:
            return fn(*args, **kwargs)
        with full_precision(tensor.device):
            return fn(*args, **kwargs)

    return wrapper


def scaled(value: float, size: int, reference: int = REFERENCE_SIZE) -> float:
    """``value`` (pixels at ``reference`` px) in pixels at ``size`` px: ``value * size / reference``."""
    return float(value) * size / reference


# --------------------------------------------------------------------------------------------- smoothing


def gaussian_kernel1d(sigma: float, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """TorchRay ``imsmooth``'s 1-D kernel: ``exp(-i^2 / (2 sigma^2))`` for ``|i| <= ceil(4 sigma)``, sum 1.

    ``sigma = 0`` gives the identity kernel ``[1]``.
    """
    if not sigma >= 0 or not math.isfinite(sigma):
        raise ValueError(f"gaussian_kernel1d: sigma must be a finite number >= 0, got {sigma!r}")
    width = math.ceil(4 * sigma)
    taps = torch.arange(-width, width + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * taps**2 / sigma**2) if sigma > 0 else torch.ones(1, dtype=torch.float64)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


@_autocast_off
def gaussian_smooth(
    x: torch.Tensor, sigma: float, *, padding: str = "constant", pad_value: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Separable Gaussian blur of ``B x C x H x W`` (TorchRay ``imsmooth``), same size out.

    ``padding="constant"`` pads with ``pad_value`` (a float or a ``1 x C x 1 x 1`` colour, e.g. ``model.mean``:
    zero in normalised space, as TorchRay blurs normalised images); ``"replicate"`` repeats the edge pixels
    (PIL's ``GaussianBlur``, used by Fong & Vedaldi's official code).
    """
    if x.dim() != 4:
        raise ValueError(f"gaussian_smooth: x must be B x C x H x W, got shape {tuple(x.shape)}")
    if sigma == 0:
        return x
    kernel = gaussian_kernel1d(sigma, dtype=x.dtype, device=x.device)
    width = (kernel.numel() - 1) // 2
    channels = x.shape[1]
    if padding == "constant":
        pad = torch.as_tensor(pad_value, dtype=x.dtype, device=x.device)
        pad = pad.reshape(1, -1, 1, 1) if pad.numel() > 1 else pad
        y = F.pad(x - pad, (width, width, width, width))
    elif padding == "replicate":
        pad = 0.0
        y = _replicate_pad(x, width)
    else:
        raise ValueError(f"gaussian_smooth: padding must be 'constant' or 'replicate', got {padding!r}")
    y = F.conv2d(y, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    y = F.conv2d(y, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return y + pad


def _replicate_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    """Edge padding by ``width`` on each side, any ``width`` (``F.pad`` limits some modes to the input size)."""
    h, w = x.shape[-2:]
    rows = torch.arange(-width, h + width, device=x.device).clamp(0, h - 1)
    cols = torch.arange(-width, w + width, device=x.device).clamp(0, w - 1)
    return x.index_select(-2, rows).index_select(-1, cols)


# --------------------------------------------------------------------------------------------- extremal


@_autocast_off
def blur_pyramid(images: torch.Tensor, num_levels: int, max_sigma: float, pad_value=0.0) -> torch.Tensor:
    """``B x L x C x H x W``: level ``l`` is blurred with ``sigma_l = max_sigma (1 - l/(L-1))`` (TorchRay
    ``Perturbation``, blur type): level 0 the most blurred, level ``L-1`` the image itself."""
    if num_levels < 2:
        raise ValueError(f"blur_pyramid: num_levels must be >= 2, got {num_levels}")
    levels = [gaussian_smooth(images, max_sigma * (1 - level / (num_levels - 1)), pad_value=pad_value)
              for level in range(num_levels)]  # one blur per level (L is small: 8)
    return torch.stack(levels, dim=1)


def pyramid_lookup(pyramid: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Perturbed images from masks in [0, 1] (Fong et al. 2019, sec. 3.3; TorchRay ``Perturbation.apply``).

    ``pyramid``: ``B x L x C x H x W``; ``masks``: ``B x A x 1 x H x W`` (``A`` masks per image). Returns
    ``B x A x C x H x W``: at each pixel the pyramid is read at level ``m (L - 1)``, linearly interpolated.
    """
    b, levels, c, h, w = pyramid.shape
    a = masks.shape[1]
    level = masks * (levels - 1)
    below = level.floor()
    frac = level - below
    index = below.long().unsqueeze(2).expand(b, a, 1, c, h, w)  # B x A x 1 x C x H x W
    source = pyramid.unsqueeze(1).expand(b, a, levels, c, h, w)
    y0 = torch.gather(source, 2, index).squeeze(2)
    y1 = torch.gather(source, 2, (index + 1).clamp(max=levels - 1)).squeeze(2)
    return (1 - frac) * y0 + frac * y1


@dataclasses.dataclass(frozen=True)
class SmoothMaxGrid:
    """The fixed geometry of TorchRay's ``MaskGenerator`` for one mask shape (see :func:`smooth_max_grid`)."""

    shape: tuple[int, int]  # output mask size (the image)
    step: int
    sigma: float
    radius: int  # neighbourhood half-size in parameter cells
    padding: int
    shape_in: tuple[int, int]  # parameter grid
    shape_mid: tuple[int, int]  # cells of the full mask
    shape_out: tuple[int, int]  # full mask, with margin
    margin: int  # crop offset of the image inside the full mask
    weight: torch.Tensor  # step x step x (2r+1)^2: kernel value of each neighbour at each offset inside a cell
    coldness: float = 20.0


def smooth_max_grid(shape: tuple[int, int], step: int, sigma: float, device=None) -> SmoothMaxGrid:
    """Geometry and kernel weights of the smooth-max mask generator (Fong, Patrick, Vedaldi, ICCV 2019, sec. 3.2;
    TorchRay ``MaskGenerator``): parameter cells every ``step`` px, kernel ``exp(-2 max(0, d/sigma - 1/2)^2)``
    of the distance ``d`` from a pixel to each of the ``(2r+1)^2`` nearby cell centres, a margin of ``sigma``.

    Pixel ``u = step * c + o`` of the full mask (cell ``c``, offset ``0 <= o < step``) sees neighbour ``k`` at
    ``d = o - margin - step * (k - padding)`` in each direction, independent of ``c``: the weights are stored per
    offset (``step x step x (2r+1)^2``) instead of per pixel.
    """
    if int(step) != step or step < 1:
        raise ValueError(f"smooth_max_grid: step must be a positive integer, got {step!r}")
    if not sigma > 0:
        raise ValueError(f"smooth_max_grid: sigma must be > 0, got {sigma!r}")
    step = int(step)
    margin = sigma
    padding = 1 + math.ceil((margin + sigma) / step)
    radius = 1 + math.ceil(sigma / step)
    shape_in = tuple(math.ceil(z / step) for z in shape)
    shape_mid = tuple(z + 2 * padding - (2 * radius + 1) + 1 for z in shape_in)
    shape_out = tuple(step * z - step + 1 for z in shape_mid)
    k = torch.arange(2 * radius + 1, dtype=torch.float64)
    o = torch.arange(step, dtype=torch.float64)
    d = o[:, None] - margin - step * (k[None, :] - padding)  # offset x neighbour, one direction
    delta = torch.sqrt(d[:, None, :, None] ** 2 + d[None, :, None, :] ** 2)  # o_y x o_x x k_y x k_x
    weight = torch.exp(-2 * ((delta / sigma - 0.5).clamp(min=0) ** 2))
    weight = weight.reshape(step, step, (2 * radius + 1) ** 2).to(dtype=torch.float32, device=device)
    return SmoothMaxGrid(tuple(shape), step, float(sigma), radius, padding, shape_in, shape_mid, shape_out,
                         round(margin), weight)


class SmoothMaxPool(torch.autograd.Function):
    """``m = sum_k a_k e_k / sum_k e_k`` with ``a = v w`` and ``e = exp(c a)``: TorchRay's softmax pooling.

    ``v``: ``K x Y x X x n`` neighbour values per cell; ``w``: ``s x s x n`` weights per offset in a cell; output
    ``K x Y x X x s x s``. ``a`` is in [0, 1], so ``exp(c a)`` needs no max shift in float32 for ``c <= 80``. The
    backward pass recomputes ``a`` and ``e`` instead of storing them (they are ``n`` times larger than the
    output): ``dm/da_k = e_k (1 + c (a_k - m)) / sum_j e_j``.
    """

    @staticmethod
    def forward(ctx, values: torch.Tensor, weight: torch.Tensor, coldness: float) -> torch.Tensor:
        terms = values[:, :, :, None, None, :] * weight
        expo = terms.mul(coldness).exp_()
        norm = expo.sum(dim=-1)
        pooled = expo.mul_(terms).sum(dim=-1).div_(norm)
        ctx.save_for_backward(values, weight, pooled, norm)
        ctx.coldness = coldness
        return pooled

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        values, weight, pooled, norm = ctx.saved_tensors
        c = ctx.coldness
        terms = values[:, :, :, None, None, :] * weight
        expo = terms.mul(c).exp_()
        coef = terms.sub_(pooled[..., None]).mul_(c).add_(1).mul_(expo)  # in place: reuses the terms' memory
        del expo
        coef.mul_((grad / norm)[..., None]).mul_(weight)
        grad_values = coef.sum(dim=(3, 4)) if ctx.needs_input_grad[0] else None
        return grad_values, None, None


def smooth_max_masks(params: torch.Tensor, grid: SmoothMaxGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks from parameters ``K x 1 x h_in x w_in`` (TorchRay ``MaskGenerator.generate``, softmax pooling).

    ``m(u) = sum_k a_k softmax_k(20 a_k)``, ``a_k = w_k(u) v_k``, over the ``(2r+1)^2`` parameters ``v_k`` near
    ``u``, clamped to [0, 1]. Returns ``(cropped, full)``: ``K x 1 x H x W`` at the image and
    ``K x 1 x H_out x W_out`` with the margin (what the area constraint sees). Neighbourhoods are strided views of
    the padded parameters, so the only large tensors are the ``K x H_out x W_out x (2r+1)^2`` terms themselves.
    """
    size = 2 * grid.radius + 1
    k = len(params)
    (mid_h, mid_w), step = grid.shape_mid, grid.step
    padded = F.pad(params[:, 0], (grid.padding,) * 4)
    neighbours = padded.unfold(1, size, 1).unfold(2, size, 1).reshape(k, mid_h, mid_w, size * size)
    # K x cell_y x cell_x x o_y x o_x, computed for groups of masks whose terms stay under the budget
    budget = MAX_TERMS_CPU if params.device.type == "cpu" else MAX_TERMS
    per_group = max(1, budget // (mid_h * mid_w * step * step * size * size))
    pooled = torch.cat([SmoothMaxPool.apply(group, grid.weight, grid.coldness)
                        for group in neighbours.split(per_group)])
    full = pooled.permute(0, 1, 3, 2, 4).reshape(k, 1, mid_h * step, mid_w * step)
    full = full[:, :, : grid.shape_out[0], : grid.shape_out[1]].clamp(0, 1)
    m = grid.margin
    cropped = full[:, :, m : m + grid.shape[0], m : m + grid.shape[1]]
    return cropped, full


def area_reference(areas: torch.Tensor, num_pixels: int) -> torch.Tensor:
    """``A x N`` sorted target masks: ``int(N (1 - a))`` zeros then ones (Fong et al. 2019, eq. 4; TorchRay)."""
    zeros = (num_pixels * (1 - areas.double())).long()  # int() truncation, as TorchRay
    return (torch.arange(num_pixels, device=areas.device)[None, :] >= zeros[:, None]).float()


def area_loss(full_masks: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    # Fong, Patrick, Vedaldi 2019, eq. 4: R_a(m) = || vecsort(m) - r_a ||^2 / N, per mask -> Tensor[K]
    flat = full_masks.reshape(len(full_masks), -1).sort(dim=1).values
    return ((flat - reference) ** 2).mean(dim=1)


# --------------------------------------------------------------------------------------------- meaningful perturbation


def nearest_upsample(masks: torch.Tensor, factor: int | fractions.Fraction, size: tuple[int, int]) -> torch.Tensor:
    """``... x h x w`` cells of ``factor`` pixels each -> ``... x size``: pixel ``u`` reads cell ``floor(u / factor)``.

    For an integer ``factor`` each cell is repeated ``factor x factor`` times and the result cropped to ``size``
    (the official ``resize`` of Fong & Vedaldi's code); a :class:`fractions.Fraction` gives cells of uneven
    integer widths with the same mean, in exact integer arithmetic. The gradient of a cell is the sum over its
    pixels (``index_select``'s backward), as the official ``resize(..., diff=True)``.
    """
    factor = fractions.Fraction(factor)
    if factor <= 0:
        raise ValueError(f"nearest_upsample: factor must be > 0, got {factor}")
    rows = torch.arange(size[0], device=masks.device) * factor.denominator // factor.numerator
    cols = torch.arange(size[1], device=masks.device) * factor.denominator // factor.numerator
    if rows[-1] >= masks.shape[-2] or cols[-1] >= masks.shape[-1]:
        raise ValueError(f"nearest_upsample: {tuple(masks.shape[-2:])} cells of {factor} px do not cover {size}")
    return masks.index_select(-2, rows).index_select(-1, cols)


def nearest_downsample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL ``NEAREST`` resize of ``... x H x W`` to ``size``: output ``i`` reads input ``floor((i + 1/2) H / h)``."""
    h, w = images.shape[-2:]
    rows = ((torch.arange(size[0], device=images.device) + 0.5) * h / size[0]).floor().long().clamp(max=h - 1)
    cols = ((torch.arange(size[1], device=images.device) + 0.5) * w / size[1]).floor().long().clamp(max=w - 1)
    return images.index_select(-2, rows).index_select(-1, cols)


def total_variation(masks: torch.Tensor, beta: float) -> torch.Tensor:
    # Fong & Vedaldi 2017, eq. 3, official tv(): sum_u (d1(u)^2 + d2(u)^2)^(beta/2), forward differences -> [K]
    d1 = F.pad(masks[..., 1:, :] - masks[..., :-1, :], (0, 0, 0, 1))
    d2 = F.pad(masks[..., :, 1:] - masks[..., :, :-1], (0, 1, 0, 0))
    return (d1 * d1 + d2 * d2).pow(beta / 2).flatten(1).sum(dim=1)


@_autocast_off
def blurred_discs(size: tuple[int, int], radii: torch.Tensor, sigma: float) -> torch.Tensor:
    """``R x H x W`` discs ``x^2 + y^2 <= r^2`` about ``(W // 2, H // 2)``, each blurred with a Gaussian of std
    ``sigma`` (official ``create_blurred_circular_mask``; scipy's ``gaussian_filter``: ``mode="reflect"``,
    truncated at 4 sigma)."""
    h, w = size
    y = torch.arange(h, device=radii.device, dtype=torch.float32) - h // 2
    x = torch.arange(w, device=radii.device, dtype=torch.float32) - w // 2
    discs = ((y[None, :, None] ** 2 + x[None, None, :] ** 2) <= radii.float()[:, None, None] ** 2).float()
    if sigma <= 0:
        return discs
    kernel = gaussian_kernel1d(sigma, device=radii.device)
    width = (kernel.numel() - 1) // 2
    rows = _symmetric_index(h, width, radii.device)
    cols = _symmetric_index(w, width, radii.device)
    padded = discs.index_select(1, rows).index_select(2, cols)[:, None]
    out = F.conv2d(F.conv2d(padded, kernel.view(1, 1, -1, 1)), kernel.view(1, 1, 1, -1))
    return out[:, 0]


def _symmetric_index(n: int, width: int, device) -> torch.Tensor:
    """Indices of a half-sample symmetric padding by ``width`` (scipy.ndimage ``mode="reflect"``)."""
    i = torch.arange(-width, n + width, device=device).remainder(2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


# --------------------------------------------------------------------------------------------- RISE


def linear_resize_matrix(n: int, size: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """``size x n`` matrix of 1-D linear interpolation from ``n`` to ``size`` samples, pixel-centre aligned, with
    mirror boundaries: ``skimage.transform.resize(order=1, mode="reflect", anti_aliasing=False)``, which RISE
    uses to upsample its grids. A 2-D resize of ``G`` is ``A_h @ G @ A_w.T``."""
    out = torch.arange(size, dtype=torch.float64)
    coord = (out + 0.5) * n / size - 0.5
    low = coord.floor()
    frac = coord - low
    low = low.long()

    def mirror(i: torch.Tensor) -> torch.Tensor:  # ndimage "mirror": -1 -> 1, n -> n - 2
        i = i.abs()
        return torch.where(i > n - 1, 2 * (n - 1) - i, i).clamp(0, n - 1)

    matrix = torch.zeros(size, n, dtype=torch.float64)
    matrix.index_put_((torch.arange(size), mirror(low)), 1 - frac, accumulate=True)
    matrix.index_put_((torch.arange(size), mirror(low + 1)), frac, accumulate=True)
    return matrix.to(dtype=dtype, device=device)


@_autocast_off
def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """RISE masks (Petsiuk et al. 2018, sec. 3.2; eclique/RISE ``generate_masks``): ``N x H x W``.

    ``grids``: ``N x s x s`` binary cells; ``shifts``: ``N x 2`` (row, column) offsets in ``[0, cell)``. Each grid
    is upsampled bilinearly to ``(s + 1) * cell`` with ``cell = ceil(H / s)`` and cropped at its shift.
    """
    _, s_h, s_w = grids.shape
    h, w = size
    cell_h, cell_w = math.ceil(h / s_h), math.ceil(w / s_w)
    a_h = linear_resize_matrix(s_h, (s_h + 1) * cell_h, dtype=grids.dtype, device=grids.device)
    a_w = linear_resize_matrix(s_w, (s_w + 1) * cell_w, dtype=grids.dtype, device=grids.device)
    rows = a_h[shifts[:, 0:1] + torch.arange(h, device=grids.device)]  # N x H x s
    cols = a_w[shifts[:, 1:2] + torch.arange(w, device=grids.device)]  # N x W x s
    return torch.einsum("nhi,nij,nwj->nhw", rows, grids, cols)


# --------------------------------------------------------------------------------------------- occlusion


def window_starts(length: int, window: int, stride: int) -> torch.Tensor:
    """Start of each sliding window along one side: ``0, stride, ...`` until the side is covered; the last window
    may stick out and is cut off (captum ``Occlusion``: ``ceil((length - window) / stride) + 1`` windows)."""
    count = math.ceil((length - window) / stride) + 1
    return torch.arange(count) * stride


def occlusion_windows(
    size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int], device=None
) -> torch.Tensor:
    """``K x H x W`` binary masks of the sliding windows, row-major over window positions."""
    h, w = size
    ys = window_starts(h, window[0], stride[0]).to(device)
    xs = window_starts(w, window[1], stride[1]).to(device)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    in_rows = (rows[None, :] >= ys[:, None]) & (rows[None, :] < ys[:, None] + window[0])  # n_y x H
    in_cols = (cols[None, :] >= xs[:, None]) & (cols[None, :] < xs[:, None] + window[1])  # n_x x W
    windows = in_rows[:, None, :, None] & in_cols[None, :, None, :]
    return windows.reshape(-1, h, w).float()


__all__ = [
    "REFERENCE_SIZE",
    "SmoothMaxGrid",
    "SmoothMaxPool",
    "area_loss",
    "area_reference",
    "blur_pyramid",
    "blurred_discs",
    "full_precision",
    "gaussian_kernel1d",
    "gaussian_smooth",
    "linear_resize_matrix",
    "nearest_downsample",
    "nearest_upsample",
    "occlusion_windows",
    "pyramid_lookup",
    "rise_masks",
    "scaled",
    "smooth_max_grid",
    "smooth_max_masks",
    "total_variation",
    "window_starts",
]
