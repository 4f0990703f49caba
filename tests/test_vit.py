"""Vision transformers' token layers: folding tokens into patch grids, the Grad-CAM family on ViT, DeiT and Swin
(agreement with pytorch-grad-cam's reshape transforms), the default layer, and dissection of a token layer.

timm models are built with random weights at 64 px (a 4 x 4 patch grid for the 16 px patches) to stay fast.
"""

from __future__ import annotations

import pytest
import pytorch_grad_cam
import timm
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import interpbench as ib
from interpbench.core.base import Model, NotApplicable
from interpbench.metrics.dissection import dissect, layer_activations
from interpbench.models.timm_source import wrap_timm
from interpbench.models.weights import seeded
from interpbench.ops.tokens import (
    TokenGrid,
    as_feature_map,
    fold_tokens,
    token_grid_of,
    unfold_tokens,
)

# --------------------------------------------------------------------------------------------- folding


def test_fold_tokens_places_each_patch_token_at_its_grid_cell():
    b, prefix, h, w = 2, 2, 3, 4
    tokens = torch.full((b, prefix + h * w, 3), -99.0)  # the prefix tokens must be dropped
    for i in range(h):
        for j in range(w):
            tokens[:, prefix + i * w + j] = torch.tensor([i, j, 10 * i + j], dtype=torch.float32)
    maps = fold_tokens(tokens, (h, w), prefix)
    assert maps.shape == (b, 3, h, w)
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    assert torch.equal(maps[:, 0], ii.float().expand(b, h, w))
    assert torch.equal(maps[:, 1], jj.float().expand(b, h, w))
    assert torch.equal(maps[:, 2], (10 * ii + jj).float().expand(b, h, w))
    back = unfold_tokens(maps, (h, w), prefix)
    assert torch.equal(back[:, prefix:], tokens[:, prefix:]) and back[:, :prefix].abs().sum() == 0


def test_fold_follows_timms_patch_order():
    with seeded(0):
        net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    conv = net.patch_embed.proj(x)  # B x C x 4 x 4, before timm flattens it into tokens
    tokens = net.patch_embed(x)  # B x 16 x C: no prefix yet
    layout = token_grid_of(net)
    assert layout == TokenGrid(grid=(4, 4), prefix=1, channels_last=False, pool="token")
    assert torch.allclose(as_feature_map(tokens, layout), conv)
    with_prefix = torch.cat([torch.full_like(tokens[:, :1], 1e6), tokens], dim=1)
    assert torch.allclose(as_feature_map(with_prefix, layout), conv)
    assert as_feature_map(torch.zeros(1, 15, 8), layout) is None  # neither 1 + 4x4 nor 4x4 tokens
    assert token_grid_of(timm.create_model("resnet18", pretrained=False, num_classes=3)) is None


def test_channels_last_layout_is_permuted_but_not_the_patch_convolution():
    layout = TokenGrid(channels_last=True)
    nhwc = torch.randn(2, 5, 6, 7)
    assert torch.equal(as_feature_map(nhwc, layout, module=nn.LayerNorm(7)), nhwc.permute(0, 3, 1, 2))
    assert torch.equal(as_feature_map(nhwc, layout, module=nn.Conv2d(3, 5, 1)), nhwc)
    assert torch.equal(as_feature_map(nhwc, None), nhwc)


# --------------------------------------------------------------------------------------------- Grad-CAM family


def tiny_timm(arch: str, **kwargs) -> Model:
    with seeded(0):
        net = timm.create_model(arch, pretrained=False, **kwargs)
    return wrap_timm(net, f"timm:{arch}@random", {"tag": "random"})


@pytest.fixture(scope="module")
def vit():
    return tiny_timm("vit_tiny_patch16_224", img_size=64)


@pytest.fixture(scope="module")
def deit():
    return tiny_timm("deit_tiny_distilled_patch16_224", img_size=64)


def vit_reshape(prefix: int, h: int, w: int):
    # pytorch-grad-cam's documented ViT reshape transform (tutorials/vision_transformers), prefix tokens dropped
    def reshape(t):
        return t[:, prefix:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)

    return reshape


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def agree_with_pytorch_grad_cam(model: Model, reshape, method: str = "gradcam", n: int = 1) -> None:
    torch.manual_seed(1)
    x = torch.rand(n, 3, *model.input_size)
    with torch.no_grad():
        targets = model(x).argmax(1)
    ours = ib.load_method(method)(model, x, targets)
    cls = {"gradcam": pytorch_grad_cam.GradCAM, "gradcam_pp": pytorch_grad_cam.GradCAMPlusPlus}[method]
    cam = cls(model=model, target_layers=[model.module(model.cam_layer)], reshape_transform=reshape)
    ref = torch.as_tensor(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))
    assert ours.shape == ref.shape == (n, *model.input_size)
    for i in range(n):
        assert float(ours[i].std()) > 0, f"{model.spec}: image {i} has a constant map"
        r = pearson(ours[i], ref[i])
        assert r >= 0.99, f"{model.spec} {method}: image {i} Pearson {r:.4f} with pytorch-grad-cam"


