"""Loader ``broden``: a dissection probe in the Broden layout (Bau et al., CVPR 2017; CSAILVision/NetDissect), and
:func:`write_broden`, which writes any probe (e.g. the shapes world) in that layout.

The layout (NetDissect ``loadseg.py``; a directory ``DIR``)::

    DIR/index.csv      image,split,ih,iw,sh,sw,<one column per category>
                       a category cell is empty, or ';'-separated items: a label number (an image-level label,
                       e.g. scene, texture) or the path of a label PNG under DIR/images/ (pixel labels)
    DIR/category.csv   name,first,last,count,frequency          (the categories, in order)
    DIR/label.csv      number,name,category,frequency,coverage,syns   (category e.g. "material(36);object(3)")
    DIR/c_<cat>.csv    code,number,name,frequency,coverage      (the labels of each category)
    DIR/images/...     the images (ih x iw) and label PNGs (sh x sw) whose red + 256 * green channels hold the
                       label number of each pixel (0 = unlabelled)

Labels are global numbers; a label listed by several categories belongs to its *primary* category, the one where
its coverage is largest (ties to the later category), as NetDissect's ``primary_categories_per_index`` decides. A
sample's ``concepts[category]`` holds the label codes of that category (``concept_names()[category][code]``):
a ``D x sh x sw`` LongTensor when it has pixel labels (one layer per label PNG that holds labels of the category,
plus a constant layer per image-level label when a category has both), else a 1-d LongTensor of image-level
codes. NetDissect dissects every image of the probe, so ``split`` ``"all"`` (and the runner's ``"test"``) reads
all rows; ``"train"`` / ``"val"`` keep the rows of that split.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from interpbench.core.base import ComponentError, DatasetSource

META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
LAYOUT = (
    "a Broden directory holds index.csv (image,split,ih,iw,sh,sw,<category columns>), category.csv, label.csv, "
    "c_<category>.csv per category and images/ (images and label PNGs, label = red + 256 * green); "
    "NetDissect's script/dlbroden.sh downloads broden1_224, and `interpbench export-broden` writes the shapes "
    "world in this layout"
)
ALL_SPLITS = ("all", "test", None)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ComponentError(f"broden: {str(path)!r} does not exist; {LAYOUT}")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _number(text: str, where: str) -> float:
    try:
        return float(text) if text not in ("", None) else 0.0
    except ValueError:
        raise ComponentError(f"broden: {where}: {text!r} is not a number") from None


@dataclasses.dataclass
class BrodenIndex:
    """The parsed metadata of a Broden directory."""

    directory: Path
    categories: list[str]
    names: dict[int, str]  # label number -> name
    primary: np.ndarray  # label number -> index of its primary category (-1: not a label)
    code: np.ndarray  # label number -> code within its primary category (0: none)
    category_labels: list[list[int]]  # per category, the label numbers of codes 1..n
    rows: list[dict[str, Any]]

    def concept_names(self) -> dict[str, list[str]]:
        return {cat: ["-", *(self.names[n] for n in numbers)] for cat, numbers in zip(self.categories, self.category_labels)}


def read_broden(directory: str | Path) -> BrodenIndex:
    """Parse ``index.csv``, ``category.csv``, ``label.csv`` and ``c_*.csv`` of a Broden directory."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ComponentError(f"broden: directory {str(directory)!r} does not exist; {LAYOUT}")
    categories = [row["name"] for row in _read_csv(directory / "category.csv")]
    if not categories:
        raise ComponentError(f"broden: {str(directory / 'category.csv')!r} lists no category; {LAYOUT}")
    names: dict[int, str] = {}
    for row in _read_csv(directory / "label.csv"):
        number = int(_number(row.get("number", ""), "label.csv number"))
        if number > 0:
            names[number] = row.get("name", str(number))
    coverage: dict[int, list[tuple[float, int]]] = {}
    codes: list[dict[int, int]] = []
    for k, cat in enumerate(categories):
        table = {}
        for row in _read_csv(directory / f"c_{cat}.csv"):
            code = int(_number(row.get("code", ""), f"c_{cat}.csv code"))
            number = int(_number(row.get("number", ""), f"c_{cat}.csv number"))
            if code <= 0 or number <= 0:
                continue
            table[number] = code
            coverage.setdefault(number, []).append((_number(row.get("coverage", ""), f"c_{cat}.csv coverage"), k))
            names.setdefault(number, row.get("name", str(number)))
        codes.append(table)
    size = max(names, default=0) + 1
    primary = np.full(size, -1, np.int64)
    code = np.zeros(size, np.int64)
    category_labels: list[list[int]] = [[] for _ in categories]
    for number, options in sorted(coverage.items()):
        # NetDissect primary_categories_per_index: max over (coverage, category index)
        primary[number] = max(options)[1]
    for k in range(len(categories)):  # dense codes of the labels whose primary category is k, in c_<cat> order
        mine = sorted((c, n) for n, c in codes[k].items() if primary[n] == k)
        for new_code, (_, number) in enumerate(mine, start=1):
            code[number] = new_code
            category_labels[k].append(number)
    rows = []
    for i, row in enumerate(_read_csv(directory / "index.csv")):
        missing = [c for c in META_COLUMNS if c not in row]
        if missing:
            raise ComponentError(f"broden: index.csv lacks column(s) {missing}; {LAYOUT}")
        entry: dict[str, Any] = {"image": row["image"], "split": row["split"]}
        for key in ("ih", "iw", "sh", "sw"):
            entry[key] = int(_number(row[key], f"index.csv row {i + 2} {key}"))
        labels: dict[str, list[Any]] = {}
        for cat in categories:
            items = [s for s in (row.get(cat) or "").split(";") if s]
            labels[cat] = [int(s) if re.fullmatch(r"\d+", s) else s for s in items]
        entry["labels"] = labels
        rows.append(entry)
    return BrodenIndex(directory, categories, names, primary, code, category_labels, rows)


