"""Loader ``coco``: MS COCO instances (COCO 2014 val for the pointing game), masks decoded here.

Layout (the official zips unpacked)::

    <path>/annotations/instances_val2014.json
    <path>/val2014/COCO_val2014_000000000042.jpg

(``annotations`` and ``images`` options override the two paths.) Images are in increasing image-id order (as
torchvision's ``CocoDetection`` that TorchRay uses); classes are the 80 categories in increasing category-id
order (TorchRay's ``_COCO_CLASS_TO_INDEX``), named as in the JSON. Every annotation counts, ``iscrowd`` ones
included (TorchRay's ``coco_as_class_ids`` / ``coco_as_mask``). Per class present, ``orig_masks`` is the union of
the class's segmentation masks (the pointing game's region) and ``orig_boxes`` its ``bbox`` es (xyxy; the
"difficult" subset's area criterion).

Segmentations are decoded without pycocotools: polygons are rasterised exactly as pycocotools' ``rleFrPoly``
does (so the masks equal ``COCO.annToMask``; the tests compare them), uncompressed RLE (``iscrowd``) and
compressed RLE strings as ``rleDecode`` / ``rleFrString``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interpbench.core.base import ComponentError, DatasetSource
from interpbench.core.identity import file_sha256
from interpbench.datasets.voc import AnnotatedImages, read_difficult_file

COCO_LAYOUT = "<path>/annotations/instances_<set>.json and <path>/<set>/*.jpg"
_POLY_SCALE = 5.0  # pycocotools rleFrPoly upsamples the outline 5x before finding the column crossings


# --------------------------------------------------------------------------------------------- mask decoding


def rle_counts_to_mask(counts: list[int] | np.ndarray, height: int, width: int) -> np.ndarray:
    """COCO run-length counts -> bool ``H x W``: alternating runs of 0 and 1, starting with 0, column-major."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != height * width:
        raise ComponentError(f"coco: RLE counts sum to {int(counts.sum())}, expected height x width = {height * width}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T


def rle_string_to_counts(text: str | bytes) -> list[int]:
    """Compressed COCO RLE (pycocotools ``rleFrString``) -> counts.

    Each count is a little-endian sequence of 5-bit groups stored as ``chr(48 + group)``, bit 0x20 meaning "more
    groups follow" and bit 0x10 of the last group the sign; from the third count on, the value is a difference to
    the count two places before.
    """
    data = text.encode() if isinstance(text, str) else bytes(text)
    counts: list[int] = []
    p = 0
    while p < len(data):
        value, shift, more = 0, 0, True
        while more:
            group = data[p] - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            p += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def _c_int(values: np.ndarray) -> np.ndarray:
    """C's double -> int conversion (truncation toward zero)."""
    return np.trunc(values).astype(np.int64)


def polygon_to_mask(polygon: list[float], height: int, width: int) -> np.ndarray:
    """A COCO polygon ``[x0, y0, x1, y1, ...]`` -> bool ``H x W``, rasterised as pycocotools' ``rleFrPoly``.

    The outline is scaled 5x and rounded to integers, walked edge by edge one step per major-axis unit, and
    every crossing of a pixel-column centre line (``x = k + 0.5`` at 5x) marks where the column flips between
    outside and inside (at row ``ceil(y)``); the mask is the parity of the flips in column-major order.
    """
    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if len(xy) < 3:
        return np.zeros((height, width), dtype=bool)
    x = _c_int(_POLY_SCALE * xy[:, 0] + 0.5)
    y = _c_int(_POLY_SCALE * xy[:, 1] + 0.5)
    x, y = np.append(x, x[0]), np.append(y, y[0])
    us, vs = [], []
    for j in range(len(xy)):  # one edge at a time (a polygon has tens of vertices), its points as arrays
        xs, xe, ys, ye = int(x[j]), int(x[j + 1]), int(y[j]), int(y[j + 1])
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            t = np.arange(dx + 1)
            t = dx - t if flip else t
            slope = (ye - ys) / dx if dx else 0.0
            us.append(t + xs)
            vs.append(_c_int(ys + slope * t + 0.5))
        else:
            t = np.arange(dy + 1)
            t = dy - t if flip else t
            slope = (xe - xs) / dy
            vs.append(t + ys)
            us.append(_c_int(xs + slope * t + 0.5))
    u, v = np.concatenate(us), np.concatenate(vs)
    # column crossings: consecutive points whose x differs
    step = np.flatnonzero(u[1:] != u[:-1]) + 1
    xd = np.where(u[step] < u[step - 1], u[step], u[step] - 1).astype(np.float64)
    xd = (xd + 0.5) / _POLY_SCALE - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= width - 1)
    yd = np.where(v[step] < v[step - 1], v[step], v[step - 1]).astype(np.float64)
    yd = (yd + 0.5) / _POLY_SCALE - 0.5
    yd = np.ceil(np.clip(yd, 0, height))
    positions = xd[keep].astype(np.int64) * height + yd[keep].astype(np.int64)
    flips = np.bincount(positions, minlength=height * width + 1)[: height * width]
    inside = (np.cumsum(flips) % 2).astype(bool)
    return inside.reshape(width, height).T


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (list of polygons, uncompressed RLE dict or compressed RLE dict) -> bool ``H x W``."""
    if isinstance(segmentation, list):  # polygons: their union (pycocotools frPyObjects + merge)
        mask = np.zeros((height, width), dtype=bool)
        for polygon in segmentation:
            mask |= polygon_to_mask(polygon, height, width)
        return mask
    if isinstance(segmentation, dict) and "counts" in segmentation:
        h, w = (int(s) for s in segmentation.get("size", (height, width)))
        if (h, w) != (height, width):
            raise ComponentError(f"coco: an RLE of size {h} x {w} on an image of {height} x {width}")
        counts = segmentation["counts"]
        counts = rle_string_to_counts(counts) if isinstance(counts, (str, bytes)) else counts
        return rle_counts_to_mask(counts, h, w)
    raise ComponentError(f"coco: unknown segmentation format {type(segmentation).__name__}: {str(segmentation)[:80]}")


# --------------------------------------------------------------------------------------------- dataset


class CocoInstances(AnnotatedImages):
    """COCO images with their instance annotations; ids ``coco-<set>/<file stem>``."""

    label_space = "coco-80"
    provides = frozenset({"labels", "boxes", "masks", "orig_size", "orig_boxes", "orig_masks", "pointing_difficult"})
    extremal_areas = [0.018, 0.025, 0.05, 0.1]  # TorchRay attribution_benchmark.py, dataset 'coco'

    def __init__(self, images_dir: Path, annotations_file: Path, images: list[dict], anns: dict[int, list[dict]],
                 categories: list[dict], image_set: str, size: Any, difficult_flags: dict[str, list[bool]] | None,
                 protocol: str = "torchray"):
        super().__init__(size, difficult_flags, "coco", protocol)
        self.images_dir, self.annotations_file, self.image_set = images_dir, annotations_file, image_set
        self.images, self.anns = images, anns
        self._annotations_sha256: str | None = None  # computed once, by identity()
        self.classes = [c["name"] for c in categories]
        self._index = {int(c["id"]): i for i, c in enumerate(categories)}
        self.name = self._prefix = f"coco-{image_set}"  # ids keep the prefix if the name is reassigned

    def __len__(self) -> int:
        return len(self.images)

    def identity(self) -> dict[str, Any]:
        if self._annotations_sha256 is None:
            self._annotations_sha256 = file_sha256(self.annotations_file)
        return {"loader": "coco", "path": {"annotations": str(self.annotations_file), "images": str(self.images_dir)},
                "annotations_sha256": self._annotations_sha256, "set": self.image_set, "size": list(self.size),
                "protocol": self.protocol, "n": len(self.images), **self._difficult_identity()}

    def _record(self, index: int):
        info = self.images[index]
        height, width = int(info["height"]), int(info["width"])
        masks: dict[int, np.ndarray] = {}
        boxes: dict[int, list] = {}
        for ann in self.anns.get(int(info["id"]), []):
            cat = int(ann["category_id"])
            if cat not in self._index:
                raise ComponentError(f"coco: annotation {ann.get('id')} has category_id {cat}, not in the categories "
                                     f"of {str(self.annotations_file)!r}")
            c = self._index[cat]
            mask = segmentation_to_mask(ann["segmentation"], height, width)
            masks[c] = masks[c] | mask if c in masks else mask
            bx, by, bw, bh = (float(v) for v in ann["bbox"])
            boxes.setdefault(c, []).append([bx, by, bx + bw, by + bh])
        stem = Path(info["file_name"]).stem
        annotations = {"orig_boxes": {c: torch.tensor(b, dtype=torch.float32) for c, b in boxes.items()},
                       "orig_masks": {c: torch.from_numpy(m) for c, m in masks.items()}}
        return f"{self._prefix}/{stem}", stem, self.images_dir / info["file_name"], (height, width), annotations

    def __repr__(self) -> str:
        return f"CocoInstances(set={self.image_set!r}, n={len(self)}, size={self.size}, protocol={self.protocol!r})"


class CocoSource(DatasetSource):
    """Loader ``coco``: ``load(path, set="val2014", annotations=None, images=None, size=224, n=None,
    difficult_file=None, protocol="torchray")`` (``protocol``: see ``interpbench.datasets.voc``)."""

    name = "coco"

    def load(self, path: Any = None, split: str | None = None, size: Any = 224, n: int | None = None,
             annotations: str | None = None, images: str | None = None, difficult_file: str | None = None,
             protocol: str = "torchray", **options: Any) -> CocoInstances:
        image_set = str(options.pop("set", None) or "val2014")
        if path is None and (annotations is None or images is None):
            raise ComponentError(f"coco: no path given; set `path:` in datasets.yaml to a folder laid out as "
                                 f"{COCO_LAYOUT}")
        root = Path(path).expanduser() if path is not None else None
        ann_file = Path(annotations).expanduser() if annotations else root / "annotations" / f"instances_{image_set}.json"
        images_dir = Path(images).expanduser() if images else root / image_set
        if not ann_file.is_file():
            raise ComponentError(f"coco: annotation file {str(ann_file)!r} does not exist; expected {COCO_LAYOUT} "
                                 "(or set options.annotations)")
        if not images_dir.is_dir():
            raise ComponentError(f"coco: image folder {str(images_dir)!r} does not exist; expected {COCO_LAYOUT} "
                                 "(or set options.images)")
        try:
            data = json.loads(ann_file.read_text())
        except json.JSONDecodeError as exc:
            raise ComponentError(f"coco: {str(ann_file)!r} is not valid JSON: {exc}") from None
        missing = [k for k in ("images", "annotations", "categories") if k not in data]
        if missing:
            raise ComponentError(f"coco: {str(ann_file)!r} lacks {missing}; give an instances_*.json file")
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        image_list = sorted(data["images"], key=lambda im: int(im["id"]))
        if n is not None:
            image_list = image_list[: int(n)]
        wanted = {int(im["id"]) for im in image_list}
        anns: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            if int(ann["image_id"]) in wanted:
                anns.setdefault(int(ann["image_id"]), []).append(ann)
        flags = read_difficult_file(difficult_file, len(categories)) if difficult_file else None
        return CocoInstances(images_dir, ann_file, image_list, anns, categories, image_set, size, flags, protocol)

