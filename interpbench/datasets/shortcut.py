"""Loader ``shapes-shortcut``: the shapes world with a planted shortcut, a coloured patch in a fixed corner.

A test of the claim that explanations expose spurious correlations (Fong & Vedaldi, ICCV 2017; the
planted-feature tests of Adebayo et al., ICLR 2022): in the training split a small square in the top-left corner
has the colour of the image's label (``PATCH_COLORS[label]``), so the colour predicts the label as well as the
shape does; in the test split the patch has the colour of *another* class (chosen per image, seeded), so the patch
and the object disagree. A model that learned the shortcut (``shapes:cnn.shortcut``) follows the patch there;
an explanation that exposes it puts its mass on the patch (metric ``shortcut_localization``).

Samples are those of :class:`interpbench.datasets.shapes.ShapesWorld` (task ``shape``, the same images) with the
patch painted over the image, plus ``patch_mask`` (bool H x W), ``patch_box`` (xyxy), ``patch_label`` (the class
the patch colour stands for), ``clean_image`` (the image without the patch) and ``shortcut`` (the mode). The
object ``masks`` / ``boxes`` / ``objects`` / ``concepts`` exclude the patch pixels. ``mode``: ``"agree"`` (patch
colour = label's; the train split's default, where ``relabel`` = 1/4 of the images get another class as label and
patch colour, so that the patch predicts the label better than the shape), ``"conflict"`` (another class's; val
and test) or ``"none"``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from interpbench.core.base import ComponentError, DatasetSource
from interpbench.datasets.shapes import COLORS, SHAPES, ShapesWorld, mask_box

SHORTCUT_VERSION = "shapes-shortcut-1"
# one colour per shape class (SHAPES order), from the world's clean palette
PATCH_COLORS = ("red", "green", "blue", "yellow", "white", "black", "purple")
PATCH_FRACTION = 0.1  # the patch side as a fraction of the image side (6 px at 64 px)
MODES = ("agree", "conflict", "none")
# In the train split a quarter of the images are relabelled (label and patch colour: another class), so that the
# patch predicts the label always and the shape only in 3 of 4 images: with the patch merely as predictive as the
# shape, the embedded CNN learns the shape (it follows a conflicting patch in 9% of test images only).
TRAIN_RELABEL = 0.25


def patch_side(height: int, width: int, fraction: float = PATCH_FRACTION) -> int:
    return max(2, int(round(fraction * min(height, width))))


def _hash(*parts: Any) -> int:
    text = "|".join(map(str, (SHORTCUT_VERSION, *parts)))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def conflict_class(seed: int, split: str, index: int, label: int, num_classes: int = len(SHAPES)) -> int:
    """A class other than ``label`` for the patch of sample ``index``: uniform over the others, a pure hash."""
    return (label + 1 + _hash(seed, split, index) % (num_classes - 1)) % num_classes


def relabelled(seed: int, split: str, index: int, fraction: float) -> bool:
    """Whether sample ``index`` is among the ``fraction`` of relabelled training images (a pure hash)."""
    return _hash("relabel", seed, split, index) % 1_000_000 < round(fraction * 1_000_000)


class ShortcutWorld(torch.utils.data.Dataset):
    """``ShapesWorld(split, size, n, seed, task="shape")`` with the corner patch (see the module docstring)."""

    multilabel = False

    def __init__(self, split: str = "test", size: Any = 64, n: int | None = None, seed: int = 0,
                 mode: str | None = None, patch: float = PATCH_FRACTION, relabel: float | None = None):
        self.base = ShapesWorld(split=split, size=size, n=n, seed=seed, task="shape")
        self.mode = mode or ("agree" if split == "train" else "conflict")
        if self.mode not in MODES:
            raise ComponentError(f"shapes-shortcut: mode {self.mode!r} is not one of {list(MODES)}")
        if not isinstance(patch, (int, float)) or not 0 < patch <= 0.5:
            raise ComponentError(f"shapes-shortcut: patch {patch!r} must be a fraction of the image side in (0, 0.5]")
        self.patch = float(patch)
        if relabel is None:
            relabel = TRAIN_RELABEL if split == "train" and self.mode == "agree" else 0.0
        self.relabel = relabel
        if not isinstance(self.relabel, (int, float)) or not 0 <= self.relabel < 1:
            raise ComponentError(f"shapes-shortcut: relabel {relabel!r} must be a fraction in [0, 1)")
        if self.relabel and self.mode != "agree":
            raise ComponentError("shapes-shortcut: relabel applies to mode 'agree' (training images) only")
        self.split, self.seed = split, int(seed)
        self.height, self.width = self.base.height, self.base.width
        self.side = patch_side(self.height, self.width, self.patch)
        self.classes = list(SHAPES)
        self.label_space = "shapes:shape"
        self.name = "shapes-shortcut"
        self.provides = frozenset(self.base.provides | {"patch_mask", "patch_box", "patch_label", "clean_image"})
        mask = np.zeros((self.height, self.width), dtype=bool)
        mask[: self.side, : self.side] = True
        self.patch_mask = mask

    def __len__(self) -> int:
        return len(self.base)

    def identity(self) -> dict[str, Any]:
        return {**self.base.identity(), "loader": "shapes-shortcut", "shortcut": SHORTCUT_VERSION, "mode": self.mode,
                "patch": self.patch, "relabel": self.relabel, "patch_colors": list(PATCH_COLORS)}

    def training_label(self, index: int, shape: int) -> int:
        """The label of sample ``index`` whose largest object has ``shape``: the shape, or another class for the
        ``relabel`` fraction of images."""
        if self.relabel and relabelled(self.seed, self.split, index, self.relabel):
            return conflict_class(self.seed, self.split, index, shape)
        return shape

    def patch_class(self, index: int, label: int) -> int | None:
        """The class whose colour the patch of sample ``index`` (with label ``label``) has; None: no patch."""
        if self.mode == "none":
            return None
        return label if self.mode == "agree" else conflict_class(self.seed, self.split, index, label)

    def paint(self, images: torch.Tensor, classes: list[int | None]) -> torch.Tensor:
        """Images ``N x 3 x H x W`` with the patch of ``classes[i]`` painted in (None: left as it is)."""
        out = images.clone()
        for i, c in enumerate(classes):
            if c is not None:
                out[i, :, : self.side, : self.side] = torch.tensor(COLORS[PATCH_COLORS[c]]).view(3, 1, 1)
        return out

    def tensors(self, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Patched images ``N x 3 x H x W`` and labels of samples ``start..stop`` (the training fast path)."""
        images, shapes = self.base.tensors(start, stop)
        labels = torch.tensor([self.training_label(start + i, y) for i, y in enumerate(shapes.tolist())])
        classes = [self.patch_class(start + i, int(y)) for i, y in enumerate(labels.tolist())]
        return self.paint(images, classes), labels

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base[index]
        sample["shape_label"] = shape = int(sample["label"])
        sample["label"] = label = self.training_label(index, shape)
        patch_label = self.patch_class(index, label)
        clean = sample["image"]
        sample["id"] = f"shapes-shortcut-{self.mode}" + sample["id"][len("shapes"):]
        sample["clean_image"] = clean
        sample["image"] = self.paint(clean[None], [patch_label])[0]
        sample["shortcut"] = self.mode
        patch = torch.from_numpy(self.patch_mask)
        sample["patch_mask"] = patch
        sample["patch_box"] = torch.tensor([0.0, 0.0, float(self.side), float(self.side)])
        sample["patch_label"] = -1 if patch_label is None else patch_label
        if patch_label is not None:  # the patch hides what lies under it
            boxes: dict[int, list] = {}
            for obj in sample["objects"]:
                obj["mask"] = obj["mask"] & ~patch
                obj["area"] = int(obj["mask"].sum())
                if obj["area"]:
                    obj["box"] = torch.tensor(mask_box(obj["mask"].numpy()))
                    boxes.setdefault(SHAPES.index(obj["shape"]), []).append(obj["box"].tolist())
            sample["objects"] = [obj for obj in sample["objects"] if obj["area"]]
            sample["masks"] = {c: m & ~patch for c, m in sample["masks"].items() if c in boxes}
            sample["boxes"] = {c: torch.tensor(b, dtype=torch.float32).view(-1, 4) for c, b in sorted(boxes.items())}
            sample["labels"] = sorted(boxes)
            for concept in sample["concepts"].values():
                concept[patch] = 0
        return sample

    def __repr__(self) -> str:
        return f"ShortcutWorld(split={self.split!r}, n={len(self)}, mode={self.mode!r}, patch={self.side} px)"


class ShortcutSource(DatasetSource):
    """Loader ``shapes-shortcut``: ``load(split="test", size=64, n=None, seed=0, mode=None, patch=0.1, relabel=None)``."""

    name = "shapes-shortcut"

    def load(self, split: str = "test", size: Any = 64, n: int | None = None, seed: int = 0, mode: str | None = None,
             patch: float = PATCH_FRACTION, relabel: float | None = None, path: Any = None,
             **ignored: Any) -> ShortcutWorld:
        return ShortcutWorld(split=split, size=size, n=n, seed=seed, mode=mode, patch=patch, relabel=relabel)
