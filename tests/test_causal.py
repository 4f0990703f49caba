"""Deletion / insertion (RISE) and the Gaussian blur they use: hand-computed curves, AUCs, and the RISE loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, gaussian_filter1d
from torch import nn

from interpbench.core.base import Batch, ComponentError, Model
from interpbench.metrics.causal import (
    Deletion,
    Insertion,
    causal_curves,
    normalized_auc,
    saliency_order,
    saliency_rank,
)
from interpbench.ops.blur import gaussian_blur, gaussian_kernel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def auc(p: list[float]) -> float:
    return (sum(p) - p[0] / 2 - p[-1] / 2) / (len(p) - 1)


class MeanLogit(nn.Module):
    """logits = [a * mean(z), 0] over channels and pixels of the normalised image z: p0 = sigmoid(a * mean z)."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a
        self.body = nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        m = self.body(z).mean(dim=(1, 2, 3))
        return torch.stack([self.a * m, torch.zeros_like(m)], dim=1)


def wrap(net: nn.Module, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=(4, 4), classes=2) -> Model:
    return Model(
        net,
        spec="test:net",
        mean=mean,
        std=std,
        input_size=size,
        class_names=[str(i) for i in range(classes)],
        cam_layer="body",
        label_space="test",
        default_dataset="none",
        weights={"tag": "test"},
    ).eval()


def batch_of(images: torch.Tensor, targets) -> Batch:
    n = len(images)
    return Batch(ids=[str(i) for i in range(n)], images=images, targets=torch.as_tensor(targets), samples=[{}] * n)


def two_tone_image() -> torch.Tensor:
    """4x4 image, white (z = +1) on the centre 2x2 (pixels 5, 6, 9, 10), black (z = -1) elsewhere."""
    x = torch.zeros(1, 3, 4, 4)
    x[:, :, 1:3, 1:3] = 1.0
    return x


def centre_map() -> torch.Tensor:
    """1 on the centre 2x2, 0 elsewhere: order 5, 6, 9, 10, then 0, 1, 2, 3, 4, 7, 8, 11, ... (ties by index)."""
    m = torch.zeros(1, 4, 4)
    m[:, 1:3, 1:3] = 1.0
    return m


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
        self.head = nn.Linear(6, 5)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z).amax(dim=(2, 3)))


@pytest.fixture
def conv_model() -> Model:
    torch.manual_seed(0)
    return wrap(TinyConvNet(), mean=IMAGENET_MEAN, std=IMAGENET_STD, size=(8, 8), classes=5)


