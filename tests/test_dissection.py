"""Network dissection, the Broden layout and Net2Vec: hand-computed probes, a reference tally, known detectors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from interpbench.core.base import ComponentError, Model, RunContext
from interpbench.datasets.broden import (
    BrodenProbe,
    BrodenSource,
    read_broden,
    write_broden,
)
from interpbench.metrics.dissection import (
    Dissection,
    DissectionResult,
    collect_activations,
    dissect,
)
from interpbench.metrics.net2vec import net2vec, summarize
from interpbench.ops.dissect import (
    ConceptSet,
    StreamingTopK,
    Tally,
    accumulate_tally,
    bilinear_matrix,
    count_mask_pixels,
    encode_concepts,
    tally_reference_numpy,
    threshold_from_top,
)

# --------------------------------------------------------------------------------------------- helpers


class ListProbe(torch.utils.data.Dataset):
    """A probe held in memory: samples with ``image`` and ``concepts``, and the concept names."""

    def __init__(self, samples: list[dict], names: dict[str, list[str]]) -> None:
        self.samples, self.names = samples, names

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]

    def concept_names(self) -> dict[str, list[str]]:
        return self.names


class ChannelUnits(nn.Module):
    """Units 0-2 are the image's R, G, B channels; unit 3 never fires."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)


