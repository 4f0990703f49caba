"""Linear imputation of removed pixels (ROAD: Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and
Efficient Evaluation Strategy for Attribution Methods", ICML 2022, Sec. 4 "Noisy Linear Imputation").

Each removed pixel takes the weighted mean of its eight neighbours (weight 1/6 for the four edge neighbours, 1/12
for the four diagonal ones; neighbours outside the image are left out and the weights of the others renormalised),
where a neighbour is itself removed or known. For the removed pixels ``u`` of one image and channel this is the
linear system

    d_i u_i - sum_{j removed} w_ij u_j = sum_{j known} w_ij y_j        (one row per removed pixel i)

with ``d_i`` the sum of the in-image neighbour weights of pixel ``i``. The matrix is a graph Laplacian of the
8-neighbour grid restricted to the removed pixels: symmetric, and positive definite whenever at least one pixel of
the image is known (every 8-connected component of removed pixels then borders a known pixel, which makes the
restricted Laplacian irreducibly diagonally dominant). The ROAD reference code builds it with scipy and solves it
with ``spsolve`` once per image and removal fraction; here all images, fractions and channels are solved together
on the device by a Jacobi-preconditioned conjugate gradient whose matrix-vector product is one 3 x 3 depthwise
convolution (two separable passes), started from the imputation of a 2x coarser copy, so no matrix is
ever built.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from interpbench.core.base import ComponentError

EDGE_WEIGHT = 1.0 / 6.0  # ROAD's weights of the 4 edge neighbours (left, right, up, down)
DIAGONAL_WEIGHT = 1.0 / 12.0  # and of the 4 diagonal ones; the 8 sum to 1

log = logging.getLogger(__name__)


def neighbour_weights() -> list[tuple[tuple[int, int], float]]:
    """ROAD's neighbour weights as ``((row offset, column offset), weight)`` pairs."""
    return [((dy, dx), DIAGONAL_WEIGHT if dy and dx else EDGE_WEIGHT)
            for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """``sum_j w_ij x_j`` over the in-image neighbours of every pixel of ``x`` (``N x 1 x H x W``).

    The kernel is ``(outer([1, 2, 1], [1, 2, 1]) - 4 delta) / 12``: two separable [1, 2, 1] passes over a zero-padded
    copy, minus the centre, which on a CPU runs several times faster than a 3 x 3 single-channel convolution.
    """
    xp = F.pad(x, (1, 1, 1, 1))
    v = torch.add(xp[..., :-2, :], xp[..., 2:, :]).add_(xp[..., 1:-1, :], alpha=2.0)
    return torch.add(v[..., :-2], v[..., 2:]).add_(v[..., 1:-1], alpha=2.0).sub_(x, alpha=4.0).mul_(DIAGONAL_WEIGHT)


def _cg(y: torch.Tensor, m: torch.Tensor, x: torch.Tensor, tol: float, max_iter: int, check_every: int):
    """Jacobi-preconditioned CG on the planes ``y`` (``P x 1 x H x W``) with removed pixels ``m`` (float 0/1) from
    the start ``x`` (0 off ``m``); returns (x, iterations, largest relative residual)."""
    dtype = y.dtype
    h, w = y.shape[-2:]
    known = 1.0 - m
    diag = _neighbour_sum(torch.ones(1, 1, h, w, dtype=dtype, device=y.device))  # d_i: 1 inside, less on the border
    inv_diag = 1.0 / diag

    def apply(v: torch.Tensor) -> torch.Tensor:  # A v on the removed pixels (v is 0 elsewhere)
        return torch.addcmul(_neighbour_sum(v).neg_(), diag, v).mul_(m)

    b = m * _neighbour_sum(known * y)
    r = b - apply(x)
    z = inv_diag * r
    p = z.clone()
    x = x.clone()
    rz = (r * z).sum(dim=(1, 2, 3), keepdim=True)
    tiny = torch.finfo(dtype).tiny
    b_norm = b.flatten(1).norm(dim=1).clamp_min(tiny)
    rel_all = r.flatten(1).norm(dim=1) / b_norm
    rel = float(rel_all.max())
    active = (rel_all > tol).to(dtype).view_as(rz)  # systems still iterating; converged ones stop moving
    iterations = 0
    while rel > tol and iterations < max_iter:
        iterations += 1
        ap = apply(p)
        alpha = active * rz / torch.linalg.vecdot(p.flatten(1), ap.flatten(1)).view_as(rz).clamp_min(tiny)
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1.0)
        if iterations % check_every == 0 or iterations == max_iter:
            rel_all = r.flatten(1).norm(dim=1) / b_norm
            active = (rel_all > tol).to(dtype).view_as(rz)
            rel = float(rel_all.max())
        z = torch.mul(inv_diag, r, out=z)
        rz_new = torch.linalg.vecdot(r.flatten(1), z.flatten(1)).view_as(rz)
        p.mul_(rz_new / rz.clamp_min(tiny)).add_(z)
        rz = rz_new
    return x, iterations, rel


