"""Adversarial attacks in pixel space: FGSM, PGD-Linf and Carlini-Wagner L2 (untargeted).

Images live in ``[0, 1]`` and the model normalises them itself (interpbench/core/base.py), so an epsilon means the same
thing for every model: ``8/255`` is eight grey levels of an 8-bit image. Every attack is batched and runs on the
images' device; the gradient is taken with respect to the images only (no parameter gradients are computed or
accumulated). Each returns an :class:`Adversarial` ``(images, success)``: the adversarial images and a bool mask,
``model(images).argmax(1) != labels`` on the returned images (for CW with ``kappa > 0``, by ``kappa`` as well).

Randomness (PGD's random start) comes from torch's global RNG, a ``torch.Generator``, or one generator per image
(so an image's attack does not depend on the other images of its batch).

The attacks do not change the model's mode: call them on a model in ``eval()`` mode (as the runner's models are),
or batch statistics and dropout will leak between images.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from interpbench.core.base import ComponentError

Generators = torch.Generator | Sequence[torch.Generator] | None


class Adversarial(NamedTuple):
    """Adversarial ``images`` (``B x C x H x W`` in ``[0, 1]``) and ``success`` (bool ``[B]``)."""

    images: torch.Tensor
    success: torch.Tensor


# --------------------------------------------------------------------------------------------- checks


def _check_inputs(attack: str, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ComponentError(f"{attack}: images must be a float tensor B x C x H x W in [0, 1], got {got}")
    if images.numel() and (float(images.min()) < 0.0 or float(images.max()) > 1.0):
        raise ComponentError(
            f"{attack}: images must lie in [0, 1] (pixel space; the model normalises), got values in "
            f"[{float(images.min()):.4g}, {float(images.max()):.4g}]"
        )
    labels = torch.as_tensor(labels, device=images.device).reshape(-1)
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.shape[0] != images.shape[0]:
        raise ComponentError(
            f"{attack}: labels must be {images.shape[0]} integer class indices (one per image), got "
            f"shape {tuple(labels.shape)} and dtype {labels.dtype}"
        )
    return labels.long()


def _check_eps(attack: str, eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ComponentError(f"{attack}: eps must be a finite number >= 0 in pixel units (e.g. 8/255), got {eps!r}")
    return float(eps)


def _positive_int(attack: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ComponentError(f"{attack}: {name} must be a positive int, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------- shared pieces


def loss_gradient(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy with respect to the images (each image's own loss gradient)."""
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x).float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


