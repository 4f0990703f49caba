"""Perturbation methods (mask, extremal, rise, occlusion) and their tensor code in ``interpbench.ops.masks``.

References checked: scipy.ndimage (Gaussian blurs), scikit-image (RISE's mask upsampling, as eclique/RISE calls
it), a direct per-pixel transcription of TorchRay's ``MaskGenerator``, the official ``tv()`` of Fong & Vedaldi
and its hand-derived gradient, captum's ``Occlusion``; hand-computed RISE and occlusion maps; and, on models whose
target depends only on a known region, that each method puts its evidence there. Iteration counts are small
(passed as parameters); the published defaults are asserted separately.
"""

from __future__ import annotations

import fractions
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from skimage.transform import resize as sk_resize
from torch import nn

import interpbench as ib
from interpbench.core.base import ComponentError, Model
from interpbench.methods.occlusion import Occlusion
from interpbench.methods.perturbation import (
    ExtremalPerturbation,
    MeaningfulPerturbation,
    circle_init,
    deletion_game_loss,
    mask_grid,
    perturbation_sigma,
)
from interpbench.methods.rise import RISE, draw_rise_grids, rise_saliency
from interpbench.ops.masks import (
    SmoothMaxPool,
    area_loss,
    area_reference,
    blur_pyramid,
    blurred_discs,
    gaussian_smooth,
    linear_resize_matrix,
    nearest_downsample,
    nearest_upsample,
    occlusion_windows,
    pyramid_lookup,
    rise_masks,
    smooth_max_grid,
    smooth_max_masks,
    total_variation,
    window_starts,
)

# --------------------------------------------------------------------------------------------- test models


class RegionEnergy(nn.Module):
    """Logit 0 = ``scale * E_R(x) / E_0 - offset``, logit 1 = 0, with ``E_R`` the mean squared Laplacian of the
    (normalised) image inside the region ``R``: only the pixels of ``R`` (and their 1-px ring) matter, blurring or
    flattening ``R`` removes the evidence, and ``E_0`` is calibrated so that clean noise images score ~0.99."""

    def __init__(self, region: torch.Tensor, scale: float = 10.0, offset: float = 5.0) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])
        self.register_buffer("kernel", lap.expand(1, 3, 3, 3).clone() / 3)
        self.scale, self.offset, self.energy = scale, offset, 1.0
        self.body = nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        e = F.conv2d(self.body(z), self.kernel, padding=1)[:, 0] ** 2
        e = (e * self.region).sum(dim=(1, 2)) / self.region.sum()
        logit = self.scale * e / self.energy - self.offset
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


def wrap(net: nn.Module, size: int, classes: int = 2) -> Model:
    return Model(net, spec="test:net", mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0), input_size=(size, size),
                 class_names=[str(i) for i in range(classes)], cam_layer="body", label_space="test",
                 default_dataset="none", weights={"tag": "test"}).eval()


def region_model(size: int, box: tuple[int, int, int, int], n: int = 2) -> tuple[Model, torch.Tensor, torch.Tensor]:
    """(model, noise images n x 3 x size x size, region mask) for a region ``box = (top, bottom, left, right)``."""
    region = torch.zeros(size, size)
    top, bottom, left, right = box
    region[top:bottom, left:right] = 1
    net = RegionEnergy(region)
    model = wrap(net, size)
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        net.energy = float((model(images)[:, 0] + net.offset).mean() / net.scale)
    return model, images, region


def top_share(maps: torch.Tensor, region: torch.Tensor, len_: int | None = None) -> torch.Tensor:
    """Per map, the share of its |R| (or ``len_``) most salient pixels that lie inside R (1 = perfect, |R|/HW =
    chance)."""
    k = int(region.sum()) if len_ is None else len_
    top = maps.flatten(1).topk(k, dim=1).indices
    return region.flatten()[top].mean(dim=1)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


ZERO = torch.zeros(2, dtype=torch.long)

# --------------------------------------------------------------------------------------------- ops


@pytest.mark.parametrize("sigma", [1.5, 2.0, 5.7142857])
def test_gaussian_smooth_matches_scipy_constant_and_edge_padding(sigma):
    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    colour = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64).view(1, 3, 1, 1)
    ours = gaussian_smooth(x, sigma, pad_value=colour)
    ours_edge = gaussian_smooth(x, sigma, padding="replicate")
    for b in range(2):
        for c in range(3):
            kw = {"sigma": sigma, "truncate": math.ceil(4 * sigma) / sigma}  # TorchRay's radius ceil(4 sigma)
            ref = gaussian_filter(x[b, c].numpy(), mode="constant", cval=float(colour[0, c]), **kw)
            ref_edge = gaussian_filter(x[b, c].numpy(), mode="nearest", **kw)
            np.testing.assert_allclose(ours[b, c].numpy(), ref, atol=1e-10)
            np.testing.assert_allclose(ours_edge[b, c].numpy(), ref_edge, atol=1e-10)


