"""timm / torchvision model sources, checkpoint handling and the offline EfficientNet-Lite0 weights."""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import pytest
import skimage.data
import torch
import torch.nn.functional as F

from interpbench.core.base import ComponentError
from interpbench.methods.cam import GradCAM
from interpbench.methods.gradients import Gradient
from interpbench.models import weights as W
from interpbench.models.timm_source import TimmSource
from interpbench.models.torchvision_source import TorchvisionSource

EGYPTIAN_CAT, ESPRESSO = 285, 967


def photo(array, size: int = 224) -> torch.Tensor:
    """Shorter side resized to ``size`` (bilinear, antialiased), centre crop ``size`` x ``size``: 3 x H x W in [0,1]."""
    x = torch.from_numpy(array.copy()).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    nh, nw = (size, round(w * size / h)) if h <= w else (round(h * size / w), size)
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[0, :, top:top + size, left:left + size]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("ibcache")
        mp.setenv("INTERPBENCH_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def lite0(cache):
    return TimmSource().load("tf_efficientnet_lite0", None, W.resolve_weights)


@pytest.fixture(scope="module")
def resnet18_random():
    return TimmSource().load("resnet18", "random", None)


@pytest.fixture(scope="module")
def photos():
    return torch.stack([photo(skimage.data.chelsea()), photo(skimage.data.coffee())])


# --------------------------------------------------------------------------------------------- efficientnet-lite0


def test_lite0_offline_weights_predict_cat_and_espresso(lite0, photos, cache):
    with torch.no_grad():
        top1 = lite0(photos).argmax(1).tolist()
    assert top1 == [EGYPTIAN_CAT, ESPRESSO]
    assert lite0.class_names[EGYPTIAN_CAT] == "Egyptian cat" and lite0.label_space == "imagenet-1k"
    assert lite0.mean.flatten().tolist() == [0.5, 0.5, 0.5] and lite0.std.flatten().tolist() == [0.5, 0.5, 0.5]
    path = W.efficientnet_lite0_weights()
    assert path.parent.parent == cache and lite0.weights["path"] == str(path)
    assert lite0.weights["sha256"] == W.file_sha256(path) and lite0.weights["resolved_by"]
    assert lite0.cam_layer == "bn2" and "blocks.6" in lite0.layers and not lite0.training


def test_lite0_conversion_is_cached(lite0):
    path = W.efficientnet_lite0_weights()
    stamp = path.stat().st_mtime_ns
    assert W.efficientnet_lite0_weights() == path and path.stat().st_mtime_ns == stamp
    assert W.resolve_weights(source="timm", name="tf_efficientnet_lite0", tag=None) == str(path)
    assert W.resolve_weights(source="timm", name="resnet18", tag=None) is None
    assert W.resolve_weights(source="timm", name="tf_efficientnet_lite0", tag="in1k") is None


def test_mapping_by_position_checks_count_and_shapes():
    template = OrderedDict(a=torch.zeros(2, 3), b=torch.zeros(4))
    out = W.map_state_dict_in_order(OrderedDict(x=torch.ones(2, 3), y=torch.full((4,), 2.0)), template, "t")
    assert list(out) == ["a", "b"] and torch.equal(out["b"], torch.full((4,), 2.0))
    with pytest.raises(ComponentError, match=r"tensor 1 .*'y' \(5,\).*'b' \(4,\)"):
        W.map_state_dict_in_order(OrderedDict(x=torch.ones(2, 3), y=torch.ones(5)), template, "t")
    with pytest.raises(ComponentError, match="1 tensors"):
        W.map_state_dict_in_order(OrderedDict(x=torch.ones(2, 3)), template, "t")


@pytest.mark.parametrize("method", [Gradient(), GradCAM()], ids=["gradient", "gradcam"])
def test_methods_on_lite0_give_finite_class_specific_maps(lite0, photos, method):
    cats = photos[:1].repeat(2, 1, 1, 1)  # the cat explained as "Egyptian cat" and as "espresso"
    maps = method.explain(lite0, cats, torch.tensor([EGYPTIAN_CAT, ESPRESSO]))
    assert maps.shape == (2, 224, 224) and maps.dtype == torch.float32 and torch.isfinite(maps).all()
    assert maps[0].std() > 0 and not torch.allclose(maps[0], maps[1])


# --------------------------------------------------------------------------------------------- timm


@pytest.mark.parametrize("method", [Gradient(), GradCAM()], ids=["gradient", "gradcam"])
def test_methods_on_timm_resnet18_random(resnet18_random, method):
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([3, 500])
    maps = method.explain(resnet18_random, images, targets)
    alone = method.explain(resnet18_random, images[1:], targets[1:])
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all() and maps[0].std() > 0
    torch.testing.assert_close(maps[1:], alone, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in resnet18_random.parameters())


def test_timm_random_is_seeded_and_leaves_global_rng_alone(resnet18_random):
    m = resnet18_random
    assert m.cam_layer == "layer4" and list(m.layers)[-4:] == ["layer1", "layer2", "layer3", "layer4"]
    assert m.weights["tag"] == "random" and m.num_classes == 1000 and m.input_size == (224, 224)
    assert m.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = TimmSource().load("resnet18", "random", None)
    assert torch.equal(torch.rand(3), expected)
    assert again.weights["sha256"] == m.weights["sha256"]
    assert torch.equal(again.net.conv1.weight, m.net.conv1.weight)


def test_timm_checkpoint_roundtrip_and_finetuned_head(tmp_path):
    import timm

    original = TimmSource().load("test_resnet", "random", None)  # timm's tiny test network: same code path
    path = tmp_path / "ft.pth"
    torch.save({"state_dict": original.net.state_dict(), "epoch": 3}, path)
    loaded = TimmSource().load("test_resnet", str(path), None)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x))
    assert loaded.weights["sha256"] == W.file_sha256(path) and loaded.weights["path"] == str(path.resolve())
    assert loaded.spec == f"timm:test_resnet@{path}"
    assert W.state_dict_sha256(loaded.net.state_dict()) == original.weights["sha256"]  # same tensors, same print

    ten = timm.create_model("test_resnet", num_classes=10)
    torch.save({"model": ten.state_dict()}, tmp_path / "ten.pth")
    small = TimmSource().load("test_resnet", str(tmp_path / "ten.pth"), None)
    assert small.num_classes == 10 and small.label_space == "unknown-10" and small(x).shape == (1, 10)


