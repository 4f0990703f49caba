"""The scikit-image photos and the image-folder loader (ImageNet-val layout)."""

import numpy as np
import pytest
import torch
from PIL import Image

from interpbench.core.base import ComponentError
from interpbench.datasets.imagefolder import (
    ImageFolderSource,
    resize_center_crop,
    to_tensor,
)
from interpbench.datasets.photos import PHOTOS, PhotosSource


def test_photos_load_offline_at_the_requested_size_with_labels():
    ds = PhotosSource().load(size=64)
    assert len(ds) == len(PHOTOS) >= 6 and ds.label_space == "imagenet-1k" and len(ds.classes) == 1000
    by_name = {ds[i]["name"]: ds[i] for i in range(len(ds))}
    assert by_name["chelsea"]["label"] == 285 and ds.classes[285] == "Egyptian cat"
    assert by_name["coffee"]["label"] == 967 and ds.classes[967] == "espresso"
    assert "label" not in by_name["astronaut"] and "label" not in by_name["rocket"]
    for name, sample in by_name.items():
        assert sample["id"] == f"photos/{name}"
        assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
        assert 0 <= sample["image"].min() and sample["image"].max() <= 1 and sample["image"].std() > 0.02
    # the coffee photo is a warm brown scene: red channel brighter than blue on average
    coffee = by_name["coffee"]["image"]
    assert coffee[0].mean() > coffee[2].mean()


def test_photos_options():
    source = PhotosSource()
    labelled = source.load(size=(48, 80), labelled_only=True)
    assert [labelled[i]["name"] for i in range(len(labelled))] == ["chelsea", "coffee"]
    assert labelled[0]["image"].shape == (3, 48, 80)
    assert len(source.load(size=32, n=3)) == 3
    with pytest.raises(ComponentError, match="'lena'"):
        source.load(names=["lena"])


def test_resize_center_crop_hand_case():
    # 200 x 100 image, left half red, right half blue; crop_pct 1: shorter side 100 -> 50, width 200 -> 100,
    # centre crop 50 x 50 = original columns 50..150: red then blue, 25 columns each.
    array = np.zeros((100, 200, 3), np.uint8)
    array[:, :100, 0] = 255
    array[:, 100:, 2] = 255
    out = to_tensor(resize_center_crop(Image.fromarray(array), 50, crop_pct=1.0))
    assert out.shape == (3, 50, 50)
    assert (out[0, :, :24] > 0.99).all() and (out[2, :, :24] < 0.01).all()
    assert (out[2, :, 26:] > 0.99).all() and (out[0, :, 26:] < 0.01).all()
    # crop_pct 0.875 (the ImageNet convention): resize to 50 / 0.875 = 57 px on the shorter side, then crop 50
    out = resize_center_crop(Image.fromarray(array), 50, crop_pct=0.875)
    assert out.size == (50, 50)


@pytest.fixture()
def val_tree(tmp_path):
    """tmp/val/<wnid>/*.JPEG: n01440764 (tench, 0) in red, n01443537 (goldfish, 1) in blue, 2 images each."""
    root = tmp_path / "val"
    for wnid, rgb in (("n01440764", (220, 20, 20)), ("n01443537", (20, 20, 220))):
        (root / wnid).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (40 + 10 * k, 30), rgb).save(root / wnid / f"ILSVRC2012_val_{wnid[-2:]}{k}.JPEG")
    return root


def test_imagefolder_reads_the_imagenet_val_layout(val_tree):
    ds = ImageFolderSource().load(path=str(val_tree), size=32)
    assert len(ds) == 4 and ds.label_space == "imagenet-1k" and len(ds.classes) == 1000
    assert ds.classes[0].startswith("tench") and ds.classes[1].startswith("goldfish")
    samples = [ds[i] for i in range(4)]
    assert [s["label"] for s in samples] == [0, 0, 1, 1]
    assert samples[0]["id"] == "imagefolder/n01440764/ILSVRC2012_val_640"
    for s in samples:
        assert s["image"].shape == (3, 32, 32)
        red, blue = s["image"][0].mean(), s["image"][2].mean()
        assert (red > 0.8 and blue < 0.2) if s["label"] == 0 else (blue > 0.8 and red < 0.2)
    assert ds.identity()["path"] == str(val_tree)


def test_imagefolder_identity_is_its_file_list_not_its_path(val_tree, tmp_path):
    import shutil

    from interpbench.core.identity import portable

    copy = shutil.copytree(val_tree, tmp_path / "elsewhere" / "val")
    a, b = ImageFolderSource().load(path=str(val_tree), size=32), ImageFolderSource().load(path=str(copy), size=32)
    assert a.identity()["path"] != b.identity()["path"] and portable(a.identity()) == portable(b.identity())
    sorted(copy.rglob("*.JPEG"))[0].unlink()  # the first image gone: the first 3 are other images
    c = ImageFolderSource().load(path=str(copy), size=32, n=3)
    d = ImageFolderSource().load(path=str(val_tree), size=32, n=3)
    assert len(c) == len(d) == 3 and portable(c.identity()) != portable(d.identity())


def test_imagefolder_split_subfolder_and_folder_classes(val_tree):
    ds = ImageFolderSource().load(path=str(val_tree.parent), split="val", size=(16, 24), label_space=None, n=3)
    assert ds.classes == ["n01440764", "n01443537"] and ds.label_space == "imagefolder:val"
    assert [ds[i]["label"] for i in range(len(ds))] == [0, 0, 1]
    assert ds[2]["image"].shape == (3, 16, 24)


def test_imagefolder_errors_name_the_path_and_layout(tmp_path, val_tree):
    source = ImageFolderSource()
    missing = tmp_path / "nowhere"
    with pytest.raises(ComponentError, match="does not exist.*synset") as info:
        source.load(path=str(missing))
    assert str(missing) in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ComponentError) as info:
        source.load(path=str(empty))
    assert str(empty) in str(info.value) and "n01440764" in str(info.value)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(ComponentError, match="folder per class") as info:
        source.load(path=str(flat))
    assert str(flat) in str(info.value)
    (val_tree / "cats").mkdir()
    Image.new("RGB", (8, 8)).save(val_tree / "cats" / "a.jpg")
    with pytest.raises(ComponentError, match="'cats'.*label_space"):
        source.load(path=str(val_tree))


def test_offline_lite0_recognises_the_labelled_photos():
    import interpbench as ib

    model = ib.load_model("timm:tf_efficientnet_lite0")
    ds = ib.load_dataset("photos", size=model.input_size, labelled_only=True)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    with torch.no_grad():
        predicted = model(images).argmax(1).tolist()
    assert predicted == [ds[i]["label"] for i in range(len(ds))] == [285, 967]  # Egyptian cat, espresso