def test_vit_default_layer_is_the_last_blocks_first_norm(vit, deit):
    assert vit.cam_layer == "blocks.11.norm1" and deit.cam_layer == "blocks.11.norm1"
    assert vit.token_grid == TokenGrid(grid=(4, 4), prefix=1) and deit.token_grid.prefix == 2
    # why not the last block's output: the classifier reads only the class token there, so the patch tokens get
    # no gradient and Grad-CAM would be all zero
    from interpbench.methods.cam import layer_activations_and_gradients

    x = torch.rand(1, 3, 64, 64)
    _, grad_out = layer_activations_and_gradients("gradcam", vit, "blocks.11", x, torch.tensor([0]))
    _, grad_norm = layer_activations_and_gradients("gradcam", vit, "blocks.11.norm1", x, torch.tensor([0]))
    assert grad_out.shape == grad_norm.shape == (1, 192, 4, 4)
    assert float(grad_out.abs().max()) == 0 and float(grad_norm.abs().max()) > 0


def test_gradcam_on_vit_agrees_with_pytorch_grad_cam(vit):
    agree_with_pytorch_grad_cam(vit, vit_reshape(1, 4, 4))


def test_gradcam_on_deit_with_two_prefix_tokens_agrees_with_pytorch_grad_cam(deit):
    agree_with_pytorch_grad_cam(deit, vit_reshape(2, 4, 4))


def test_gradcam_pp_on_deit_agrees_with_pytorch_grad_cam():
    # pytorch-grad-cam adds 1e-6 to the alpha denominator (2 g^2 + sum A g^3): with random weights the gradients
    # are ~1e-4, so g^2 is below that and the two would differ; logits scaled by 1000 make the term negligible
    deit = tiny_timm("deit_tiny_distilled_patch16_224", img_size=64)
    for head in (deit.net.head, deit.net.head_dist):
        head.weight.data.mul_(1000.0)
        head.bias.data.mul_(1000.0)
    agree_with_pytorch_grad_cam(deit, vit_reshape(2, 4, 4), method="gradcam_pp", n=1)


def test_gradcam_on_swin_reads_its_channels_last_stages():
    swin = tiny_timm("swin_tiny_patch4_window7_224", img_size=64, window_size=2, depths=(1, 1, 1, 1))
    assert swin.cam_layer == "layers.3" and swin.token_grid.channels_last
    agree_with_pytorch_grad_cam(swin, lambda t: t.permute(0, 3, 1, 2), n=1)


def test_scorecam_on_vit_runs_on_the_patch_grid():
    # Score-CAM masks the image with each folded channel (a 4 x 4 map upsampled); a 2-block ViT keeps it fast
    small = tiny_timm("vit_tiny_patch16_224", img_size=64, depth=2)
    x = torch.rand(1, 3, 64, 64)
    maps = ib.load_method("scorecam", chunk=96)(small, x, torch.tensor([3]))
    assert maps.shape == (1, 64, 64) and bool(torch.isfinite(maps).all()) and float(maps.std()) > 0


def test_a_layer_that_is_not_a_token_grid_is_not_applicable(vit):
    with pytest.raises(NotApplicable, match="head.*prefix"):
        ib.load_method("gradcam", layer="head")(vit, torch.rand(1, 3, 64, 64), torch.tensor([0]))


# --------------------------------------------------------------------------------------------- dissection