def test_checkpoint_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope" / "weights.pth"
    with pytest.raises(ComponentError, match=str(missing)):
        TimmSource().load("resnet18", str(missing), None)
    with pytest.raises(ComponentError, match=str(missing)):
        TorchvisionSource().load("resnet18", str(missing), None)
    pickled = tmp_path / "train.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(ComponentError, match="weights_only"):
        W.read_checkpoint(pickled, "timm:resnet18")
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(1000, 512)}, wrong)
    with pytest.raises(ComponentError, match="missing"):
        TimmSource().load("resnet18", str(wrong), None)


def test_unknown_names_suggest_close_matches():
    with pytest.raises(ComponentError, match="resnet18"):
        TimmSource().load("resnet181", "random", None)
    with pytest.raises(ComponentError, match="a1_in1k"):
        TimmSource().load("resnet18.nosuchtag", "random", None)
    with pytest.raises(ComponentError, match="resnet18"):
        TorchvisionSource().load("resnet_18", "random", None)
    with pytest.raises(ComponentError, match="IMAGENET1K_V1"):
        TorchvisionSource().load("resnet18", "IMAGENET1K_V9", None)
    with pytest.raises(ComponentError, match="timm:resnet18.a1_in1k"):
        TimmSource().load("resnet18", "a1_in1k", None)


def test_default_weights_without_network_fail_fast_with_instructions(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # read at import time by huggingface_hub
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.monotonic()
    with pytest.raises(ComponentError) as err:
        TimmSource().load("resnet18", None, W.resolve_weights)
    assert time.monotonic() - start < 10
    message = str(err.value)
    for advice in ("timm:resnet18@/path/to/weights.pth", "timm:resnet18@random", "huggingface", "substituted",
                   "timm.create_model('resnet18', pretrained=True)"):
        assert advice in message

    start = time.monotonic()
    with pytest.raises(ComponentError) as err:
        TorchvisionSource().load("resnet18", None, W.resolve_weights)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "torch") in message
    assert "torchvision:resnet18@random" in message


# --------------------------------------------------------------------------------------------- torchvision


def test_torchvision_random_and_checkpoint(tmp_path):
    m = TorchvisionSource().load("resnet18", "random", None)
    assert m.cam_layer == "layer4" and list(m.layers) == ["layer1", "layer2", "layer3", "layer4"]
    assert m.class_names[EGYPTIAN_CAT] == "Egyptian cat" and m.label_space == "imagenet-1k"
    assert m.weights["tag"] == "random" and m.spec == "torchvision:resnet18@random"
    again = TorchvisionSource().load("resnet18", "random", None)
    assert again.weights["sha256"] == m.weights["sha256"]
    x = torch.rand(2, 3, 64, 64)
    maps = GradCAM().explain(m, x, torch.tensor([1, 2]))
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all() and maps.std() > 0
    torch.save(m.net.state_dict(), tmp_path / "tv.pth")
    loaded = TorchvisionSource().load("resnet18", str(tmp_path / "tv.pth"), None)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x))


def test_torchvision_vgg_cam_layer_is_last_conv_relu():
    from torchvision.models import get_model

    from interpbench.models.torchvision_source import (
        torchvision_cam_layer,
        torchvision_layers,
    )

    with torch.device("meta"):  # structure only, no initialisation cost
        vgg = get_model("vgg11", weights=None)  # features: ... 18 conv5_2, 19 ReLU, 20 MaxPool
    assert torchvision_cam_layer("vgg11", vgg) == "features.19"
    assert torchvision_layers("vgg11", vgg, "features.19") == [f"features.{i}" for i in (1, 4, 9, 14, 19)]
