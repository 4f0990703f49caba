"""The synthetic shapes world: determinism, label design, and ground truth consistent with the pixels."""

import math

import numpy as np
import pytest
import torch

from interpbench.core.base import ComponentError
from interpbench.datasets.shapes import (
    BACKGROUND,
    COLOR_NAMES,
    COLORS,
    SHAPES,
    TEXTURES,
    ShapesSource,
    ShapesWorld,
    concept_names,
    inside_polygon,
    shade,
    shape_mask,
)


@pytest.fixture(scope="module")
def samples():
    ds = ShapesWorld("test", 64, n=48, task="shape")
    return [ds[i] for i in range(len(ds))]


def test_same_index_same_sample_in_any_order():
    a = ShapesWorld("test", 64, n=20)
    b = ShapesWorld("test", 64, n=20)
    later = b[17]  # b draws 17 first: sample i must not depend on what was drawn before
    assert torch.equal(a[17]["image"], later["image"])
    assert torch.equal(a[3]["image"], b[3]["image"])
    assert a[3]["id"] == "shapes/test/000003"


def test_seeds_and_splits_give_different_images():
    test0, test1 = ShapesWorld("test", 64, n=16), ShapesWorld("test", 64, n=16, seed=1)
    train0 = ShapesWorld("train", 64, n=16)
    x0, _ = test0.tensors()
    x1, _ = test1.tensors()
    xt, _ = train0.tensors()
    # every image of one stream differs from every image of the other
    assert (x0[:, None] - x1[None]).abs().flatten(2).amax(2).min() > 0.1
    assert (x0[:, None] - xt[None]).abs().flatten(2).amax(2).min() > 0.1
    assert test1[0]["id"] == "shapes/seed1/test/000000"


def test_tensors_fast_path_matches_getitem():
    ds = ShapesWorld("test", 64, n=6, task="color")
    images, labels = ds.tensors(2, 5)
    for j, i in enumerate(range(2, 5)):
        assert torch.equal(images[j], ds[i]["image"])
        assert labels[j] == ds[i]["label"]


def test_labelled_object_is_largest_and_label_is_its_property():
    for task, names in (("shape", SHAPES), ("color", COLOR_NAMES), ("texture", TEXTURES)):
        ds = ShapesWorld("test", 64, n=40, task=task)
        for i in range(len(ds)):
            s = ds[i]
            main, *others = s["objects"]
            assert all(main["area"] >= 2 * o["area"] for o in others)
            assert names[s["label"]] == main[task]
            assert s["labels"] == sorted({names.index(o[task]) for o in s["objects"]})
            assert ds.classes == list(names) and ds.label_space == f"shapes:{task}"


def test_objects_do_not_overlap_and_areas_are_mask_sizes(samples):
    n_objects = []
    for s in samples:
        masks = torch.stack([o["mask"] for o in s["objects"]])
        assert masks.sum(0).max() <= 1  # disjoint: the labelled object is never occluded
        assert [int(m.sum()) for m in masks] == [o["area"] for o in s["objects"]]
        n_objects.append(len(masks))
    assert set(n_objects) == {1, 2, 3}


def test_object_pixels_are_tones_of_the_object_colour(samples):
    seen_solid = 0
    for s in samples:
        image = s["image"].permute(1, 2, 0)
        for o in s["objects"]:
            pixels = image[o["mask"]]
            color = torch.tensor(COLORS[o["color"]])
            dark = torch.from_numpy(shade(np.asarray(COLORS[o["color"]], np.float32)))
            if o["texture"] == "solid":
                seen_solid += 1
                assert torch.allclose(pixels, color.expand_as(pixels), atol=1e-6)
            else:  # pixel = color + t * (dark - color), the same t in all channels, t in [0, 1]
                direction = dark - color
                t = ((pixels - color) @ direction) / direction.dot(direction)
                assert t.min() >= -1e-5 and t.max() <= 1 + 1e-5
                assert torch.allclose(color + t[:, None] * direction, pixels, atol=1e-5)
                if o is s["objects"][0]:
                    assert t.std() > 0.05  # the texture is visible on the labelled object
    assert seen_solid > 0