def reference_curve(model, image, target, saliency, start, finish, step) -> list[float]:
    """RISE ``single_run``: one image, one forward per step, pixels changed in place in saliency order."""
    hw = saliency.numel()
    values = saliency.flatten().tolist()
    order = sorted(range(hw), key=lambda p: (-values[p], p))
    current = start.clone().reshape(3, hw)
    finish = finish.expand(1, 3, *image.shape[-2:]).reshape(3, hw)
    scores = []
    for i in range((hw + step - 1) // step + 1):
        with torch.no_grad():
            probs = model(current.reshape(1, 3, *image.shape[-2:])).softmax(dim=1)
        scores.append(float(probs[0, target]))
        coords = order[step * i : step * (i + 1)]
        current[:, coords] = finish[:, coords]
    return scores


# --------------------------------------------------------------------------------------------- order and AUC


def test_saliency_order_breaks_ties_by_lower_pixel_index():
    maps = torch.tensor([[[3.0, 1.0], [3.0, 2.0]], [[0.0, -0.0], [-1.0, 0.0]]])
    assert saliency_order(maps).tolist() == [[0, 2, 3, 1], [0, 1, 3, 2]]
    assert saliency_rank(maps).tolist() == [[[0, 3], [1, 2]], [[0, 1], [3, 2]]]


def test_all_equal_map_is_ordered_by_index_on_large_maps():
    maps = torch.zeros(2, 32, 32)
    assert torch.equal(saliency_order(maps), torch.arange(1024).expand(2, -1))


def test_normalized_auc_trapezoid_on_hand_curves():
    curves = torch.tensor([[0.9, 0.3, 0.1], [1.0, 1.0, 1.0]])
    assert normalized_auc(curves).tolist() == pytest.approx([0.4, 1.0])  # (1.3 - 0.45 - 0.05) / 2 = 0.4
    assert float(normalized_auc(torch.tensor([0.2, 0.4, 0.6, 0.8]))) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2 points"):
        normalized_auc(torch.tensor([0.5]))


# --------------------------------------------------------------------------------------------- closed form


def test_deletion_curve_and_auc_by_hand_with_partial_last_step():
    model = wrap(MeanLogit(a=4.0))
    out = Deletion(step=3).score(model, batch_of(two_tone_image(), [0]), centre_map())
    # 16 pixels, 3 per step: 6 steps (the last deletes 1 pixel). Deleted pixels become the mean colour, z = 0.
    # Order 5 6 9 | 10 0 1 | 2 3 4 | 7 8 11 | 12 13 14 | 15; sum of z over kept pixels:
    kept_sum = [-8, -11, -10, -7, -4, -1, 0]
    expected = [sigmoid(4.0 * s / 16) for s in kept_sum]
    assert out["curve"].shape == (1, 7)
    assert out["curve"][0].tolist() == pytest.approx(expected, abs=1e-6)
    assert float(out["score"][0]) == pytest.approx(auc(expected), abs=1e-6)
    assert out["step"].tolist() == [3]


def test_insertion_curve_and_auc_by_hand_from_mean_substrate():
    model = wrap(MeanLogit(a=4.0))
    out = Insertion(step=3, substrate="mean").score(model, batch_of(two_tone_image(), [0]), centre_map())
    inserted_sum = [0, 3, 2, -1, -4, -7, -8]  # z of inserted pixels, same order as above
    expected = [sigmoid(4.0 * s / 16) for s in inserted_sum]
    assert out["curve"][0].tolist() == pytest.approx(expected, abs=1e-6)
    assert float(out["score"][0]) == pytest.approx(auc(expected), abs=1e-6)


def test_zero_substrate_is_black_and_target_class_is_read():
    model = wrap(MeanLogit(a=4.0))
    image = torch.ones(1, 3, 4, 4)  # z = +1 everywhere; a black pixel has z = -1
    out = Deletion(step=5, substrate="zero").score(model, batch_of(image, [1]), torch.rand(1, 4, 4))
    deleted = [0, 5, 10, 15, 16]
    expected = [1 - sigmoid(4.0 * (16 - 2 * k) / 16) for k in deleted]  # class 1 has logit 0
    assert out["curve"][0].tolist() == pytest.approx(expected, abs=1e-6)


def test_all_equal_map_deletes_pixels_in_index_order():
    model = wrap(MeanLogit(a=4.0))
    out = Deletion(step=4).score(model, batch_of(two_tone_image(), [0]), torch.zeros(1, 4, 4))
    # rows deleted in order: row 0 (z -1 x4), row 1 (-1, 1, 1, -1), row 2 (same), row 3 (-1 x4)
    kept_sum = [-8, -4, -4, -4, 0]
    assert out["curve"][0].tolist() == pytest.approx([sigmoid(s / 4) for s in kept_sum], abs=1e-6)


def test_default_step_is_h_pixels_and_oversized_step_gives_two_points():
    model = wrap(MeanLogit(a=4.0), size=(4, 6))
    image = torch.ones(1, 3, 4, 6)
    out = Deletion().score(model, batch_of(image, [0]), torch.rand(1, 4, 6))
    assert out["step"].tolist() == [4] and out["curve"].shape == (1, 7)  # 24 pixels, H = 4 per step: 6 steps + start
    assert out["curve"][0].tolist() == pytest.approx([sigmoid(4.0 * k / 6) for k in range(6, -1, -1)], abs=1e-6)
    out = Deletion(step=100).score(model, batch_of(image, [0]), torch.rand(1, 4, 6))
    assert out["curve"][0].tolist() == pytest.approx([sigmoid(4.0), 0.5], abs=1e-6)


def test_insertion_starts_from_rise_blur_and_ends_at_the_image(conv_model):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 8, 8)
    targets = torch.tensor([3, 1])
    out = Insertion(step=7).score(conv_model, batch_of(images, targets), torch.rand(2, 8, 8))
    with torch.no_grad():
        blurred = conv_model(gaussian_blur(images, 11, 5.0, pad_value=conv_model.mean)).softmax(1)
        clean = conv_model(images).softmax(1)
    assert out["curve"][:, 0].tolist() == pytest.approx(blurred[[0, 1], targets].tolist(), abs=1e-6)
    assert out["curve"][:, -1].tolist() == pytest.approx(clean[[0, 1], targets].tolist(), abs=1e-6)
    assert out["curve"].shape == (2, 11)  # ceil(64 / 7) = 10 steps


def test_directions_and_names():
    assert (Deletion.name, Deletion.higher_is_better) == ("deletion", False)
    assert (Insertion.name, Insertion.higher_is_better) == ("insertion", True)
    assert Deletion().params["substrate"] == "mean" and Insertion().params["substrate"] == "blur"


# --------------------------------------------------------------------------------------------- batching