def decode_label_png(path: Path) -> np.ndarray:
    """Label numbers of a Broden label PNG: red + 256 * green (int64 ``H x W``)."""
    from PIL import Image

    if not path.is_file():
        raise ComponentError(f"broden: label image {str(path)!r} (named in index.csv) does not exist; {LAYOUT}")
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1]


def _size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ComponentError(f"broden: size {size!r} is not an int or (H, W); e.g. size=224") from None
    return (height, width)


class BrodenProbe(torch.utils.data.Dataset):
    """The images of a Broden directory with their ``concepts`` (see the module docstring)."""

    provides = frozenset({"concepts"})
    classes: list[str] = []
    label_space = "none"

    def __init__(self, path: str | Path, split: str | None = "all", size: Any = None, n: int | None = None) -> None:
        self.index = read_broden(path)
        rows = self.index.rows
        if split not in ALL_SPLITS:
            rows = [row for row in rows if row["split"] == split]
            if not rows:
                found = sorted({row["split"] for row in self.index.rows})
                raise ComponentError(f"broden: no image of split {split!r} in {str(self.index.directory)!r}; "
                                     f"splits: {found}, or 'all'")
        self.rows = rows if n is None else rows[: int(n)]
        self.split, self.size = split, _size(size)
        self.name = "broden"

    def __len__(self) -> int:
        return len(self.rows)

    def concept_names(self) -> dict[str, list[str]]:
        return self.index.concept_names()

    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256((self.index.directory / "index.csv").read_bytes()).hexdigest()
        return {"loader": "broden", "path": str(self.index.directory), "index_sha256": digest, "split": self.split,
                "n": len(self), "size": None if self.size is None else list(self.size)}

    def _image(self, row: dict[str, Any]) -> torch.Tensor:
        from PIL import Image

        path = self.index.directory / "images" / row["image"]
        if not path.is_file():
            raise ComponentError(f"broden: image {str(path)!r} (named in index.csv) does not exist; {LAYOUT}")
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        if self.size is not None and tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image[None], size=self.size, mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp(0, 1)
        return image

    def _concepts(self, row: dict[str, Any]) -> dict[str, torch.Tensor]:
        index = self.index
        n_cat = len(index.categories)
        layers: list[list[np.ndarray]] = [[] for _ in range(n_cat)]
        image_level: list[list[int]] = [[] for _ in range(n_cat)]
        shape = (row["sh"], row["sw"])
        for items in row["labels"].values():
            for item in items:
                if isinstance(item, int):
                    k = int(index.primary[item]) if item < len(index.primary) else -1
                    if k < 0:
                        raise ComponentError(f"broden: index.csv names label {item} (image {row['image']!r}), "
                                             "which no c_<category>.csv lists")
                    image_level[k].append(int(index.code[item]))
                    continue
                numbers = decode_label_png(index.directory / "images" / item)
                shape = numbers.shape
                clipped = np.minimum(numbers, len(index.primary) - 1)
                category = np.where(numbers < len(index.primary), index.primary[clipped], -1)
                unknown = (numbers > 0) & (category < 0)
                if unknown.any():
                    raise ComponentError(f"broden: label image {item!r} holds label number {int(numbers[unknown][0])}, "
                                         "which no c_<category>.csv lists")
                for k in np.unique(category[category >= 0]):
                    layers[k].append(np.where(category == k, index.code[clipped], 0))
        out: dict[str, torch.Tensor] = {}
        for k, cat in enumerate(index.categories):
            if layers[k]:
                maps = layers[k] + [np.full(shape, c, np.int64) for c in image_level[k]]
                out[cat] = torch.from_numpy(np.stack(maps).astype(np.int64))
            elif image_level[k]:
                out[cat] = torch.tensor(image_level[k], dtype=torch.long)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self.rows):
            raise IndexError(f"broden: index {i} out of range for {len(self.rows)} images")
        row = self.rows[i]
        return {"id": f"broden/{row['image']}", "image": self._image(row), "concepts": self._concepts(row),
                "split": row["split"]}

    def __repr__(self) -> str:
        return f"BrodenProbe({str(self.index.directory)!r}, split={self.split!r}, n={len(self)}, size={self.size})"


