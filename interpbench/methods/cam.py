"""Class activation maps at a convolutional layer or a transformer's token layer (default: the model's ``cam_layer``).

- ``gradcam``: Selvaraju et al., "Grad-CAM", ICCV 2017.
- ``gradcam_pp``: Chattopadhay et al., "Grad-CAM++", WACV 2018.
- ``scorecam``: Wang et al., "Score-CAM", CVPR-W 2020 (gradient-free).

Each map is ReLU(sum_k w_k A^k) at the layer's resolution, bilinearly upsampled to the input (as
pytorch-grad-cam does); the methods differ in the channel weights w_k. A transformer layer's tokens are folded into
its patch grid first (prefix tokens dropped; :mod:`interpbench.ops.tokens`), as pytorch-grad-cam's ViT
``reshape_transform`` does, so A^k is channel k over the patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from interpbench.core.base import ComponentError, Method, Model
from interpbench.methods.gradients import (
    baseline_images,
    check_baseline,
    check_batch,
    finite_maps,
    target_logits,
)
from interpbench.ops import batching
from interpbench.ops.hooks import OutputCapture, capture_outputs, named_module
from interpbench.ops.tokens import feature_map_or_raise


def feature_map(method: str, model, layer: str, captured: OutputCapture, module=None,
                image_size: tuple[int, int] | None = None, output=None) -> torch.Tensor:
    """The captured output of ``layer`` (or ``output``, e.g. its gradient) as a B x K x h x w map.

    ComponentError unless the layer ran once and was not changed in place later; NotApplicable unless it is a
    feature map or a token grid (a transformer's ``B x (P + h*w) x C`` tokens or Swin's ``B x h x w x C``, folded
    by :func:`interpbench.ops.tokens.as_feature_map`).
    """
    act = captured[layer]
    if captured.calls[layer] != 1:
        raise ComponentError(
            f"{method}: layer {layer!r} ran {captured.calls[layer]} times in one forward pass, so its activation "
            "is ambiguous; choose a layer that runs once (parameter layer=...)"
        )
    folded = feature_map_or_raise(method, layer, model, act if output is None else output, module, image_size,
                                  "choose a convolutional layer or a transformer block (parameter layer=...)")
    if captured.modified_in_place(layer):
        raise ComponentError(
            f"{method}: the output of layer {layer!r} is modified in place later in the forward pass (e.g. by "
            "ReLU(inplace=True)), so its recorded values are not the layer's output; choose the module that "
            "does the in-place operation instead (parameter layer=...)"
        )
    return folded


def layer_activations_and_gradients(
    method: str, model, layer: str, images: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations A (B x K x h x w) of ``layer`` and d(target logit)/dA, from one forward and one backward.

    The sum of the batch's target logits is differentiated w.r.t. A only (parameters get no ``.grad``). A token
    layer is differentiated as recorded and both A and its gradient are folded the same way, so the prefix
    tokens' gradients are dropped with them.
    """
    module = model.module(layer) if isinstance(model, Model) else named_module(model, layer)
    # The input requires grad so that A is in the graph even when the model's parameters are frozen.
    x = images.detach().clone().requires_grad_(True)
    size = tuple(images.shape[-2:])
    with torch.enable_grad(), capture_outputs({layer: module}) as captured:
        logits = model(x)
    act = feature_map(method, model, layer, captured, module, size)
    selected = target_logits(method, logits, targets)
    (grad,) = torch.autograd.grad(selected.sum(), captured[layer], allow_unused=True)
    if grad is None:
        raise ComponentError(f"{method}: the logits do not depend on layer {layer!r}; choose another layer")
    grad = feature_map(method, model, layer, captured, module, size, output=grad)
    return act.detach(), grad


def grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    # Selvaraju et al. 2017, eq. 1-2: alpha_k = (1/Z) sum_ij dy^c/dA^k_ij ; L = ReLU(sum_k alpha_k A^k)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activations).sum(dim=1))


