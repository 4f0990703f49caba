"""Loader ``imagenet_loc``: ImageNet-1k validation images with their bounding boxes (``LOC_val_solution.csv``).

Layout (Kaggle's "ImageNet Object Localization Challenge" download)::

    <path>/LOC_val_solution.csv                       ImageId,PredictionString
    <path>/ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000001.JPEG

``PredictionString`` lists ``<synset> <xmin> <ymin> <xmax> <ymax>`` per box, in pixels of the original image;
the values are 0-based inclusive pixel indices (the ILSVRC XML convention), stored here as pixel-edge boxes
``[xmin, ymin, xmax + 1, ymax + 1]`` clipped to the image. The images may also be given flat (``images:``) or in
one folder per synset (``<images>/<synset>/<ImageId>.JPEG``, the layout of ``imagenet-val``).

``label`` is the ImageNet-1k index (timm's synset order, the standard one) of the first box's synset; single-label
(one trial per image with ``--target label``). Images are in ``ImageId`` order.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from interpbench.core.base import ComponentError, DatasetSource
from interpbench.core.identity import file_sha256
from interpbench.datasets.imagefolder import imagenet_classes
from interpbench.datasets.voc import AnnotatedImages, image_size

LOC_LAYOUT = "<path>/LOC_val_solution.csv and <path>/ILSVRC/Data/CLS-LOC/val/<ImageId>.JPEG"


def parse_prediction_string(text: str, where: str) -> list[tuple[str, list[float]]]:
    """``"n01751748 1 2 3 4 n01751748 ..."`` -> [(synset, [xmin, ymin, xmax, ymax]), ...]."""
    parts = text.split()
    if len(parts) % 5:
        raise ComponentError(f"imagenet_loc: {where}: PredictionString has {len(parts)} fields, expected groups of 5 "
                             f"(synset xmin ymin xmax ymax): {text[:80]!r}")
    try:
        return [(parts[i], [float(v) for v in parts[i + 1:i + 5]]) for i in range(0, len(parts), 5)]
    except ValueError:
        raise ComponentError(f"imagenet_loc: {where}: non-numeric box in {text[:80]!r}") from None


def read_loc_solution(path: Path) -> list[tuple[str, list[tuple[str, list[float]]]]]:
    """The rows of a ``LOC_val_solution.csv``, sorted by ImageId."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise ComponentError(f"imagenet_loc: {str(path)!r} must have the header ImageId,PredictionString; got "
                                 f"{reader.fieldnames}")
        rows = [(row["ImageId"], parse_prediction_string(row["PredictionString"] or "", f"{path.name} {row['ImageId']}"))
                for row in reader]
    return sorted(rows)


class ImageNetLocalization(AnnotatedImages):
    """ImageNet val images with boxes; ids ``imagenet-val-loc/<ImageId>``."""

    multilabel = False
    label_space = "imagenet-1k"
    provides = frozenset({"label", "labels", "boxes", "orig_size", "orig_boxes", "pointing_difficult"})

    def __init__(self, images_dir: Path, solution: Path, rows: list, size: Any, extension: str):
        super().__init__(size, None, "imagenet_loc")
        self.images_dir, self.solution, self.rows, self.extension = images_dir, solution, rows, extension
        self.classes, self._index = imagenet_classes()
        self.name = self._prefix = "imagenet-val-loc"  # ids keep the prefix if the name is reassigned
        self._sizes: dict[int, tuple[int, int]] = {}
        self._solution_sha256 = file_sha256(solution)  # the identity of the boxes (read once, with them)

    def __len__(self) -> int:
        return len(self.rows)

    def identity(self) -> dict[str, Any]:
        return {"loader": "imagenet_loc", "path": {"solution": str(self.solution), "images": str(self.images_dir)},
                "solution_sha256": self._solution_sha256, "size": list(self.size), "n": len(self.rows)}

    def _path(self, image_id: str, synset: str) -> Path:
        flat = self.images_dir / f"{image_id}{self.extension}"
        if flat.is_file():
            return flat
        nested = self.images_dir / synset / f"{image_id}{self.extension}"
        if nested.is_file():
            return nested
        raise ComponentError(f"imagenet_loc: image {image_id!r} is neither {str(flat)!r} nor {str(nested)!r}; "
                             f"expected {LOC_LAYOUT}")

    def _record(self, index: int):
        image_id, boxes = self.rows[index]
        if not boxes:
            raise ComponentError(f"imagenet_loc: {image_id} has no box in {str(self.solution)!r}")
        unknown = sorted({s for s, _ in boxes if s not in self._index})
        if unknown:
            raise ComponentError(f"imagenet_loc: {image_id} names synset(s) {unknown}, not ImageNet-1k classes")
        path = self._path(image_id, boxes[0][0])
        if index not in self._sizes:
            self._sizes[index] = image_size(path)
        height, width = self._sizes[index]
        per_class: dict[int, list] = {}
        for synset, (xmin, ymin, xmax, ymax) in boxes:  # 0-based inclusive -> pixel edges, clipped to the image
            per_class.setdefault(self._index[synset], []).append(
                [max(xmin, 0.0), max(ymin, 0.0), min(xmax + 1, width), min(ymax + 1, height)])
        annotations = {"orig_boxes": {c: torch.tensor(b, dtype=torch.float32) for c, b in per_class.items()},
                       "label": self._index[boxes[0][0]]}
        return f"{self._prefix}/{image_id}", image_id, path, (height, width), annotations

    def __repr__(self) -> str:
        return f"ImageNetLocalization(n={len(self)}, size={self.size})"


class ImageNetLocSource(DatasetSource):
    """Loader ``imagenet_loc``: ``load(path, solution="LOC_val_solution.csv", images=None, size=224, n=None)``."""

    name = "imagenet_loc"

    def load(self, path: Any = None, split: str | None = None, size: Any = 224, n: int | None = None,
             solution: str = "LOC_val_solution.csv", images: str | None = None, extension: str = ".JPEG",
             **ignored: Any) -> ImageNetLocalization:
        if path is None:
            raise ComponentError(f"imagenet_loc: no path given; set `path:` in datasets.yaml to a folder laid out as "
                                 f"{LOC_LAYOUT}")
        root = Path(path).expanduser()
        solution_file = Path(solution).expanduser()
        solution_file = solution_file if solution_file.is_absolute() else root / solution_file
        if not solution_file.is_file():
            raise ComponentError(f"imagenet_loc: {str(solution_file)!r} does not exist; expected {LOC_LAYOUT}")
        if images:
            images_dir = Path(images).expanduser()
        else:
            candidates = [root / "ILSVRC" / "Data" / "CLS-LOC" / "val", root / "val", root]
            images_dir = next((c for c in candidates if c.is_dir() and any(c.iterdir())), candidates[0])
        if not images_dir.is_dir():
            raise ComponentError(f"imagenet_loc: image folder {str(images_dir)!r} does not exist; expected {LOC_LAYOUT} "
                                 "(or set options.images)")
        rows = read_loc_solution(solution_file)
        if n is not None:
            rows = rows[: int(n)]
        return ImageNetLocalization(images_dir, solution_file, rows, size, extension)
