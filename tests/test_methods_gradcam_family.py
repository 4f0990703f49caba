"""Gradient and CAM methods: agreement with captum and pytorch-grad-cam, hand-computed cases, applicability.

The reference libraries (``captum``, ``grad-cam``) are test-only dependencies. Every comparison runs both
implementations on the same model, images, targets and settings and asks for a Pearson correlation of at least
0.99 per image; the models are the embedded ``shapes:cnn`` (64 px) and a randomly initialised timm ResNet-18 at
64 px, so the file stays fast on a CPU.
"""

from __future__ import annotations

import warnings

import captum.attr as captum_attr
import numpy as np
import pytest
import pytorch_grad_cam
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import interpbench as ib
from interpbench.core.base import Model
from interpbench.datasets.shapes import ShapesWorld
from interpbench.methods.cam import normalized_upsampled, score_cam_weights
from interpbench.methods.gradients import (
    integrated_gradients,
    integration_rule,
    smoothgrad_gradients,
    smoothgrad_saliency,
)

MIN_CORRELATION = 0.99
RESNET_SIZE = 64

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


def pearson(a, b) -> torch.Tensor:
    """Per-image Pearson correlation of two stacks of maps (B x ...)."""
    a = torch.as_tensor(np.asarray(a.detach() if isinstance(a, torch.Tensor) else a)).double().flatten(1)
    b = torch.as_tensor(np.asarray(b.detach() if isinstance(b, torch.Tensor) else b)).double().flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def assert_agree(ours: torch.Tensor, theirs, what: str) -> None:
    assert ours.shape == tuple(np.shape(theirs)), f"{what}: shapes {tuple(ours.shape)} vs {np.shape(theirs)}"
    flat = ours.flatten(1)
    assert bool((flat.amax(1) > flat.amin(1)).all()), f"{what}: a constant map makes the comparison meaningless"
    r = pearson(ours, theirs)
    assert bool((r >= MIN_CORRELATION).all()), f"{what}: per-image Pearson correlations {r.tolist()}"


@pytest.fixture(scope="module")
def shapes():
    model = ib.load_model("shapes:cnn")
    images, _ = ShapesWorld("test", (64, 64), n=3).tensors()
    with torch.no_grad():
        targets = model(images).argmax(1)
    return model, images, targets