class ColorUnits(nn.Module):
    """Unit 0 fires on red pixels (r > 2 (g + b)), unit 1 on blue ones (b > 2 (r + g)), unit 2 never."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        return torch.stack([(r - 2 * (g + b)).clamp_min(0), (b - 2 * (r + g)).clamp_min(0), torch.zeros_like(r)], 1)


class Probed(nn.Module):
    def __init__(self, features: nn.Module, units: int, pool: int = 1) -> None:
        super().__init__()
        self.features = features
        self.pooled = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.head = nn.Linear(units, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(self.features(x)).mean(dim=(2, 3)))


def wrap(net: nn.Module, size: int, cam_layer: str = "features") -> Model:
    return Model(net, spec="test:probed", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=(size, size),
                 class_names=["a", "b"], cam_layer=cam_layer, label_space="test", default_dataset="none",
                 weights={"tag": "test"}).eval()


# --------------------------------------------------------------------------------------------- the hand probe

TINY_NAMES = {"color": ["-", "red", "blue"], "material": ["-", "metal"], "scene": ["-", "indoor", "outdoor"]}
# Two 2 x 2 images; each channel is one unit's activation map (values / 255).
TINY_PIXELS = {
    "R": ([[10, 250], [20, 30]], [[240, 40], [50, 0]]),
    "G": ([[5, 6], [7, 8]], [[9, 200], [210, 10]]),
    "B": ([[3, 220], [230, 4]], [[1, 2], [100, 0]]),
}


def tiny_probe() -> ListProbe:
    images = torch.tensor([[TINY_PIXELS[c][i] for c in "RGB"] for i in range(2)], dtype=torch.float32) / 255
    first = {"color": torch.tensor([[0, 1], [2, 0]]), "material": torch.tensor([[0, 1], [0, 0]])}
    second = {"scene": torch.tensor([1, 2])}  # image-level: indoor and outdoor
    samples = [{"id": "tiny/0", "image": images[0], "concepts": first},
               {"id": "tiny/1", "image": images[1], "concepts": second}]
    return ListProbe(samples, TINY_NAMES)


# By hand, quantile 0.25 over the 8 values of each unit: h = 0.75 * 7 = 5.25, T = x5 + 0.25 (x6 - x5):
#   R sorted 0,10,20,30,40,50,240,250 -> T = 50 + 0.25 * 190 = 97.5: active img0 (0,1) [red, metal], img1 (0,0)
#   G sorted 5,...,10,200,210           -> T = 10 + 0.25 * 190 = 57.5: active img1 (0,1), (1,0)
#   B sorted 0,1,2,3,4,100,220,230      -> T = 100 + 0.25 * 120 = 130: active img0 (0,1) [red, metal], (1,0) [blue]
#   unit 3 is 0 everywhere                -> T = 0, never active
# Ground truth: red 1, blue 1, metal 1 pixel; indoor, outdoor 4 pixels (image-level: the whole image).
# The union counts a unit's pixels only on images carrying the concept's category (img0: color, material;
# img1: scene). Columns red, blue, metal, indoor, outdoor:
TINY_THRESHOLDS = [97.5 / 255, 57.5 / 255, 130 / 255, 0.0]
TINY_IOU = [
    [1 / (1 + 1 - 1), 0.0, 1 / (1 + 1 - 1), 1 / (1 + 4 - 1), 1 / (1 + 4 - 1)],  # (an unconditioned union: red 1/2)
    [0.0, 0.0, 0.0, 2 / (2 + 4 - 2), 2 / (2 + 4 - 2)],
    [1 / (2 + 1 - 1), 1 / (2 + 1 - 1), 1 / (2 + 1 - 1), 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0],
]
# Labels: unit 0 ties red (color) with metal (material) -> red, the lower category; unit 1 ties indoor with
# outdoor -> indoor, the lower label; unit 2 ties red, blue and metal -> red; unit 3 has no label.
TINY_LABELS = [("color", "red"), ("scene", "indoor"), ("color", "red"), ("-", "-")]


def tiny_model() -> Model:
    return wrap(Probed(ChannelUnits(), 4), 2)


def check_tiny(result: DissectionResult) -> None:
    layer = result.layers["features"]
    assert torch.allclose(layer.thresholds, torch.tensor(TINY_THRESHOLDS, dtype=torch.float64), atol=1e-7)
    assert torch.allclose(layer.iou, torch.tensor(TINY_IOU, dtype=torch.float64), atol=1e-12)
    assert [result.concepts.describe(int(j)) for j in layer.labels.label] == TINY_LABELS
    assert [result.unit_label("features", u) for u in range(4)] == [
        ("color", "red", 1.0), ("scene", "indoor", 0.5), ("color", "red", 0.5), None]
    assert layer.tally.ground_truth.tolist() == [1, 1, 1, 4, 4]
    assert layer.tally.activation.tolist() == [[1, 1, 1], [0, 0, 2], [2, 2, 0], [0, 0, 0]]
    assert layer.tally.intersection.tolist() == [[1, 0, 1, 1, 1], [0, 0, 0, 2, 2], [1, 1, 1, 0, 0], [0] * 5]
    summary = result.summary()
    expected = {
        "units": 4, "detectors": 3, "unique": 2, "unique_multi": 3,
        "color.detectors": 2, "color.unique": 1, "color.detectors_multi": 2, "color.unique_multi": 1,
        "material.detectors": 0, "material.unique": 0, "material.detectors_multi": 2, "material.unique_multi": 1,
        "scene.detectors": 1, "scene.unique": 1, "scene.detectors_multi": 2, "scene.unique_multi": 1,
    }
    assert {k: summary[f"features.{k}"] for k in expected} == {k: float(v) for k, v in expected.items()}
    assert summary["n"] == 2.0


def test_hand_computed_probe():
    result = dissect(tiny_model(), tiny_probe(), ["features"], quantile=0.25, batch_size=1)
    check_tiny(result)


def test_hand_probe_read_through_the_broden_layout_gives_identical_results(tmp_path):
    write_broden(tiny_probe(), tmp_path / "tiny")
    probe = BrodenSource().load(path=str(tmp_path / "tiny"))
    assert probe.concept_names() == TINY_NAMES
    assert torch.equal(probe[0]["image"], tiny_probe()[0]["image"])
    direct = dissect(tiny_model(), tiny_probe(), ["features"], quantile=0.25, batch_size=2)
    broden = dissect(tiny_model(), probe, ["features"], quantile=0.25, batch_size=2)
    check_tiny(broden)
    a, b = direct.layers["features"], broden.layers["features"]
    assert torch.equal(a.thresholds, b.thresholds) and torch.equal(a.iou, b.iou)
    assert direct.summary() == broden.summary()


def test_one_and_two_passes_agree():
    cached = dissect(tiny_model(), tiny_probe(), ["features"], quantile=0.25, batch_size=1)
    model = tiny_model().train()
    recomputed = dissect(model, tiny_probe(), ["features"], quantile=0.25, batch_size=1, cache_mb=0)
    assert model.training  # dissected in eval mode, then given back in the mode it came in
    check_tiny(recomputed)
    assert torch.equal(cached.layers["features"].iou, recomputed.layers["features"].iou)


def test_fixed_thresholds_are_used():
    thresholds = {"features": torch.tensor([245 / 255, 1.0, 1.0, 1.0], dtype=torch.float64)}
    result = dissect(tiny_model(), tiny_probe(), ["features"], thresholds=thresholds)
    layer = result.layers["features"]
    assert layer.tally.unit_pixels.tolist() == [1, 0, 0, 0]  # only img0's 250 exceeds 245
    assert result.unit_label("features", 0) == ("color", "red", 1.0)


# --------------------------------------------------------------------------------------------- maths


def test_streaming_topk_is_exact_with_indices():
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(5, 203, generator=gen)
    data[:, 50:60] = 7.0  # ties
    for k in (1, 3, 40, 203):
        top = StreamingTopK(k, 5, with_indices=True)
        for lo in range(0, 203, 17):
            top.update(data[:, lo:lo + 17], torch.arange(lo, min(203, lo + 17)))
        values, indices = top.result()
        expected = torch.sort(data, dim=1, descending=True).values[:, :k]
        assert torch.equal(values, expected)
        assert torch.equal(data.gather(1, indices), values)


def test_threshold_is_numpy_linear_quantile():
    gen = torch.Generator().manual_seed(1)
    for n, q in ((8, 0.25), (1000, 0.005), (4097, 0.005), (333, 0.1), (50, 0.999)):
        data = torch.randn(3, n, generator=gen)
        data[0, : n // 2] = 0.0  # many ties
        k = n - math.floor((1 - q) * (n - 1))
        got = threshold_from_top(torch.topk(data, k, dim=1).values, n, q)
        expected = np.quantile(data.double().numpy(), 1 - q, axis=1)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-15)


def test_masks_decide_a_above_t_in_double_precision():
    # a unit [0.1, 0.7] upsampled to 4 pixels: pixel 1 is 0.75 * 0.1 + 0.25 * 0.7 = 0.25 (of the float32 values);
    # thresholds 1e-12 below and above it are closer than float32 can resolve, the masks still tell them apart
    acts = torch.tensor([[[[0.1, 0.7]]]])
    value = float(bilinear_matrix(2, 4)[1] @ acts[0, 0, 0].double().numpy())
    for offset, expected in ((-1e-12, 1.0), (1e-12, 0.0), (0.0, 0.0)):  # strict: A_k > T_k
        # one region per pixel: the count per region is the mask
        labels = encode_concepts([{"color": torch.tensor([[1, 2, 3, 4]])}],
                                 ConceptSet.from_names({"color": ["-", "a", "b", "c", "d"]}), (1, 4))
        assert labels.regions.tolist() == [[0, 1, 2, 3]]
        counts = count_mask_pixels(acts, torch.tensor([value + offset], dtype=torch.float64), labels)
        assert counts.tolist() == [[0, int(expected), 1, 1]]


def test_tally_matches_the_per_image_numpy_reference():
    gen = torch.Generator().manual_seed(3)
    names = {"color": ["-", "a", "b", "c"], "part": ["-", "x", "y"], "scene": ["-", "s", "t"]}
    concepts = ConceptSet.from_names(names)
    n, units, size = 6, 5, (7, 9)
    acts = torch.rand(n, units, 3, 4, generator=gen) ** 3
    maps = []
    for i in range(n):
        sample = {"color": torch.randint(0, 4, size, generator=gen),
                  "part": torch.randint(0, 3, (2, *size), generator=gen)}  # two label layers
        if i % 2:
            sample["scene"] = torch.tensor([1, 2][: 1 + i % 3])
        if i == 4:
            del sample["color"]  # an image without color labels: the union ignores its unit pixels for color
        maps.append(sample)
    labels = encode_concepts(maps, concepts, size)
    thresholds = torch.quantile(acts.transpose(0, 1).reshape(units, -1).double(), 0.8, dim=1)
    tally = accumulate_tally(Tally.zeros(units, concepts), acts, thresholds, labels)
    ref = tally_reference_numpy(acts.double().numpy(), thresholds.numpy(), labels.pixel_concepts().long().numpy().reshape(n, -1, *size),
                                labels.images.long().numpy(), size, concepts.category_of().numpy(), 3)
    up = np.einsum("hy,nuyx,wx->nuhw", bilinear_matrix(3, 7), acts.double().numpy(), bilinear_matrix(4, 9))
    assert np.abs(up - thresholds.numpy()[None, :, None, None]).min() > 1e-6  # no pixel within rounding of T
    assert tally.intersection.tolist() == ref["intersection"].tolist()
    assert tally.activation.tolist() == ref["activation"].tolist()
    assert tally.unit_pixels.tolist() == ref["unit_pixels"].tolist()
    assert tally.ground_truth.tolist() == ref["ground_truth"].tolist()
    assert int(tally.unit_pixels.sum()) > 0 and int(tally.intersection.sum()) > 0


@pytest.mark.parametrize("low, size", [((3, 4), (7, 9)), ((4, 4), (32, 32)), ((5, 3), (5, 3)), ((8, 6), (3, 4)),
                                       ((2, 7), (13, 20))])
def test_tile_counts_match_full_masks_for_every_resize(low, size):
    # upsampling by integer and fractional factors, no resize, downsampling; negative activations and thresholds
    # (the padding of short bands must not count); and tiny chunks, so that tiles span several chunks
    gen = torch.Generator().manual_seed(sum(low) * 31 + sum(size))
    n, units = 5, 6
    acts = torch.randn(n, units, *low, generator=gen, dtype=torch.float64) - 1.0
    concepts = ConceptSet.from_names({"color": ["-", "a", "b", "c"]})
    labels = encode_concepts([{"color": torch.randint(0, 4, size, generator=gen)} for _ in range(n)], concepts, size)
    thresholds = torch.quantile(acts.transpose(0, 1).reshape(units, -1), 0.7, dim=1)
    assert bool((thresholds < 0).any())
    up = torch.from_numpy(np.einsum("hy,nuyx,wx->nuhw", bilinear_matrix(low[0], size[0]), acts.numpy(),
                                    bilinear_matrix(low[1], size[1])))
    assert float((up - thresholds.view(1, -1, 1, 1)).abs().min()) > 1e-9  # no pixel within rounding of T
    masks = (up > thresholds.view(1, -1, 1, 1)).transpose(0, 1).reshape(units * n, -1)  # row k * n + x
    regions = labels.regions.long().repeat(units, 1)
    expected = torch.stack([((regions == r) & masks).sum(1) for r in range(labels.region_sizes.shape[1])], 1)
    for max_elements in (None, 1):
        got = count_mask_pixels(acts, thresholds, labels, max_elements=max_elements)
        assert got.tolist() == expected.tolist()
    assert int(expected.sum()) > 0


def test_bilinear_matrix_is_torch_bilinear():
    x = torch.rand(2, 5, 3, dtype=torch.float64)
    up = torch.nn.functional.interpolate(x[None], size=(11, 7), mode="bilinear", align_corners=False)[0]
    mine = np.einsum("hy,cyx,wx->chw", bilinear_matrix(5, 11), x.numpy(), bilinear_matrix(3, 7))
    np.testing.assert_allclose(up.numpy(), mine, rtol=1e-12, atol=1e-12)


def test_bad_concept_codes_are_named():
    concepts = ConceptSet.from_names({"color": ["-", "red"]})
    with pytest.raises(ComponentError, match=r"color.*\[0, 5\].*0\.\.1"):
        encode_concepts([{"color": torch.tensor([[0, 5]])}], concepts, (1, 2))


# --------------------------------------------------------------------------------------------- known detectors


def materialize(dataset, n: int) -> ListProbe:
    return ListProbe([dataset[i] for i in range(n)], dataset.concept_names())


@pytest.fixture(scope="module")
def shapes_probe():
    from interpbench.datasets.shapes import ShapesWorld

    return materialize(ShapesWorld("test", 64, n=48), 48)


def test_hand_built_colour_detectors_get_their_labels(shapes_probe):
    # red (and blue) pixels are under 5% of the probe, so T = 0 at quantile 0.05 and the masks are exact
    model = wrap(Probed(ColorUnits(), 3), 64)
    result = dissect(model, shapes_probe, quantile=0.05, batch_size=16)
    assert result.unit_label("features", 0) == ("color", "red", 1.0)
    assert result.unit_label("features", 1) == ("color", "blue", 1.0)
    assert result.unit_label("features", 2) is None and int(result.layers["features"].labels.label[2]) == -1
    assert result.summary()["features.color.unique"] == 2.0


def test_low_resolution_detector_is_upsampled_to_the_labels(shapes_probe):
    model = wrap(Probed(nn.Sequential(ColorUnits(), nn.AvgPool2d(4)), 3), 64)  # 16 x 16 units
    result = dissect(model, shapes_probe, ["features"], quantile=0.05, batch_size=16)
    assert result.layers["features"].feature_size == (16, 16)
    assert result.label_size == (64, 64)
    category, name, iou = result.unit_label("features", 0)
    assert (category, name) == ("color", "red") and 0.3 < iou < 1.0  # the 4x4 pooling blurs the edges


def test_metric_writes_the_tally_csv_and_the_figure(shapes_probe, tmp_path):
    from PIL import Image

    model = wrap(Probed(ColorUnits(), 3), 64)
    metric = Dissection(quantile=0.05, figure_units=3, figure_images=2)
    ctx = RunContext(device=torch.device("cpu"), batch_size=16, seed=0, out_dir=tmp_path)
    values = metric.evaluate(model, shapes_probe, ctx)
    assert values["features.detectors"] == 2.0 and values["features.color.detectors"] == 2.0
    with open(tmp_path / "features-tally.csv") as f:
        rows = list(csv.DictReader(f))
    lite = ["unit", "category", "label", "score"] + [f"{c}-{k}" for c in ("color", "texture", "shape")
                                                     for k in ("label", "truth", "activation", "intersect", "iou")]
    assert list(rows[0])[: len(lite)] == lite
    assert [(r["unit"], r["label"], float(r["score"])) for r in rows] == [("1", "red", 1.0), ("2", "blue", 1.0), ("3", "-", 0.0)]
    assert int(rows[0]["color-truth"]) == int(rows[0]["color-intersect"]) == int(rows[0]["color-activation"]) > 0
    figure = Image.open(tmp_path / "features-top-units.png")
    assert figure.size[0] > 2 * 64 and figure.size[1] > 3 * 64
    assert json.loads((tmp_path / "dissection.json").read_text())["summary"]["features.detectors"] == 2.0


def test_shapes_probe_through_the_broden_layout(shapes_probe, tmp_path):
    # the exporter writes 8-bit PNGs: dissecting the 8-bit images directly gives the same numbers
    small = ListProbe(shapes_probe.samples[:12], shapes_probe.names)
    write_broden(small, tmp_path / "probe")
    probe = BrodenProbe(tmp_path / "probe")
    quantised = ListProbe([{**s, "image": (s["image"] * 255).round() / 255} for s in small.samples], small.names)
    for i in (0, 7):
        for cat, codes in small[i]["concepts"].items():
            assert torch.equal(probe[i]["concepts"][cat][0], codes)
    model = wrap(Probed(nn.Sequential(ColorUnits(), nn.AvgPool2d(4)), 3), 64)
    a = dissect(model, quantised, quantile=0.05, batch_size=5)
    b = dissect(model, probe, quantile=0.05, batch_size=5)
    assert torch.equal(a.layers["features"].iou, b.layers["features"].iou)
    assert torch.equal(a.layers["features"].thresholds, b.layers["features"].thresholds)


def test_trained_shapes_cnn_has_more_detectors_than_random_weights(shapes_probe):
    import interpbench

    counts = {}
    for spec in ("shapes:cnn", "shapes:cnn@random"):
        result = dissect(interpbench.load_model(spec), shapes_probe, batch_size=48)
        counts[spec] = result.summary()
    trained, random = counts["shapes:cnn"], counts["shapes:cnn@random"]
    assert trained["layer3.detectors"] > random["layer3.detectors"]
    assert trained["layer3.shape.unique"] > random["layer3.shape.unique"]


# --------------------------------------------------------------------------------------------- Broden reader


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def test_broden_primary_category_and_label_layers(tmp_path):
    from PIL import Image

    root = tmp_path / "b"
    (root / "images").mkdir(parents=True)
    write_csv(root / "category.csv", ["name", "first", "last", "count", "frequency"],
              [["object", 1, 3, 2, 1], ["material", 2, 3, 2, 1], ["texture", 4, 4, 1, 1]])
    write_csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
              [[1, "car", "object(1)", 1, 0.5, ""], [2, "wood", "object(1);material(1)", 1, 0.5, ""],
               [3, "metal", "material(1)", 1, 0.2, ""], [4, "striped", "texture(1)", 1, 1.0, ""]])
    # "wood" is in object (coverage 0.1) and material (coverage 0.4): material is its primary category
    write_csv(root / "c_object.csv", ["code", "number", "name", "frequency", "coverage"],
              [[1, 1, "car", 1, 0.5], [2, 2, "wood", 1, 0.1]])
    write_csv(root / "c_material.csv", ["code", "number", "name", "frequency", "coverage"],
              [[1, 2, "wood", 1, 0.4], [2, 3, "metal", 1, 0.2]])
    write_csv(root / "c_texture.csv", ["code", "number", "name", "frequency", "coverage"], [[1, 4, "striped", 1, 1.0]])
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(root / "images" / "a.png")
    obj = np.array([[1, 1, 2, 2]] * 2 + [[0, 0, 0, 0]] * 2)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = obj
    Image.fromarray(rgb).save(root / "images" / "a_object.png")
    part = rgb.copy()
    part[..., 0] = np.array([[0, 0, 0, 0]] * 2 + [[3, 3, 0, 0]] * 2)
    Image.fromarray(part).save(root / "images" / "a_material.png")
    write_csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", "object", "material", "texture"],
              [["a.png", "train", 4, 4, 4, 4, "a_object.png", "a_material.png", "4"]])
    probe = BrodenProbe(root)
    assert probe.concept_names() == {"object": ["-", "car"], "material": ["-", "wood", "metal"],
                                     "texture": ["-", "striped"]}
    concepts = probe[0]["concepts"]
    assert concepts["object"].tolist() == [[[1, 1, 0, 0]] * 2 + [[0, 0, 0, 0]] * 2]
    # material gets a layer from each PNG that holds material labels: wood (from the object PNG) and metal
    assert sorted(layer.tolist() for layer in concepts["material"]) == sorted(
        [[[0, 0, 1, 1]] * 2 + [[0, 0, 0, 0]] * 2, [[0, 0, 0, 0]] * 2 + [[2, 2, 0, 0]] * 2])
    assert concepts["texture"].tolist() == [1]
    assert len(BrodenProbe(root, split="train")) == 1 and BrodenProbe(root, size=8)[0]["image"].shape == (3, 8, 8)
    with pytest.raises(ComponentError, match="no image of split 'val'"):
        BrodenProbe(root, split="val")


def test_broden_missing_path_names_the_layout(tmp_path):
    with pytest.raises(ComponentError, match=r"does not exist.*index\.csv.*category\.csv.*label\.csv.*c_<category>"):
        BrodenSource().load(path=str(tmp_path / "nowhere"))
    (tmp_path / "half").mkdir()
    write_csv(tmp_path / "half" / "category.csv", ["name"], [["color"]])
    with pytest.raises(ComponentError, match=r"label\.csv.*does not exist"):
        BrodenProbe(tmp_path / "half")


def test_export_broden_command(tmp_path):
    import argparse

    from rich.console import Console

    from interpbench.commands import export_broden

    parser = argparse.ArgumentParser()
    export_broden.configure(parser)
    args = parser.parse_args(["--dataset", "shapes", "--limit", "3", "--out", str(tmp_path / "x")])
    assert export_broden.main(args, Console(file=open(tmp_path / "log.txt", "w"))) == 0
    probe = BrodenProbe(tmp_path / "x")
    assert len(probe) == 3 and probe.concept_names()["color"][9] == "red"
    index = read_broden(tmp_path / "x")
    assert index.categories == ["color", "texture", "shape"]


# --------------------------------------------------------------------------------------------- Net2Vec


def test_net2vec_finds_a_concept_that_needs_two_units():
    # the concept "both" is where R + G > 1: no single unit's top quantile segments it, R + G - 1 > 0 does
    gen = torch.Generator().manual_seed(0)
    samples = []
    for i in range(48):
        image = torch.rand(3, 8, 8, generator=gen)
        both = (image[0] + image[1] > 1.0).long()
        samples.append({"id": str(i), "image": image, "concepts": {"kind": both}})
    probe = ListProbe(samples, {"kind": ["-", "both"]})
    rows = net2vec(wrap(Probed(ChannelUnits(), 4), 8), probe, "features", quantile=0.005, batch_size=16, steps=30)
    assert len(rows) == 1 and rows[0]["concept"] == "both"
    assert rows[0]["net2vec_iou"] > 0.85
    assert rows[0]["single_iou"] < 0.2
    assert rows[0]["top5_weight_share"] > 0.99  # all of the weight on the 3 live units (of 4)
    summary = summarize(rows, ["kind"])
    assert summary["net2vec_better"] == 1.0 and summary["kind.net2vec_iou"] == rows[0]["net2vec_iou"]


def test_collect_activations_reduces_over_positions():
    acts = collect_activations(tiny_model(), tiny_probe(), ["features"], batch_size=1)["features"]
    assert acts.shape == (2, 4, 2, 2)
    means = collect_activations(tiny_model(), tiny_probe(), "features", reduce="mean")["features"]
    assert torch.allclose(means, acts.mean(dim=(2, 3)))
