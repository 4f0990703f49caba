"""Gradient, Grad-CAM and the random / center baselines: known answers on hand-built models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from interpbench.core.base import ComponentError, Model, NotApplicable
from interpbench.methods.baselines import CenterMap, RandomMap
from interpbench.methods.cam import GradCAM, upsample_maps
from interpbench.methods.gradients import Gradient
from interpbench.ops.hooks import capture_outputs


def wrap(net: nn.Module, cam_layer: str, num_classes: int, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> Model:
    return Model(net, spec="test:tiny", mean=mean, std=std, input_size=(8, 8),
                 class_names=[f"c{i}" for i in range(num_classes)], cam_layer=cam_layer, label_space="test",
                 default_dataset="", weights={"tag": "test"})


def linear_model(h: int = 5, w: int = 6, classes: int = 4, std=(0.5, 0.25, 1.0)) -> Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * h * w, classes))
    return wrap(net, cam_layer="1", num_classes=classes, mean=(0.1, 0.2, 0.3), std=std)


def tiny_cnn(classes: int = 5) -> Model:
    """A small CNN with BatchNorm (eval), in-place ReLUs and a pooled head: batch coupling would show up here."""
    torch.manual_seed(1)
    net = nn.Sequential()
    net.add_module("stem", nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True)))
    net.add_module("block", nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True)))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(8, classes))
    with torch.no_grad():  # non-trivial BN statistics
        net.stem[1].running_mean.uniform_(-0.2, 0.2)
        net.stem[1].running_var.uniform_(0.5, 2.0)
    return wrap(net, cam_layer="block", num_classes=classes).eval()


# --------------------------------------------------------------------------------------------- gradient


def test_gradient_of_linear_model_is_max_abs_weight_over_channels():
    model = linear_model()
    images = torch.rand(3, 3, 5, 6)
    targets = torch.tensor([0, 3, 1])
    maps = Gradient().explain(model, images, targets)
    weight = model.net[1].weight.detach().view(4, 3, 5, 6)
    std = torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1)
    # logit = w . (x - mean) / std + b  =>  d logit / dx = w / std; map = max_c |w / std|
    expected = (weight[targets] / std).abs().amax(dim=1)
    assert maps.shape == (3, 5, 6) and maps.dtype == torch.float32
    torch.testing.assert_close(maps, expected)


def test_gradient_batch_equals_each_image_alone():
    model = tiny_cnn()
    images, targets = torch.rand(4, 3, 8, 8), torch.tensor([0, 4, 2, 2])
    batch = Gradient().explain(model, images, targets)
    alone = torch.cat([Gradient().explain(model, images[i:i + 1], targets[i:i + 1]) for i in range(4)])
    assert batch.abs().sum() > 0
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------- grad-cam


class TwoMaps(nn.Module):
    """features = channels 0 and 1 of the image (optionally 2x2 average-pooled); logits = W @ spatial mean."""

    def __init__(self, head: torch.Tensor, pool: bool) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1.0
            self.features.weight[1, 1] = 1.0
        self.down = nn.AvgPool2d(2) if pool else nn.Identity()
        self.fc = nn.Linear(2, head.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(head)

    def forward(self, x):
        return self.fc(self.down(self.features(x)).mean(dim=(2, 3)))


def test_gradcam_known_pattern():
    # logit_c = sum_k W[c,k] mean(A_k): alpha_k = W[c,k] / (h w), CAM_c = ReLU(sum_k W[c,k] A_k) / (h w)
    head = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])
    model = wrap(TwoMaps(head, pool=False), cam_layer="features", num_classes=2)
    image = torch.zeros(1, 3, 8, 8)
    image[0, 0, :4, :4] = 1.0  # channel 0: top-left square
    image[0, 1, 4:, 4:] = 0.5  # channel 1: bottom-right square
    images = image.repeat(2, 1, 1, 1)
    maps = GradCAM().explain(model, images, torch.tensor([0, 1]))
    expected0 = torch.zeros(8, 8)
    expected0[:4, :4] = 1.0 / 64  # (1 * A0 - 1 * A1) / 64, ReLU keeps the top-left square
    expected1 = torch.zeros(8, 8)
    expected1[4:, 4:] = 2.0 * 0.5 / 64  # (-A0 + 2 A1) / 64 -> bottom-right square, top-left is negative -> 0
    torch.testing.assert_close(maps[0], expected0)
    torch.testing.assert_close(maps[1], expected1)


def test_upsampling_is_bilinear_without_aligned_corners():
    # align_corners=False, 2 -> 4 samples at source coordinates -0.25, 0.25, 0.75, 1.25 (clamped): 0, 1, 3, 4
    up = upsample_maps(torch.tensor([[[0.0, 4.0]]]), (1, 4))
    torch.testing.assert_close(up, torch.tensor([[[0.0, 1.0, 3.0, 4.0]]]))


def reference_gradcam(model: Model, layer: str, image: torch.Tensor, target: int) -> torch.Tensor:
    """Straightforward single-image Grad-CAM: retain_grad on the hooked activation, logit.backward()."""
    model = copy.deepcopy(model)
    store = {}
    handle = model.module(layer).register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    logits = model(image[None])
    handle.remove()
    act = store["a"]
    act.retain_grad()
    logits[0, target].backward()
    weights = act.grad[0].mean(dim=(1, 2))  # one weight per channel
    cam = torch.relu((weights[:, None, None] * act[0]).sum(0)).detach()
    return F.interpolate(cam[None, None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]


def test_gradcam_matches_per_image_reference_and_is_batch_independent():
    model = tiny_cnn()
    images, targets = torch.rand(4, 3, 8, 8), torch.tensor([1, 3, 3, 0])
    # 'block' ends with an in-place ReLU: hook its last module (the ReLU itself) to get the rectified map
    method = GradCAM(layer="block.1")
    maps = method.explain(model, images, targets)
    reference = torch.stack([reference_gradcam(model, "block.1", images[i], int(targets[i])) for i in range(4)])
    alone = torch.cat([method.explain(model, images[i:i + 1], targets[i:i + 1]) for i in range(4)])
    assert maps.shape == (4, 8, 8) and maps.dtype == torch.float32
    assert maps.amax() > 0 and maps.std() > 0
    torch.testing.assert_close(maps, reference, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(maps, alone, rtol=1e-5, atol=1e-7)


def test_gradcam_default_layer_is_model_cam_layer():
    model = tiny_cnn()
    images, targets = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    torch.testing.assert_close(GradCAM().explain(model, images, targets),
                               GradCAM(layer="block").explain(model, images, targets))


def test_gradcam_rejects_in_place_modified_layer_and_token_outputs():
    model = tiny_cnn()
    images, targets = torch.rand(1, 3, 8, 8), torch.tensor([0])
    with pytest.raises(ComponentError, match="in place"):
        GradCAM(layer="block.0").explain(model, images, targets)  # its output is overwritten by ReLU(inplace)
    with pytest.raises(NotApplicable, match="flat"):
        GradCAM(layer="flat").explain(model, images, targets)  # B x K, not a feature map
    with pytest.raises(ComponentError, match="nosuch"):
        GradCAM(layer="nosuch").explain(model, images, targets)


# --------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("method", [Gradient(), GradCAM()], ids=["gradient", "gradcam"])
@pytest.mark.parametrize("training", [False, True])
def test_no_param_grads_mode_and_images_unchanged(method, training):
    model = tiny_cnn()
    model.train(training)
    images = torch.rand(2, 3, 8, 8)
    before = images.clone()
    method.explain(model, images, torch.tensor([0, 1]))
    assert all(p.grad is None for p in model.parameters())
    assert model.training is training and all(m.training is training for m in model.modules())
    assert torch.equal(images, before) and not images.requires_grad and images.grad is None


def test_hooks_are_removed_even_on_error():
    model = tiny_cnn()
    layer = model.module("block")
    with pytest.raises(RuntimeError, match="boom"):
        with capture_outputs({"block": layer}):
            assert len(layer._forward_hooks) == 1
            raise RuntimeError("boom")
    assert len(layer._forward_hooks) == 0
    with pytest.raises(NotApplicable):  # an error inside explain must not leave hooks either
        GradCAM(layer="flat").explain(model, torch.rand(1, 3, 8, 8), torch.tensor([0]))
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


@pytest.mark.parametrize("method", [Gradient(), GradCAM(), RandomMap(), CenterMap()],
                         ids=["gradient", "gradcam", "random", "center"])
def test_out_of_range_target_names_target_and_class_count(method):
    model = tiny_cnn(classes=5)
    with pytest.raises(ComponentError, match=r"target 7 .*5 classes"):
        method.explain(model, torch.rand(2, 3, 8, 8), torch.tensor([1, 7]))
    with pytest.raises(ComponentError, match=r"target -1 .*5 classes"):
        method.explain(model, torch.rand(1, 3, 8, 8), torch.tensor([-1]))


# --------------------------------------------------------------------------------------------- baselines


def test_center_map_is_symmetric_and_peaks_at_centre():
    model = tiny_cnn()
    maps = CenterMap().explain(model, torch.rand(2, 3, 9, 11), torch.tensor([0, 1]))
    assert maps.shape == (2, 9, 11) and maps.dtype == torch.float32
    torch.testing.assert_close(maps, maps.flip(1))
    torch.testing.assert_close(maps, maps.flip(2))
    torch.testing.assert_close(maps[0], maps[1])
    assert divmod(int(maps[0].argmax()), 11) == (4, 5) and maps[0, 4, 5] == 1.0


def test_center_map_sigma_is_a_fraction_of_the_side():
    # 1 x 2 image: pixel centres at u = -0.25, +0.25 of the width; sigma 0.25 -> exp(-1/2) each
    maps = CenterMap(sigma=0.25).explain(tiny_cnn(), torch.rand(1, 3, 1, 2), torch.tensor([0]))
    torch.testing.assert_close(maps, torch.full((1, 1, 2), math.exp(-0.5)))
    with pytest.raises(ComponentError, match="sigma"):
        CenterMap(sigma=0)


def test_random_maps_repeat_with_seed_and_differ_across_seeds():
    model, images, targets = tiny_cnn(), torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    torch.manual_seed(0)
    a = RandomMap().explain(model, images, targets)
    torch.manual_seed(0)
    b = RandomMap().explain(model, images, targets)
    torch.manual_seed(1)
    c = RandomMap().explain(model, images, targets)
    assert a.shape == (2, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= float(a.min()) and float(a.max()) < 1 and not torch.equal(a[0], a[1])
    assert RandomMap.deterministic is False and CenterMap.deterministic and Gradient.requires_grad
