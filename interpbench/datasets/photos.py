"""Loader ``photos``: the real colour photographs that ship inside the scikit-image package (no download).

Read straight from the files in ``skimage/data`` (the package's ``skimage.data`` functions would fetch the ones
that are not bundled). ``label`` is the ImageNet-1k class index only where the class is unambiguous (the cat
"chelsea" -> 285 Egyptian cat, "coffee" -> 967 espresso); the other photos carry no ``label`` key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from interpbench.core.base import ComponentError, DatasetSource
from interpbench.datasets.imagefolder import (
    imagenet_classes,
    resize_center_crop,
    size_hw,
    to_tensor,
)

# name -> (file in skimage/data, ImageNet-1k label or None)
PHOTOS: dict[str, tuple[str, int | None]] = {
    "chelsea": ("chelsea.png", 285),  # a cat: Egyptian cat
    "coffee": ("coffee.png", 967),  # a cup of espresso
    "astronaut": ("astronaut.png", None),  # portrait of Eileen Collins: no ImageNet class
    "rocket": ("rocket.jpg", None),  # Falcon 9 on the launch pad: missile? projectile? not sure
    "motorcycle": ("motorcycle_left.png", None),  # a sports motorcycle (Middlebury stereo): no exact class
    "hubble_deep_field": ("hubble_deep_field.jpg", None),
    "immunohistochemistry": ("ihc.png", None),
    "retina": ("retina.jpg", None),
}


def skimage_data_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


class Photos(torch.utils.data.Dataset):
    """The scikit-image photos at ``size``; ids ``photos/<name>``."""

    provides = frozenset({"label"})
    label_space = "imagenet-1k"

    def __init__(self, names: list[str], size: Any, crop_pct: float):
        self.names, self.size, self.crop_pct = names, size_hw(size, "photos"), crop_pct
        self.name = "photos"
        self.classes = imagenet_classes()[0]
        self.labelled = [n for n in names if PHOTOS[n][1] is not None]
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.names)

    def identity(self) -> dict[str, Any]:
        import skimage

        return {"loader": "photos", "names": list(self.names), "size": list(self.size), "crop_pct": self.crop_pct,
                "skimage": skimage.__version__}

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        if index not in self._cache:
            path = skimage_data_dir() / PHOTOS[name][0]
            if not path.is_file():
                raise ComponentError(f"photos: {str(path)!r} is missing from the installed scikit-image; reinstall "
                                     "scikit-image (pip install --force-reinstall scikit-image)")
            with Image.open(path) as image:
                self._cache[index] = to_tensor(resize_center_crop(image.convert("RGB"), self.size, self.crop_pct))
        sample = {"id": f"photos/{name}", "image": self._cache[index].clone(), "name": name}
        if PHOTOS[name][1] is not None:
            sample["label"] = PHOTOS[name][1]
        return sample


class PhotosSource(DatasetSource):
    """Loader ``photos``: ``load(size=224, names=None, labelled_only=False, n=None, crop_pct=1.0)``.

    The photos are framed around their subject, so the default keeps the whole central square (shorter side
    resized to the input size, ``crop_pct=1``) rather than ImageNet's 0.875 crop; with it the offline
    EfficientNet-Lite0 calls chelsea an Egyptian cat and coffee an espresso."""

    name = "photos"

    def load(self, split: str | None = None, size: Any = 224, names: list[str] | None = None,
             labelled_only: bool = False, n: int | None = None, crop_pct: float = 1.0, path: Any = None,
             **ignored: Any) -> Photos:
        chosen = list(PHOTOS) if names is None else list(names)
        unknown = [x for x in chosen if x not in PHOTOS]
        if unknown:
            raise ComponentError(f"photos: unknown photo name(s) {unknown}; the photos are {list(PHOTOS)}")
        if labelled_only:
            chosen = [x for x in chosen if PHOTOS[x][1] is not None]
        if n is not None:
            chosen = chosen[: int(n)]
        return Photos(chosen, size, crop_pct)
