"""The pointing game as TorchRay's benchmark runs it (``examples/attribution_benchmark.py``): images resized to a
shorter side of 224 keeping the aspect ratio (RISE alone squashed), gradient-like saliency smoothed with sigma =
0.02 x the longer side after resizing to the image, extremal perturbation's areas per dataset; and the default
tolerance that follows the dataset. References are written here from TorchRay's formulas."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_loc_datasets import voc_xml, write_coco

import interpbench as ib
from interpbench.core.base import Batch, Method
from interpbench.datasets.coco import CocoSource
from interpbench.datasets.shapes import ShapesWorld
from interpbench.datasets.voc import VOC_CLASSES, VOCSource, torchray_input_size
from interpbench.engine.feeding import SampleList, same_size_runs
from interpbench.engine.runner import method_params_for
from interpbench.metrics.localization import PointingGame
from interpbench.ops.regions import (
    dataset_tolerance,
    smooth_maps,
)

DOG = VOC_CLASSES.index("dog")
VOC_AREAS, COCO_AREAS = [0.025, 0.05, 0.1, 0.2], [0.018, 0.025, 0.05, 0.1]
# W x H of the fixture's images: landscape, portrait, square
SIZES = {"000001": (100, 80), "000002": (60, 90), "000003": (64, 64)}


def write_voc_sizes(root: Path, classes: tuple[str, ...] = ("dog",)) -> Path:
    base = root / "VOCdevkit" / "VOC2007"
    rng = np.random.default_rng(0)
    for name, (w, h) in SIZES.items():
        (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        objects = [(c, 0, (11, 11, 30, 30)) for c in classes]
        (base / "Annotations" / f"{name}.xml").write_text(voc_xml(name, w, h, objects))
    (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "Main" / "test.txt").write_text("\n".join(SIZES) + "\n")
    return root


def reference_resize(path: Path, size: int | tuple[int, int]) -> torch.Tensor:
    """TorchRay ``get_transform(dataset='voc_2007' or 'coco', size)`` before normalisation: ToTensor, then
    ``F.interpolate(bilinear, align_corners=False)`` to (int(size * h / w), size) if w < h else (size, int(size * w
    / h)), or to ``size`` itself when it is a pair (RISE's (224, 224))."""
    with Image.open(path) as image:
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    height, width = x.shape[1:]
    if not isinstance(size, int):
        out = size
    elif width < height:
        out = (int(size * height / width), size)
    else:
        out = (size, int(size * width / height))
    return F.interpolate(x[None], out, mode="bilinear", align_corners=False)[0]


def reference_imsmooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """TorchRay ``imsmooth(x, sigma, padding_mode='replicate')`` from its docstring: a 1-D kernel
    ``exp(-(i / (sqrt(2) sigma + eps))^2)`` over ``|i| <= ceil(4 sigma)``, normalised, applied vertically then
    horizontally on the edge-replicated ``N x C x H x W`` tensor."""
    width = math.ceil(4 * sigma)
    taps = torch.arange(-width, width + 1, dtype=torch.float32) / (math.sqrt(2) * sigma + 1.19209290e-07)
    kernel = torch.exp(-taps * taps)
    kernel = kernel / kernel.sum()
    padded = F.pad(x, (width, width, width, width), mode="replicate")
    channels = x.shape[1]
    y = F.conv2d(padded, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(y, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


# --------------------------------------------------------------------------------------------- preprocessing


def test_shorter_side_224_keeps_the_aspect_ratio():
    # TorchRay: int(224 * long / short) for the longer side; VOC's usual 500 x 375 and 375 x 500, COCO's 640 x 480
    assert torchray_input_size((375, 500), 224) == (224, 298)
    assert torchray_input_size((500, 375), 224) == (298, 224)
    assert torchray_input_size((333, 500), 224) == (224, 336)
    assert torchray_input_size((480, 640), 224) == (224, 298)
    assert torchray_input_size((500, 500), 224) == (224, 224)


def test_voc_in_torchray_protocol_matches_the_reference_preprocessing(tmp_path):
    root = write_voc_sizes(tmp_path)
    ds = VOCSource().load(path=root, size=(32, 32))  # the default protocol of the voc loader
    assert ds.protocol == "torchray" and ds.identity()["protocol"] == "torchray" and ds.variable_size
    expected = {"000001": (32, 40), "000002": (48, 32), "000003": (32, 32)}
    for i, name in enumerate(SIZES):
        s = ds[i]
        path = root / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{name}.jpg"
        assert tuple(s["image"].shape[1:]) == expected[name]
        assert torch.allclose(s["image"], reference_resize(path, 32), atol=1e-6)
        # RISE's view: squashed to the input size (TorchRay input_size = (224, 224) for RISE alone)
        assert torch.allclose(s["image_square"], reference_resize(path, (32, 32)), atol=1e-6)
        # boxes at the input size follow each image's own scale: [10, 10, 30, 30] x (H / H0, W / W0)
        w0, h0 = SIZES[name]
        h, w = expected[name]
        assert s["boxes"][DOG][0].tolist() == pytest.approx([10 * w / w0, 10 * h / h0, 30 * w / w0, 30 * h / h0])
        assert s["pointing_protocol"] == "torchray" and s["pointing_tolerance"] == 15
    assert ds.method_inputs == {"rise": "image_square"}
    assert ds.method_defaults == {"extremal": {"areas": VOC_AREAS}}


def test_coco_in_torchray_protocol_has_its_own_areas(tmp_path):
    ds = CocoSource().load(path=write_coco(tmp_path), size=(24, 24))
    assert ds.method_defaults == {"extremal": {"areas": COCO_AREAS}}
    # 60 x 50 and 40 x 30 (W x H) with a shorter side of 24; ids in increasing order (7, then 42)
    assert tuple(ds[0]["image"].shape[1:]) == (24, 32) and tuple(ds[1]["image"].shape[1:]) == (24, 28)
    assert all(tuple(m.shape) == (24, 28) for m in ds[1]["masks"].values())


def test_square_protocol_squashes_as_before(tmp_path):
    ds = VOCSource().load(path=write_voc_sizes(tmp_path), size=(32, 32), protocol="square")
    s = ds[0]
    assert tuple(s["image"].shape[1:]) == (32, 32) and "image_square" not in s and s["pointing_protocol"] == "square"
    assert not ds.variable_size and ds.method_defaults == {} and ds.method_inputs == {}
    with pytest.raises(ib.ComponentError, match="protocol 'caffe' is not one of"):
        VOCSource().load(path=tmp_path, protocol="caffe")


def test_dataset_method_defaults_sit_under_the_runs_own(tmp_path):
    ds = VOCSource().load(path=write_voc_sizes(tmp_path), size=(32, 32))
    assert method_params_for("extremal", ds, {"extremal": {"iterations": 50}}) == {"areas": VOC_AREAS,
                                                                                    "iterations": 50}
    assert method_params_for("extremal", ds, {"extremal": {"areas": [0.1]}}) == {"areas": [0.1]}
    assert method_params_for("gradcam", ds, {}) == {}
    assert method_params_for("extremal", ShapesWorld(n=1), {}) == {}  # a dataset without a protocol


# --------------------------------------------------------------------------------------------- smoothing


def test_smoothing_is_torchrays_imsmooth_at_two_percent_of_the_longer_side():
    maps = torch.rand(2, 30, 50, generator=torch.Generator().manual_seed(0))
    out = smooth_maps(maps, 0.02)  # sigma = 0.02 x 50 = 1 px
    assert torch.allclose(out, reference_imsmooth(maps[:, None], 1.0)[:, 0], atol=1e-6)
    assert torch.allclose(smooth_maps(maps, 0.1), reference_imsmooth(maps[:, None], 5.0)[:, 0], atol=1e-6)
    assert torch.equal(smooth_maps(maps, 0.0), maps)


class Named(Method):
    def __init__(self, name: str):
        super().__init__()
        self.name = name


def spike_and_blob(protocol: str, method: str) -> tuple[Batch, torch.Tensor]:
    """One trial on an 80 x 100 original image whose box is x, y in 10..29: a one-pixel spike of 1 at (90, 70), far
    outside, and a broad blob of peak 0.5 centred in the box. The raw arg-max is the spike (a miss); after
    TorchRay's smoothing (sigma 2 px) the spike falls to about 0.04 and the blob's peak stays near 0.43 (a hit)."""
    ys, xs = torch.meshgrid(torch.arange(80.0), torch.arange(100.0), indexing="ij")
    blob = 0.5 * torch.exp(-((xs - 20) ** 2 + (ys - 20) ** 2) / (2 * 5.0**2))
    blob[70, 90] = 1.0
    sample = {"id": "a#12", "image_id": "a", "label": DOG, "labels": [DOG], "orig_size": (80, 100),
              "orig_boxes": {DOG: torch.tensor([[10.0, 10.0, 30.0, 30.0]])}, "pointing_protocol": protocol,
              "pointing_tolerance": 15.0}
    batch = Batch(ids=["a#12"], images=torch.zeros(1, 3, 80, 100), targets=torch.tensor([DOG]), samples=[sample],
                  method=Named(method))
    return batch, blob[None]


@pytest.mark.parametrize("protocol, method, params, hit, smooth", [
    ("torchray", "gradient", {}, 1.0, 0.02),
    ("torchray", "guided_backprop", {}, 1.0, 0.02),
    ("torchray", "gradcam", {}, 0.0, 0.0),  # TorchRay smooths only gradient, guided backprop and deconvnet
    ("square", "gradient", {}, 0.0, 0.0),  # off the protocol no smoothing by default
    ("square", "gradient", {"smooth": 0.02}, 1.0, 0.02),  # unless asked for
    ("torchray", "gradient", {"smooth": 0}, 0.0, 0.0),
])
def test_gradient_like_maps_are_smoothed_before_the_arg_max(protocol, method, params, hit, smooth):
    metric = PointingGame(n_boot=10, **params)
    metric.update(None, *spike_and_blob(protocol, method))
    out = metric.compute()
    assert out["pointing_game"] == hit and out["smooth"] == smooth
    assert out["torchray_protocol"] == (protocol == "torchray") and out["tolerance"] == 15


# --------------------------------------------------------------------------------------------- tolerance


def test_default_tolerance_follows_the_dataset():
    assert dataset_tolerance((375, 500)) == 15  # TorchRay's 15 px at VOC's ~500 px
    assert dataset_tolerance((64, 64)) == pytest.approx(1.92)
    assert dataset_tolerance((64, 64), declared=2) == 2
    assert ShapesWorld(n=1)[0]["pointing_tolerance"] == 2
    # a point 1.95 px from the region: a miss at 64 px's 1.92 px, a hit at the declared 2 px
    region = torch.zeros(64, 64, dtype=torch.bool)
    region[10, 10] = True
    sample = {"id": "s", "label": 0, "labels": [0], "masks": {0: region},
              "boxes": {0: torch.tensor([[10.0, 10.0, 11.0, 11.0]])}}
    maps = torch.zeros(1, 64, 64)
    maps[0, 10, 12] = 1.0  # 2 px away on the row: a miss at both
    batch = Batch(ids=["s"], images=torch.zeros(1, 3, 64, 64), targets=torch.tensor([0]), samples=[sample])
    for declared, expected in ((None, 0.0), (2.5, 1.0)):
        s = sample if declared is None else {**sample, "pointing_tolerance": declared}
        metric = PointingGame(n_boot=10)
        metric.update(None, Batch(ids=["s"], images=batch.images, targets=batch.targets, samples=[s]), maps)
        out = metric.compute()
        assert out["pointing_game"] == expected
        assert out["tolerance"] == pytest.approx(1.92 if declared is None else declared)


def test_shapes_run_no_longer_hits_with_every_map(tmp_path):
    table = ib.run(methods=["random", "center", "gradcam"], models=["shapes:cnn"], metrics=["pointing_game"],
                   out=tmp_path / "run", limit=32, batch_size=32, progress=False,
                   metric_params={"pointing_game": {"n_boot": 50}})
    assert table.attrs["ok"]
    value = {(r.method, r.value_name): r.mean for r in table.itertuples()}
    assert value[("random", "tolerance")] == 2  # the shapes world's declared tolerance, not VOC's 15 px
    # 15 px on a 64 px image accepted every point; at 2 px a random point rarely lands on the object
    assert value[("random", "pointing_game")] <= 0.4
    assert value[("center", "pointing_game")] < value[("gradcam", "pointing_game")]


# --------------------------------------------------------------------------------------------- batching


def test_same_size_runs_cut_a_batch_where_the_size_changes():
    images = [torch.zeros(3, 4, 5), torch.ones(3, 4, 5), torch.zeros(3, 5, 4), torch.zeros(3, 4, 5)]
    samples = [{"id": str(i), "image": x, "image_square": torch.full((3, 4, 4), float(i))}
               for i, x in enumerate(images)]
    runs = same_size_runs(samples)
    assert [(offset, [s["id"] for s in run], tuple(run.images.shape)) for offset, run in runs] == [
        (0, ["0", "1"], (2, 3, 4, 5)), (2, ["2"], (1, 3, 5, 4)), (3, ["3"], (1, 3, 4, 5))]
    assert torch.equal(runs[0][1].images[1], images[1])
    (offset, square), = same_size_runs(samples, "image_square")  # all 4 x 4: one run, the view as its image
    assert offset == 0 and [float(x[0, 0, 0]) for x in square.images] == [0.0, 1.0, 2.0, 3.0]
    assert "image_square" not in square[0] and torch.equal(square[2]["image"], samples[2]["image_square"])
    stacked = SampleList(samples[:2], torch.stack(images[:2]))
    assert same_size_runs(stacked) == [(0, stacked)]


def test_runner_explains_images_of_several_sizes(tmp_path):
    # every class the shapes model can predict (0..6) has a box, so that its predicted class has a region
    root = write_voc_sizes(tmp_path / "data", VOC_CLASSES[:7])
    config = tmp_path / "datasets.yaml"
    config.write_text(f"voc-sizes:\n  loader: voc\n  path: {root}\n")
    table = ib.run(methods=["gradient", "rise"], models=["shapes:cnn"], datasets=["voc-sizes"],
                   metrics=["pointing_game"], out=tmp_path / "run", batch_size=3, progress=False,
                   datasets_config=str(config), method_params={"rise": {"num_masks": 8}},
                   metric_params={"pointing_game": {"n_boot": 10}})
    assert table.attrs["ok"]
    # the model's 64 px input: 100 x 80 -> 64 x 80, 60 x 90 -> 96 x 64, 64 x 64 as it is; RISE: all 64 x 64
    maps = tmp_path / "run" / "artifacts" / "maps"
    gradient = torch.load(maps / "shapes_cnn__voc-sizes__gradient.pt")
    rise = torch.load(maps / "shapes_cnn__voc-sizes__rise.pt")
    assert tuple(gradient["maps"].shape) == (1, 64, 80)  # the first run of equal sizes
    assert tuple(rise["maps"].shape) == (3, 64, 64)  # one run: the squashed view
    value = {(r.method, r.value_name): r.mean for r in table.itertuples()}
    assert value[("gradient", "smooth")] == 0.02 and value[("rise", "smooth")] == 0
    assert value[("gradient", "torchray_protocol")] == 1
