"""A tiny third-party plugin used by the core tests: a model source, a dataset loader and a few methods,
some of them broken on purpose. Installed into the test environment as a real distribution (see conftest.py)."""

import os
import time

import torch
from torch import nn

import interpbench as ib

SIZE = 16
CLASSES = ["a", "b", "c"]


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g)

    def forward(self, x):
        return self.head(self.features(x))


class ToySource(ib.ModelSource):
    """Toy model source for tests."""

    name = "toy"

    def load(self, name, weights, resolve_weights):
        if name != "net":
            raise ib.ComponentError(f"toy source has no model {name!r}; try 'toy:net'")
        return ib.Model(ToyNet(), spec=f"toy:{name}", mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(SIZE, SIZE),
                        class_names=CLASSES, cam_layer="features", label_space="toy", default_dataset="toy",
                        weights={"source": "toy", "tag": "seed0", "sha256": None,
                                 "path": os.environ.get("INTERPBENCH_TOY_WEIGHTS_PATH")}, layers=["features"])

    def available(self):
        return ["net"]


class ToyDataset(torch.utils.data.Dataset):
    name = "toy"
    classes = CLASSES
    label_space = "toy"
    provides = {"label"}

    def __init__(self, n, size, multilabel=False):
        self.n, self.size, self.multilabel = n, size, multilabel
        self.provides = {"label", "labels"} if multilabel else {"label"}

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed(1000 + i)
        sample = {"id": f"toy/{i:04d}", "image": torch.rand(3, self.size, self.size, generator=g), "label": i % 3}
        if self.multilabel:  # image i shows classes i % 3 and, for even i, also (i + 1) % 3
            del sample["label"]
            sample["labels"] = [i % 3] + ([(i + 1) % 3] if i % 2 == 0 else [])
        return sample

    def identity(self):
        return {"loader": "toy", "n": self.n, "size": self.size, "multilabel": self.multilabel}


class ToyLoader(ib.DatasetSource):
    """Toy dataset loader for tests."""

    name = "toy"

    def load(self, split="test", size=SIZE, n=24, multilabel=False, **options):
        size = size[0] if isinstance(size, (tuple, list)) else size
        return ToyDataset(n, size, multilabel)


class Noise(ib.Method):
    """Seeded noise; sleeps INTERPBENCH_TOY_SLEEP seconds per batch (for the kill/resume test)."""

    name = "toy_noise"
    deterministic = False

    def explain(self, model, images, targets):
        time.sleep(float(os.environ.get("INTERPBENCH_TOY_SLEEP", "0")))
        return torch.rand(images.shape[0], *images.shape[2:], device=images.device)


class Brightest(ib.Method):
    """The image's brightness; with INTERPBENCH_TOY_OOM=1 it fails like a GPU out of memory above 3 images."""

    name = "toy_brightest"

    def explain(self, model, images, targets):
        if os.environ.get("INTERPBENCH_TOY_OOM") == "1" and images.shape[0] > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return images.mean(1)


class NaNMethod(ib.Method):
    """Returns NaN maps."""

    name = "toy_nan"

    def explain(self, model, images, targets):
        return torch.full((images.shape[0], *images.shape[2:]), float("nan"))


class WrongShape(ib.Method):
    """Returns maps at a quarter of the resolution."""

    name = "toy_wrong_shape"

    def explain(self, model, images, targets):
        return torch.rand(images.shape[0], images.shape[2] // 4, images.shape[3] // 4)


class Raises(ib.Method):
    """Raises."""

    name = "toy_raises"

    def explain(self, model, images, targets):
        raise RuntimeError("toy method exploded")


class NotForThis(ib.Method):
    """Declares itself not applicable."""

    name = "toy_na"

    def explain(self, model, images, targets):
        raise ib.NotApplicable("toy_na needs a model with attention layers")


class Brightness(ib.Metric):
    """Mean image brightness inside the top half of the map (a toy per-sample metric)."""

    name = "toy_brightness"

    def score(self, model, batch, maps):
        flat = maps.flatten(1)
        top = flat >= flat.median(dim=1, keepdim=True).values
        return (batch.images.mean(1).flatten(1) * top).sum(1) / top.sum(1)


class MeanMap(ib.Metric):
    """A dataset-level toy metric: the mean of all maps."""

    name = "toy_mean_map"

    def reset(self):
        self.total, self.count = 0.0, 0

    def update(self, model, batch, maps):
        self.total += float(maps.sum())
        self.count += maps.numel()

    def compute(self):
        return {"mean_map": self.total / self.count}


@ib.hookimpl
def register_models():
    return [ToySource]


@ib.hookimpl
def register_datasets():
    return [ToyLoader]


@ib.hookimpl
def register_methods():
    return [Noise, Brightest, NaNMethod, WrongShape, Raises, NotForThis]


@ib.hookimpl
def register_metrics():
    return [Brightness, MeanMap]
