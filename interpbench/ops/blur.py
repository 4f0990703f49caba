"""Gaussian blur of image batches in pixel space, as RISE's insertion substrate computes it.

RISE (Petsiuk et al., BMVC 2018, eclique/RISE ``evaluation.py``) blurs with ``gkern(11, 5)``, the result of
``scipy.ndimage.gaussian_filter`` on a centred delta, applied per channel by ``conv2d(x, kern, padding=11//2)``
to the *normalised* image. :func:`gaussian_kernel` reproduces that kernel exactly and :func:`gaussian_blur`
reproduces the convolution in pixel space (``pad_value`` = the model's mean colour).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def gaussian_kernel(
    size: int,
    sigma: float,
    *,
    truncate: float = 4.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``size x size`` Gaussian kernel of RISE's ``gkern(size, sigma)``, summing to 1.

    It equals ``scipy.ndimage.gaussian_filter(delta, sigma, truncate=truncate)`` for a ``size x size`` delta at
    the centre: a sampled Gaussian truncated at ``truncate * sigma`` and normalised, whose tails beyond the window
    are folded back in by half-sample reflection (scipy's ``mode="reflect"``). For ``sigma`` small against
    ``size`` that is the plain normalised Gaussian; for RISE's (11, 5) it is much flatter. Computed in float64,
    then cast, as RISE does (``astype('float32')``).
    """
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"gaussian_kernel: size must be a positive odd int (the blur keeps the size), got {size!r}")
    if not sigma > 0:
        raise ValueError(f"gaussian_kernel: sigma must be > 0, got {sigma!r}")
    radius = int(truncate * float(sigma) + 0.5)  # scipy.ndimage.gaussian_filter1d's radius
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * offsets**2 / float(sigma) ** 2)
    weights = weights / weights.sum()
    # 1-D response of a centred delta: out[j] = sum_m w[m] * delta[reflect(j + m)], reflect = "d c b a | a b c d"
    positions = torch.arange(size).view(-1, 1) + torch.arange(-radius, radius + 1).view(1, -1)
    period = positions.remainder(2 * size)
    reflected = torch.where(period < size, period, 2 * size - 1 - period)
    k1 = (weights.view(1, -1) * (reflected == size // 2)).sum(dim=1)
    return torch.outer(k1, k1).to(dtype=dtype, device=device)  # gaussian_filter is separable


def gaussian_blur(
    images: torch.Tensor,
    size: int = 11,
    sigma: float = 5.0,
    pad_value: torch.Tensor | float | Sequence[float] | None = None,
) -> torch.Tensor:
    """Per-channel Gaussian blur of ``B x C x H x W`` images (a depthwise conv on their device); same size out.

    The border is padded with ``pad_value``: ``None`` pads with zeros (black); a float or a per-channel colour
    (``C`` values or a ``1 x C x 1 x 1`` tensor such as ``model.mean``) pads with that colour. With the model's
    mean colour this is exactly RISE's blur: normalise, zero-padded conv, denormalise, i.e.
    ``conv0(x - mean) + mean`` (the std cancels since the conv is linear).
    """
    if images.dim() != 4:
        raise ValueError(f"gaussian_blur: images must be B x C x H x W, got shape {tuple(images.shape)}")
    channels = images.shape[1]
    kernel = gaussian_kernel(size, sigma, dtype=images.dtype, device=images.device)
    weight = kernel.expand(channels, 1, size, size)
    if pad_value is None:
        return F.conv2d(images, weight, padding=size // 2, groups=channels)
    pad = torch.as_tensor(pad_value, dtype=images.dtype, device=images.device)
    if pad.numel() not in (1, channels):
        raise ValueError(
            f"gaussian_blur: pad_value must be a float or one value per channel ({channels}), got {pad.numel()} values"
        )
    pad = pad.reshape(1, -1, 1, 1)
    return F.conv2d(images - pad, weight, padding=size // 2, groups=channels) + pad


__all__ = ["gaussian_blur", "gaussian_kernel"]