def test_blurred_discs_match_scipy_reflect():
    radii = torch.tensor([0.0, 3.0, 7.5])
    ours = blurred_discs((17, 20), radii, 2.5)
    y, x = np.ogrid[-8:9, -10:10]  # centre (W // 2, H // 2), as the official create_blurred_circular_mask
    for i, r in enumerate(radii.tolist()):
        disc = (x * x + y * y <= r * r).astype(np.float64)
        np.testing.assert_allclose(ours[i].numpy(), gaussian_filter(disc, 2.5), atol=1e-6)


def test_blur_pyramid_levels_and_lookup():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    pyramid = blur_pyramid(images, 8, 4.0, pad_value=0.5)
    assert pyramid.shape == (2, 8, 3, 16, 16)
    assert torch.equal(pyramid[:, -1], images)  # last level: sigma 0, the image
    torch.testing.assert_close(pyramid[:, 0], gaussian_smooth(images, 4.0, pad_value=0.5))
    torch.testing.assert_close(pyramid[:, 2], gaussian_smooth(images, 4.0 * (1 - 2 / 7), pad_value=0.5))
    # m = 1 keeps the image, m = 0 reads the most blurred level, m = 0.5 lies between levels 3 and 4 (3.5)
    masks = torch.stack([torch.ones(1, 16, 16), torch.zeros(1, 16, 16), torch.full((1, 16, 16), 0.5)])[None]
    out = pyramid_lookup(pyramid[:1], masks)
    torch.testing.assert_close(out[0, 0], images[0])
    torch.testing.assert_close(out[0, 1], pyramid[0, 0])
    torch.testing.assert_close(out[0, 2], 0.5 * pyramid[0, 3] + 0.5 * pyramid[0, 4])


def torchray_mask_generator(params: torch.Tensor, shape, step: int, sigma: float) -> torch.Tensor:
    """A direct transcription of TorchRay's MaskGenerator (per-pixel weights, unfold, nearest upsampling, softmax
    pooling, clamp): the full mask with its margin."""
    margin = sigma
    padding = 1 + math.ceil((margin + sigma) / step)
    radius = 1 + math.ceil(sigma / step)
    shape_in = [math.ceil(z / step) for z in shape]
    shape_mid = [z + 2 * padding - (2 * radius + 1) + 1 for z in shape_in]
    shape_up = [step * z for z in shape_mid]
    shape_out = [z - step + 1 for z in shape_up]
    weight = torch.zeros(1, (2 * radius + 1) ** 2, *shape_out, dtype=params.dtype)
    for ky in range(2 * radius + 1):
        for kx in range(2 * radius + 1):
            uy, ux = torch.meshgrid(torch.arange(shape_out[0], dtype=params.dtype),
                                    torch.arange(shape_out[1], dtype=params.dtype), indexing="ij")
            iy = torch.floor(uy / step) + ky - padding
            ix = torch.floor(ux / step) + kx - padding
            delta = torch.sqrt((uy - (margin + step * iy)) ** 2 + (ux - (margin + step * ix)) ** 2)
            weight[0, ky * (2 * radius + 1) + kx] = torch.exp(-2 * ((delta / sigma - 0.5).clamp(min=0) ** 2))
    mask = F.unfold(params, (2 * radius + 1,) * 2, padding=(padding,) * 2)
    mask = mask.reshape(len(params), -1, *shape_mid)
    mask = F.interpolate(mask, size=shape_up, mode="nearest")[:, :, : shape_out[0], : shape_out[1]]
    mask = weight * mask
    mask = (mask * F.softmax(20 * mask, dim=1)).sum(dim=1, keepdim=True)
    return mask.clamp(0, 1)