@pytest.mark.parametrize("metric_cls", [Deletion, Insertion])
@pytest.mark.parametrize("step", [1, 5])
def test_batched_curves_equal_the_rise_per_step_loop(conv_model, metric_cls, step):
    torch.manual_seed(2)
    images = torch.rand(2, 3, 6, 6)
    maps = torch.randint(0, 6, (2, 6, 6)).float()  # many ties
    targets = [4, 2]
    out = metric_cls(step=step, chunk=25).score(conv_model, batch_of(images, targets), maps)
    for b in range(2):
        image = images[b : b + 1]
        blurred = gaussian_blur(image, 11, 5.0, pad_value=conv_model.mean)
        mean = conv_model.mean.expand(1, 3, 6, 6)
        start, finish = (image, mean) if metric_cls is Deletion else (blurred, image)
        expected = reference_curve(conv_model, image, targets[b], maps[b], start, finish, step)
        assert len(expected) == out["curve"].shape[1] == 36 // step + (36 % step > 0) + 1
        assert out["curve"][b].tolist() == pytest.approx(expected, abs=1e-6)
        assert float(out["score"][b]) == pytest.approx(auc(expected), abs=1e-6)


def test_batch_equals_each_image_alone_and_chunk_does_not_matter(conv_model):
    torch.manual_seed(3)
    images, maps, targets = torch.rand(3, 3, 8, 8), torch.randn(3, 8, 8), torch.tensor([1, 0, 4])
    together = Deletion(step=6).score(conv_model, batch_of(images, targets), maps)["curve"]
    for b in range(3):
        alone = Deletion(step=6).score(conv_model, batch_of(images[b : b + 1], targets[b : b + 1]), maps[b : b + 1])
        assert torch.allclose(alone["curve"][0], together[b], atol=1e-6)
    for chunk in (1, 7, 1000):
        again = Deletion(step=6, chunk=chunk).score(conv_model, batch_of(images, targets), maps)["curve"]
        assert torch.allclose(again, together, atol=1e-6)


def test_causal_curves_chunks_forward_passes(conv_model):
    calls = []
    conv_model.net.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    images = torch.rand(2, 3, 8, 8)
    curves = causal_curves(conv_model, torch.tensor([0, 1]), torch.rand(2, 8, 8), images, conv_model.mean, 16, chunk=4)
    assert curves.shape == (2, 5) and curves.dtype == torch.float32
    assert calls == [4, 4, 2]  # 2 images x (4 steps + start) = 10 forwards, 4 at a time


def test_causal_curves_feed_channels_last_images_to_the_model_channels_last(conv_model):
    layouts = []
    conv_model.net.register_forward_hook(
        lambda m, i, o: layouts.append(i[0].is_contiguous(memory_format=torch.channels_last) and not i[0].is_contiguous()))
    images, maps = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    plain = causal_curves(conv_model, torch.tensor([0, 1]), maps, images, conv_model.mean, 16, chunk=4)
    assert layouts == [False] * 3
    layouts.clear()
    last = causal_curves(conv_model, torch.tensor([0, 1]), maps, images.contiguous(memory_format=torch.channels_last),
                         conv_model.mean, 16, chunk=4)
    assert layouts == [True] * 3  # no copy into the contiguous layout before a channels-last model's first conv
    assert torch.allclose(last, plain, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------- errors


def test_wrong_map_shape_names_expected_and_received(conv_model):
    images = torch.rand(2, 3, 8, 8)
    expected = r"deletion: maps must have shape B x H x W = \(2, 8, 8\).*got \(2, 1, 8, 8\)"
    with pytest.raises(ComponentError, match=expected):
        Deletion().score(conv_model, batch_of(images, [0, 1]), torch.rand(2, 1, 8, 8))
    with pytest.raises(ComponentError, match=r"insertion: .*\(2, 8, 8\).*got \(2, 4, 4\)"):
        Insertion().score(conv_model, batch_of(images, [0, 1]), torch.rand(2, 4, 4))
    with pytest.raises(ComponentError, match=r"got \(3, 8, 8\)"):
        Deletion().score(conv_model, batch_of(images, [0, 1]), torch.rand(3, 8, 8))


def test_non_finite_maps_are_counted_in_the_error(conv_model):
    maps = torch.rand(2, 8, 8)
    maps[1, 0, 0] = maps[1, 3, 3] = float("nan")
    maps[1, 2, 2] = float("inf")
    with pytest.raises(ComponentError, match=r"deletion: maps contain 3 non-finite values \(2 NaN, 1 inf\) in 1 of 2"):
        Deletion().score(conv_model, batch_of(torch.rand(2, 3, 8, 8), [0, 1]), maps)


def test_bad_parameters_and_targets_are_rejected(conv_model):
    with pytest.raises(ComponentError, match="step must be a positive int"):
        Deletion(step=0)
    with pytest.raises(ComponentError, match="unknown substrate 'gray'"):
        Insertion(substrate="gray")
    with pytest.raises(ComponentError, match="blur_size must be a positive odd int"):
        Insertion(blur_size=10)
    with pytest.raises(ComponentError, match="unknown parameter"):
        Deletion(stpes=3)
    with pytest.raises(ComponentError, match=r"targets must be class indices in \[0, 5\), got values in \[0, 9\]"):
        Deletion(step=32).score(conv_model, batch_of(torch.rand(2, 3, 8, 8), [0, 9]), torch.rand(2, 8, 8))


# --------------------------------------------------------------------------------------------- blur


@pytest.mark.parametrize("size,sigma", [(11, 5.0), (5, 1.0), (3, 0.5)])
def test_gaussian_kernel_is_rise_gkern(size, sigma):
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    expected = gaussian_filter(delta, sigma)  # RISE evaluation.py gkern()
    kernel = gaussian_kernel(size, sigma, dtype=torch.float64)
    assert np.abs(kernel.numpy() - expected).max() < 1e-12
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-12)