@torch.no_grad()
def misclassified(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bool ``[B]``: the model's top-1 class differs from ``labels``."""
    return model(images).argmax(dim=1) != labels


def project_linf(adversarial: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of the L-inf ball of radius ``eps`` around ``images`` intersected with the box ``[0, 1]``."""
    delta = (adversarial - images).clamp_(-eps, eps)
    return (images + delta).clamp_(0.0, 1.0)


def uniform_start(images: torch.Tensor, eps: float, generator: Generators = None) -> torch.Tensor:
    """``U(-eps, eps)`` noise shaped like ``images``, from the global RNG, one generator, or one per image."""
    if generator is None or isinstance(generator, torch.Generator):
        noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    else:
        if len(generator) != images.shape[0]:
            raise ComponentError(
                f"pgd_linf: got {len(generator)} generators for {images.shape[0]} images; give one per image")
        noise = torch.stack([torch.rand(images.shape[1:], generator=g, device=images.device, dtype=images.dtype)
                             for g in generator])
    return (2.0 * noise - 1.0) * eps


# --------------------------------------------------------------------------------------------- FGSM, PGD


def fgsm(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float) -> Adversarial:
    """Fast gradient sign method (Goodfellow, Shlens, Szegedy, ICLR 2015), untargeted.

    ``x' = clip_[0,1](x + eps * sign(grad_x CE(f(x), y)))``.
    """
    labels = _check_inputs("fgsm", images, labels)
    eps = _check_eps("fgsm", eps)
    images = images.detach()
    # Goodfellow et al. 2015 eq. (1): eta = eps * sign(grad_x J(theta, x, y))
    adversarial = project_linf(images + eps * loss_gradient(model, images, labels).sign(), images, eps)
    return Adversarial(adversarial, misclassified(model, adversarial, labels))


def pgd_linf(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    step_size: float | None = None,
    steps: int = 10,
    random_start: bool = True,
    generator: Generators = None,
) -> Adversarial:
    """Projected gradient descent in the L-inf ball (Madry et al., ICLR 2018), untargeted, cross-entropy loss.

    Start at ``x + U(-eps, eps)`` (``random_start``) or at ``x``; ``steps`` times step ``step_size * sign(grad)``
    (default ``eps / 4``, docs/protocols.md) and project onto the ball and the box ``[0, 1]``. Returns the last iterate
    (as Madry et al. and torchattacks' ``PGD``).
    """
    labels = _check_inputs("pgd_linf", images, labels)
    eps = _check_eps("pgd_linf", eps)
    steps = _positive_int("pgd_linf", "steps", steps)
    alpha = eps / 4 if step_size is None else _check_eps("pgd_linf (step_size)", step_size)
    images = images.detach()
    adversarial = images.clone()
    if random_start:
        adversarial = project_linf(adversarial + uniform_start(images, eps, generator), images, eps)
    for _ in range(steps):
        # Madry et al. 2018 eq. (2): x^{t+1} = Pi_{x+S}(x^t + alpha sgn(grad_x L(theta, x, y)))
        grad = loss_gradient(model, adversarial, labels)
        adversarial = project_linf(adversarial + alpha * grad.sign(), images, eps)
    return Adversarial(adversarial, misclassified(model, adversarial, labels))


# --------------------------------------------------------------------------------------------- Carlini-Wagner L2


def cw_margin(logits: torch.Tensor, labels: torch.Tensor, kappa: float) -> torch.Tensor:
    """Carlini & Wagner 2017 objective f_6, untargeted: ``max(Z_y - max_{i != y} Z_i, -kappa)`` per image."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), -math.inf).amax(dim=1)
    return (true - other).clamp_min(-kappa)


def cw_success(logits: torch.Tensor, labels: torch.Tensor, kappa: float) -> torch.Tensor:
    """Carlini & Wagner's ``compare``: the true class, raised by ``kappa``, is no longer the arg-max."""
    raised = logits.scatter_add(1, labels[:, None], torch.full_like(logits[:, :1], float(kappa)))
    return raised.argmax(dim=1) != labels


def carlini_wagner_l2(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    initial_const: float = 1e-3,
    binary_search_steps: int = 9,
    steps: int = 10000,
    lr: float = 1e-2,
    kappa: float = 0.0,
    abort_early: bool = True,
) -> Adversarial:
    """Carlini & Wagner L2 attack (IEEE S&P 2017), untargeted; defaults of the authors' ``l2_attack.py``.

    Change of variables ``x' = (tanh(w) + 1) / 2`` (w starts at ``atanh((2x - 1) * 0.999999)``), Adam (``lr``)
    on ``||x' - x||_2^2 + c * f_6(x')`` for ``steps`` iterations, a per-image binary search over ``c`` (starting at
    ``initial_const``; x10 while no success is known), abort when the batch loss has not fallen by 0.01% over a
    tenth of the iterations (``abort_early``). Keeps the smallest-L2 successful image per input over all
    iterations; inputs never attacked successfully come back unchanged (``success`` False).
    """
    labels = _check_inputs("carlini_wagner_l2", images, labels)
    binary_search_steps = _positive_int("carlini_wagner_l2", "binary_search_steps", binary_search_steps)
    steps = _positive_int("carlini_wagner_l2", "steps", steps)
    for name, value in (("initial_const", initial_const), ("lr", lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ComponentError(f"carlini_wagner_l2: {name} must be a number > 0, got {value!r}")
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or kappa < 0:
        raise ComponentError(f"carlini_wagner_l2: kappa (confidence) must be a number >= 0, got {kappa!r}")
    images = images.detach()
    batch, device = images.shape[0], images.device
    w0 = torch.atanh((images * 2 - 1) * 0.999999)
    const = torch.full((batch,), float(initial_const), device=device, dtype=torch.float64)
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, 1e10)
    best_l2 = torch.full((batch,), math.inf, device=device)
    best = images.clone()
    check_every = max(steps // 10, 1)
    for outer in range(binary_search_steps):
        if binary_search_steps >= 10 and outer == binary_search_steps - 1:
            const = upper.clone()  # l2_attack.py: with 10+ search steps the last one repeats at the upper bound
        modifier = torch.zeros_like(images, requires_grad=True)
        optimizer = torch.optim.Adam([modifier], lr=lr)
        c = const.to(images.dtype)
        step_success = torch.zeros(batch, dtype=torch.bool, device=device)
        previous = math.inf
        for iteration in range(steps):
            with torch.enable_grad():
                adversarial = (torch.tanh(w0 + modifier) + 1) / 2
                l2 = (adversarial - images).flatten(1).pow(2).sum(dim=1)
                logits = model(adversarial).float()
                # Carlini & Wagner 2017 eq. (7): minimise ||delta||_2^2 + c * f(x + delta)
                loss = l2.sum() + (c * cw_margin(logits, labels, kappa)).sum()
                # the gradient of the modifier only: no parameter gradients are computed or left on the model
                (modifier.grad,) = torch.autograd.grad(loss, modifier)
            with torch.no_grad():  # book-keeping on the iterate the loss was computed at, as l2_attack.py
                hit = cw_success(logits.detach(), labels, kappa)
                step_success |= hit
                better = hit & (l2.detach() < best_l2)
                best_l2 = torch.where(better, l2.detach(), best_l2)
                best = torch.where(better[:, None, None, None], adversarial.detach(), best)
            optimizer.step()
            if abort_early and iteration % check_every == 0:
                value = float(loss.detach())
                if value > previous * 0.9999:
                    break
                previous = value
        # binary search on c, per image (l2_attack.py)
        upper = torch.where(step_success, torch.minimum(upper, const), upper)
        lower = torch.where(step_success, lower, torch.maximum(lower, const))
        bounded = upper < 1e9
        const = torch.where(bounded, (lower + upper) / 2, torch.where(step_success, const, const * 10))
    with torch.no_grad():
        success = cw_success(model(best).float(), labels, kappa) & torch.isfinite(best_l2)
    return Adversarial(best, success)


__all__ = [
    "Adversarial",
    "carlini_wagner_l2",
    "cw_margin",
    "cw_success",
    "fgsm",
    "loss_gradient",
    "misclassified",
    "pgd_linf",
    "project_linf",
    "uniform_start",
]