class PatchColours(nn.Module):
    """A patch embedding of ``patch`` px patches whose unit 0 is the patch's redness, unit 1 its blueness."""

    def __init__(self, size: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.grid_size = (size // patch, size // patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.avg_pool2d(x, self.patch)  # B x 3 x h x w, each patch's mean colour
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        units = torch.stack([(r - 2 * (g + b)).clamp_min(0), (b - 2 * (r + g)).clamp_min(0), torch.zeros_like(r)], 1)
        return units.flatten(2).transpose(1, 2)  # B x h*w x 3, row-major as timm's PatchEmbed


class TokenDetector(nn.Module):
    """A token model: patch colour units, ``prefix`` prefix tokens of value 100 (which would swamp every
    threshold if read as patches), an identity block, a head on the class token."""

    def __init__(self, size: int, patch: int, prefix: int) -> None:
        super().__init__()
        self.patch_embed = PatchColours(size, patch)
        self.num_prefix_tokens = prefix
        self.blocks = nn.Sequential(nn.Identity())
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        tokens = torch.cat([torch.full_like(tokens[:, :1], 100.0).expand(-1, self.num_prefix_tokens, -1), tokens], 1)
        return self.head(self.blocks(tokens)[:, 0])


def wrap(net: nn.Module, size: int) -> Model:
    return Model(net, spec="test:tokens", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=(size, size),
                 class_names=["a", "b"], cam_layer="blocks", label_space="test", default_dataset="none",
                 weights={"tag": "test"}, layers=["blocks"]).eval()


@pytest.fixture(scope="module")
def shapes_probe():
    from interpbench.datasets.shapes import ShapesWorld

    world = ShapesWorld("test", 64, n=24)

    class Probe(torch.utils.data.Dataset):
        samples = [world[i] for i in range(24)]

        def __len__(self):
            return len(self.samples)

        def __getitem__(self, i):
            return self.samples[i]

        def concept_names(self):
            return world.concept_names()

    return Probe()


def test_dissection_of_a_token_layer_with_one_pixel_patches_is_exact(shapes_probe):
    # patch 1: each token is a pixel, so the folded units are exact colour masks (red and blue pixels are under 5%
    # of the probe, so T = 0 at quantile 0.05): IoU 1 with their colours, despite two prefix tokens of value 100
    model = wrap(TokenDetector(64, 1, prefix=2), 64)
    acts = layer_activations(model, torch.stack([shapes_probe[0]["image"]]), ["blocks"])["blocks"]
    assert acts.shape == (1, 3, 64, 64) and float(acts.max()) < 100
    result = dissect(model, shapes_probe, ["blocks"], quantile=0.05, batch_size=12)
    assert result.unit_label("blocks", 0) == ("color", "red", 1.0)
    assert result.unit_label("blocks", 1) == ("color", "blue", 1.0)
    assert result.unit_label("blocks", 2) is None


def test_dissection_of_an_8_pixel_patch_grid_finds_the_concept_in_its_patches(shapes_probe):
    # patch 8 on 64 px: an 8 x 8 token grid, upsampled to the labels; the red unit still labels red, with an IoU
    # below 1 because a patch is coarser than the shape
    model = wrap(TokenDetector(64, 8, prefix=1), 64)
    result = dissect(model, shapes_probe, ["blocks"], quantile=0.05, batch_size=12)
    assert result.layers["blocks"].feature_size == (8, 8)
    category, name, iou = result.unit_label("blocks", 0)
    assert (category, name) == ("color", "red") and 0.2 < iou < 1.0
    assert result.unit_label("blocks", 1)[:2] == ("color", "blue")


def test_vit_passes_the_model_conformance_checks():
    from interpbench.testing.components import check_model

    report = check_model(tiny_timm("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=5))
    statuses = {r.name: r.status for r in report.results}
    assert statuses["cam_layer"] == statuses["layers"] == statuses["input_gradient"] == "passed", str(report)


# --------------------------------------------------------------------------------------------- shapes:vit


def test_shapes_vit_packaged_weights_follow_the_recipe_and_classify_held_out_images():
    import json

    from interpbench.datasets.shapes import SHAPES, ShapesWorld
    from interpbench.models import shapes as shapes_model

    rec = shapes_model.vit_recipe("shape", 0)
    name = f"shapes-vit-shape-seed0-{shapes_model.recipe_hash(rec)}.pt"
    path = shapes_model.packaged_checkpoint(name)
    assert path is not None, f"no packaged {name}: run python -m interpbench.models.shapes"
    stored = torch.load(path, weights_only=True)
    assert stored["recipe"] == json.loads(json.dumps(rec)) and stored["test_accuracy"] >= SHAPES_VIT_ACCURACY
    model = ib.load_model("shapes:vit")
    assert model.weights["path"] == str(path) and model.class_names == list(SHAPES)
    assert model.cam_layer == "blocks.3.norm1" and model.token_grid == TokenGrid(grid=(8, 8), prefix=1)
    # test images 512..767 were used by nobody (the recorded accuracy uses 0..511)
    images, labels = ShapesWorld("test", 64, n=768, task="shape").tensors(512, 768)
    with torch.no_grad():
        acc = float((model(images).argmax(1) == labels).float().mean())
    assert acc >= SHAPES_VIT_ACCURACY, acc
    # every map family runs on it: a layer method, the attention methods; dissection reads its token layers
    x, t = images[:2], labels[:2]
    for method in ("gradcam", "attention_rollout", "transformer_attribution"):
        maps = ib.load_method(method)(model, x, t)
        assert maps.shape == (2, 64, 64) and float(maps.std()) > 0
    acts = layer_activations(model, x, ["patch_embed", "blocks.1"])
    assert acts["patch_embed"].shape == acts["blocks.1"].shape == (2, 64, 8, 8)


SHAPES_VIT_ACCURACY = 0.9