def grad_cam_pp(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ maps B x h x w from activations A and gradients g = dS/dA of the target logit S.

    Chattopadhay et al. 2018, eq. 19 with Y = exp(S) (sec. 3.3): dY/dA = exp(S) g, d2Y/dA2 = exp(S) g^2 and
    d3Y/dA3 = exp(S) g^3 for a piecewise-linear network, so exp(S) cancels in
    alpha_ij = g^2 / (2 g^2 + sum_ab A_ab g^3) (alpha = 0 where the denominator is 0) and
    w_k = sum_ij alpha_ij ReLU(g_ij). The paper's weights carry the factor exp(S) (one positive number per image,
    which can overflow); it is left out, so the maps equal the paper's up to that per-image scale.
    """
    g2 = gradients.pow(2)
    g3 = g2 * gradients
    denominator = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(denominator != 0, g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator)),
                        torch.zeros_like(denominator))
    weights = (alpha * torch.relu(gradients)).sum(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activations).sum(dim=1))


def layer_activations(method: str, model, layer: str, images: torch.Tensor) -> torch.Tensor:
    """Activations A (B x K x h x w) of ``layer`` from one forward pass without gradients."""
    module = model.module(layer) if isinstance(model, Model) else named_module(model, layer)
    with torch.no_grad(), capture_outputs({layer: module}, detach=True) as captured:
        model(images)
    return feature_map(method, model, layer, captured, module, tuple(images.shape[-2:]))


def normalized_upsampled(activations: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x h x w activation maps -> N x H x W masks: bilinear upsampling, then min-max scaling to [0, 1].

    Wang et al. 2020, eq. 4 / sec. 3.2: H^k = s(Up(A^k)), s(M) = (M - min M) / (max M - min M); a constant map
    gives an all-zero mask (as pytorch-grad-cam's ``/ (max - min + 1e-8)``).
    """
    up = F.interpolate(activations[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = up.reshape(up.shape[0], -1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)
    span = (high - low).view(-1, 1, 1)
    return torch.where(span > 0, (up - low.view(-1, 1, 1)) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(up))


def score_cam_weights(
    model,
    images: torch.Tensor,
    targets: torch.Tensor,
    activations: torch.Tensor,
    baselines: torch.Tensor,
    chunk: int = 64,
) -> torch.Tensor:
    """Score-CAM channel weights B x K: the softmax over channels of each mask's increase of the target logit.

    Wang et al. 2020, eq. 5-6: C(A^k) = f_c(X o H^k) - f_c(X_b), alpha_k = softmax_k(C(A^k)); the masked image is
    ``X_b + H^k (X - X_b)`` (``X_b`` the baseline image: the model's mean colour multiplies the normalised image by
    H^k, as the reference implementations do). f_c is the target logit (pytorch-grad-cam). Every (image,
    channel) pair whose mask is not all-zero goes through the model, ``chunk`` at a time; an all-zero mask leaves
    the baseline, whose logit is computed once per image.
    """
    b, k = activations.shape[:2]
    size = tuple(images.shape[-2:])
    baselines = baselines.to(images.dtype).expand_as(images)
    with torch.no_grad():
        base_scores = target_logits("scorecam", model(baselines), targets).float()  # f_c(X_b), B
        flat = activations.reshape(b, k, -1)
        live = (flat.amax(dim=2) > flat.amin(dim=2)).flatten().nonzero().squeeze(1)  # (image, channel) pairs
        scores = base_scores.repeat_interleave(k)  # B*K, constant masks keep the baseline
        delta = images - baselines
        for start in range(0, live.numel(), chunk):
            pairs = live[start:start + chunk]
            img, ch = pairs // k, pairs % k
            masks = normalized_upsampled(activations[img, ch], size).to(images.dtype)
            x = baselines[img] + masks[:, None] * delta[img]
            scores[pairs] = target_logits("scorecam", model(x), targets[img]).float()
    return torch.softmax(scores.view(b, k) - base_scores[:, None], dim=1)


def score_cam(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # Wang et al. 2020, eq. 7: L = ReLU(sum_k alpha_k A^k)
    return torch.relu((weights[:, :, None, None] * activations).sum(dim=1))


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x h x w -> B x H x W, bilinear (``align_corners=False``)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


class GradCAM(Method):
    """Grad-CAM at ``layer`` (default: the model's ``cam_layer``), ReLU, bilinearly upsampled to the input."""

    name = "gradcam"
    version = "1"
    requires_grad = True
    deterministic = True
    defaults = {"layer": None}

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)
        layer = self.params["layer"] or model.cam_layer
        act, grad = layer_activations_and_gradients(self.name, model, layer, images, targets)
        cam = grad_cam(act.float(), grad.float())
        return finite_maps(self.name, model, upsample_maps(cam, tuple(images.shape[-2:])))


class GradCAMPlusPlus(Method):
    """Grad-CAM++ at ``layer`` (default: the model's ``cam_layer``), ReLU, bilinearly upsampled to the input.

    The alpha weights use the closed-form second- and third-order terms of exp(score) (the paper's eq. 19, as in
    pytorch-grad-cam); maps equal the paper's up to a positive per-image factor exp(S_c) (see :func:`grad_cam_pp`).
    """

    name = "gradcam_pp"
    version = "1"
    requires_grad = True
    deterministic = True
    defaults = {"layer": None}

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)
        layer = self.params["layer"] or model.cam_layer
        act, grad = layer_activations_and_gradients(self.name, model, layer, images, targets)
        cam = grad_cam_pp(act.float(), grad.float())
        return finite_maps(self.name, model, upsample_maps(cam, tuple(images.shape[-2:])))


class ScoreCAM(Method):
    """Score-CAM at ``layer`` (default: the model's ``cam_layer``), gradient-free.

    Each channel's activation map, upsampled and min-max scaled, masks the image (fading it to ``baseline``:
    ``"mean"``, the model's mean colour, i.e. the normalised image times the mask as in the reference code;
    ``"black"``, ``"white"`` or a grey level); the weights are the softmax over channels of the target logit's
    increase over the baseline image. Costs one forward pass per (image, non-constant channel): ``chunk`` masked
    images per pass (None: 256 on a GPU, by image size on a CPU, :func:`interpbench.ops.batching.auto_chunk`; no
    effect on the maps).
    """

    name = "scorecam"
    version = "1"
    requires_grad = False
    deterministic = True
    defaults = {"layer": None, "baseline": "mean", "chunk": None}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        batching.check_chunk(self.name, self.params["chunk"])
        check_baseline(self.name, self.params["baseline"])

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)
        layer = self.params["layer"] or model.cam_layer
        act = layer_activations(self.name, model, layer, images)
        baselines = baseline_images(self.name, model, images, self.params["baseline"])
        chunk = batching.resolve_chunk(self.params["chunk"], images, gpu=256)
        weights = score_cam_weights(model, images, targets, act, baselines, chunk)
        cam = score_cam(act.float(), weights)
        return finite_maps(self.name, model, upsample_maps(cam, tuple(images.shape[-2:])))
