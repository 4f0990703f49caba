"""Gradient-based explanation methods.

- ``gradient``: Simonyan, Vedaldi, Zisserman 2014, absolute input gradient, max over channels.
- ``input_x_gradient``: Shrikumar et al. 2016, input times gradient, summed over channels.
- ``integrated_gradients``: Sundararajan, Taly, Yan 2017, path integral of the gradient from a baseline.
- ``smoothgrad``: Smilkov et al. 2017, the gradient magnitude averaged over noisy copies of the image.
- ``guided_backprop``: Springenberg et al. 2015, gradient with ReLUs passing only positive gradients back.

All work in pixel space (images in ``[0, 1]``; normalisation lives in the model), batch every image together
with its integration steps or noise samples (``chunk`` model inputs per forward/backward pass), and give only
the input a gradient (parameters never get a ``.grad``). Shared helpers for every gradient method (checking
targets, picking the target logits, checking the maps) live here too; ``cam.py`` uses them.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from interpbench.core.base import ComponentError, Method, NotApplicable
from interpbench.ops import batching
from interpbench.ops.hooks import guided_relu_backward, record_nonlinearities

# --------------------------------------------------------------------------------------------- helpers


def check_batch(method: str, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Validate ``images`` (B x 3 x H x W) and ``targets`` (B class indices); return targets as a long tensor.

    Targets outside ``[0, model.num_classes)`` raise ComponentError naming the target and the class count.
    """
    if images.dim() != 4:
        raise ComponentError(f"{method}: images must be B x 3 x H x W, got shape {tuple(images.shape)}")
    targets = torch.as_tensor(targets, device=images.device)
    if targets.dim() != 1 or targets.shape[0] != images.shape[0] or targets.is_floating_point():
        raise ComponentError(
            f"{method}: targets must be a LongTensor[B] with B={images.shape[0]} class indices, "
            f"got {targets.dtype} of shape {tuple(targets.shape)}"
        )
    targets = targets.long()
    num_classes = getattr(model, "num_classes", None)
    if num_classes:
        bad = (targets < 0) | (targets >= num_classes)
        if bool(bad.any()):
            first = int(targets[bad][0])
            raise ComponentError(
                f"{method}: target {first} is out of range for model {getattr(model, 'spec', type(model).__name__)!r} "
                f"with {num_classes} classes (valid targets: 0..{num_classes - 1})"
            )
    return targets


