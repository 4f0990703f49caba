"""A tiny synthetic dataset: one coloured square on a noise background; the label is its colour."""

from __future__ import annotations

import torch

import interpbench as ib

COLORS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.1), "blue": (0.1, 0.2, 0.9)}


class Squares(torch.utils.data.Dataset):
    """``n`` images of ``size``; sample ``i`` is a pure function of ``(seed, i)`` (resume relies on it)."""

    classes = list(COLORS)
    label_space = "example:colors"
    provides = frozenset({"label", "labels", "boxes", "masks"})

    def __init__(self, n: int, size: tuple[int, int], seed: int) -> None:
        self.n, self.size, self.seed = n, size, seed
        self.name = "example-squares"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(f"example-squares: index {index} out of range for {self.n} samples")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        h, w = self.size
        side = int(torch.randint(min(h, w) // 4, min(h, w) // 2 + 1, (1,), generator=g))
        top = int(torch.randint(0, h - side + 1, (1,), generator=g))
        left = int(torch.randint(0, w - side + 1, (1,), generator=g))
        label = int(torch.randint(0, len(COLORS), (1,), generator=g))
        image = torch.rand(3, h, w, generator=g) * 0.5 + 0.25
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[top:top + side, left:left + side] = True
        image[:, mask] = torch.tensor(COLORS[self.classes[label]])[:, None]
        box = torch.tensor([[left, top, left + side, top + side]], dtype=torch.float32)  # xyxy, exclusive ends
        return {"id": f"example-squares/{self.seed}/{index:05d}", "image": image, "label": label,
                "labels": [label], "boxes": {label: box}, "masks": {label: mask}}

    def identity(self) -> dict:
        return {"loader": "example:squares", "n": self.n, "size": list(self.size), "seed": self.seed}


class SquaresSource(ib.DatasetSource):
    """Loader ``example:squares``: coloured squares on noise, with boxes and masks (synthetic, no files)."""

    name = "example:squares"

    def load(self, split: str = "test", size=64, n: int = 64, seed: int = 0, **ignored) -> Squares:
        if isinstance(size, int):
            size = (size, size)
        size = tuple(int(s) for s in size)
        if min(size) < 8:
            raise ib.ComponentError(f"example:squares: size {size} is too small; use at least 8 px")
        return Squares(int(n), size, int(seed) + (0 if split == "test" else 1))
