"""Loader ``voc``: PASCAL VOC detection sets in the VOCdevkit layout (VOC 2007 test for the pointing game).

Layout (the official tar files unpacked)::

    <path>/VOCdevkit/VOC2007/Annotations/000001.xml
    <path>/VOCdevkit/VOC2007/JPEGImages/000001.jpg
    <path>/VOCdevkit/VOC2007/ImageSets/Main/test.txt

``path`` may also name ``VOCdevkit`` or ``VOCdevkit/VOC2007`` itself. Classes are the 20 VOC classes in the
standard (alphabetical) order, as TorchRay's ``VOC_CLASSES``; images in the order of the image-set file.

This module also holds :class:`AnnotatedImages`, the base of the localisation loaders (``voc``, ``coco``,
``imagenet_loc``). Their samples carry (see ``interpbench.metrics.localization``):

- ``image``: the whole image resized (no crop, so every box stays in view). ``protocol="square"``: to the model's
  input size, PIL bilinear (the aspect ratio is lost). ``protocol="torchray"`` (the default of ``voc`` and ``coco``:
  TorchRay's pointing-game benchmark, ``examples/attribution_benchmark.py`` with ``torchray.benchmark.models
  .get_transform``): its shorter side to the input's shorter side (224), the aspect ratio kept
  (``int(224 * long / short)`` for the longer side), ``F.interpolate`` bilinear without corner alignment on the
  [0, 1] tensor; images then differ in size (``variable_size``: the runner batches runs of equal sizes). In that
  mode samples also carry ``image_square`` (the image squashed to the input size the same way: TorchRay feeds
  RISE alone ``input_size = (224, 224)``), and the dataset declares ``method_inputs`` (``{"rise":
  "image_square"}``) and ``method_defaults`` (extremal perturbation's areas: ``[0.025, 0.05, 0.1, 0.2]`` on VOC,
  ``[0.018, 0.025, 0.05, 0.1]`` on COCO), which the runner applies under the user's own method parameters;
- ``orig_size`` ``(H0, W0)``; ``orig_boxes`` class -> float ``N x 4`` xyxy in original pixels (pixel-edge
  coordinates: pixel ``(x, y)`` is inside when its centre ``(x + .5, y + .5)`` is); ``orig_masks`` class -> bool
  ``H0 x W0`` where the dataset has masks (COCO);
- ``boxes`` / ``masks``: the same scaled to the input size (for metrics that work at the map's resolution);
- ``labels``: the classes present (sorted); ``label`` for single-label sets (ImageNet);
- ``difficult``: class -> bool ``N`` (PASCAL's per-box flags, VOC only);
- ``pointing_difficult``: class -> bool, the pair is in the pointing game's "difficult" subset (Zhang et al.
  2016: the class's boxes cover less than 1/4 of the image and another class is present), computed from the
  boxes or read from a list file (``difficult_file``, TorchRay's format: ``<image name>\\t<0/1 per class>``).
- ``pointing_tolerance``: the pointing game's tolerance, TorchRay's 15 px of the original image;
  ``pointing_protocol``: ``"torchray"`` or ``"square"`` (the pointing game smooths gradient-like maps under the
  former, as TorchRay's benchmark does).

``annotation(index)`` returns a sample without decoding its image (for checks on the annotations alone, e.g.
the pointing game's centre baseline: ``interpbench.commands.pointing_center.centre_baseline``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from interpbench.core.base import ComponentError, DatasetSource
from interpbench.core.identity import lines_sha256
from interpbench.datasets.imagefolder import size_hw, to_tensor
from interpbench.ops.regions import TORCHRAY_TOLERANCE, difficult_pairs

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_LAYOUT = "<path>/VOCdevkit/VOC2007/{Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/<split>.txt}"
PROTOCOLS = ("torchray", "square")  # how images are resized: see the module docstring


# --------------------------------------------------------------------------------------------- shared helpers


def load_resized(path: str | Path, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """The image at ``path`` resized to ``size`` (H, W) without cropping (PIL bilinear), and its original (H0, W0)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            orig = (image.height, image.width)
            resized = image.resize((size[1], size[0]), Image.BILINEAR)
    except FileNotFoundError:
        raise ComponentError(f"image file {str(path)!r} does not exist; check the dataset's path") from None
    return to_tensor(resized), orig