def target_logits(method: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The logit of each image's target class: ``logits[b, targets[b]]`` -> Tensor[B]."""
    if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
        raise ComponentError(f"{method}: the model must return logits B x C, got shape {tuple(logits.shape)}")
    if int(targets.max()) >= logits.shape[1]:
        raise ComponentError(
            f"{method}: target {int(targets.max())} is out of range for a model with {logits.shape[1]} logits"
        )
    return logits.gather(1, targets[:, None]).squeeze(1)


def finite_maps(method: str, model, maps: torch.Tensor) -> torch.Tensor:
    """Return ``maps`` as float32; ComponentError if any value is NaN or infinite."""
    maps = maps.float()
    if not bool(torch.isfinite(maps).all()):
        raise ComponentError(
            f"{method}: non-finite values in the maps for model {getattr(model, 'spec', type(model).__name__)!r}; "
            "check the model's outputs on these images (NaN/inf logits) and its precision"
        )
    return maps


def positive_int(method: str, name: str, value) -> int:
    """``value`` as an int >= 1, else ComponentError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ComponentError(f"{method}: parameter {name} must be a positive integer, got {value!r}")
    return int(value)


def one_of(method: str, name: str, value, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else ComponentError listing them."""
    if value not in choices:
        raise ComponentError(f"{method}: parameter {name}={value!r} is not one of {list(choices)}")
    return value


def reduce_channels(method: str, attributions: torch.Tensor, reduction: str) -> torch.Tensor:
    """B x C x H x W attributions -> B x H x W maps: ``sum`` (signed, keeps completeness), ``abs_sum``, ``abs_max``."""
    if reduction == "sum":
        return attributions.sum(dim=1)
    if reduction == "abs_sum":
        return attributions.abs().sum(dim=1)
    if reduction == "abs_max":
        return attributions.abs().amax(dim=1)
    raise ComponentError(f"{method}: unknown channel reduction {reduction!r}; choose 'sum', 'abs_sum' or 'abs_max'")


BASELINES = ("black", "white", "mean")


def check_baseline(method: str, baseline) -> None:
    """ComponentError unless ``baseline`` is 'black', 'white', 'mean' or a grey level in [0, 1]."""
    if baseline in BASELINES:
        return
    if not isinstance(baseline, bool) and isinstance(baseline, (int, float)) and 0.0 <= float(baseline) <= 1.0:
        return
    raise ComponentError(
        f"{method}: baseline {baseline!r} is not one of {list(BASELINES)} or a grey level in [0, 1]"
    )


def baseline_images(method: str, model, images: torch.Tensor, baseline) -> torch.Tensor:
    """The reference image(s) in pixel space: ``"black"`` (0), ``"white"`` (1), ``"mean"`` (the model's mean
    colour, i.e. zero in normalised space) or a number in [0, 1] (a grey level); broadcastable to ``images``."""
    if baseline == "black":
        return torch.zeros(1, 1, 1, 1, dtype=images.dtype, device=images.device)
    if baseline == "white":
        return torch.ones(1, 1, 1, 1, dtype=images.dtype, device=images.device)
    if baseline == "mean":
        mean = getattr(model, "mean", None)
        if not isinstance(mean, torch.Tensor) or mean.numel() != images.shape[1]:
            raise ComponentError(
                f"{method}: baseline 'mean' needs the model's per-channel mean colour (an interpbench Model's "
                f"`mean` buffer); {getattr(model, 'spec', type(model).__name__)!r} has none; use baseline='black'"
            )
        return mean.detach().to(images.dtype).reshape(1, -1, 1, 1)
    check_baseline(method, baseline)
    return torch.full((1, 1, 1, 1), float(baseline), dtype=images.dtype, device=images.device)


# --------------------------------------------------------------------------------------------- maths


def input_gradient(model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d(target logit)/d(image), B x 3 x H x W; one forward and one backward for the whole batch.

    The sum of the target logits is differentiated: images do not interact in an eval-mode model, so each
    image's gradient is that of its own logit. Only the input gets a gradient (no ``.grad`` on parameters).
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        selected = target_logits("gradient", model(x), targets)
        (grad,) = torch.autograd.grad(selected.sum(), x)
    return grad


def gradient_saliency(grad: torch.Tensor) -> torch.Tensor:
    # Simonyan, Vedaldi, Zisserman 2014, sec. 3.1: M_ij = max_c |w_h(i,j,c)|, w = dS_c/dI
    return grad.abs().amax(dim=1)


INTEGRATION_RULES = ("gausslegendre", "riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid")


def integration_rule(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``alpha_k`` in [0, 1] and weights ``w_k`` (summing to 1) of a ``steps``-node quadrature rule, float64.

    ``gausslegendre`` is captum's default (Legendre nodes mapped from [-1, 1] to [0, 1]); ``riemann_right`` is the
    paper's sum (Sundararajan et al. 2017, eq. 3: alpha_k = k/m, k = 1..m); ``riemann_trapezoid`` uses weights
    1/(m-1) halved at both ends (captum's variant uses 1/m, which scales every map by (m-1)/m).
    """
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    k = torch.arange(steps, dtype=torch.float64)
    if rule == "riemann_left":
        return k / steps, torch.full((steps,), 1 / steps, dtype=torch.float64)
    if rule == "riemann_right":
        return (k + 1) / steps, torch.full((steps,), 1 / steps, dtype=torch.float64)
    if rule == "riemann_middle":
        return (k + 0.5) / steps, torch.full((steps,), 1 / steps, dtype=torch.float64)
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("integration_rule: the trapezoid rule needs at least 2 steps")
        weights = torch.full((steps,), 1 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return k / (steps - 1), weights
    raise ValueError(f"integration_rule: unknown rule {rule!r}; choose one of {list(INTEGRATION_RULES)}")


def accumulated_gradients(
    model,
    images: torch.Tensor,
    targets: torch.Tensor,
    points: Callable[[torch.Tensor, slice], torch.Tensor],
    weights: torch.Tensor,
    chunk: int,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    method: str = "gradient",
) -> torch.Tensor:
    """``sum_k w_k T(d f_t(p_k(x)) / d p_k(x))`` for every image, B x 3 x H x W (float32).

    ``points(ks, sl)`` returns the inputs ``len(ks) x b x 3 x H x W`` for the point indices ``ks`` of the images
    ``images[sl]``; ``T`` (``transform``) is applied to each gradient before weighting (e.g. ``abs``). The
    (point, image) pairs go through the model ``chunk`` at a time: whole blocks of points for up to
    ``chunk`` images. Each image's sum depends on that image alone (eval-mode models), and the chunking
    changes only the order of float additions.
    """
    n_images, n_points = images.shape[0], weights.shape[0]
    weights = weights.to(device=images.device, dtype=torch.float32)
    out = torch.zeros(images.shape, dtype=torch.float32, device=images.device)
    per_image = max(1, min(n_images, chunk))
    for i0 in range(0, n_images, per_image):
        sl = slice(i0, min(n_images, i0 + per_image))
        nb = sl.stop - sl.start
        per_chunk = max(1, chunk // nb)
        chunk_targets = targets[sl]
        for k0 in range(0, n_points, per_chunk):
            ks = torch.arange(k0, min(n_points, k0 + per_chunk), device=images.device)
            x = points(ks, sl).reshape(len(ks) * nb, *images.shape[1:]).detach().requires_grad_(True)
            with torch.enable_grad():
                selected = target_logits(method, model(x), chunk_targets.repeat(len(ks)))
                (grad,) = torch.autograd.grad(selected.sum(), x)
            grad = grad.float().view(len(ks), nb, *images.shape[1:])
            if transform is not None:
                grad = transform(grad)
            out[sl] += (weights[ks].view(-1, 1, 1, 1, 1) * grad).sum(dim=0)
    return out


def integrated_gradients(
    model,
    images: torch.Tensor,
    targets: torch.Tensor,
    baselines: torch.Tensor,
    steps: int = 50,
    rule: str = "gausslegendre",
    chunk: int = 64,
) -> torch.Tensor:
    """Integrated gradients per pixel and channel, B x 3 x H x W.

    Sundararajan et al. 2017, eq. 1/3: IG_i(x) = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x'))/dx_i da, the
    integral by the quadrature ``rule`` with ``steps`` nodes; ``baselines`` x' broadcast to ``images``.
    """
    alphas, weights = integration_rule(rule, steps)
    alphas = alphas.to(device=images.device, dtype=images.dtype)
    baselines = baselines.to(images.dtype).expand_as(images)
    delta = images - baselines

    def points(ks: torch.Tensor, sl: slice) -> torch.Tensor:
        return baselines[sl] + alphas[ks].view(-1, 1, 1, 1, 1) * delta[sl]

    grads = accumulated_gradients(model, images, targets, points, weights, chunk, method="integrated_gradients")
    return delta.float() * grads


SMOOTHGRAD_MAGNITUDES = ("abs", "square", "raw")


def smoothgrad_noise_scale(images: torch.Tensor, noise_level: float) -> torch.Tensor:
    """Per-image noise standard deviation, B x 1 x 1 x 1.

    Smilkov et al. 2017, sec. 3: sigma = noise level * (x_max - x_min), the range of each image (as in the authors'
    PAIR-code/saliency ``GetSmoothedMask``, ``stdev_spread * (max - min)``).
    """
    flat = images.reshape(images.shape[0], -1)
    return (noise_level * (flat.amax(dim=1) - flat.amin(dim=1))).view(-1, 1, 1, 1)


def seeded_normal_noise(
    seed: int, shape: tuple[int, ...], device, dtype=torch.float32
) -> Callable[[int], torch.Tensor]:
    """``noise(k)``: standard normal noise of ``shape`` for sample ``k``, from a generator seeded with ``seed + k``.

    Each sample's noise depends on (seed, k) only, so it does not change with how samples are chunked.
    """
    def noise(k: int) -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(seed + k)
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    return noise


def smoothgrad_gradients(
    model,
    images: torch.Tensor,
    targets: torch.Tensor,
    noise: Callable[[int], torch.Tensor],
    samples: int = 50,
    noise_level: float = 0.15,
    magnitude: str = "abs",
    chunk: int = 64,
) -> torch.Tensor:
    """The SmoothGrad average per pixel and channel, B x 3 x H x W.

    Smilkov et al. 2017, eq. 2: M(x) = 1/n sum_k T(dF(x + N(0, sigma^2))/dx), with T = |.| (``abs``), (.)^2
    (``square``, the authors' "magnitude" option) or the identity (``raw``). ``noise(k)`` returns the standard
    normal draw (B x 3 x H x W) of sample k, scaled here by each image's sigma (:func:`smoothgrad_noise_scale`).
    """
    sigma = smoothgrad_noise_scale(images, noise_level)
    transform = {"abs": torch.abs, "square": torch.square, "raw": None}[magnitude]

    def points(ks: torch.Tensor, sl: slice) -> torch.Tensor:
        draws = torch.stack([noise(int(k))[sl] for k in ks.tolist()])
        return images[sl] + sigma[sl] * draws.to(images.dtype)

    weights = torch.full((samples,), 1 / samples, dtype=torch.float64)
    return accumulated_gradients(model, images, targets, points, weights, chunk, transform, method="smoothgrad")


def smoothgrad_saliency(mean_gradients: torch.Tensor) -> torch.Tensor:
    # Smilkov et al. 2017, sec. 2 (visualised as in Simonyan et al. 2014): max over channels of |M_c(x)|
    return mean_gradients.abs().amax(dim=1)


def guided_gradient(method: str, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d(target logit)/d(image) with the guided-backprop ReLU rule (Springenberg et al. 2015), B x 3 x H x W.

    NotApplicable when the forward pass runs a nonlinearity other than an ``nn.ReLU`` module (SiLU, GELU,
    sigmoid gates, ReLU6, or a ``relu`` called functionally), which the rule would silently skip.
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad(), guided_relu_backward(model):
        with record_nonlinearities(model) as seen:
            logits = model(x)
        if not seen.only_relu_modules:
            raise NotApplicable(
                f"{method}: model {getattr(model, 'spec', type(model).__name__)!r} runs nonlinearities other than "
                f"nn.ReLU modules ({seen.describe()}); guided backpropagation (Springenberg et al. 2015) defines "
                "its rule for ReLUs only and would pass plain gradients through the others; use a ReLU network "
                "(e.g. a ResNet or VGG) or another method"
            )
        selected = target_logits(method, logits, targets)
        (grad,) = torch.autograd.grad(selected.sum(), x)
    return grad


# --------------------------------------------------------------------------------------------- methods


class Gradient(Method):
    """Absolute gradient of the target logit w.r.t. the input pixels, max over colour channels."""

    name = "gradient"
    version = "1"
    requires_grad = True
    deterministic = True
    defaults: dict = {}

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)
        maps = gradient_saliency(input_gradient(model, images, targets))
        return finite_maps(self.name, model, maps)


class InputXGradient(Method):
    """Input times gradient (Shrikumar et al. 2016), summed over channels (signed; ``reduction`` to change).

    In pixel space, so its implicit reference is a black image: for a linear model it equals
    ``integrated_gradients`` from a black baseline.
    """

    name = "input_x_gradient"
    version = "1"
    requires_grad = True
    deterministic = True
    defaults = {"reduction": "sum"}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        one_of(self.name, "reduction", self.params["reduction"], ("sum", "abs_sum"))

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)
        # Shrikumar et al. 2016: R_i = x_i * dF/dx_i
        attributions = images.float() * input_gradient(model, images, targets).float()
        return finite_maps(self.name, model, reduce_channels(self.name, attributions, self.params["reduction"]))


class IntegratedGradients(Method):
    """Integrated gradients (Sundararajan, Taly, Yan, ICML 2017), summed over channels.

    Defaults: a black baseline in pixel space (``baseline="mean"`` gives the model's mean colour, i.e. the zero
    image in normalised space that many captum users pass), 50 steps of captum's default Gauss-Legendre rule
    (``rule="riemann_right"`` is the paper's sum). The per-channel attributions are summed (signed), so a map sums
    to about F(x) - F(x') (completeness); ``reduction="abs_sum"`` sums magnitudes. ``chunk`` (model inputs
    per forward/backward pass; None: 64 on a GPU, by image size on a CPU, :func:`interpbench.ops.batching.auto_chunk`)
    trades memory for speed and does not change the maps.
    """

    name = "integrated_gradients"
    version = "1"
    requires_grad = True
    deterministic = True
    defaults = {"baseline": "black", "steps": 50, "rule": "gausslegendre", "reduction": "sum", "chunk": None}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        positive_int(self.name, "steps", self.params["steps"])
        batching.check_chunk(self.name, self.params["chunk"])
        one_of(self.name, "rule", self.params["rule"], INTEGRATION_RULES)
        one_of(self.name, "reduction", self.params["reduction"], ("sum", "abs_sum"))
        if self.params["rule"] == "riemann_trapezoid" and self.params["steps"] < 2:
            raise ComponentError(f"{self.name}: the trapezoid rule needs steps >= 2, got {self.params['steps']}")
        check_baseline(self.name, self.params["baseline"])

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)
        p = self.params
        baselines = baseline_images(self.name, model, images, p["baseline"])
        chunk = batching.resolve_chunk(p["chunk"], images, gpu=64)
        attributions = integrated_gradients(model, images, targets, baselines, p["steps"], p["rule"], chunk)
        return finite_maps(self.name, model, reduce_channels(self.name, attributions, p["reduction"]))


class SmoothGrad(Method):
    """SmoothGrad (Smilkov et al. 2017) of the gradient magnitude: ``gradient``'s map averaged over noisy copies.

    Defaults: 50 samples, noise level 0.15 of each image's value range (pixel space), the mean of the absolute
    gradient per channel (``magnitude="abs"``; captum's ``NoiseTunnel(Saliency)``), then the max over channels as
    in ``gradient``. ``magnitude="square"`` averages squared gradients (the authors' "magnitude" option),
    ``"raw"`` the signed gradients (the paper's eq. 2), of which the map takes the absolute value. Stochastic:
    one seed is drawn from torch's global RNG (seeded by the runner) and sample k's noise comes from seed + k, so
    the maps do not depend on ``chunk`` (model inputs per pass; None: 64 on a GPU, by image size on a CPU,
    :func:`interpbench.ops.batching.auto_chunk`).
    """

    name = "smoothgrad"
    version = "1"
    requires_grad = True
    deterministic = False
    defaults = {"samples": 50, "noise_level": 0.15, "magnitude": "abs", "chunk": None}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        positive_int(self.name, "samples", self.params["samples"])
        batching.check_chunk(self.name, self.params["chunk"])
        one_of(self.name, "magnitude", self.params["magnitude"], SMOOTHGRAD_MAGNITUDES)
        level = self.params["noise_level"]
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(level) or level < 0:
            raise ComponentError(
                f"{self.name}: noise_level must be a number >= 0 (a fraction of the image's value range, e.g. "
                f"0.15), got {level!r}"
            )

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)
        p = self.params
        seed = int(torch.randint(0, 2**62, (1,)))
        noise = seeded_normal_noise(seed, tuple(images.shape), images.device)
        mean_grad = smoothgrad_gradients(model, images, targets, noise, p["samples"], float(p["noise_level"]),
                                         p["magnitude"], batching.resolve_chunk(p["chunk"], images, gpu=64))
        return finite_maps(self.name, model, smoothgrad_saliency(mean_grad))


class GuidedBackprop(Method):
    """Guided backpropagation (Springenberg et al., ICLR-W 2015): max over channels of the absolute guided gradient.

    The ReLU rule is applied through hooks on every ``nn.ReLU`` module. A model with other nonlinearities
    (SiLU, GELU, sigmoid gates, ReLU6) or with functional relus raises NotApplicable: the runner records the cell
    as not applicable.
    """

    name = "guided_backprop"
    version = "1"
    requires_grad = True
    deterministic = True
    defaults: dict = {}

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)
        grad = guided_gradient(self.name, model, images, targets)
        return finite_maps(self.name, model, gradient_saliency(grad.float()))
