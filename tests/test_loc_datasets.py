"""Localisation loaders (VOC, COCO, ImageNet LOC, the shortcut world) on tiny fixtures written here in the real
on-disk formats, and the pointing game on them with hits computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as coco_mask
import pytest
import torch
from PIL import Image

from interpbench.commands.pointing_center import centre_baseline
from interpbench.core.base import Batch, ComponentError
from interpbench.datasets.coco import (
    CocoSource,
    polygon_to_mask,
    rle_counts_to_mask,
    rle_string_to_counts,
    segmentation_to_mask,
)
from interpbench.datasets.imagefolder import imagenet_classes
from interpbench.datasets.imagenet_loc import ImageNetLocSource
from interpbench.datasets.shapes import COLORS, SHAPES, ShapesWorld
from interpbench.datasets.shortcut import (
    PATCH_COLORS,
    ShortcutSource,
    ShortcutWorld,
    conflict_class,
)
from interpbench.datasets.voc import VOC_CLASSES, VOCSource
from interpbench.methods.baselines import CenterMap
from interpbench.metrics.localization import (
    EnergyPointingGame,
    EnergyPointingGameMasks,
    PointingGame,
)
from interpbench.testing import check_dataset
from interpbench.testing import world as conformance

DOG, CAT, PERSON = VOC_CLASSES.index("dog"), VOC_CLASSES.index("cat"), VOC_CLASSES.index("person")
# the ground-truth fields these loaders add (interpbench.metrics.localization, interpbench.datasets.shortcut);
# the conformance kit's KNOWN_FIELDS does not list them yet
LOCALISATION_FIELDS = {"orig_size", "orig_boxes", "orig_masks", "pointing_difficult", "patch_mask", "patch_box",
                       "patch_label", "clean_image"}


@pytest.fixture
def known_fields(monkeypatch):
    monkeypatch.setattr(conformance, "KNOWN_FIELDS", conformance.KNOWN_FIELDS | LOCALISATION_FIELDS)


# --------------------------------------------------------------------------------------------- fixture writers


def write_jpeg(path: Path, width: int, height: int, color=(120, 90, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path, quality=95)


def voc_xml(name: str, width: int, height: int, objects: list[tuple[str, int, tuple[int, int, int, int]]]) -> str:
    """A VOC annotation file: objects are (class, difficult, (xmin, ymin, xmax, ymax)), 1-based inclusive."""
    parts = [f"<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for cls, difficult, (x0, y0, x1, y1) in objects:
        parts.append(f"<object><name>{cls}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                     f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


# All images 100 x 80 (W x H). Boxes are 1-based inclusive as in VOC: (11, 11, 30, 30) is pixels 10..29.
VOC_IMAGES = {
    "000001": [("dog", 0, (11, 11, 30, 30)), ("person", 1, (61, 41, 90, 70)), ("person", 1, (1, 61, 10, 70))],
    "000002": [("cat", 0, (41, 31, 60, 50)), ("dog", 1, (1, 1, 10, 10)), ("dog", 0, (81, 61, 100, 80))],
    "000003": [("cat", 0, (1, 1, 100, 80))],
    "000004": [("cat", 0, (1, 1, 20, 20))],
}


def write_voc(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2007"
    for name, objects in VOC_IMAGES.items():
        write_jpeg(base / "JPEGImages" / f"{name}.jpg", 100, 80)
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        (base / "Annotations" / f"{name}.xml").write_text(voc_xml(name, 100, 80, objects))
    (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "Main" / "test.txt").write_text("\n".join(VOC_IMAGES) + "\n")
    return root


def trials(dataset, points: dict[tuple[str, int], tuple[int, int]], size=(80, 100)):
    """One trial per (image, class present), as the runner makes them with --target label, with a map whose only
    maximum is at ``points[(name, class)]`` (x, y)."""
    samples, maps = [], []
    for i in range(len(dataset)):
        s = dataset[i]
        for c in s["labels"]:
            samples.append({k: v for k, v in s.items() if k != "image"} | {"id": f"{s['id']}#{c}", "label": c,
                                                                           "image_id": s["id"]})
            m = torch.zeros(size)
            x, y = points[(s["name"], c)]
            m[y, x] = 1.0
            maps.append(m)
    batch = Batch(ids=[s["id"] for s in samples], images=torch.zeros(len(samples), 3, *size),
                  targets=torch.tensor([s["label"] for s in samples]), samples=samples)
    return batch, torch.stack(maps)


# --------------------------------------------------------------------------------------------- VOC


def test_voc_loader_reads_boxes_flags_and_sizes(tmp_path):
    ds = VOCSource().load(path=write_voc(tmp_path), size=(40, 50))
    assert len(ds) == 4 and ds.multilabel and ds.label_space == "pascal-voc" and ds.classes == list(VOC_CLASSES)
    s = ds[0]
    assert s["id"] == "voc2007-test/000001" and s["orig_size"] == (80, 100) and s["labels"] == [DOG, PERSON]
    assert s["image"].shape == (3, 40, 50)
    # 1-based inclusive (11, 11, 30, 30) -> pixel edges [10, 10, 30, 30]
    assert s["orig_boxes"][DOG].tolist() == [[10.0, 10.0, 30.0, 30.0]]
    assert s["boxes"][DOG].tolist() == [[5.0, 5.0, 15.0, 15.0]]  # scaled by 0.5 to the 50 x 40 input
    assert s["difficult"][PERSON].tolist() == [True, True] and s["difficult"][DOG].tolist() == [False]
    # computed difficult pairs: dog covers 400 / 8000 px with a person present; person 900 + 100 px with a dog
    assert s["pointing_difficult"] == {DOG: True, PERSON: True}
    assert ds[2]["pointing_difficult"] == {CAT: False}  # alone in the image
    ann = ds.annotation(1)
    assert "image" not in ann and ann["difficult"][DOG].tolist() == [True, False]


def test_voc_loader_passes_the_dataset_conformance_checks(tmp_path, known_fields):
    root = write_voc(tmp_path)
    report = check_dataset(VOCSource, path=str(root))
    assert report.ok, report


def test_voc_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(ComponentError, match="no VOC2007 folder"):
        VOCSource().load(path=tmp_path)
    root = write_voc(tmp_path)
    with pytest.raises(ComponentError, match="image set 'val' not found"):
        VOCSource().load(path=root, split="val")
    base = root / "VOCdevkit" / "VOC2007" / "Annotations"
    (base / "000004.xml").write_text(voc_xml("000004", 100, 80, [("unicorn", 0, (1, 1, 5, 5))]))
    with pytest.raises(ComponentError, match="unicorn"):
        VOCSource().load(path=root)[3]


# points (x, y) per (image, class), chosen by hand:
#   000001 dog    (44, 20): the box's nearest pixel is x = 29, exactly 15 px away -> miss (not strictly within)
#   000001 person (70, 50): all its boxes are difficult -> skipped
#   000002 cat    (26, 40): nearest box pixel x = 40 is 14 px away -> hit
#   000002 dog    a tie: maxima at (5, 5) (in a difficult dog box, which counts) and (50, 50) (31 px from the other
#                 box); the first in row-major order, (5, 5), is the point -> hit
#   000003 cat    anywhere -> hit;  000004 cat (19, 19): the box's last pixel -> hit
POINTS = {("000001", DOG): (44, 20), ("000001", PERSON): (70, 50), ("000002", CAT): (26, 40),
          ("000002", DOG): (5, 5), ("000003", CAT): (99, 0), ("000004", CAT): (19, 19)}


def test_pointing_game_on_voc_hand_computed(tmp_path):
    ds = VOCSource().load(path=write_voc(tmp_path), size=(80, 100))
    batch, maps = trials(ds, POINTS)
    tie = [i for i, s in enumerate(batch.samples) if s["id"] == "voc2007-test/000002#11"][0]
    maps[tie, 50, 50] = 1.0  # the second, later maximum of the tie
    metric = PointingGame()
    metric.update(None, batch, maps)
    out = metric.compute()
    # dog: 000001 miss, 000002 hit -> 1/2; cat: 000002, 000003, 000004 hit -> 3/3; class mean 0.75 (pooled: 4/5)
    assert out["pointing_game"] == pytest.approx(0.75) and out["n"] == 5 and out["skipped_difficult"] == 1
    # difficult pairs (boxes < 1/4 of the image, another class present): 000001 dog (miss), 000002 cat (hit),
    # 000002 dog (hit) -> dog 1/2, cat 1/1 -> 0.75
    assert out["difficult"] == pytest.approx(0.75) and out["n_difficult"] == 3
    assert out["no_region"] == 0
    assert out["pointing_game_ci_low"] <= out["pointing_game"] <= out["pointing_game_ci_high"]


def test_pointing_game_tolerance_is_configurable(tmp_path):
    ds = VOCSource().load(path=write_voc(tmp_path), size=(80, 100))
    batch, maps = trials(ds, POINTS)
    metric = PointingGame(tolerance=16)  # 000001 dog is now 15 < 16 px away: a hit; dog 2/2
    metric.update(None, batch, maps)
    assert metric.compute()["pointing_game"] == pytest.approx(1.0)


def test_pointing_game_resizes_the_map_to_the_original_image(tmp_path):
    ds = VOCSource().load(path=write_voc(tmp_path), size=(40, 50))
    batch, maps = trials(ds, {k: (0, 0) for k in POINTS}, size=(40, 50))
    for i in range(len(batch)):  # one peak at input pixel (x 10, y 10)
        maps[i] = 0
        maps[i, 10, 10] = 1.0
    metric = PointingGame(tolerance=1)  # tolerance 1: the point itself must be in the region
    metric.update(None, batch, maps)
    out = metric.compute()
    # bilinear x2 (align_corners=False) spreads the peak over original pixels 20..21 x 20..21, a 4-way tie whose
    # first is (20, 20): inside 000001's dog box (10..29) and 000003's cat box, outside 000002's and 000004's boxes
    # dog 1/2, cat 1/3
    assert out["pointing_game"] == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_difficult_list_file_in_torchray_format(tmp_path):
    ds_root = write_voc(tmp_path)
    flags = {"000001": {DOG}, "000002": {CAT}, "000004": set()}  # 000003 is not listed
    lines = [name + "\t" + "\t".join("1" if c in on else "0" for c in range(20)) for name, on in flags.items()]
    (tmp_path / "difficult.txt").write_text("\n".join(lines) + "\n")
    ds = VOCSource().load(path=ds_root, size=(80, 100), difficult_file=str(tmp_path / "difficult.txt"))
    assert ds[1]["pointing_difficult"] == {CAT: True, DOG: False}
    assert ds[2]["pointing_difficult"] == {CAT: True}  # unlisted image: TorchRay keeps its pairs in the subset
    batch, maps = trials(ds, POINTS)
    metric = PointingGame()
    metric.update(None, batch, maps)
    # difficult: 000001 dog (miss), 000002 cat (hit), 000003 cat (hit) -> dog 0, cat 1 -> 0.5
    assert metric.compute()["difficult"] == pytest.approx(0.5)
    (tmp_path / "bad.txt").write_text("000001\t1\t0\n")
    with pytest.raises(ComponentError, match="line 1: expected an image name and 20 0/1 flags"):
        VOCSource().load(path=ds_root, difficult_file=str(tmp_path / "bad.txt"))


def test_centre_baseline_uses_torchrays_centre_point(tmp_path):
    ds = VOCSource().load(path=write_voc(tmp_path), size=(40, 50))
    out = centre_baseline(ds)
    # centre (W/2, H/2) = (50, 40): 000001 dog (10..29): 21 px off -> miss; 000002 cat (40..59 x 30..49) -> hit;
    # 000002 dog boxes 0..9 and 80..99 x 60..79 -> miss; 000003 cat -> hit; 000004 cat (0..19) -> miss
    # dog 0/2, cat 2/3 -> 1/3; difficult: dog 0/2, cat 1/1 -> 1/2
    assert out["pointing_game"] == pytest.approx(1 / 3) and out["difficult"] == pytest.approx(0.5) and out["n"] == 5
    # the same through the metric as the runner calls it, with the center method's maps (ignored)
    batch, _ = trials(ds, {k: (0, 0) for k in POINTS}, size=(40, 50))
    metric = PointingGame()
    batch.method = CenterMap()
    metric.update(None, batch, CenterMap().explain(None, batch.images, batch.targets))
    assert metric.compute()["pointing_game"] == pytest.approx(1 / 3)


def test_energy_pointing_game_on_voc(tmp_path):
    ds = VOCSource().load(path=write_voc(tmp_path), size=(80, 100))
    batch, maps = trials(ds, POINTS)
    maps = maps.clone()
    maps[0] = -1.0  # 000001 dog: negative everywhere except the point (44, 20), outside the box -> 0
    maps[0, 20, 44] = 1.0
    maps[0, 15, 15] = 3.0  # ... and 3 inside the box: share 3 / 4
    # the published variant (Wang et al.): the raw map's energy in the boxes, boxes under half of the image
    out = run_metric(EnergyPointingGame(), batch, maps)
    # 000001 dog: inside its 20 x 20 box 3 - 399, in the whole 80 x 100 map 1 + 3 - 7998: share 396 / 7994;
    # 000002 cat (26, 40) outside -> 0; 000002 dog (5, 5) in a box -> 1; 000003 cat: its box is the whole image,
    # skipped; 000004 cat (19, 19) -> 1; mean over 4 trials
    dog = 396 / 7994
    assert out["energy_pointing_game"] == pytest.approx((dog + 0 + 1 + 1) / 4) and out["n"] == 4
    assert out["skipped_large"] == 1 and out["signed"] == 1 and out["region_masks"] == 0
    assert out["difficult"] == pytest.approx((dog + 0 + 1) / 3)
    # the mask variant: positive mass (masks where a sample has them: VOC has boxes), every trial
    out = run_metric(EnergyPointingGameMasks(), batch, maps)
    # 000001 dog: positive mass 1 + 3, of which 3 in the box: 0.75; 000003 cat 1; the others as above
    assert out["energy_pointing_game_masks"] == pytest.approx((0.75 + 0 + 1 + 1 + 1) / 5) and out["n"] == 5
    assert out["skipped_large"] == 0 and out["difficult"] == pytest.approx((0.75 + 0 + 1) / 3)


def run_metric(metric, batch, maps):
    metric.update(None, batch, maps)
    return metric.compute()


# --------------------------------------------------------------------------------------------- COCO


def block_counts(height: int, width: int, xs: tuple[int, int], ys: tuple[int, int]) -> list[int]:
    """Hand-made COCO counts (column-major, starting with background) of an axis-aligned block."""
    counts, position = [], 0
    for x in range(xs[0], xs[1]):
        start = x * height + ys[0]
        counts += [start - position, ys[1] - ys[0]]
        position = start + ys[1] - ys[0]
    counts.append(height * width - position)
    return counts


def write_coco(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    write_jpeg(root / "val2014" / "COCO_val2014_000000000042.jpg", 60, 50)
    write_jpeg(root / "val2014" / "COCO_val2014_000000000007.jpg", 40, 30)
    data = {
        "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "width": 60, "height": 50},
                   {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "width": 40, "height": 30}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            # a polygon: the rectangle x 10..30, y 10..20 -> pixels x 10..29, y 10..19 (pixel centres inside)
            {"id": 1, "image_id": 42, "category_id": 18, "iscrowd": 0, "bbox": [10, 10, 20, 10],
             "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]},
            # an uncompressed RLE (a crowd) of another class: the block x 40..44, y 5..9
            {"id": 2, "image_id": 42, "category_id": 1, "iscrowd": 1, "bbox": [40, 5, 5, 5],
             "segmentation": {"size": [50, 60], "counts": block_counts(50, 60, (40, 45), (5, 10))}},
            {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 40, 30],
             "segmentation": [[0, 0, 40, 0, 40, 30, 0, 30]]},
        ],
    }
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    return root


def test_coco_loader_decodes_polygon_and_rle_masks(tmp_path, known_fields):
    ds = CocoSource().load(path=write_coco(tmp_path), size=(25, 30))
    assert ds.classes == ["person", "car", "dog"]  # category-id order: 1, 3, 18
    assert len(ds) == 2 and ds[0]["id"] == "coco-val2014/COCO_val2014_000000000007"  # image-id order: 7, 42
    s = ds[1]
    assert s["orig_size"] == (50, 60) and s["labels"] == [0, 2]
    dog = s["orig_masks"][2]
    ys, xs = torch.nonzero(dog, as_tuple=True)
    assert (int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max()), int(dog.sum())) == (10, 29, 10, 19, 200)
    person = s["orig_masks"][0]
    expected = torch.zeros(50, 60, dtype=torch.bool)
    expected[5:10, 40:45] = True
    assert torch.equal(person, expected)
    assert s["orig_boxes"][2].tolist() == [[10.0, 10.0, 30.0, 20.0]]
    assert s["masks"][2].shape == (25, 30) and int(s["masks"][2].sum()) == 50  # halved in each direction
    assert s["image"].shape == (3, 25, 30)
    report = check_dataset(CocoSource, path=str(tmp_path))
    assert report.ok, report


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' numpy-2 copy keyword notice
def test_coco_masks_equal_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(8, 50, size=2))
        k = int(rng.integers(3, 9))
        polygon = np.stack([rng.uniform(-2, w + 2, k), rng.uniform(-2, h + 2, k)], 1).ravel().tolist()
        reference = coco_mask.decode(coco_mask.frPyObjects([polygon], h, w))[:, :, 0].astype(bool)
        assert np.array_equal(polygon_to_mask(polygon, h, w), reference)
        random_mask = rng.random((h, w)) < 0.3
        encoded = coco_mask.encode(np.asfortranarray(random_mask.astype(np.uint8)))
        assert np.array_equal(segmentation_to_mask(encoded, h, w), random_mask)  # compressed RLE string


def test_rle_decoding_by_hand():
    # a 3 x 2 image, column-major: counts [1, 2, 3] -> 0 | 1 1 | 0 0 0 -> column 0 = (0, 1, 1), column 1 = (0, 0, 0)
    assert rle_counts_to_mask([1, 2, 3], 3, 2).tolist() == [[False, False], [True, False], [True, False]]
    # compressed: each count a 5-bit group + 48; from the fourth count on (pycocotools: index m > 2), a difference
    # to the count two places before: "8" at index 3 is 8 + counts[1]
    assert rle_string_to_counts("1238") == [1, 2, 3, 8 + 2]
    with pytest.raises(ComponentError, match="sum to 5"):
        rle_counts_to_mask([1, 2, 2], 3, 2)


def test_pointing_game_on_coco_uses_masks(tmp_path):
    ds = CocoSource().load(path=write_coco(tmp_path), size=(50, 60))
    sample = ds[1]
    trials_ = [{k: v for k, v in sample.items() if k != "image"} | {"id": f"{sample['id']}#{c}", "label": c,
                                                                   "image_id": sample["id"]} for c in (0, 2)]
    maps = torch.zeros(2, 50, 60)
    maps[0, 5, 25] = 1  # person: the block's nearest pixel (40, 5) is exactly 15 px away -> miss
    maps[1, 34, 20] = 1  # dog: mask rows 10..19; (20, 34) is 15 px below row 19 -> miss; its box too
    batch = Batch(ids=[t["id"] for t in trials_], images=torch.zeros(2, 3, 50, 60), targets=torch.tensor([0, 2]),
                  samples=trials_)
    metric = PointingGame()
    metric.update(None, batch, maps)
    assert metric.compute()["pointing_game"] == 0.0
    maps[0, 5, 25], maps[0, 5, 26] = 0, 1  # 14 px -> hit
    metric.reset()
    metric.update(None, batch, maps)
    assert metric.compute()["pointing_game"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------- ImageNet LOC


def test_imagenet_loc_csv_layout(tmp_path, known_fields):
    _, index = imagenet_classes()
    wnids = sorted(index, key=index.get)
    images = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    write_jpeg(images / "ILSVRC2012_val_00000002.JPEG", 64, 48)
    write_jpeg(images / "ILSVRC2012_val_00000001.JPEG", 50, 40)
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000002,{wnids[5]} 10 20 29 39 {wnids[5]} 0 0 63 47 \n"
        f"ILSVRC2012_val_00000001,{wnids[999]} 5 6 7 8 \n")
    ds = ImageNetLocSource().load(path=tmp_path, size=(24, 32))
    assert len(ds) == 2 and not ds.multilabel and ds.label_space == "imagenet-1k"
    first, second = ds[0], ds[1]
    assert first["id"] == "imagenet-val-loc/ILSVRC2012_val_00000001" and first["label"] == 999
    assert first["orig_size"] == (40, 50) and first["orig_boxes"][999].tolist() == [[5.0, 6.0, 8.0, 9.0]]
    # 0-based inclusive -> pixel edges, clipped to the 64 x 48 image
    assert second["label"] == 5 and second["orig_boxes"][5].tolist() == [[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 64.0, 48.0]]
    assert second["boxes"][5].tolist()[0] == [5.0, 10.0, 15.0, 20.0]
    report = check_dataset(ImageNetLocSource, path=str(tmp_path))
    assert report.ok, report
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nx,n01440764 1 2 3\n")
    with pytest.raises(ComponentError, match="groups of 5"):
        ImageNetLocSource().load(path=tmp_path)


def write_imagenet_loc(root: Path) -> Path:
    _, index = imagenet_classes()
    wnids = sorted(index, key=index.get)
    write_jpeg(root / "ILSVRC" / "Data" / "CLS-LOC" / "val" / "ILSVRC2012_val_00000001.JPEG", 50, 40)
    (root / "LOC_val_solution.csv").write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{wnids[3]} 5 6 7 8 \n")
    return root


@pytest.mark.parametrize("source, write", [(VOCSource, write_voc), (CocoSource, write_coco),
                                           (ImageNetLocSource, write_imagenet_loc)])
def test_a_copy_at_another_path_has_the_same_portable_identity(tmp_path, source, write):
    # cell keys and seeds come from portable(identity): what the files hold, not where they lie
    import shutil

    from interpbench.core.identity import portable

    first = write(tmp_path / "a")
    shutil.copytree(first, tmp_path / "b")
    a, b = source().load(path=first, size=32), source().load(path=tmp_path / "b", size=32)
    assert a.identity() != b.identity() and portable(a.identity()) == portable(b.identity())
    digests = {k: v for k, v in portable(a.identity()).items() if k.endswith("_sha256")}
    assert digests and "path" in a.identity() and "path" not in portable(a.identity())
    # the same layout with other contents (one image fewer, another box) has another identity
    edited = write(tmp_path / "c")
    if source is VOCSource:
        (edited / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n000003\n")
    else:
        index = edited / ("annotations/instances_val2014.json" if source is CocoSource else "LOC_val_solution.csv")
        index.write_text(index.read_text().replace("[10, 10, 20, 10]", "[10, 10, 20, 11]").replace(" 5 6 7 8", " 5 6 9 9"))
    assert portable(source().load(path=edited, size=32).identity()) != portable(a.identity())


# --------------------------------------------------------------------------------------------- shortcut world


def test_shortcut_world_plants_the_patch(known_fields):
    train = ShortcutWorld("train", n=6)
    test = ShortcutWorld("test", n=6)
    base = ShapesWorld("test", 64, n=6)
    side = test.side
    assert side == 6 and test.mode == "conflict" and train.mode == "agree"
    for i in range(6):
        s, b = test[i], base[i]
        colour = torch.tensor(COLORS[PATCH_COLORS[s["patch_label"]]])
        assert torch.allclose(s["image"][:, :side, :side], colour.view(3, 1, 1).expand(3, side, side))
        assert torch.equal(s["image"][:, side:, :], b["image"][:, side:, :]) and torch.equal(s["clean_image"], b["image"])
        assert s["patch_label"] == conflict_class(0, "test", i, s["label"]) != s["label"] and s["label"] == b["label"]
        assert not (s["masks"][s["label"]] & s["patch_mask"]).any() and int(s["patch_mask"].sum()) == side * side
        assert train[i]["patch_label"] == train[i]["label"]
    images, labels = test.tensors(0, 6)
    assert torch.equal(images[3], test[3]["image"]) and labels.tolist() == [test[i]["label"] for i in range(6)]
    # conflict classes are spread over the other classes
    others = {conflict_class(0, "test", i, 0) for i in range(200)}
    assert others == set(range(1, len(SHAPES)))
    report = check_dataset(ShortcutSource, n=4)
    assert report.ok, report


def test_pointing_center_command(tmp_path):
    import argparse

    from rich.console import Console

    from interpbench.commands import pointing_center

    root = write_voc(tmp_path)
    config = tmp_path / "datasets.yaml"
    config.write_text(f"voc-fixture:\n  loader: voc\n  path: {root}\n")
    parser = argparse.ArgumentParser()
    pointing_center.configure(parser)
    console = Console(record=True, width=200)
    assert pointing_center.main(parser.parse_args(["voc-fixture", "--datasets-config", str(config)]), console) == 0
    text = console.export_text()
    assert "all 33.3%" in text and "difficult 50.0%" in text and "5 trials (3 difficult), 1 all-difficult" in text
    assert "1 all-difficult pairs skipped" in text
    assert pointing_center.main(parser.parse_args(["nope", "--datasets-config", str(config)]), console) == 2