@pytest.fixture(scope="module")
def resnet():
    model = ib.load_model("timm:resnet18@random")
    images = torch.rand(2, 3, RESNET_SIZE, RESNET_SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        targets = model(images).argmax(1)
    return model, images, targets


@pytest.fixture(params=["shapes", "resnet"])
def world(request):
    return request.getfixturevalue(request.param)


# --------------------------------------------------------------------------------------------- captum


def test_gradient_matches_captum_saliency(world):
    model, x, t = world
    theirs = captum_attr.Saliency(model).attribute(x, target=t, abs=True).amax(1)
    assert_agree(ib.load_method("gradient").explain(model, x, t), theirs, "gradient vs captum Saliency")


def test_input_x_gradient_matches_captum(world):
    model, x, t = world
    theirs = captum_attr.InputXGradient(model).attribute(x, target=t).sum(1)
    assert_agree(ib.load_method("input_x_gradient").explain(model, x, t), theirs, "input_x_gradient vs captum")


@pytest.mark.parametrize("baseline, value", [("black", 0.0), (0.5, 0.5)])
def test_integrated_gradients_matches_captum(shapes, resnet, baseline, value):
    model, x, t = shapes if baseline == 0.5 else resnet
    ours = ib.load_method("integrated_gradients", steps=16, baseline=baseline).explain(model, x, t)
    theirs = captum_attr.IntegratedGradients(model).attribute(
        x, baselines=torch.full_like(x, value), target=t, n_steps=16, method="gausslegendre").sum(1)
    assert_agree(ours, theirs, f"integrated_gradients (baseline {baseline}) vs captum")
    # same rule and nodes as captum's default: the values agree too, not only their pattern
    torch.testing.assert_close(ours, theirs.detach().float(), rtol=1e-3, atol=1e-4 * float(theirs.abs().max()))


@pytest.mark.parametrize("rule", ["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid"])
def test_integrated_gradients_riemann_rules_match_captum(shapes, rule):
    model, x, t = shapes
    ours = ib.load_method("integrated_gradients", steps=8, rule=rule).explain(model, x, t)
    theirs = captum_attr.IntegratedGradients(model).attribute(x, baselines=0 * x, target=t, n_steps=8, method=rule)
    assert_agree(ours, theirs.sum(1), f"integrated_gradients {rule} vs captum")


def test_integrated_gradients_uses_the_model_mean_as_baseline(shapes):
    model, x, t = shapes
    ours = ib.load_method("integrated_gradients", steps=8, baseline="mean").explain(model, x, t)
    theirs = captum_attr.IntegratedGradients(model).attribute(
        x, baselines=model.mean.expand_as(x), target=t, n_steps=8).sum(1)
    torch.testing.assert_close(ours, theirs.detach().float(), rtol=1e-3, atol=1e-4 * float(theirs.abs().max()))


class Recorder(nn.Module):
    """Wraps a model and keeps every input it is called on (to share captum's noise with our SmoothGrad)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


def test_smoothgrad_matches_captum_noise_tunnel_with_shared_noise(world):
    model, x, t = world
    samples = 6
    for i in range(x.shape[0]):  # one image at a time: captum takes one noise level per input tensor
        xi, ti = x[i:i + 1], t[i:i + 1]
        sigma = 0.15 * float(xi.max() - xi.min())
        recorder = Recorder(model)
        theirs = captum_attr.NoiseTunnel(captum_attr.Saliency(recorder)).attribute(
            xi, nt_type="smoothgrad", nt_samples=samples, stdevs=sigma, target=ti, abs=True).amax(1)
        noisy = torch.cat(recorder.inputs)
        assert noisy.shape[0] == samples
        draws = (noisy - xi) / sigma

        ours = smoothgrad_saliency(smoothgrad_gradients(model, xi, ti, lambda k: draws[k:k + 1], samples=samples))
        assert_agree(ours, theirs, "smoothgrad vs captum NoiseTunnel(Saliency)")
        torch.testing.assert_close(ours, theirs.detach().float(), rtol=1e-3, atol=1e-5 * float(theirs.abs().max()))


def test_smoothgrad_noise_has_the_published_scale_and_sample_count(shapes):
    model, x, t = shapes
    x = x[:2].clone()
    x[1] = x[1] * 0.5 + 0.25  # a smaller value range: half the noise
    recorder = Recorder(model)
    torch.manual_seed(0)
    ib.load_method("smoothgrad", samples=40, chunk=16).explain(recorder, x, t[:2])
    noisy = torch.cat(recorder.inputs).view(40, 2, *x.shape[1:])  # sample-major, every image in every chunk
    assert noisy.shape[0] * noisy.shape[1] == 80  # one model input per (sample, image): no extra forward passes
    noise = noisy - x
    ranges = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    measured = noise.transpose(0, 1).flatten(1).std(dim=1)
    torch.testing.assert_close(measured, 0.15 * ranges, rtol=0.01, atol=0)
    assert abs(float(noise.mean())) < 0.01


def test_smoothgrad_is_reproducible_and_independent_of_chunking(shapes):
    model, x, t = shapes
    run = lambda chunk, seed: (torch.manual_seed(seed), ib.load_method("smoothgrad", samples=6, chunk=chunk)
                               .explain(model, x, t))[1]
    a, b = run(64, 0), run(5, 0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(a, run(64, 1)), "a different seed must draw different noise"


def test_guided_backprop_matches_captum(world):
    model, x, t = world
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = captum_attr.GuidedBackprop(model).attribute(x, target=t).abs().amax(1)
    assert_agree(ib.load_method("guided_backprop").explain(model, x, t), theirs, "guided_backprop vs captum")


# --------------------------------------------------------------------------------------------- pytorch-grad-cam


def grad_cam_reference(cls, model: Model, layer: str, x: torch.Tensor, t: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam on the raw network with normalised inputs (its convention), min-max scaled maps."""
    with cls(model=model.net, target_layers=[model.module(layer)]) as cam:
        return cam(input_tensor=model.normalize(x), targets=[ClassifierOutputTarget(int(c)) for c in t])


@pytest.mark.parametrize("ours, theirs", [("gradcam", "GradCAM"), ("gradcam_pp", "GradCAMPlusPlus"),
                                          ("scorecam", "ScoreCAM")])
def test_cams_match_pytorch_grad_cam(world, ours, theirs):
    model, x, t = world
    layer = model.cam_layer if model.spec == "shapes:cnn" else "layer2"  # 8 x 8 maps for both models
    if theirs == "ScoreCAM":  # one forward pass per (image, channel) in both libraries: one image suffices
        x, t = x[:1], t[:1]
    reference = grad_cam_reference(getattr(pytorch_grad_cam, theirs), model, layer, x, t)
    assert_agree(ib.load_method(ours, layer=layer).explain(model, x, t), reference, f"{ours} vs {theirs}")


# --------------------------------------------------------------------------------------------- hand-computed cases


def wrap(net: nn.Module, cam_layer: str, classes: int, size=(4, 4), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> Model:
    return Model(net, spec="test:net", mean=mean, std=std, input_size=size,
                 class_names=[str(i) for i in range(classes)], cam_layer=cam_layer, label_space="test",
                 default_dataset="none", weights={"tag": "test"}).eval()


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_right", "riemann_left", "riemann_middle",
                                  "riemann_trapezoid"])