def test_background_is_not_a_named_colour(samples):
    for s in samples:
        background = s["concepts"]["shape"] == 0
        mean = s["image"].permute(1, 2, 0)[background].mean(0)
        assert (mean - torch.tensor(BACKGROUND)).abs().max() < 0.08
        for rgb in COLORS.values():
            assert torch.linalg.vector_norm(mean - torch.tensor(rgb)) > 0.2


def test_concept_maps_masks_and_boxes_agree_with_objects(samples):
    names = concept_names()
    assert names["color"] == ["-", "black", "blue", "brown", "grey", "green", "orange", "pink", "purple", "red",
                              "white", "yellow"]
    assert names["shape"][0] == names["texture"][0] == "-" and len(names["shape"]) >= 7 and len(names["texture"]) >= 6
    for s in samples:
        union = torch.stack([o["mask"] for o in s["objects"]]).any(0)
        for category, maps in s["concepts"].items():
            assert maps.dtype == torch.long and maps.shape == (64, 64)
            assert torch.equal(maps > 0, union)  # background: no concept in any category
            for o in s["objects"]:
                assert (maps[o["mask"]] == names[category].index(o[category])).all()
        for cls, mask in s["masks"].items():
            expected = torch.stack([o["mask"] for o in s["objects"] if SHAPES.index(o["shape"]) == cls]).any(0)
            assert torch.equal(mask, expected)
            assert len(s["boxes"][cls]) == sum(SHAPES.index(o["shape"]) == cls for o in s["objects"])
        for o in s["objects"]:
            x1, y1, x2, y2 = o["box"].long().tolist()
            assert o["mask"][y1:y2, x1:x2].sum() == o["area"]  # the box holds the whole mask ...
            # ... and is tight: the mask touches all four edges
            assert o["mask"][y1].any() and o["mask"][y2 - 1].any()
            assert o["mask"][:, x1].any() and o["mask"][:, x2 - 1].any()
            assert any(torch.equal(o["box"], b) for b in s["boxes"][SHAPES.index(o["shape"])])


def test_shape_geometry_hand_cases():
    # square of radius 10 at (32, 32): half side 8.2 -> pixel centres 24.5 .. 39.5 -> 16 x 16 pixels
    square = shape_mask("square", 32.0, 32.0, 10.0, 0.0, 64, 64)
    assert square.sum() == 256 and square[24:40, 24:40].all()
    # ring: the centre is a hole; circle: the centre is filled; both within the radius
    assert not shape_mask("ring", 32.0, 32.0, 10.0, 0.0, 64, 64)[31:33, 31:33].any()
    circle = shape_mask("circle", 32.0, 32.0, 10.0, 0.0, 64, 64)
    assert circle[31:33, 31:33].all() and abs(int(circle.sum()) - math.pi * 100) < 20
    # the unit square polygon: crossing-number test on points with known answers
    unit = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    u = np.array([0.5, 1.5, 0.2, -0.1])
    v = np.array([0.5, 0.5, 0.9, 0.5])
    assert inside_polygon(u, v, unit).tolist() == [True, False, True, False]
    # a five-pointed star: on a circle of radius 0.8 the inside runs are exactly the 5 tips
    angles = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    from interpbench.datasets.shapes import _POLYGONS

    ring_in = inside_polygon(0.8 * np.cos(angles), 0.8 * np.sin(angles), _POLYGONS["star"])
    assert int((ring_in & ~np.roll(ring_in, 1)).sum()) == 5


def test_source_defaults_identity_and_errors():
    source = ShapesSource()
    test = source.load()
    assert len(test) == 512 and len(source.load(split="train")) == 4096
    assert test.identity() == {"loader": "shapes", "split": "test", "size": [64, 64], "n": 512, "seed": 0,
                               "task": "shape", "generator": "shapes-world-2"}
    assert test.provides >= {"label", "labels", "boxes", "masks", "concepts"}
    odd = source.load(size=(48, 80), n=3, task="texture", path="ignored")
    assert odd[2]["image"].shape == (3, 48, 80) and odd.classes == list(TEXTURES)
    with pytest.raises(ComponentError, match="'colour'"):
        source.load(task="colour")
    with pytest.raises(ComponentError, match="'dev'"):
        source.load(split="dev")
    with pytest.raises(IndexError):
        test[512]