def test_blur_with_mean_padding_equals_rise_blur_of_normalised_image():
    torch.manual_seed(4)
    x = torch.rand(2, 3, 9, 12)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    delta = np.zeros((11, 11))
    delta[5, 5] = 1.0
    kern = torch.zeros(3, 3, 11, 11)
    for c in range(3):
        kern[c, c] = torch.from_numpy(gaussian_filter(delta, 5).astype("float32"))
    rise = torch.nn.functional.conv2d((x - mean) / std, kern, padding=11 // 2) * std + mean
    ours = gaussian_blur(x, 11, 5.0, pad_value=mean)
    assert ours.shape == x.shape
    assert torch.allclose(ours, rise, atol=1e-6)
    assert torch.allclose(gaussian_blur(x, 11, 5.0, pad_value=IMAGENET_MEAN), rise, atol=1e-6)


def test_blur_of_constant_images():
    k1 = gaussian_filter1d(np.eye(11)[5], 5.0)
    image = torch.full((1, 3, 16, 16), 0.8)
    zero_padded = gaussian_blur(image, 11, 5.0)
    assert float(zero_padded[0, 0, 8, 8]) == pytest.approx(0.8, abs=1e-6)  # window inside: kernel sums to 1
    assert float(zero_padded[0, 1, 0, 0]) == pytest.approx(0.8 * k1[5:].sum() ** 2, abs=1e-6)  # corner
    colour = torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1)
    plain = colour.expand(1, 3, 16, 16)
    assert torch.allclose(gaussian_blur(plain, 11, 5.0, pad_value=colour), plain, atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(4, 1.0)


def test_steps_gives_rise_batched_granularity_and_excludes_step():
    from interpbench.metrics.causal import Deletion, resolve_step

    assert resolve_step(None, 224, 224, steps=28) == 1792  # RISE's batched evaluation: 28 steps + the start
    assert resolve_step(None, 64, 64, steps=28) == 147  # ceil(4096 / 28): the last step is partial
    assert resolve_step(5, 4, 6) == 5
    with pytest.raises(ComponentError, match="not both"):
        Deletion(step=3, steps=4)
    with pytest.raises(ComponentError, match="steps must be a positive int"):
        Deletion(steps=0)


def test_default_step_is_h_pixels_on_a_non_square_image():
    # the published protocol: H pixels per step, so a 4 x 6 image takes 6 steps (7 points); a map that ranks the
    # pixels of the left column first deletes exactly one column per step
    from interpbench.metrics.causal import Deletion, resolve_step

    assert resolve_step(None, 4, 6) == 4 and resolve_step(None, 6, 4) == 6
    maps = (6.0 - torch.arange(6.0)).expand(1, 4, 6).contiguous()  # column 0 most salient, then column 1, ...
    images = torch.rand(1, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    seen = []

    class Recorder(nn.Module):
        def forward(self, z):
            seen.append(z.detach().clone())
            return torch.zeros(len(z), 2)

    model = Model(Recorder(), spec="test:recorder", mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0), input_size=(4, 6),
                  class_names=["a", "b"], cam_layer="", label_space="test", default_dataset="none",
                  weights={"tag": "test"}).eval()
    batch = Batch(ids=["x"], images=images, targets=torch.zeros(1, dtype=torch.long), samples=[{}])
    out = Deletion().score(model, batch, maps)
    assert int(out["step"][0]) == 4 and out["curve"].shape == (1, 7)
    inputs = torch.cat(seen)
    changed = (inputs != images - 0.5).any(dim=1)  # 7 x 4 x 6: pixels that are the substrate (the model sees x - 0.5)
    for i in range(7):
        want = torch.zeros(4, 6, dtype=torch.bool)
        want[:, :i] = True
        assert torch.equal(changed[i], want)