def torchray_input_size(orig: tuple[int, int], short: int) -> tuple[int, int]:
    """(H, W) of an ``orig`` (H0, W0) image resized so that its shorter side is ``short``, the aspect ratio kept.

    TorchRay ``get_transform`` for VOC / COCO: ``if width < height: (int(size * height / width), size)``, else
    ``(size, int(size * width / height))`` (a square image gives ``size x size``).
    """
    height, width = int(orig[0]), int(orig[1])
    if width < height:
        return int(short * height / width), int(short)
    return int(short), int(short * width / height)


def load_interpolated(path: str | Path, sizes: list[tuple[int, int]]) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """The image at ``path`` as a [0, 1] tensor resized to each of ``sizes`` (H, W) by ``F.interpolate`` (bilinear,
    ``align_corners=False``, no antialiasing: TorchRay's VOC / COCO transform), and its original (H0, W0)."""
    try:
        with Image.open(path) as image:
            tensor = to_tensor(image.convert("RGB"))
    except FileNotFoundError:
        raise ComponentError(f"image file {str(path)!r} does not exist; check the dataset's path") from None
    out = [tensor if tuple(tensor.shape[-2:]) == tuple(size) else
           F.interpolate(tensor[None], size=tuple(size), mode="bilinear", align_corners=False)[0] for size in sizes]
    return out, (int(tensor.shape[-2]), int(tensor.shape[-1]))


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header (the pixels are not decoded)."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except FileNotFoundError:
        raise ComponentError(f"image file {str(path)!r} does not exist; check the dataset's path") from None