def _start(y: torch.Tensor, m: torch.Tensor, tol: float, check_every: int, min_size: int = 16) -> torch.Tensor:
    """A start for the removed pixels: the imputation of a 2x coarser copy, upsampled (coarse to fine).

    The coarse copy keeps a pixel where any of its 2 x 2 fine pixels is known, at their mean; it is imputed the
    same way (recursively, to a looser tolerance), so CG at full size starts with the smooth, slowly converging
    part of the solution in place. Below ``min_size`` px: each plane's mean known value. The start changes the
    number of iterations, not the solution.
    """
    h, w = y.shape[-2:]
    known = 1.0 - m
    if min(h, w) < 2 * min_size:
        return m * ((known * y).sum(dim=(2, 3), keepdim=True) / known.sum(dim=(2, 3), keepdim=True))
    weight = F.avg_pool2d(known, 2, ceil_mode=True)
    coarse_m = (weight == 0).to(y.dtype)
    coarse_y = F.avg_pool2d(known * y, 2, ceil_mode=True) / weight.clamp_min(torch.finfo(y.dtype).tiny)
    coarse_y = coarse_y * (1.0 - coarse_m)
    cx = _start(coarse_y, coarse_m, tol, check_every, min_size)
    ch, cw = coarse_y.shape[-2:]
    cx, _, _ = _cg(coarse_y, coarse_m, cx, tol * 10, 4 * (ch + cw), check_every)
    coarse = coarse_y * (1.0 - coarse_m) + cx
    return m * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def linear_imputation(
    images: torch.Tensor,
    removed: torch.Tensor,
    *,
    tol: float = 1e-4,
    max_iter: int | None = None,
    check_every: int = 10,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Fill the ``removed`` pixels of ``images`` by ROAD's linear imputation (noise-free); returns (filled, info).

    ``images`` is ``N x C x H x W`` (float) and ``removed`` ``N x H x W`` (bool): system ``n`` fills the pixels
    ``removed[n]`` of ``images[n]`` in every channel from the known ones. Known pixels come back unchanged.
    The ``N * C`` systems are solved together by a preconditioned conjugate gradient (Jacobi, i.e. divided by
    ``d_i``), started from the imputation of a coarser copy (:func:`_start`), until every system's residual norm
    is at most ``tol`` times the norm of its right-hand side (checked every ``check_every`` iterations, where the
    device is synchronised) or ``max_iter`` iterations (default ``4 * (H + W)``) have run. ``info`` holds
    ``iterations`` and ``residual`` (the largest relative residual at the end).

    Every image must keep at least one known pixel (with none the system is singular).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ComponentError(f"linear_imputation: images must be a float N x C x H x W tensor, got {got}")
    n, c, h, w = images.shape
    if not isinstance(removed, torch.Tensor) or tuple(removed.shape) != (n, h, w):
        got = tuple(removed.shape) if isinstance(removed, torch.Tensor) else type(removed).__name__
        raise ComponentError(f"linear_imputation: removed must be an N x H x W mask = {(n, h, w)}, got {got}")
    removed = removed.to(device=images.device, dtype=torch.bool)
    flat = removed.view(n, -1)
    if bool(flat.all(dim=1).any()):
        bad = int(flat.all(dim=1).sum())
        raise ComponentError(
            f"linear_imputation: {bad} of {n} masks remove every pixel, which leaves nothing to impute from; "
            f"keep at least one pixel (removal fractions below 1)"
        )
    if max_iter is None:
        max_iter = 4 * (h + w)
    # systems are (image, channel) planes: N*C single-channel planes; the mask repeats over the channels
    y = images.reshape(n * c, 1, h, w)
    m = removed.repeat_interleave(c, dim=0).view(n * c, 1, h, w).to(images.dtype)
    x = _start(y, m, tol, check_every)
    x, iterations, rel = _cg(y, m, x, tol, max_iter, check_every)
    if rel > tol:
        log.warning("linear_imputation: stopped after %d iterations at a relative residual of %.2g > tol %.2g; "
                    "raise max_iter for an exact imputation", iterations, rel, tol)
    filled = ((1.0 - m) * y + m * x).view(n, c, h, w)
    return filled, {"iterations": float(iterations), "residual": rel}


def noisy_linear_imputation(
    images: torch.Tensor,
    removed: torch.Tensor,
    noise: torch.Tensor | float,
    seeds: list[int] | None = None,
    **solver: object,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ROAD's noisy linear imputation: :func:`linear_imputation` plus ``noise * N(0, 1)`` on the removed pixels.

    ``noise`` is the standard deviation, a number or a tensor broadcasting to ``1 x C x 1 x 1`` (e.g. a noise
    given in the model's normalised space times its ``std``). ``seeds`` gives one seed per image (the noise of
    image ``n`` then depends on ``seeds[n]`` alone, not on which other images share the call); None draws from
    torch's global RNG.
    """
    filled, info = linear_imputation(images, removed, **solver)  # type: ignore[arg-type]
    scale = torch.as_tensor(noise, dtype=images.dtype, device=images.device)
    if not bool((scale == 0).all()):
        if seeds is None:
            eps = torch.randn(filled.shape, dtype=filled.dtype, device=filled.device)
        else:
            if len(seeds) != images.shape[0]:
                raise ComponentError(f"noisy_linear_imputation: need one seed per image ({images.shape[0]}), "
                                     f"got {len(seeds)}")
            eps = torch.stack([
                torch.randn(filled.shape[1:], generator=torch.Generator(device=filled.device).manual_seed(int(s)),
                            dtype=filled.dtype, device=filled.device)
                for s in seeds
            ])
        mask = removed.to(device=images.device, dtype=images.dtype).unsqueeze(1)
        filled = filled + mask * scale.reshape(1, -1, 1, 1) * eps
    return filled, info


__all__ = ["DIAGONAL_WEIGHT", "EDGE_WEIGHT", "linear_imputation", "neighbour_weights", "noisy_linear_imputation"]
