"""VarGrad (Adebayo, Gilmer, Goodfellow, Kim, "Local explanation methods for deep neural networks lack sensitivity
to parameter values", ICLR workshop 2018): the variance of the input gradient under Gaussian input noise."""

from __future__ import annotations

import torch

import interpbench as ib
from interpbench.methods.gradients import check_batch, finite_maps, target_logits


def noisy_gradients(model, images: torch.Tensor, targets: torch.Tensor, samples: int, sigma: float) -> torch.Tensor:
    """``samples x B x C x H x W`` gradients of the target logits at ``images + N(0, sigma^2)``, in one batch.

    The noise comes from torch's global RNG, which the runner seeds from the cell: the same cell always draws the
    same noise.
    """
    noise = torch.randn((samples, *images.shape), device=images.device, dtype=images.dtype) * sigma
    x = (images.detach()[None] + noise).flatten(0, 1).requires_grad_(True)
    with torch.enable_grad():
        selected = target_logits("example:vargrad", model(x), targets.repeat(samples))
        (grad,) = torch.autograd.grad(selected.sum(), x)
    return grad.view(samples, *images.shape)


def vargrad(gradients: torch.Tensor) -> torch.Tensor:
    # Adebayo et al. 2018, sec. 2: VG(x) = V[grad(x + eta)], eta ~ N(0, sigma^2); summed over colour channels
    return gradients.var(dim=0, unbiased=False).sum(dim=1)


class VarGrad(ib.Method):
    """VarGrad: the variance of the input gradient under Gaussian noise, summed over channels (stochastic)."""

    name = "example:vargrad"
    version = "1"
    requires_grad = True
    deterministic = False  # draws noise: the runner seeds torch's RNG from the cell
    # SmoothGrad's settings, which VarGrad reuses: 50 samples, noise of 15% of the input range ([0, 1] here).
    defaults = {"samples": 50, "sigma": 0.15}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        samples, sigma = self.params["samples"], self.params["sigma"]
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
            raise ib.ComponentError(f"{self.name}: samples must be an integer >= 2 (a variance), got {samples!r}")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
            raise ib.ComponentError(f"{self.name}: sigma must be a positive number (pixel units), got {sigma!r}")

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)  # B class indices, in range
        grads = noisy_gradients(model, images, targets, self.params["samples"], float(self.params["sigma"]))
        return finite_maps(self.name, model, vargrad(grads))  # B x H x W, float32, finite