class BrodenSource(DatasetSource):
    """Loader ``broden``: ``load(path, split="all", size=None, n=None)``; ``path`` is the Broden directory."""

    name = "broden"

    def load(self, path: Any = None, split: str | None = "all", size: Any = None, n: int | None = None,
             **ignored: Any) -> BrodenProbe:
        if path is None:
            raise ComponentError(f"broden: no path given; name the directory in datasets.yaml (path: ...); {LAYOUT}")
        return BrodenProbe(path, split=split, size=size, n=n)


# --------------------------------------------------------------------------------------------- writer


def _png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def encode_label_png(numbers: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 with red = number % 256, green = number // 256 (numbers < 65536)."""
    if numbers.size and (numbers.min() < 0 or numbers.max() >= 65536):
        raise ComponentError(f"broden: label numbers must lie in [0, 65536) to fit red + 256 * green, got {numbers.max()}")
    out = np.zeros((*numbers.shape, 3), np.uint8)
    out[..., 0] = numbers % 256
    out[..., 1] = numbers // 256
    return out


def write_broden(dataset: Any, directory: str | Path, *, name: str = "probe", image_format: str = "png",
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Write ``dataset`` (samples with ``image`` and ``concepts``, and ``concept_names()``) in the Broden layout.

    Label numbers run over the categories in order (category 1's labels first). Images are written as 8-bit PNG
    (lossless; ``image_format="jpg"`` for Broden's JPEG, quality 95); pixel labels as one PNG per category and layer,
    image-level labels as numbers in ``index.csv``. Returns the directory.
    """
    if image_format not in ("png", "jpg"):
        raise ComponentError(f"broden: image_format {image_format!r} must be 'png' or 'jpg'")
    concept_names = getattr(dataset, "concept_names", None)
    if not callable(concept_names):
        raise ComponentError("broden: the dataset has no concept_names(); only a probe with concepts can be written")
    names = {cat: list(labels) for cat, labels in concept_names().items()}
    categories = list(names)
    first: dict[str, int] = {}
    number = 1
    for cat in categories:
        first[cat] = number
        number += len(names[cat]) - 1
    total = number - 1
    out = Path(directory).expanduser()
    (out / "images" / name).mkdir(parents=True, exist_ok=True)
    frequency = np.zeros(total + 1, np.int64)
    coverage = np.zeros(total + 1, np.float64)
    cat_frequency = {cat: 0 for cat in categories}
    split = str(getattr(dataset, "split", None) or "all")
    rows = []
    for i in range(len(dataset)):
        sample = dataset[i]
        image = sample["image"]
        pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        stem = f"{name}/{i:06d}"
        image_file = f"{stem}.{image_format}"
        from PIL import Image

        Image.fromarray(pixels).save(out / "images" / image_file, **({"quality": 95} if image_format == "jpg" else {}))
        label_shape = tuple(image.shape[-2:])
        row = {"image": image_file, "split": split, "ih": image.shape[-2], "iw": image.shape[-1]}
        for cat in categories:
            codes = sample.get("concepts", {}).get(cat)
            items: list[str] = []
            if codes is not None:
                codes = torch.as_tensor(codes).long().cpu().numpy()
                numbers = np.where(codes > 0, codes + first[cat] - 1, 0)
                if codes.ndim >= 2:
                    numbers = numbers.reshape(-1, *numbers.shape[-2:])
                    label_shape = numbers.shape[-2:]
                    for d, layer in enumerate(numbers):
                        file = f"{stem}_{cat}{'' if len(numbers) == 1 else f'_{d}'}.png"
                        _png(encode_label_png(layer), out / "images" / file)
                        items.append(file)
                        present = np.unique(layer[layer > 0])
                        frequency[present] += 1
                        coverage += np.bincount(layer.reshape(-1), minlength=total + 1) / layer.size
                    if (numbers > 0).any():
                        cat_frequency[cat] += 1
                else:
                    values = [int(v) for v in numbers.reshape(-1) if v > 0]
                    items += [str(v) for v in values]
                    for v in values:
                        frequency[v] += 1
                        coverage[v] += 1.0
                    cat_frequency[cat] += bool(values)
            row[cat] = ";".join(items)
        row["sh"], row["sw"] = label_shape
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(dataset))
    coverage[0] = 0.0
    with open(out / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, [*META_COLUMNS, *categories])
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "category.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "first", "last", "count", "frequency"])
        for cat in categories:
            count = len(names[cat]) - 1
            writer.writerow([cat, first[cat], first[cat] + count - 1, count, cat_frequency[cat]])
    with open(out / "label.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for cat in categories:
            for code, label in enumerate(names[cat][1:], start=1):
                n = first[cat] + code - 1
                writer.writerow([n, label, f"{cat}({frequency[n]})", frequency[n], f"{coverage[n]:.6f}", ""])
    for cat in categories:
        with open(out / f"c_{cat}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["code", "number", "name", "frequency", "coverage"])
            for code, label in enumerate(names[cat][1:], start=1):
                n = first[cat] + code - 1
                writer.writerow([code, n, label, frequency[n], f"{coverage[n]:.6f}"])
    identity = dataset.identity() if callable(getattr(dataset, "identity", None)) else {}
    (out / "README.txt").write_text(
        f"A dissection probe in the Broden layout, written by interpbench (write_broden).\n"
        f"Source: {identity}\nImages: {len(rows)}; categories: {categories}; labels: {total}.\n"
        f"Label PNGs hold the label number of each pixel in red + 256 * green.\n"
    )
    return out


__all__ = ["BrodenIndex", "BrodenProbe", "BrodenSource", "decode_label_png", "encode_label_png", "read_broden",
           "write_broden"]