@pytest.mark.parametrize("shape,step,sigma", [((20, 24), 3, 5.0), ((16, 16), 2, 6.0), ((14, 14), 7, 21.0)])
def test_smooth_max_masks_equal_torchray_generator_values_and_gradients(shape, step, sigma):
    grid = smooth_max_grid(shape, step, sigma)
    params = torch.rand(3, 1, *grid.shape_in, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    params.requires_grad_(True)
    grid64 = type(grid)(**{**grid.__dict__, "weight": grid.weight.double()})
    cropped, full = smooth_max_masks(params, grid64)
    ref = torchray_mask_generator(params, shape, step, sigma)
    assert full.shape == ref.shape and list(full.shape[2:]) == list(grid.shape_out)
    torch.testing.assert_close(full, ref, atol=1e-6, rtol=0)  # our weights are float32-rounded
    m = grid.margin
    assert torch.equal(cropped, full[:, :, m : m + shape[0], m : m + shape[1]])
    probe = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    (ours,) = torch.autograd.grad((full * probe).sum(), params)
    (theirs,) = torch.autograd.grad((ref * probe).sum(), params)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_smooth_max_masks_in_groups_equal_one_group(monkeypatch):
    import interpbench.ops.masks as masks_module

    grid = smooth_max_grid((16, 16), 2, 6.0)
    params = torch.rand(5, 1, *grid.shape_in, generator=torch.Generator().manual_seed(11), requires_grad=True)
    whole, _ = smooth_max_masks(params, grid)
    (g_whole,) = torch.autograd.grad(whole.sum(), params)
    monkeypatch.setattr(masks_module, "MAX_TERMS", 1)  # one mask per group
    monkeypatch.setattr(masks_module, "MAX_TERMS_CPU", 1)
    grouped, _ = smooth_max_masks(params, grid)
    (g_grouped,) = torch.autograd.grad(grouped.sum(), params)
    assert torch.equal(whole, grouped) and torch.equal(g_whole, g_grouped)


def test_masks_and_blurs_stay_float32_under_autocast():
    x = torch.rand(1, 3, 12, 12)
    grids, shifts = torch.rand(2, 3, 3), torch.tensor([[0, 1], [3, 2]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = gaussian_smooth(x, 1.5), blur_pyramid(x, 3, 2.0), rise_masks(grids, shifts, (12, 12))
    high = gaussian_smooth(x, 1.5), blur_pyramid(x, 3, 2.0), rise_masks(grids, shifts, (12, 12))
    for a, b in zip(low, high):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def test_smooth_max_pool_gradient_is_exact():
    values = torch.rand(2, 3, 3, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    weight = torch.rand(2, 2, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    assert torch.autograd.gradcheck(lambda v: SmoothMaxPool.apply(v, weight, 20.0), (values,))


def test_smooth_max_single_parameter_gives_the_kernel_by_hand():
    # one parameter at 1, all others 0: m(u) = w e^(20 w) / (e^(20 w) + n - 1) where w = kernel(distance to it)
    step, sigma = 2, 3.0
    grid = smooth_max_grid((16, 16), step, sigma)
    params = torch.zeros(1, 1, *grid.shape_in, dtype=torch.float64)
    params[0, 0, 4, 5] = 1
    _, full = smooth_max_masks(params, type(grid)(**{**grid.__dict__, "weight": grid.weight.double()}))
    uy, ux = torch.meshgrid(torch.arange(grid.shape_out[0]), torch.arange(grid.shape_out[1]), indexing="ij")
    centre_y, centre_x = sigma + step * 4, sigma + step * 5  # the margin shifts cell centres by sigma
    d = torch.sqrt((uy - centre_y) ** 2 + (ux - centre_x) ** 2).double()
    w = torch.exp(-2 * (d / sigma - 0.5).clamp(min=0) ** 2)
    n = (2 * grid.radius + 1) ** 2
    expected = w * torch.exp(20 * w) / (torch.exp(20 * w) + n - 1)
    # pixel u (in cell u // step) reads parameter (u // step + k - padding) for k in [0, 2r]: the ones that see it
    ky, kx = 4 + grid.padding - uy // step, 5 + grid.padding - ux // step
    near = (ky >= 0) & (ky <= 2 * grid.radius) & (kx >= 0) & (kx <= 2 * grid.radius)
    torch.testing.assert_close(full[0, 0][near], expected[near], atol=1e-6, rtol=0)
    assert full[0, 0][~near].abs().max() < 1e-12
    assert full[0, 0, int(centre_y), int(centre_x)] > 0.999


def test_area_reference_and_loss_by_hand():
    ref = area_reference(torch.tensor([0.25, 0.5]), 8)
    assert ref.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]]
    masks = torch.tensor([0.9, 0.1, 0.0, 0.0, 0.2, 0.0, 0.0, 1.0]).view(1, 1, 2, 4).expand(2, 1, 2, 4)
    # sorted: 0 0 0 0 0.1 0.2 0.9 1
    want = [((0.1**2 + 0.2**2 + 0.1**2 + 0) / 8), ((0.9**2 + 0.8**2 + 0.1**2 + 0) / 8)]
    torch.testing.assert_close(area_loss(masks, ref), torch.tensor(want))


def official_tv(x: np.ndarray, beta: float, floor: float = 1e-5) -> tuple[float, np.ndarray]:
    """``tv()`` of ruthcfong/perturb_explanations optimize_mask.py: the value and its closed-form gradient.

    The official code floors ``v`` at 1e-5 inside the gradient (against ``0 ** negative`` for beta < 2); for
    beta = 3 the exponent is positive and ``floor=0`` gives the exact gradient, which autograd computes."""
    d1 = np.zeros(x.shape)
    d2 = np.zeros(x.shape)
    d1[:-1, :] = np.diff(x, axis=0)
    d2[:, :-1] = np.diff(x, axis=1)
    v = np.sqrt(d1 * d1 + d2 * d2) ** beta
    d1_ = (np.maximum(v, floor) ** (2 * (beta / 2 - 1) / beta)) * d1
    d2_ = (np.maximum(v, floor) ** (2 * (beta / 2 - 1) / beta)) * d2
    d11, d22 = -d1_, -d2_
    d11[1:, :] = -np.diff(d1_, axis=0)
    d22[:, 1:] = -np.diff(d2_, axis=1)
    return v.sum(), beta * (d11 + d22)


def test_total_variation_and_its_gradient_match_the_official_code():
    m = torch.rand(2, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7), requires_grad=True)
    tv = total_variation(m, 3.0)
    (grad,) = torch.autograd.grad(tv.sum(), m)
    for i in range(2):
        value, dx = official_tv(m[i].detach().numpy(), 3.0, floor=0.0)
        assert tv[i].item() == pytest.approx(value, rel=1e-12)
        np.testing.assert_allclose(grad[i].numpy(), dx, atol=1e-8)
        _, dx_floored = official_tv(m[i].detach().numpy(), 3.0)
        np.testing.assert_allclose(grad[i].numpy(), dx_floored, atol=1e-3)  # the floor only moves tiny gradients


def test_nearest_downsample_is_pil_nearest():
    from PIL import Image

    img = (np.random.default_rng(0).random((24, 20)) * 255).astype(np.uint8)
    ours = nearest_downsample(torch.from_numpy(img.astype(np.float32)), (3, 5)).numpy()
    pil = np.asarray(Image.fromarray(img).resize((5, 3), Image.NEAREST)).astype(np.float32)
    np.testing.assert_array_equal(ours, pil)


@pytest.mark.parametrize("size,cells", [(64, 7), (30, 7), (24, 5)])
def test_rise_masks_equal_skimage_resize_and_crop(size, cells):
    # eclique/RISE generate_masks: resize(grid, (s + 1) * cell, order=1, mode="reflect", anti_aliasing=False),
    # then crop [x : x + H, y : y + W] at the random shift
    grids = (torch.rand(4, cells, cells, generator=torch.Generator().manual_seed(8)) < 0.5).float()
    cell = math.ceil(size / cells)
    shifts = torch.tensor([[0, 0], [cell - 1, 0], [1, cell - 1], [cell // 2, cell // 3]])
    ours = rise_masks(grids.double(), shifts, (size, size))
    for i in range(4):
        up = sk_resize(grids[i].double().numpy(), ((cells + 1) * cell,) * 2, order=1, mode="reflect",
                       anti_aliasing=False)
        x, y = shifts[i].tolist()
        np.testing.assert_allclose(ours[i].numpy(), up[x : x + size, y : y + size], atol=1e-12)
    assert linear_resize_matrix(cells, (cells + 1) * cell).sum(dim=1).sub(1).abs().max() < 1e-6


def test_windows_follow_captum_positions():
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]  # ceil(6 / 3) + 1 = 3, the last one ends at 10
    assert window_starts(10, 4, 4).tolist() == [0, 4, 8]  # ceil(6 / 4) + 1 = 3, the last one cut to 2 px
    windows = occlusion_windows((10, 10), (4, 4), (4, 4))
    assert windows.shape == (9, 10, 10)
    assert windows[8].sum() == 4 and windows[8, 8:, 8:].sum() == 4  # cut at the border
    assert (windows.sum(dim=0) >= 1).all()


# --------------------------------------------------------------------------------------------- occlusion


class Linear(nn.Module):
    """logits = W . z (flattened normalised image), a known linear score."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.body = nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).flatten(1) @ self.weight.T


def test_occlusion_equals_hand_computed_sliding_window_drop():
    g = torch.Generator().manual_seed(9)
    model = wrap(Linear(torch.randn(3, 3 * 5 * 5, generator=g)), 5, classes=3)
    images = torch.rand(2, 3, 5, 5, generator=g)
    targets = torch.tensor([2, 0])
    for score in ("logit", "probability"):
        maps = Occlusion(window=3, stride=2, baseline=0.25, score=score).explain(model, images, targets)
        for b in range(2):
            def f(x, target=int(targets[b]), score=score):
                out = model(x[None])[0]
                return float(out[target] if score == "logit" else out.softmax(0)[target])
            total, count = torch.zeros(5, 5), torch.zeros(5, 5)
            for top in (0, 2):  # captum's rule: ceil((5 - 3) / 2) + 1 = 2 positions per side
                for left in (0, 2):
                    x = images[b].clone()
                    x[:, top : top + 3, left : left + 3] = 0.25
                    total[top : top + 3, left : left + 3] += f(images[b]) - f(x)
                    count[top : top + 3, left : left + 3] += 1
            torch.testing.assert_close(maps[b], total / count, atol=1e-6, rtol=1e-5)


def test_occlusion_is_batch_and_chunk_independent_and_finds_the_region():
    model, images, region = region_model(32, (4, 16, 18, 30))
    method = Occlusion()
    maps = method.explain(model, images, ZERO)
    alone = torch.cat([method.explain(model, images[i : i + 1], ZERO[:1]) for i in range(2)])
    chunked = Occlusion(chunk=7).explain(model, images, ZERO)
    torch.testing.assert_close(maps, alone, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(maps, chunked, atol=1e-6, rtol=1e-5)
    assert method.geometry((32, 32)) == (4, 2) and method.geometry((224, 224)) == (28, 14)
    assert (top_share(maps, region) > 0.75).all()  # chance: 0.14; windows straddle the border


@pytest.fixture(scope="module")
def shapes_batch():
    model = ib.load_model("shapes:cnn")
    ds = ib.load_dataset("shapes", size=model.input_size)
    images = torch.stack([ds[i]["image"] for i in range(2)])
    with torch.no_grad():
        targets = model(images).argmax(1)
    return model, images, targets


@pytest.mark.parametrize("score", ["probability", "logit"])
def test_occlusion_agrees_with_captum(shapes_batch, score):
    from captum.attr import Occlusion as CaptumOcclusion

    model, images, targets = shapes_batch
    ours = Occlusion(window=8, stride=4, score=score).explain(model, images, targets)
    forward = (lambda x: model(x).softmax(dim=1)) if score == "probability" else model
    theirs = CaptumOcclusion(forward).attribute(images, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4),
                                                baselines=model.mean, target=targets, perturbations_per_eval=64)
    for b in range(len(images)):
        assert pearson(ours[b], theirs[b, 0]) >= 0.99
        torch.testing.assert_close(ours[b], theirs[b].mean(0), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------- rise


def test_rise_equals_hand_computed_weighted_mean_with_fixed_masks():
    g = torch.Generator().manual_seed(10)
    model = wrap(Linear(torch.randn(3, 3 * 12 * 12, generator=g) * 0.3), 12, classes=3)
    images = torch.rand(2, 3, 12, 12, generator=g)
    targets = torch.tensor([1, 2])
    grids = (torch.rand(5, 3, 3, generator=g) < 0.5).float()
    shifts = torch.randint(4, (5, 2), generator=g)
    p = 0.5
    baseline = model.mean
    ours = rise_saliency(model, images, targets, grids, shifts, p=p, baseline=baseline, chunk=3)
    for b in range(2):
        want = torch.zeros(12, 12, dtype=torch.float64)
        for i in range(5):
            up = sk_resize(grids[i].double().numpy(), (16, 16), order=1, mode="reflect", anti_aliasing=False)
            x, y = shifts[i].tolist()
            mask = torch.from_numpy(up[x : x + 12, y : y + 12])
            # RISE multiplies the normalised image by the mask: (x - mean) * m / std, i.e. mean + m (x - mean)
            masked = baseline[0] + mask.float() * (images[b] - baseline[0])
            prob = model(masked[None]).softmax(1)[0, targets[b]].double()
            want += prob * mask
        torch.testing.assert_close(ours[b].double(), want / (5 * p), atol=1e-5, rtol=1e-5)


def test_rise_draws_from_the_global_rng_and_finds_the_region():
    model, images, region = region_model(32, (4, 16, 18, 30))
    method = RISE(num_masks=600)
    torch.manual_seed(123)
    maps = method.explain(model, images, ZERO)
    torch.manual_seed(123)
    grids, shifts = draw_rise_grids(600, 7, 0.5, (32, 32))
    direct = rise_saliency(model, images, ZERO, grids, shifts, p=0.5, baseline=model.mean, chunk=64)
    torch.testing.assert_close(maps, direct, atol=1e-5, rtol=1e-4)  # same seed -> same maps, chunk-free
    torch.manual_seed(124)
    assert not torch.allclose(method.explain(model, images, ZERO), maps)
    assert (top_share(maps, region) > 0.6).all()  # chance is |R| / HW = 0.16


# --------------------------------------------------------------------------------------------- mask


def test_mask_finds_the_region_and_leaves_the_model_alone():
    model, images, region = region_model(64, (8, 32, 32, 56))  # 24 x 24 px: 10.5 x 10.5 cells of the 28 x 28 mask
    params_before = [(p.requires_grad, p.grad) for p in model.parameters()]
    model.train()
    torch.manual_seed(0)
    maps = MeaningfulPerturbation(iterations=60).explain(model, images, ZERO)
    assert model.training  # mode unchanged
    model.eval()
    assert [(p.requires_grad, p.grad) for p in model.parameters()] == params_before
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    # the model's probability falls once part of R is blurred, so the mask deletes part of R (about a third):
    # its most salient |R| / 2 pixels lie in R (chance: 0.14)
    assert (top_share(maps, region, len_=int(region.sum()) // 2) > 0.9).all()


def test_perturbation_sigma_is_the_blur_of_the_photograph_before_resizing():
    # the official code blurs the full-resolution photograph (sigma 10), then resizes it; blurring the resized
    # image with the scaled sigma is the same image, for photographs of any size (a 10 x 10 checkerboard)
    assert perturbation_sigma(10, 500, 224) == pytest.approx(4.48)
    assert perturbation_sigma(10, 500, 228) == pytest.approx(4.56)  # the reference's 228 px canvas
    assert perturbation_sigma(10, 224, 64) == pytest.approx(10 * 64 / 224)  # original_size=224: the old blur
    for big in (375, 500, 1000):
        u = torch.arange(big)
        board = (((u[:, None] * 10) // big + (u[None, :] * 10) // big) % 2).float().expand(1, 3, big, big)

        def shrink(x):
            return F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)

        reference = shrink(gaussian_smooth(board, 10.0, padding="replicate"))
        ours = gaussian_smooth(shrink(board), perturbation_sigma(10, big, 224), padding="replicate")
        unscaled = gaussian_smooth(shrink(board), 10.0, padding="replicate")
        inner = (..., slice(40, -40), slice(40, -40))  # away from the edges, where the paddings differ
        assert (ours - reference)[inner].abs().max() < 0.005
        assert (unscaled - reference)[inner].abs().max() > 0.25


def test_mask_grid_has_the_papers_28_x_28_cells_at_every_input_size():
    assert mask_grid(224, 224, 8) == ((28, 28), 8)  # the official 8 px cells
    assert mask_grid(224, 300, 8) == ((28, 38), 8)  # shorter side 224: 8 px cells, the last one cropped
    assert mask_grid(64, 64, 8) == ((28, 28), fractions.Fraction(16, 7))
    assert mask_grid(112, 112, 16) == ((14, 14), 8)
    # nearest upsampling by a fraction: pixel u reads cell floor(u / cell); cells are 2 or 3 px, 64 px in all,
    # and a cell's gradient is the sum over its pixels
    cells = torch.rand(1, 1, 28, 28, requires_grad=True)
    up = nearest_upsample(cells, fractions.Fraction(16, 7), (64, 64))
    index = torch.tensor([u * 7 // 16 for u in range(64)])
    assert torch.equal(up[0, 0], cells[0, 0][index][:, index])
    (grad,) = torch.autograd.grad(up.sum(), cells)
    widths = torch.bincount(index, minlength=28).float()
    assert set(widths.tolist()) == {2.0, 3.0} and torch.equal(grad[0, 0], torch.outer(widths, widths))
    # an integer factor is the official repeat-and-crop
    small = torch.rand(2, 1, 4, 5)
    want = small.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)[..., :30, :37]
    assert torch.equal(nearest_upsample(small, 8, (30, 37)), want)


class Constant(nn.Module):
    """Logits (0, 0) for every image: the deletion game's probability term is 1/2 whatever the mask."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 0 * self.body(z).mean(dim=(1, 2, 3))[:, None].expand(-1, 2)


@pytest.mark.parametrize("size", [56, 64, 112, 224])
def test_deletion_game_regularisers_weigh_the_same_at_every_input_size(size):
    # deleting the central quarter of the image (cells 7-20 of 28) with a hard-edged mask: L1 = 1e-4 * 196 and
    # TV = 1e-2 * (54 cells with one unit forward difference + cell (20, 20) with two: 2^(3/2)) at every input
    # size; with 8 px cells at every size a 64 px input had an 8 x 8 mask and both terms were 12x smaller
    (h, w), cell = mask_grid(size, size, 8)
    m = torch.ones(1, 1, h, w)
    m[..., 7:21, 7:21] = 0
    images = torch.rand(1, 3, size, size)
    loss = deletion_game_loss(wrap(Constant(), size), m, images, images, ZERO[:1], mask_scale=cell,
                              mask_sigma=5 * size / 224, l1_coeff=1e-4, tv_coeff=1e-2, tv_beta=3.0)
    want = 0.5 + 1e-4 * 196 + 1e-2 * (54 + 2**1.5)
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_mask_deletes_a_small_share_of_small_images_too():
    # the same region (14% of the image) at 32 and 128 px; with 8 px cells at every size (a 4 x 4 mask at 32 px,
    # 16 x 16 at 128) the optimised masks deleted 0.86 and 0.29 of the image, and at 32 px their most salient
    # pixels missed the region (top-half share 0.50 and 0.28); with 28 x 28 cells at both, 0.27 and 0.08
    for size, most in ((32, 0.4), (128, 0.15)):
        f = size // 8
        model, images, region = region_model(size, (f, 4 * f, 4 * f, 7 * f))
        torch.manual_seed(0)
        maps = MeaningfulPerturbation(iterations=40).explain(model, images, ZERO)
        assert maps.mean() < most
        assert (top_share(maps, region, len_=int(region.sum()) // 2) > 0.9).all()


def test_mask_batch_equals_alone_without_jitter_and_seed_reproduces_with_it():
    model, images, _ = region_model(32, (4, 16, 18, 30))
    still = MeaningfulPerturbation(iterations=15, jitter=0)
    together = still.explain(model, images, ZERO)
    alone = torch.cat([still.explain(model, images[i : i + 1], ZERO[:1]) for i in range(2)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    jittered = MeaningfulPerturbation(iterations=15, init="random")
    torch.manual_seed(5)
    a = jittered.explain(model, images, ZERO)
    torch.manual_seed(5)
    b = jittered.explain(model, images, ZERO)
    assert torch.equal(a, b)
    assert not torch.allclose(a, together)


def test_deletion_game_gradient_is_the_official_update_gradient():
    # optimize_mask(): dm = resize_diff(sum_c dx * (img - null)) + l1 sign(m - 1) + tv dtv, where dx is the
    # gradient of the target probability at the input and resize_diff sums each 8 x 8 block (the mask blur, done
    # with PIL in the official code, is not differentiated)
    model, images, _ = region_model(32, (4, 16, 18, 30))
    null = gaussian_smooth(images, 10 * 32 / 224, padding="replicate")
    m = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(12), dtype=torch.float32, requires_grad=True)
    kw = {"mask_scale": 8, "mask_sigma": 5 * 32 / 224, "l1_coeff": 1e-4, "tv_coeff": 1e-2, "tv_beta": 3.0}
    (ours,) = torch.autograd.grad(deletion_game_loss(model, m, images, null, ZERO, **kw), m)
    with torch.no_grad():
        up = m.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
        smooth = gaussian_smooth(up, kw["mask_sigma"], padding="replicate")
    x = (images * smooth + null * (1 - smooth)).requires_grad_(True)
    (dx,) = torch.autograd.grad(model(x).softmax(dim=1)[:, 0].sum(), x)
    dm = ((dx * (images - null)).sum(dim=1)).reshape(2, 4, 8, 4, 8).sum(dim=(2, 4))
    for i in range(2):
        _, dtv = official_tv(m[i, 0].detach().double().numpy(), 3.0, floor=0.0)
        want = dm[i] + 1e-4 * torch.sign(m[i, 0].detach() - 1) + 1e-2 * torch.from_numpy(dtv).float()
        torch.testing.assert_close(ours[i, 0], want, atol=1e-6, rtol=1e-4)


def test_circle_init_deletes_the_centre_and_is_byte_scaled():
    size = 64
    model, images, _ = region_model(size, (24, 40, 24, 40))  # a centred 16 x 16 region
    null = gaussian_smooth(images, 10 * size / 224, padding="replicate")
    radii = torch.arange(0, 175, 5, dtype=torch.float32) * size / 224
    init = circle_init(model, images, null, ZERO, (8, 8), radii=radii, sigma=10 * size / 224)
    assert init.shape == (2, 1, 8, 8)
    for m in init[:, 0]:
        assert m.max() == 1 and torch.equal(m * 255, (m * 255).round())  # bytescaled to [0, 255], then / 255
        assert m[3:5, 3:5].max() < 0.2 and m[0, 0] > 0.8  # the centre is deleted, the corners kept


# --------------------------------------------------------------------------------------------- extremal


def test_extremal_finds_the_region_and_reaches_its_areas():
    # the region is symmetric under the left-right flip that extremal perturbation applies every other step
    model, images, region = region_model(32, (4, 16, 10, 22))
    method = ExtremalPerturbation(iterations=100, lr=0.1, areas=[0.1, 0.2])  # 10x the lr for 1/8 of the steps
    masks, full = method.masks(model, images, ZERO, return_full=True)
    area = full.flatten(2).mean(dim=2)  # the area term sees the full mask, margin included (as TorchRay)
    assert (area[:, 0] - 0.1).abs().max() < 0.05 and (area[:, 1] - 0.2).abs().max() < 0.05
    maps = gaussian_smooth(masks, 0.09 * 32).sum(dim=1)  # what explain() returns (tested below)
    assert (top_share(maps, region) > 0.75).all()  # chance: 0.14


def test_extremal_is_batch_independent_and_sums_smoothed_masks():
    model, images, _ = region_model(32, (4, 16, 10, 22))
    method = ExtremalPerturbation(iterations=10, areas=[0.05, 0.2])
    maps = method.explain(model, images, ZERO)
    alone = torch.cat([method.explain(model, images[i : i + 1], ZERO[:1]) for i in range(2)])
    torch.testing.assert_close(maps, alone, atol=1e-4, rtol=1e-4)
    masks = method.masks(model, images, ZERO)
    # TorchRay benchmark: imsmooth(mask, sigma=0.09 * min(H, W), zero padding), then the sum over areas
    torch.testing.assert_close(maps, gaussian_smooth(masks, 0.09 * 32).sum(dim=1))


def test_extremal_leaves_the_model_alone():
    model, images, _ = region_model(32, (4, 16, 10, 22))
    before = [(p.requires_grad, p.grad) for p in model.parameters()]
    ExtremalPerturbation(iterations=2).explain(model, images, ZERO)
    assert not model.training and [(p.requires_grad, p.grad) for p in model.parameters()] == before


# --------------------------------------------------------------------------------------------- contract


def test_published_defaults():
    assert MeaningfulPerturbation.defaults == {
        "iterations": 300, "lr": 0.1, "l1_coeff": 1e-4, "tv_coeff": 1e-2, "tv_beta": 3.0, "mask_scale": 8,
        "blur_radius": 10.0, "original_size": 500.0, "mask_blur_radius": 5.0, "jitter": 4, "init": "circle",
        "chunk": None,
    }
    assert ExtremalPerturbation.defaults == {
        "areas": [0.025, 0.05, 0.1, 0.2], "iterations": 800, "lr": 0.01, "momentum": 0.9, "step": 7,
        "sigma": 21.0, "num_levels": 8, "max_blur": 20.0, "regul_weight": 300.0, "regul_growth": 1.0035,
        "flip_jitter": True, "smooth": 0.09,
    }
    assert RISE.defaults["num_masks"] == 8000 and RISE.defaults["grid_size"] == 7 and RISE.defaults["p"] == 0.5
    assert not RISE.deterministic and not MeaningfulPerturbation.deterministic
    assert ExtremalPerturbation.deterministic and Occlusion.deterministic
    assert {"mask", "extremal", "rise", "occlusion"} <= set(ib.list_methods())


@pytest.mark.parametrize("cls,params,words", [
    (MeaningfulPerturbation, {"iterations": 0}, "iterations"),
    (MeaningfulPerturbation, {"init": "zeros"}, "init"),
    (MeaningfulPerturbation, {"original_size": 0}, "original_size"),
    (ExtremalPerturbation, {"areas": [0.1, 1.5]}, "areas"),
    (ExtremalPerturbation, {"num_levels": 1}, "num_levels"),
    (RISE, {"p": 0}, "p"),
    (RISE, {"baseline": "black"}, "baseline"),
    (Occlusion, {"score": "margin"}, "score"),
    (Occlusion, {"window": 2.5}, "window"),
])
def test_bad_parameters_name_the_parameter(cls, params, words):
    with pytest.raises(ComponentError, match=words):
        cls(**params)


def test_occlusion_window_larger_than_image_is_an_error():
    model, images, _ = region_model(16, (0, 8, 0, 8))
    with pytest.raises(ComponentError, match="window 32 px is larger"):
        Occlusion(window=32).explain(model, images, ZERO)
    with pytest.raises(ComponentError, match="stride 6 px is larger than the window 4"):
        Occlusion(window=4, stride=6).explain(model, images, ZERO)
