"""The synthetic shapes world: 1-3 objects (shape x colour x texture) on a low-contrast teal background.

Sample ``i`` of ``(seed, split)`` is a pure function of those three values (its own numpy Generator, seeded
from a hash of them), so any subset of the stream can be regenerated in any order.

Design (every label unambiguous):

- The labelled object ("main", ``objects[0]``) has a radius 2.1-3.2x that of every distractor, and its pixel
  area is at least ``2x`` that of every distractor (checked on the drawn masks; a distractor is shrunk until it
  holds). Objects never overlap (bounding circles 2 px apart) and all lie wholly inside the image.
- Colours: the 11 colour names of the Broden probe with clean RGB values (``COLORS``). Textures modulate the
  object's colour with a darker shade of itself (black: a lighter one), so every object pixel is a tone of the
  object's colour.
- The background is a teal tone (a hue none of the 11 names covers) with a faint gradient and noise; it carries
  no concept (label 0 in every concept map).
- Shapes are drawn with a random rotation within +-15 degrees; the diamond is a rhombus (0.8 aspect), so it is
  never a rotated square.

Concept maps (``concepts[category]``, ``LongTensor HxW``): label ``k`` is ``concept_names()[category][k]``;
0 (``"-"``) is "no concept" (background, the hole of a ring). Label ``k >= 1`` is task class ``k - 1``.
Boxes are ``xyxy`` pixel coordinates with exclusive ends: ``[x_min, y_min, x_max + 1, y_max + 1]`` of the mask.
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any

import numpy as np
import torch

from interpbench.core.base import ComponentError, DatasetSource
from interpbench.ops.consistency import jaccard_similarity

GENERATOR_VERSION = "shapes-world-2"

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring")
# The 11 colour names of the Broden probe (NetDissect), in its order.
COLORS: dict[str, tuple[float, float, float]] = {
    "black": (0.06, 0.06, 0.06),
    "blue": (0.12, 0.28, 0.92),
    "brown": (0.52, 0.30, 0.12),
    "grey": (0.52, 0.52, 0.52),
    "green": (0.12, 0.68, 0.18),
    "orange": (1.00, 0.55, 0.05),
    "pink": (1.00, 0.62, 0.80),
    "purple": (0.55, 0.18, 0.78),
    "red": (0.88, 0.08, 0.08),
    "white": (0.96, 0.96, 0.96),
    "yellow": (0.98, 0.90, 0.12),
}
COLOR_NAMES = tuple(COLORS)
# Geometric attributes of the drawn shapes, for the similarity of the shape classes (Jaccard overlap): e.g. triangle
# and diamond 3/4, circle and ring 1/2, square and cross 1/2, circle and square 1/7.
SHAPE_ATTRIBUTES: dict[str, set[str]] = {
    "circle": {"curved_edges", "convex", "round"},
    "square": {"straight_edges", "convex", "right_angles", "four_corners", "fourfold_symmetry"},
    "triangle": {"straight_edges", "convex", "pointed_tips"},
    "diamond": {"straight_edges", "convex", "four_corners", "pointed_tips"},
    "star": {"straight_edges", "concave", "pointed_tips"},
    "cross": {"straight_edges", "concave", "right_angles", "fourfold_symmetry"},
    "ring": {"curved_edges", "round", "hole"},
}
TEXTURES = ("solid", "stripes", "dots", "checker", "brick", "grass", "gravel")
TASKS = {"shape": SHAPES, "color": COLOR_NAMES, "texture": TEXTURES}
BACKGROUND = (0.32, 0.62, 0.64)  # teal: not one of the 11 colour names
DEFAULT_N = {"train": 4096, "val": 512, "test": 512}

# x min(H, W). shapes-world-1 drew 0.22-0.30: the labelled object then covered the image centre in 87% of the
# images, so the ``center`` baseline scored 0.87 on the pointing game, as well as Grad-CAM. At 0.16-0.24 it covers
# it in about half of them (VOC 2007: 69.6 all, 42.4 difficult), and a model must locate the object to score.
_MAIN_RADIUS = (0.16, 0.24)
_DISTRACTOR_RADIUS = 0.075  # x min(H, W), smallest distractor radius
_RADIUS_RATIO = 2.1  # main radius / largest distractor radius
_MAX_ROTATION = math.radians(15)


def concept_names() -> dict[str, list[str]]:
    """Per concept category, the label names; index 0 is ``"-"`` (no concept)."""
    return {"color": ["-", *COLOR_NAMES], "texture": ["-", *TEXTURES], "shape": ["-", *SHAPES]}


# --------------------------------------------------------------------------------------------- geometry


def _star_vertices(outer: float = 1.15, inner: float = 0.47, points: int = 5) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


def _regular_vertices(n: int, radius: float, start: float) -> np.ndarray:
    angles = start + np.arange(n) * 2 * math.pi / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], 1)


_ARM = 0.36
_POLYGONS: dict[str, np.ndarray] = {  # unit-radius outlines, image axes (y down)
    "square": np.array([[-0.82, -0.82], [0.82, -0.82], [0.82, 0.82], [-0.82, 0.82]]),
    "triangle": _regular_vertices(3, 1.15, -math.pi / 2),  # pointing up
    "diamond": np.array([[0.0, -1.2], [0.95, 0.0], [0.0, 1.2], [-0.95, 0.0]]),  # a rhombus, never a square
    "star": _star_vertices(),
    "cross": np.array([[-_ARM, -1], [_ARM, -1], [_ARM, -_ARM], [1, -_ARM], [1, _ARM], [_ARM, _ARM], [_ARM, 1],
                       [-_ARM, 1], [-_ARM, _ARM], [-1, _ARM], [-1, -_ARM], [-_ARM, -_ARM]], dtype=float),
}
_RING_INNER = 0.55
# Radius of each shape's bounding circle, in units of its radius (for placement without overlap).
_BOUND = {name: float(np.hypot(*_POLYGONS[name].T).max()) for name in _POLYGONS} | {"circle": 1.0, "ring": 1.0}


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each ``H x W``."""
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float32) + 0.5, np.arange(width, dtype=np.float32) + 0.5,
                         indexing="ij")
    return xs, ys


def inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd (crossing number) point-in-polygon test of every point ``(u, v)`` against a closed outline."""
    shape = (-1,) + (1,) * np.ndim(u)  # edges along a new leading axis
    x1, y1 = vertices[:, 0].reshape(shape), vertices[:, 1].reshape(shape)
    x2, y2 = np.roll(vertices[:, 0], -1).reshape(shape), np.roll(vertices[:, 1], -1).reshape(shape)
    straddles = (y1 > v) != (y2 > v)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
    return np.logical_xor.reduce(straddles & (u < x_cross), axis=0)


def shape_mask(shape: str, cx: float, cy: float, radius: float, angle: float, height: int, width: int) -> np.ndarray:
    """Boolean ``H x W`` mask of ``shape`` centred at ``(cx, cy)`` with the given radius and rotation (radians)."""
    xs, ys = _grid(height, width)
    dx, dy = xs - cx, ys - cy
    c, s = math.cos(angle), math.sin(angle)
    u = (c * dx + s * dy) / radius  # rotate the points by -angle == rotate the shape by +angle
    v = (-s * dx + c * dy) / radius
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= _RING_INNER**2)
    return inside_polygon(u, v, _POLYGONS[shape])


# --------------------------------------------------------------------------------------------- textures


@functools.lru_cache(maxsize=4)
def _photo_textures(scale: int) -> dict[str, np.ndarray]:
    """scikit-image's brick, grass and gravel photos, resized to ``scale x scale``, contrast-stretched to [0, 1]."""
    import skimage.data

    out = {}
    for name in ("brick", "grass", "gravel"):
        gray = torch.from_numpy(getattr(skimage.data, name)().astype(np.float32) / 255.0)[None, None]
        small = torch.nn.functional.interpolate(gray, size=(scale, scale), mode="bilinear", antialias=True,
                                                align_corners=False)[0, 0].numpy()
        lo, hi = np.percentile(small, [2, 98])
        out[name] = np.clip((small - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return out


def texture_pattern(texture: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``H x W`` pattern in [0, 1]: 0 = the object's colour, 1 = its shade."""
    xs, ys = _grid(height, width)
    side = min(height, width)
    if texture == "solid":
        return np.zeros((height, width), np.float32)
    if texture == "stripes":
        period = max(4.0, side / 10)
        theta = rng.integers(4) * math.pi / 4
        phase = rng.uniform(0, period)
        t = xs * math.cos(theta) + ys * math.sin(theta) + phase
        return (np.mod(t, period) < period / 2).astype(np.float32)
    if texture == "dots":
        spacing = max(5.0, side / 9)
        ox, oy = rng.uniform(0, spacing, size=2)
        dx = np.mod(xs + ox, spacing) - spacing / 2
        dy = np.mod(ys + oy, spacing) - spacing / 2
        return (dx * dx + dy * dy <= (0.3 * spacing) ** 2).astype(np.float32)
    if texture == "checker":
        cell = max(3.0, side / 16)
        ox, oy = rng.uniform(0, 2 * cell, size=2)
        return ((np.floor((xs + ox) / cell) + np.floor((ys + oy) / cell)) % 2).astype(np.float32)
    bank = _photo_textures(2 * max(height, width))[texture]
    top, left = rng.integers(0, bank.shape[0] - height + 1), rng.integers(0, bank.shape[1] - width + 1)
    return bank[top:top + height, left:left + width]


def shade(color: np.ndarray) -> np.ndarray:
    """The second tone of a textured object: its colour at half brightness (black: lightened to 35%)."""
    if color.max() < 0.2:
        return color + 0.35 * (1.0 - color)
    return 0.5 * color


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Teal ``H x W x 3`` background: jittered base tone, a faint linear gradient, faint pixel noise."""
    xs, ys = _grid(height, width)
    base = np.asarray(BACKGROUND, np.float32) + rng.uniform(-0.03, 0.03, size=3).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = ((xs - width / 2) * math.cos(theta) + (ys - height / 2) * math.sin(theta)) / max(height, width)
    noise = rng.normal(0.0, 0.02, size=(height, width)).astype(np.float32)
    return base + (0.10 * ramp + noise)[..., None]


# --------------------------------------------------------------------------------------------- scenes


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The Generator of sample ``index``: seeded from a hash of (generator version, seed, split, index)."""
    digest = hashlib.blake2b(f"{GENERATOR_VERSION}|{seed}|{split}|{index}".encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _place(rng, bound: float, height: int, width: int, placed: list[tuple[float, float, float]], gap: float = 2.0):
    """A centre for an object of bounding radius ``bound`` inside the image, clear of ``placed``; None if none found."""
    for _ in range(30):
        cx = rng.uniform(bound + 1, width - bound - 1)
        cy = rng.uniform(bound + 1, height - bound - 1)
        if all(math.hypot(cx - px, cy - py) > bound + pb + gap for px, py, pb in placed):
            return cx, cy
    return None


def render_scene(seed: int, split: str, index: int, height: int, width: int) -> tuple[np.ndarray, list[dict]]:
    """Draw sample ``index``: the ``H x W x 3`` float32 image in [0, 1] and its objects, the labelled one first.

    Each object: ``shape``, ``color``, ``texture`` (indices into SHAPES, COLOR_NAMES, TEXTURES), ``mask``
    (bool ``H x W``), ``area`` (pixels).
    """
    rng = sample_rng(seed, split, index)
    side = min(height, width)
    image = background(rng, height, width)
    n_objects = int(rng.integers(1, 4))
    props = rng.integers([len(SHAPES), len(COLORS), len(TEXTURES)], size=(n_objects, 3))
    angles = rng.uniform(-_MAX_ROTATION, _MAX_ROTATION, size=n_objects)

    main_radius = rng.uniform(*_MAIN_RADIUS) * side
    main_bound = _BOUND[SHAPES[props[0, 0]]] * main_radius
    cx = rng.uniform(main_bound + 1, width - main_bound - 1)
    cy = rng.uniform(main_bound + 1, height - main_bound - 1)
    main_mask = shape_mask(SHAPES[props[0, 0]], cx, cy, main_radius, angles[0], height, width)
    main_area = int(main_mask.sum())
    objects = [dict(shape=int(props[0, 0]), color=int(props[0, 1]), texture=int(props[0, 2]), mask=main_mask,
                    area=main_area)]
    placed = [(cx, cy, main_bound)]
    for k in range(1, n_objects):
        shape = SHAPES[props[k, 0]]
        lo = _DISTRACTOR_RADIUS * side
        radius = rng.uniform(lo, max(lo, main_radius / _RADIUS_RATIO))
        centre = _place(rng, _BOUND[shape] * radius, height, width, placed)
        if centre is None:
            continue
        mask = shape_mask(shape, centre[0], centre[1], radius, angles[k], height, width)
        while 2 * int(mask.sum()) > main_area:  # discretisation can break the radius bound: shrink
            radius *= 0.9
            mask = shape_mask(shape, centre[0], centre[1], radius, angles[k], height, width)
        if not mask.any():
            continue
        placed.append((centre[0], centre[1], _BOUND[shape] * radius))
        objects.append(dict(shape=int(props[k, 0]), color=int(props[k, 1]), texture=int(props[k, 2]), mask=mask,
                            area=int(mask.sum())))

    for obj in objects[::-1]:  # distractors first, the labelled object last (they never overlap anyway)
        color = np.asarray(COLORS[COLOR_NAMES[obj["color"]]], np.float32)
        pattern = texture_pattern(TEXTURES[obj["texture"]], rng, height, width)
        layer = color + (shade(color) - color) * pattern[..., None]
        image[obj["mask"]] = layer[obj["mask"]]
    return np.clip(image, 0.0, 1.0), objects


def mask_box(mask: np.ndarray) -> list[float]:
    """``[x_min, y_min, x_max + 1, y_max + 1]`` of a non-empty boolean mask (pixel coordinates)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


# --------------------------------------------------------------------------------------------- dataset


def _size_hw(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        height = width = size
    else:
        try:
            height, width = (int(s) for s in size)
        except (TypeError, ValueError):
            raise ComponentError(f"shapes: size {size!r} is not an int or (H, W); use e.g. size=64") from None
    if min(height, width) < 32:
        raise ComponentError(f"shapes: size {size!r} is too small to draw the shapes; use at least 32 px")
    return height, width


class ShapesWorld(torch.utils.data.Dataset):
    """``n`` samples of the shapes world for ``(seed, split)``; ``label``: ``task`` property of the largest object."""

    provides = frozenset({"label", "labels", "boxes", "masks", "objects", "concepts"})

    def __init__(self, split: str = "test", size: Any = 64, n: int | None = None, seed: int = 0, task: str = "shape",
                 multilabel: bool = False):
        if task not in TASKS:
            raise ComponentError(f"shapes: task {task!r} is not one of {sorted(TASKS)}; use e.g. task='shape'")
        if split not in DEFAULT_N:
            raise ComponentError(f"shapes: split {split!r} is not one of {sorted(DEFAULT_N)}")
        self.split, self.seed, self.task = split, int(seed), task
        self.height, self.width = _size_hw(size)
        self.n = DEFAULT_N[split] if n is None else int(n)
        if self.n < 0:
            raise ComponentError(f"shapes: n={n!r} must be >= 0")
        self.name = "shapes" if task == "shape" else f"shapes-{task}"
        # multilabel: with --target label, one trial per (image, class of an object in it), as on VOC / COCO
        self.multilabel = bool(multilabel)
        self.classes = list(TASKS[task])
        self.label_space = f"shapes:{task}"
        # the pointing game's tolerance: TorchRay's 15 px at VOC's ~500 px, scaled to this size, whole pixels (2 at 64)
        self.pointing_tolerance = float(max(1, round(15 * max(self.height, self.width) / 500)))

    def __len__(self) -> int:
        return self.n

    def identity(self) -> dict[str, Any]:
        out = {"loader": "shapes", "split": self.split, "size": [self.height, self.width], "n": self.n,
               "seed": self.seed, "task": self.task, "generator": GENERATOR_VERSION}
        if self.multilabel:
            out["multilabel"] = True
        return out

    @staticmethod
    def concept_names() -> dict[str, list[str]]:
        return concept_names()

    def class_similarity(self) -> torch.Tensor:
        """``C x C`` similarity of the task's classes (Dong et al.'s ``A``, :mod:`interpbench.ops.consistency`):
        for the shape task, the Jaccard overlap of the shapes' geometric attributes (:data:`SHAPE_ATTRIBUTES`);
        the colour and texture tasks have no attribute table, so their classes are only similar to themselves (the
        identity)."""
        if self.task == "shape":
            return jaccard_similarity([SHAPE_ATTRIBUTES[name] for name in SHAPES])
        return torch.eye(len(self.classes), dtype=torch.float64)

    def sample_id(self, index: int) -> str:
        prefix = "shapes" if self.seed == 0 else f"shapes/seed{self.seed}"
        return f"{prefix}/{self.split}/{index:06d}"

    def _check(self, index: int) -> int:
        if not 0 <= index < self.n:
            raise IndexError(f"shapes: index {index} out of range for {self.n} samples")
        return int(index)

    def render(self, index: int) -> tuple[np.ndarray, list[dict]]:
        """The raw ``H x W x 3`` image and objects of sample ``index`` (see ``render_scene``)."""
        return render_scene(self.seed, self.split, self._check(index), self.height, self.width)

    def tensors(self, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``N x 3 x H x W`` and labels ``N`` of samples ``start..stop`` (fast path for training)."""
        stop = self.n if stop is None else min(stop, self.n)
        images = np.empty((max(stop - start, 0), self.height, self.width, 3), np.float32)
        labels = np.empty(len(images), np.int64)
        for j, index in enumerate(range(start, stop)):
            images[j], objects = self.render(index)
            labels[j] = objects[0][self.task]
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, objects = self.render(index)
        h, w = self.height, self.width
        maps = {c: np.zeros((h, w), np.int64) for c in ("color", "texture", "shape")}
        boxes: dict[int, list] = {}
        masks: dict[int, np.ndarray] = {}
        out_objects = []
        for obj in objects:
            for category in maps:
                maps[category][obj["mask"]] = obj[category] + 1
            cls = obj[self.task]
            box = mask_box(obj["mask"])
            boxes.setdefault(cls, []).append(box)
            masks[cls] = masks[cls] | obj["mask"] if cls in masks else obj["mask"]
            out_objects.append({"shape": SHAPES[obj["shape"]], "color": COLOR_NAMES[obj["color"]],
                                "texture": TEXTURES[obj["texture"]], "box": torch.tensor(box),
                                "mask": torch.from_numpy(obj["mask"]), "area": obj["area"]})
        return {
            "id": self.sample_id(index),
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "label": objects[0][self.task],
            "labels": sorted(boxes),
            "boxes": {c: torch.tensor(b, dtype=torch.float32).view(-1, 4) for c, b in sorted(boxes.items())},
            "masks": {c: torch.from_numpy(m) for c, m in sorted(masks.items())},
            "objects": out_objects,
            "concepts": {c: torch.from_numpy(m) for c, m in maps.items()},
            "pointing_tolerance": self.pointing_tolerance,
        }

    def __repr__(self) -> str:
        return (f"ShapesWorld(split={self.split!r}, size={(self.height, self.width)}, n={self.n}, seed={self.seed}, "
                f"task={self.task!r})")


class ShapesSource(DatasetSource):
    """Loader ``shapes``: the embedded synthetic shapes world (no files needed)."""

    name = "shapes"

    def load(self, split: str = "test", size: Any = 64, n: int | None = None, seed: int = 0, task: str = "shape",
             multilabel: bool = False, path: Any = None, **ignored: Any) -> ShapesWorld:
        return ShapesWorld(split=split, size=size, n=n, seed=seed, task=task, multilabel=multilabel)