def scale_boxes(boxes: torch.Tensor, orig: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """xyxy boxes in an ``orig`` (H0, W0) image -> the same boxes in the image resized to ``size`` (H, W)."""
    factor = torch.tensor([size[1] / orig[1], size[0] / orig[0]] * 2, dtype=torch.float32)
    return boxes.float() * factor


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A bool mask resized to ``size`` by nearest neighbour at pixel centres."""
    if tuple(mask.shape) == tuple(size):
        return mask
    return F.interpolate(mask[None, None].float(), size=tuple(size), mode="nearest-exact")[0, 0] > 0.5


def read_difficult_file(path: str | Path, num_classes: int) -> dict[str, list[bool]]:
    """A pointing-game difficult list in TorchRay's format: ``<image name> <flag class 0> ... <flag class C-1>``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ComponentError(f"difficult_file {str(path)!r} does not exist; give a file with one line per image: "
                             f"the image name and {num_classes} 0/1 flags (TorchRay's pointing_game_ebp_*_difficult.txt)")
    flags: dict[str, list[bool]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != num_classes + 1 or any(p not in ("0", "1") for p in parts[1:]):
            raise ComponentError(f"difficult_file {str(path)!r} line {number}: expected an image name and "
                                 f"{num_classes} 0/1 flags, got {line[:80]!r}")
        flags[parts[0]] = [p == "1" for p in parts[1:]]
    return flags


class AnnotatedImages(torch.utils.data.Dataset):
    """Base of the localisation datasets: images resized for the model plus annotations in original pixels.

    Subclasses implement ``__len__``, ``_record(index) -> (id, name, image path, orig size or None, annotations)``
    where annotations hold ``orig_boxes`` (class -> N x 4), optionally ``orig_masks``, ``difficult``, ``label``.
    """

    multilabel: bool = True
    classes: list[str]
    label_space: str
    extremal_areas: list[float] | None = None  # extremal perturbation's areas in TorchRay's benchmark on this set

    def __init__(self, size: Any, difficult_flags: dict[str, list[bool]] | None, who: str, protocol: str = "square"):
        self.size = size_hw(size, who)
        self.difficult_flags = difficult_flags
        if protocol not in PROTOCOLS:
            raise ComponentError(f"{who}: protocol {protocol!r} is not one of {list(PROTOCOLS)}: 'torchray' "
                                 "(TorchRay's pointing-game benchmark: shorter side resized, aspect ratio kept) or "
                                 "'square' (every image squashed to the model's input size)")
        self.protocol = protocol
        torchray = protocol == "torchray"
        self.variable_size = torchray
        self.method_inputs = {"rise": "image_square"} if torchray else {}
        self.method_defaults = {"extremal": {"areas": list(self.extremal_areas)}} if (
            torchray and self.extremal_areas) else {}

    def input_size(self, orig: tuple[int, int]) -> tuple[int, int]:
        """The size (H, W) an ``orig`` (H0, W0) image is resized to for the model."""
        if self.protocol == "torchray":
            return torchray_input_size(orig, min(self.size))
        return self.size

    def _record(self, index: int) -> tuple[str, str, Path, tuple[int, int] | None, dict[str, Any]]:
        raise NotImplementedError

    def _difficult_identity(self) -> dict[str, Any]:
        """Whether a difficult file was given, and the sha256 of its flags (what it says, not where it lies)."""
        if self.difficult_flags is None:
            return {"difficult_file": False}
        flags = (f"{name} {''.join('1' if f else '0' for f in self.difficult_flags[name])}"
                 for name in sorted(self.difficult_flags))
        return {"difficult_file": True, "difficult_sha256": lines_sha256(flags)}

    def _check(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} images")
        return int(index)

    def annotation(self, index: int, orig: tuple[int, int] | None = None) -> dict[str, Any]:
        """Sample ``index`` without its image (the image's size is read from the annotations or the file header)."""
        sample_id, name, path, known, ann = self._record(self._check(index))
        orig = known or orig or image_size(path)
        boxes = {int(c): b for c, b in sorted(ann["orig_boxes"].items())}
        masks = {int(c): m for c, m in sorted((ann.get("orig_masks") or {}).items())}
        labels = sorted(set(boxes) | set(masks))
        size = self.input_size(orig)
        sample: dict[str, Any] = {
            "id": sample_id, "name": name, "path": str(path), "orig_size": orig, "labels": labels,
            "orig_boxes": boxes, "boxes": {c: scale_boxes(b, orig, size) for c, b in boxes.items()},
            "pointing_tolerance": float(TORCHRAY_TOLERANCE), "pointing_protocol": self.protocol,
        }
        if masks:
            sample["orig_masks"] = masks
            sample["masks"] = {c: resize_mask(m, size) for c, m in masks.items()}
        if "difficult" in ann:
            sample["difficult"] = {int(c): f for c, f in sorted(ann["difficult"].items())}
        if "label" in ann:
            sample["label"] = int(ann["label"])
        sample["pointing_difficult"] = self._pointing_difficult(name, boxes, orig)
        return sample

    def _pointing_difficult(self, name: str, boxes: dict[int, torch.Tensor], orig: tuple[int, int]) -> dict[int, bool]:
        if self.difficult_flags is None:
            return difficult_pairs(boxes, orig)
        flags = self.difficult_flags.get(name)
        # TorchRay PointingGameBenchmark.evaluate: a pair is left out of the difficult subset only when its image
        # is listed with flag 0; an image missing from the list keeps all its pairs
        return {c: True if flags is None else bool(flags[c]) for c in boxes}

    def __getitem__(self, index: int) -> dict[str, Any]:
        _, _, path, known, _ = self._record(self._check(index))
        square = None
        if self.protocol == "torchray":
            orig = known or image_size(path)
            (image, square), orig = load_interpolated(path, [self.input_size(orig), self.size])
        else:
            image, orig = load_resized(path, self.size)
        sample = self.annotation(index, orig)
        if tuple(sample["orig_size"]) != tuple(orig):
            raise ComponentError(f"{self.name}: {str(path)!r} is {orig[1]} x {orig[0]} px but its annotation says "
                                 f"{sample['orig_size'][1]} x {sample['orig_size'][0]}")
        sample["image"] = image
        if square is not None:
            sample["image_square"] = square
        return sample


# --------------------------------------------------------------------------------------------- VOC


def parse_voc_xml(path: Path) -> dict[str, Any]:
    """A VOC annotation file -> ``{"filename", "size": (H, W), "objects": [(name, difficult, [x0, y0, x1, y1])]}``."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise ComponentError(f"voc: annotation file {str(path)!r} does not exist (layout {VOC_LAYOUT})") from None
    except ET.ParseError as exc:
        raise ComponentError(f"voc: {str(path)!r} is not valid XML: {exc}") from None

    def text(node, tag: str) -> str:
        child = node.find(tag)
        if child is None or child.text is None:
            raise ComponentError(f"voc: {str(path)!r} lacks <{tag}>")
        return child.text.strip()

    size = root.find("size")
    if size is None:
        raise ComponentError(f"voc: {str(path)!r} lacks <size>")
    objects = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        if box is None:
            raise ComponentError(f"voc: an object in {str(path)!r} lacks <bndbox>")
        difficult = obj.find("difficult")
        flag = bool(int(difficult.text)) if difficult is not None and difficult.text else False
        objects.append((text(obj, "name"), flag, [float(text(box, k)) for k in ("xmin", "ymin", "xmax", "ymax")]))
    height, width = int(float(text(size, "height"))), int(float(text(size, "width")))
    return {"filename": text(root, "filename"), "size": (height, width), "objects": objects}


def find_voc_root(path: Path, year: str) -> Path:
    for candidate in (path, path / f"VOC{year}", path / "VOCdevkit" / f"VOC{year}"):
        if (candidate / "Annotations").is_dir() and (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise ComponentError(f"voc: no VOC{year} folder with Annotations/ and ImageSets/Main/ under {str(path)!r}; "
                         f"expected {VOC_LAYOUT.replace('2007', year)} (set `path:` in datasets.yaml or $VOC_ROOT)")


class VOCDetection(AnnotatedImages):
    """VOC images of one image set; ids ``voc<year>-<split>/<image name>``, ``labels`` the classes present."""

    label_space = "pascal-voc"
    provides = frozenset({"labels", "boxes", "difficult", "orig_size", "orig_boxes", "pointing_difficult"})
    extremal_areas = [0.025, 0.05, 0.1, 0.2]  # TorchRay attribution_benchmark.py, dataset 'voc_2007'

    def __init__(self, root: Path, names: list[str], year: str, split: str, size: Any,
                 difficult_flags: dict[str, list[bool]] | None, protocol: str = "torchray"):
        super().__init__(size, difficult_flags, "voc", protocol)
        self.root, self.names, self.year, self.split = root, names, year, split
        self.classes = list(VOC_CLASSES)
        self.name = self._prefix = f"voc{year}-{split}"  # ids keep the prefix if the name is reassigned
        self._index = {c: i for i, c in enumerate(VOC_CLASSES)}
        self._cache: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.names)

    def identity(self) -> dict[str, Any]:
        # "path" says where the files lie (left out of cell identities); the image ids say which images they are
        return {"loader": "voc", "path": str(self.root), "year": self.year, "split": self.split,
                "size": list(self.size), "protocol": self.protocol, "n": len(self.names),
                "ids_sha256": lines_sha256(self.names), **self._difficult_identity()}

    def _record(self, index: int):
        if index in self._cache:
            return self._cache[index]
        name = self.names[index]
        ann = parse_voc_xml(self.root / "Annotations" / f"{name}.xml")
        boxes: dict[int, list] = {}
        difficult: dict[int, list] = {}
        for cls, flag, (xmin, ymin, xmax, ymax) in ann["objects"]:
            if cls not in self._index:
                raise ComponentError(f"voc: {name}.xml names class {cls!r}, not one of the 20 VOC classes {VOC_CLASSES}")
            c = self._index[cls]
            boxes.setdefault(c, []).append([xmin - 1, ymin - 1, xmax, ymax])  # 1-based inclusive -> pixel edges
            difficult.setdefault(c, []).append(flag)
        annotations = {"orig_boxes": {c: torch.tensor(b, dtype=torch.float32) for c, b in boxes.items()},
                       "difficult": {c: torch.tensor(f, dtype=torch.bool) for c, f in difficult.items()}}
        path = self.root / "JPEGImages" / ann["filename"]
        if not path.is_file():
            path = self.root / "JPEGImages" / f"{name}.jpg"
        self._cache[index] = record = (f"{self._prefix}/{name}", name, path, ann["size"], annotations)
        return record

    def __repr__(self) -> str:
        return (f"VOCDetection(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, size={self.size}, "
                f"protocol={self.protocol!r})")


class VOCSource(DatasetSource):
    """Loader ``voc``: ``load(path, split="test", year="2007", size=224, n=None, difficult_file=None,
    protocol="torchray")``."""

    name = "voc"

    def load(self, path: Any = None, split: str | None = "test", year: str | int = "2007", size: Any = 224,
             n: int | None = None, difficult_file: str | None = None, protocol: str = "torchray",
             **ignored: Any) -> VOCDetection:
        if path is None:
            raise ComponentError(f"voc: no path given; set `path:` in datasets.yaml to a folder laid out as {VOC_LAYOUT}")
        year = str(year)
        root = find_voc_root(Path(path).expanduser(), year)
        split = split or "test"
        index_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not index_file.is_file():
            sets = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
            raise ComponentError(f"voc: image set {split!r} not found ({str(index_file)!r}); this VOCdevkit has {sets}")
        names = [line.split()[0] for line in index_file.read_text().splitlines() if line.strip()]
        if n is not None:
            names = names[: int(n)]
        flags = read_difficult_file(difficult_file, len(VOC_CLASSES)) if difficult_file else None
        return VOCDetection(root, names, year, split, size, flags, protocol)