def test_integration_rules_have_their_nodes_and_integrate_what_they_should(rule):
    alphas, weights = integration_rule(rule, 10)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    assert bool(((alphas >= 0) & (alphas <= 1)).all())
    if rule == "gausslegendre":  # exact for polynomials of degree < 2n: integral_0^1 a^k da = 1 / (k + 1)
        for k in range(20):
            assert float((weights * alphas**k).sum()) == pytest.approx(1 / (k + 1), rel=1e-10)
    if rule == "riemann_right":  # the paper's sum, eq. 3: k/m, k = 1..m
        torch.testing.assert_close(alphas, torch.arange(1, 11, dtype=torch.float64) / 10)
    if rule == "riemann_trapezoid":  # exact for linear integrands
        assert float((weights * alphas).sum()) == pytest.approx(0.5, abs=1e-12)


def test_integrated_gradients_is_exact_on_a_linear_model():
    # logit = sum_c w_c * mean_ij z_cij with z = (x - mean) / std: IG_i = (x_i - x'_i) w_c / (std_c H W), exactly
    torch.manual_seed(0)
    w = torch.tensor([2.0, -1.0, 0.5])

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Identity()

        def forward(self, z):
            return torch.stack([(self.body(z).mean((2, 3)) * w).sum(1), torch.zeros(z.shape[0])], 1)

    std = (0.5, 0.25, 1.0)
    model = wrap(Linear(), "body", 2, mean=(0.4, 0.5, 0.6), std=std)
    x = torch.rand(2, 3, 4, 4)
    expected = (x * (w / torch.tensor(std)).view(1, 3, 1, 1) / 16).sum(1)  # black baseline
    for rule in ("gausslegendre", "riemann_right"):
        maps = ib.load_method("integrated_gradients", steps=3, rule=rule).explain(model, x, torch.tensor([0, 0]))
        torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-7)
    ixg = ib.load_method("input_x_gradient").explain(model, x, torch.tensor([0, 0]))
    torch.testing.assert_close(ixg, expected, rtol=1e-5, atol=1e-7)  # a linear model: IxG = IG from black


