"""Loader ``imagefolder``: images sorted into one folder per class (the ImageNet-val layout ``path/<wnid>/*.JPEG``).

With ``label_space="imagenet-1k"`` the folder names must be ImageNet-1k synset ids (``n01440764``, ...) and labels
are their ImageNet class indices (timm's synset order, the standard one); with ``label_space=None`` the classes are
the sorted folder names. Images are decoded with PIL and resized ImageNet-style: the shorter side to
``size / crop_pct``, then a centre crop of ``size``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from interpbench.core.base import ComponentError, DatasetSource
from interpbench.core.identity import lines_sha256

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
LAYOUT = "<path>/<class folder, e.g. an ImageNet synset id like n01440764>/<image>.JPEG"


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[list[str], dict[str, int]]:
    """ImageNet-1k class names (index order) and the synset id -> index map, from timm's bundled files (offline).

    The files are read without importing timm (a multi-second import); the names are timm's
    ``ImageNetInfo().index_to_description(i)`` (WordNet lemmas, e.g. ``"tench, Tinca tinca"``).
    """
    spec = importlib.util.find_spec("timm")
    info_dir = Path(spec.origin).parent / "data" / "_info" if spec and spec.origin else None
    if info_dir is not None and (info_dir / "imagenet_synsets.txt").is_file():
        wnids = (info_dir / "imagenet_synsets.txt").read_text().split()
        lines = (info_dir / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines()
        lemmas = dict(line.split("\t", 1) for line in lines if "\t" in line)
        names = [lemmas[w] for w in wnids]
    else:  # a timm that moved its files: ask its API
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        wnids = list(info.label_names())
        names = [info.index_to_description(i) for i in range(len(wnids))]
    return names, {w: i for i, w in enumerate(wnids)}


def size_hw(size: Any, who: str) -> tuple[int, int]:
    """``size`` (int or (H, W)) as (H, W)."""
    if isinstance(size, int):
        return size, size
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ComponentError(f"{who}: size {size!r} is not an int or (H, W); use e.g. size=224") from None
    return height, width


def resize_center_crop(image: Image.Image, size: Any, crop_pct: float = 0.875) -> Image.Image:
    """ImageNet evaluation transform: scale so the image covers ``size / crop_pct`` (bilinear), centre-crop ``size``."""
    height, width = size_hw(size, "resize")
    scale = max(height / image.height, width / image.width) / crop_pct
    new_w, new_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float ``3 x H x W`` in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_image(path: str | Path, size: Any, crop_pct: float = 0.875) -> torch.Tensor:
    with Image.open(path) as image:
        return to_tensor(resize_center_crop(image.convert("RGB"), size, crop_pct))


def scan_folders(root: Path) -> list[tuple[str, list[Path]]]:
    """(class folder name, sorted image files) for each sub-folder of ``root`` that holds images, sorted by name."""
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            out.append((folder.name, files))
    return out


class ImageFolder(torch.utils.data.Dataset):
    """Images under ``root/<class>/``; sample ids are ``<name>/<class>/<file stem>``."""

    provides = frozenset({"label"})

    def __init__(self, root: Path, files: list[tuple[Path, int]], classes: list[str], label_space: str, size: Any,
                 crop_pct: float, name: str, split: str | None):
        self.root, self.files, self.classes, self.label_space = root, files, classes, label_space
        self.size, self.crop_pct, self.name, self.split = size_hw(size, "imagefolder"), crop_pct, name, split
        self._id_prefix = name  # fixed at load time, so ids stay stable if ``name`` is reassigned
        self._files_sha256: str | None = None

    def __len__(self) -> int:
        return len(self.files)

    def identity(self) -> dict[str, Any]:
        # "path" says where the files lie (left out of cell identities); the file list says which images they are
        if self._files_sha256 is None:  # computed once: the runner asks for the identity of every cell
            self._files_sha256 = lines_sha256(f"{path.relative_to(self.root).as_posix()}\t{label}"
                                              for path, label in self.files)
        return {"loader": "imagefolder", "path": str(self.root), "split": self.split, "size": list(self.size),
                "crop_pct": self.crop_pct, "label_space": self.label_space, "n": len(self.files),
                "files_sha256": self._files_sha256}

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.files[index]
        return {"id": f"{self._id_prefix}/{path.parent.name}/{path.stem}",
                "image": load_image(path, self.size, self.crop_pct), "label": label, "path": str(path)}


class ImageFolderSource(DatasetSource):
    """Loader ``imagefolder``: ``load(path, split=None, size=224, label_space="imagenet-1k", n=None)``.

    ``split``: if ``path/<split>`` is a folder it is read instead of ``path``. ``n``: the first ``n`` images (in
    class-folder, then file-name order).
    """

    name = "imagefolder"

    def load(self, path: Any = None, split: str | None = None, size: Any = 224, label_space: str | None = "imagenet-1k",
             n: int | None = None, crop_pct: float = 0.875, name: str = "imagefolder", **ignored: Any) -> ImageFolder:
        if path is None:
            raise ComponentError(f"imagefolder: no path given; set `path:` in datasets.yaml to a folder laid out as "
                                 f"{LAYOUT}")
        root = Path(path).expanduser()
        if not root.is_dir():
            raise ComponentError(f"imagefolder: {str(root)!r} does not exist or is not a folder; expected the "
                                 f"ImageNet-val layout {LAYOUT} (set `path:` in datasets.yaml or $IMAGENET_VAL)")
        if split and (root / split).is_dir():
            root = root / split
        folders = scan_folders(root)
        if not folders:
            loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
            hint = (f"; it holds {len(loose)} images directly (e.g. {loose[0]!r}) but they must be sorted into one "
                    "folder per class (for ImageNet val, e.g. with the valprep.sh script)") if loose else ""
            raise ComponentError(f"imagefolder: no class folders with images under {str(root)!r}; "
                                 f"expected {LAYOUT}{hint}")
        if label_space == "imagenet-1k":
            classes, index = imagenet_classes()
            unknown = [f for f, _ in folders if f not in index]
            if unknown:
                raise ComponentError(
                    f"imagefolder: under {str(root)!r}, folder(s) {unknown[:5]} are not ImageNet-1k synset ids "
                    f"(expected {LAYOUT}); use label_space: null to take the folder names as classes")
            files = [(p, index[f]) for f, paths in folders for p in paths]
        elif label_space is None:
            classes = [f for f, _ in folders]
            files = [(p, k) for k, (_, paths) in enumerate(folders) for p in paths]
            label_space = f"imagefolder:{root.name}"
        else:
            raise ComponentError(f"imagefolder: label_space {label_space!r} unknown; use 'imagenet-1k' or null")
        if n is not None:
            files = files[: int(n)]
        if not math.isfinite(crop_pct) or not 0 < crop_pct <= 1:
            raise ComponentError(f"imagefolder: crop_pct {crop_pct!r} must be in (0, 1]; 0.875 is the ImageNet one")
        return ImageFolder(root, files, classes, label_space, size, crop_pct, name, split)