def test_integrated_gradients_is_complete_and_independent_of_chunking(shapes):
    # Sundararajan et al., proposition 1: the attributions sum to F(x) - F(x') (up to the quadrature error)
    model, x, t = shapes
    maps = ib.load_method("integrated_gradients", steps=64).explain(model, x, t)
    with torch.no_grad():
        gap = model(x).gather(1, t[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(maps.sum((1, 2)), gap, rtol=0.05, atol=0.05)
    baselines = torch.zeros(1, 1, 1, 1)
    a = integrated_gradients(model, x, t, baselines, steps=7, chunk=64)
    b = integrated_gradients(model, x, t, baselines, steps=7, chunk=3)  # fewer images than the batch per pass
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_guided_backprop_rule_on_a_one_hidden_layer_network():
    # f = v . relu(W x): gradient W^T (v * 1[Wx > 0]); guided backprop W^T (relu(v) * 1[Wx > 0])
    torch.manual_seed(1)
    hidden = nn.Linear(48, 6, bias=False)
    head = nn.Linear(6, 2, bias=False)
    net = nn.Sequential(nn.Flatten(), hidden, nn.ReLU(inplace=True), head)
    model = wrap(net, "1", 2)
    x = torch.rand(1, 3, 4, 4)
    W, v = hidden.weight.detach(), head.weight.detach()[1]
    gate = (W @ x.flatten() > 0).float()
    guided = (W.T @ (torch.relu(v) * gate)).view(3, 4, 4)
    plain = (W.T @ (v * gate)).view(3, 4, 4)
    assert not torch.allclose(guided, plain), "the test needs a negative readout weight on an active unit"
    maps = ib.load_method("guided_backprop").explain(model, x, torch.tensor([1]))
    torch.testing.assert_close(maps[0], guided.abs().amax(0))


class SiLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.SiLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, z):
        return self.head(self.act(self.conv(z)))


class FunctionalReLUNet(SiLUNet):
    def forward(self, z):
        return self.head(F.relu(self.conv(z)))


class ReLU6Net(SiLUNet):
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU6()


@pytest.mark.parametrize("net, says", [(SiLUNet, r"silu in module 'net.act' \(SiLU\)"),
                                       (FunctionalReLUNet, "functional relu in module 'net'"),
                                       (ReLU6Net, r"hardtanh in module 'net.act' \(ReLU6\)")])
def test_guided_backprop_is_not_applicable_without_relu_modules(net, says):
    model = wrap(net(), "conv", 2)
    with pytest.raises(ib.NotApplicable, match=says) as info:
        ib.load_method("guided_backprop").explain(model, torch.rand(1, 3, 4, 4), torch.tensor([0]))
    assert "nn.ReLU" in str(info.value)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "hooks left behind"


def grad_cam_pp_by_hand(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Chattopadhay et al. 2018, eq. 19 with exp(S) cancelled, one channel and one pixel at a time."""
    k_, h_, w_ = a.shape
    cam = np.zeros((h_, w_))
    for k in range(k_):
        total = a[k].sum()
        weight = 0.0
        for i in range(h_):
            for j in range(w_):
                den = 2 * g[k, i, j] ** 2 + total * g[k, i, j] ** 3
                alpha = g[k, i, j] ** 2 / den if den != 0 else 0.0
                weight += alpha * max(g[k, i, j], 0.0)
        cam += weight * a[k]
    return np.maximum(cam, 0)


def test_grad_cam_pp_weights_by_hand():
    from interpbench.methods.cam import grad_cam_pp

    gen = torch.Generator().manual_seed(5)
    a = torch.rand(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    g[0, 1] = 0  # a channel without gradient: alpha = 0 (0 / 0)
    ours = grad_cam_pp(a, g)
    for b in range(2):
        np.testing.assert_allclose(ours[b].numpy(), grad_cam_pp_by_hand(a[b].numpy(), g[b].numpy()), rtol=1e-10)


def test_score_cam_weights_by_hand():
    # CAM layer = the normalised image itself (K = 3 channels at full resolution); f = a fixed linear readout
    torch.manual_seed(2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Identity()
            self.head = nn.Linear(48, 3)

        def forward(self, z):
            return self.head(self.features(z).flatten(1))

    model = wrap(Net(), "features", 3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    x = torch.rand(2, 3, 4, 4)
    x[1, 2] = 0.7  # a constant channel: its mask is all zero, the image becomes the baseline
    t = torch.tensor([2, 0])
    act = model.normalize(x)
    mean = model.mean
    expected = torch.zeros(2, 3)
    with torch.no_grad():
        for b in range(2):
            base = model(mean.expand(1, 3, 4, 4))[0, t[b]]
            for k in range(3):
                m = act[b, k]
                mask = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else torch.zeros_like(m)
                expected[b, k] = model(mean + mask * (x[b:b + 1] - mean))[0, t[b]] - base
    expected = torch.softmax(expected, dim=1)
    for chunk in (1, 64):
        weights = score_cam_weights(model, x, t, act, mean, chunk=chunk)
        torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-7)
    masks = normalized_upsampled(act[1], (4, 4))
    assert float(masks[2].abs().max()) == 0.0 and float(masks[0].max()) == 1.0 and float(masks[0].min()) == 0.0


# --------------------------------------------------------------------------------------------- architectures

ALL = ["gradient", "gradcam", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop",
       "gradcam_pp", "scorecam"]
CHEAP = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 3}}


@pytest.mark.parametrize("spec, relu", [
    ("timm:resnet18@random", True),
    ("torchvision:vgg11@random", True),
    ("timm:efficientnet_b0@random", False),
    ("timm:convnext_atto@random", False),
])
def test_methods_run_on_common_convnets(spec, relu):
    model = ib.load_model(spec)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([7])
    for name in ALL:
        if name == "scorecam" and spec.startswith("torchvision:vgg"):
            continue  # 512 forward passes through VGG's 120M-parameter classifier; its layer capture is gradcam's
        method = ib.load_method(name, **CHEAP.get(name, {}))
        if name == "guided_backprop" and not relu:
            with pytest.raises(ib.NotApplicable, match="nn.ReLU"):
                method.explain(model, x, t)
            continue
        maps = method.explain(model, x, t)
        assert maps.shape == (1, 32, 32) and maps.dtype == torch.float32, name
        assert bool(torch.isfinite(maps).all()), name
        if "cam" not in name:  # a CAM of a random network at 1 x 1 resolution may be ReLU'd to zero
            assert float(maps.abs().max()) > 0, f"{name} on {spec}: all-zero maps"
