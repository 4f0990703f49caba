"""The reference world every conformance kit of ``interpbench.testing`` runs on, and the helpers the kits share.

Layer: ``interpbench.testing`` sits beside ``interpbench.publish``, above the engine (docs/design.md); this module
imports only ``interpbench.core`` and torch.

The world is built so that the right answer is known: a tiny model whose target logit can only be changed by the
pixels of one known square (:data:`REGION`), images whose colour inside that square is the label, and ground truth
(``label``, ``labels``, ``boxes``, ``masks``, ``concepts``) in the formats of the built-in datasets. On it the
oracle map (1 inside the square, 0 outside) is the right explanation, so a metric of explanations must score it
better than the inverted map. :class:`ReferenceWorld` bundles the model, a batch of reference samples and the two
maps, built on first use; the metric kit (interpbench.testing.metrics) and the rescaling check
(interpbench.testing.rescaling) run on it.

The method kit (interpbench.testing.methods) needs a world whose right answer depends on the target class, so it
runs on the **oracle model** (:func:`oracle_model`), also here: a small ReLU convnet whose logit for class ``c``
reads only the pixels of its own box ``ORACLE_REGIONS[c]``, with :func:`oracle_images` (seeded noise) and
:func:`positive_mass_inside` (how much of a map's evidence lies in a box).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import OrderedDict
from typing import Any, Callable, Sequence

import torch
from torch import nn

from interpbench.core.base import (
    Batch,
    ComponentError,
    Method,
    Model,
    collate,
)
from interpbench.core.registry import get_registry

# The ground-truth fields the built-in datasets and the runner know (base.py).
KNOWN_FIELDS = frozenset({"id", "image", "label", "labels", "boxes", "masks", "difficult", "concepts", "objects"})
SCOPES = ("explanation", "model")

REFERENCE_SIZE = (32, 32)
REGION = (slice(8, 20), slice(4, 16))  # rows 8..19, columns 4..15: 144 of 1,024 pixels, off-centre
REFERENCE_CLASSES = ["red", "green", "blue"]
REFERENCE_MEAN = (0.5, 0.5, 0.5)
REFERENCE_STD = (0.25, 0.25, 0.25)
ATOL = 1e-5


def known_fields() -> frozenset[str]:
    """:data:`KNOWN_FIELDS`, read when a check runs (so that a test can extend it with ``monkeypatch``)."""
    return KNOWN_FIELDS


# --------------------------------------------------------------------------------------------- reference world


def region_mask(size: tuple[int, int] = REFERENCE_SIZE) -> torch.Tensor:
    """``H x W`` bool: True inside :data:`REGION`, the only pixels the reference model looks at."""
    mask = torch.zeros(size, dtype=torch.bool)
    mask[REGION] = True
    return mask


class RegionNet(nn.Module):
    """Colour-opponent features of the normalised image, masked to :data:`REGION`, averaged, one logit per colour.

    ``features`` (the CAM layer) is ``ReLU(4 z_c - sum_k z_k)`` for each channel c of ``z * region``; the logits
    are the mean of each feature over the region. Pixels outside the region cannot change any logit (their
    input gradient is exactly zero), so the oracle explanation is the region itself.
    """

    def __init__(self, size: tuple[int, int] = REFERENCE_SIZE) -> None:
        super().__init__()
        mask = region_mask(size).float()
        self.register_buffer("region", mask[None, None])
        self.features = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.features[0].weight.copy_((4 * torch.eye(3) - 1).view(3, 3, 1, 1))
            self.features[0].bias.zero_()
            self.head.weight.copy_(torch.eye(3) * (mask.numel() / mask.sum()))  # pooled mean -> mean over the region
            self.head.bias.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(z * self.region)))


def reference_model() -> Model:
    """The reference model ``reference:region`` (32 x 32 px, 3 classes, ``cam_layer = "features"``), eval mode.

    It passes every :func:`~interpbench.testing.models.model_checks` check (the kit's own positive control)."""
    return Model(
        RegionNet(REFERENCE_SIZE),
        spec="reference:region",
        mean=REFERENCE_MEAN,
        std=REFERENCE_STD,
        input_size=REFERENCE_SIZE,
        class_names=REFERENCE_CLASSES,
        cam_layer="features",
        label_space="interpbench:reference",
        default_dataset="shapes",  # any embedded dataset runs on it (--target predicted); the kit never runs it
        weights={"source": "interpbench.testing", "tag": "constructed", "sha256": None},
        layers=["features", "head"],
    ).eval()


def reference_sample(index: int, size: tuple[int, int] = REFERENCE_SIZE) -> dict[str, Any]:
    """Sample ``index``: uniform noise, the region filled with a noisy colour ``index % 3`` (the label)."""
    g = torch.Generator().manual_seed(7919 + index)
    h, w = size
    label = index % len(REFERENCE_CLASSES)
    image = torch.rand(3, h, w, generator=g)
    colour = torch.full((3,), 0.1)
    colour[label] = 0.9
    mask = region_mask(size)
    inside = colour[:, None, None] + 0.1 * (torch.rand(3, h, w, generator=g) - 0.5)
    image = torch.where(mask, inside, image).clamp(0, 1)
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    box = torch.tensor([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], dtype=torch.float32)  # xyxy, exclusive
    color_map = torch.zeros(h, w, dtype=torch.long)
    color_map[mask] = label + 1
    return {
        "id": f"reference/{index:03d}",
        "image": image,
        "label": label,
        "labels": [label],
        "boxes": {label: box},
        "masks": {label: mask},
        "concepts": {"color": color_map},
    }


class ReferenceDataset(torch.utils.data.Dataset):
    """``n`` reference samples: a dataset with the attributes the runner expects."""

    name = "reference"
    classes = REFERENCE_CLASSES
    label_space = "interpbench:reference"
    provides = frozenset({"label", "labels", "boxes", "masks", "concepts"})

    def __init__(self, n: int = 6, size: tuple[int, int] = REFERENCE_SIZE) -> None:
        self.n, self.size = n, tuple(size)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.n:
            raise IndexError(f"reference: index {index} out of range for {self.n} samples")
        return reference_sample(index, self.size)

    def identity(self) -> dict[str, Any]:
        return {"loader": "reference", "n": self.n, "size": list(self.size)}

    @staticmethod
    def concept_names() -> dict[str, list[str]]:
        return {"color": ["-", *REFERENCE_CLASSES]}


class ReferenceOracleMethod(Method):
    """The right answer on the reference world: 1 inside the region, 0 outside."""

    name = "reference:oracle"

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mask = region_mask(tuple(images.shape[-2:])).to(images.device, torch.float32)
        return mask.expand(images.shape[0], *mask.shape).clone()


def reference_batch(n: int = 6, model: Model | None = None, samples: list[dict] | None = None) -> Batch:
    """A :class:`Batch` of reference samples (at ``model``'s input size) with ``targets = labels`` (the reference
    model predicts them)."""
    size = tuple(model.input_size) if model is not None else REFERENCE_SIZE
    samples = samples if samples is not None else [reference_sample(i, size) for i in range(n)]
    data = collate(samples)
    device = model.device if model is not None else torch.device("cpu")
    labels = data.get("labels")
    targets = labels if labels is not None else torch.zeros(len(samples), dtype=torch.long)
    return Batch(ids=data["ids"], images=data["images"].to(device), targets=targets.to(device),
                 samples=data["samples"], labels=None if labels is None else labels.to(device),
                 method=ReferenceOracleMethod(), seed=12345)


def _sub_batch(batch: Batch, index: list[int]) -> Batch:
    idx = torch.as_tensor(index, dtype=torch.long, device=batch.images.device)
    return dataclasses.replace(
        batch, ids=[batch.ids[i] for i in index], images=batch.images[idx], targets=batch.targets[idx],
        samples=[batch.samples[i] for i in index], labels=None if batch.labels is None else batch.labels[idx],
    )



class ReferenceWorld:
    """What the metric checks share, built on the first call: a model, a :func:`reference_batch` at its input size,
    the oracle map (:class:`ReferenceOracleMethod`) and the inverted map ``1 - oracle``.

    ``model=None`` is the reference model (the only one on which the oracle map is the right answer); ``samples``
    replace the reference samples (e.g. with fields a metric needs that the reference samples lack). Calling the
    world returns ``(model, batch, oracle, anti)``, the same objects every time: a check must not modify them in
    place (copy them, as ``check_metric_inputs_unchanged`` does).
    """

    def __init__(self, model: Model | None = None, samples: list[dict] | None = None) -> None:
        self.model, self.samples = model, samples
        self._state: dict[str, Any] = {}

    def __call__(self) -> tuple[Model, Batch, torch.Tensor, torch.Tensor]:
        state = self._state
        if not state:
            state["model"] = self.model if self.model is not None else reference_model()
            state["batch"] = reference_batch(model=state["model"], samples=self.samples)
            b = state["batch"]
            oracle = ReferenceOracleMethod().explain(state["model"], b.images, b.targets)
            state["oracle"], state["anti"] = oracle, 1.0 - oracle
        return state["model"], state["batch"], state["oracle"], state["anti"]

# --------------------------------------------------------------------------------------------- the oracle model
# The method kit's world (interpbench.testing.methods): one box per class, so the right map depends on the target.

ORACLE_SIZE = 32
# (top, left, bottom, right) in pixels, bottom/right exclusive; multiples of 4 (the CAM layer's stride).
ORACLE_REGIONS: tuple[tuple[int, int, int, int], ...] = ((0, 4, 12, 28), (20, 4, 32, 28))
ORACLE_MEAN = (0.5, 0.5, 0.5)
ORACLE_STD = (0.25, 0.25, 0.25)
ORACLE_WIDTHS = (8, 16, 16)  # channels per class group in the three conv blocks
ORACLE_LOGIT_SCALE = 8.0  # mean target-logit increase over the blank image on the oracle images


def region_masks(size: int = ORACLE_SIZE, regions: Sequence[Sequence[int]] = ORACLE_REGIONS,
                 stride: int = 1) -> torch.Tensor:
    """``G x (size/stride) x (size/stride)`` float masks, 1 inside each region (box coordinates divided by stride)."""
    n = size // stride
    masks = torch.zeros(len(regions), n, n)
    for g, (top, left, bottom, right) in enumerate(regions):
        masks[g, top // stride:bottom // stride, left // stride:right // stride] = 1
    return masks


class RegionGate(nn.Module):
    """``B x C x H x W`` -> ``B x (G C) x H x W``: channel group g is the input times region g's mask."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("masks", masks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, None] * self.masks[None, :, None]).flatten(1, 2)


class GroupMask(nn.Module):
    """Multiplies channel group g of ``B x (G K) x h x w`` features by region g's mask (at that resolution)."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("masks", masks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = self.masks.shape[0]
        return (x.view(b, g, c // g, h, w) * self.masks[None, :, None]).view(b, c, h, w)


def build_oracle_net(size: int = ORACLE_SIZE, regions: Sequence[Sequence[int]] = ORACLE_REGIONS,
                     widths: Sequence[int] = ORACLE_WIDTHS, seed: int = 0) -> nn.Sequential:
    """gate -> 3 x (grouped conv 3x3, nn.ReLU, region mask) with max-pooling -> average pool -> grouped linear.

    Group g (class g) sees only region g: the input is masked before the first conv and every block's output is
    masked again, so the 3 x 3 convs cannot leak across the box border. Convs have seeded random weights and no
    bias; the last layer averages each group's channels with positive weights into its class logit, so a logit is
    a positively homogeneous function of the normalised pixels of its box (0 on a blank box).
    """
    g = len(regions)
    w1, w2, w3 = widths
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(OrderedDict(
            gate=RegionGate(region_masks(size, regions)),
            block1=nn.Sequential(nn.Conv2d(3 * g, w1 * g, 3, padding=1, groups=g, bias=False), nn.ReLU(),
                                 GroupMask(region_masks(size, regions))),
            pool1=nn.MaxPool2d(2),
            block2=nn.Sequential(nn.Conv2d(w1 * g, w2 * g, 3, padding=1, groups=g, bias=False), nn.ReLU(),
                                 GroupMask(region_masks(size, regions, 2))),
            pool2=nn.MaxPool2d(2),
            block3=nn.Sequential(nn.Conv2d(w2 * g, w3 * g, 3, padding=1, groups=g, bias=False), nn.ReLU(),
                                 GroupMask(region_masks(size, regions, 4))),
            pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            fc=nn.Linear(w3 * g, g),
        ))
        with torch.no_grad():
            readout = torch.zeros(g, w3 * g)
            for c in range(g):
                readout[c, c * w3:(c + 1) * w3] = 0.5 + torch.rand(w3)  # positive, only its own group
            net.fc.weight.copy_(readout)
            net.fc.bias.zero_()
    return net


def oracle_images(n: int = 3, size: int = ORACLE_SIZE, seed: int = 0) -> torch.Tensor:
    """``n x 3 x size x size`` images of uniform noise in [0, 1] (seeded): content everywhere, in every region."""
    generator = torch.Generator().manual_seed(1000 + seed)
    return torch.rand(n, 3, size, size, generator=generator)


def oracle_model(size: int = ORACLE_SIZE, regions: Sequence[Sequence[int]] | None = None, seed: int = 0) -> Model:
    """The oracle model: class ``c``'s logit can be changed only by the pixels of ``regions[c]``.

    ``regions``: boxes ``(top, left, bottom, right)`` in pixels (bottom/right exclusive), multiples of 4, one per
    class (default :data:`ORACLE_REGIONS`: two 12 x 12 boxes in opposite quadrants of a 32 x 32 image). Returns an
    ``ib.Model`` in eval mode (mean 0.5, std 0.25, ``cam_layer = "block3"`` at 1/4 of the input resolution, only
    ``nn.ReLU`` nonlinearities) with ``model.regions`` and ``model.region_masks`` (``G x H x W`` bool). The readout
    is scaled so that the target logit rises by :data:`ORACLE_LOGIT_SCALE` on average over the blank image.
    """
    regions = tuple(tuple(int(v) for v in r) for r in (ORACLE_REGIONS if regions is None else regions))
    if size % 4:
        raise ComponentError(f"oracle_model: size must be a multiple of 4 (the CAM layer's stride), got {size}")
    for r in regions:
        top, left, bottom, right = r
        if len(r) != 4 or any(v % 4 for v in r) or not (0 <= top < bottom <= size and 0 <= left < right <= size):
            raise ComponentError(
                f"oracle_model: region {r} must be (top, left, bottom, right) with multiples of 4 inside the "
                f"{size} x {size} image"
            )
    masks = region_masks(size, regions)
    if bool((masks.sum(0) > 1).any()):
        raise ComponentError(f"oracle_model: regions {regions} overlap; each class needs its own pixels")
    net = build_oracle_net(size, regions, seed=seed)
    model = Model(
        net,
        spec="oracle",
        mean=ORACLE_MEAN,
        std=ORACLE_STD,
        input_size=(size, size),
        class_names=[f"region{c}" for c in range(len(regions))],
        cam_layer="block3",
        label_space="interpbench:oracle",
        default_dataset="none",
        weights={"source": "interpbench.testing.methods", "tag": "constructed", "seed": seed},
        layers=["block1", "block2", "block3"],
    ).eval()
    with torch.no_grad():  # calibrate the logit scale on seeded noise images (positively homogeneous readout)
        rise = model(oracle_images(8, size, seed=seed + 1)).mean(0)
        net.fc.weight.mul_((ORACLE_LOGIT_SCALE / rise.clamp(min=1e-6))[:, None])
    model.regions = regions
    model.region_masks = masks.bool()
    return model


def positive_mass_inside(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Share of each map's positive mass, measured from the map's median, that lies inside its region.

    ``maps`` and ``regions`` (bool) are ``B x H x W``; returns Tensor[B] in [0, 1] (0 for a map with no mass above
    its median). Measuring from the median makes the score blind to a constant offset (RISE maps are a mean
    probability everywhere, a gradient map is 0 outside the evidence), which leaves the ranking of the pixels
    unchanged; with regions under half the image the median is the level of "no evidence".
    """
    flat = maps.detach().double().flatten(1)
    excess = (flat - flat.median(dim=1, keepdim=True).values).clamp(min=0)
    inside = (excess * regions.flatten(1).to(excess.dtype)).sum(1)
    total = excess.sum(1)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, inside / safe, torch.zeros_like(total))

# --------------------------------------------------------------------------------------------- helpers the kits share


def _json_ok(what: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{what} is not JSON-serialisable ({exc}): {value!r}; the manifest records it, so use "
                             "plain numbers, strings, lists and dicts") from None


def _finite_dict(who: str, values: Any) -> dict[str, float]:
    assert isinstance(values, dict) and values, (
        f"{who} returned {type(values).__name__} {values!r}; expected a non-empty dict of name -> float")
    out = {}
    for key, value in values.items():
        assert isinstance(key, str), f"{who} returned a non-string key {key!r}; use names like 'auroc'"
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise AssertionError(f"{who} returned {key}={value!r}, which is not a number") from None
        assert math.isfinite(number), f"{who} returned {key}={number}: results must be finite"
        out[key] = number
    return out


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> tuple[bool, float]:
    diff = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    scale = float(b.double().abs().max()) if b.numel() else 0.0
    return diff <= atol * max(1.0, scale), diff


def _seeded(fn: Callable[[], Any], seed: int = 0) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def _label(component: Any) -> str:
    if isinstance(component, Model):
        return component.spec
    name = getattr(component, "name", "") or type(component).__name__
    return str(name)


def _instance(component: Any, kind: str, base: type, params: dict[str, Any] | None = None) -> Any:
    """An instance from an instance, or a class or registered name built with ``params``."""
    if isinstance(component, str):
        component = get_registry().get(kind, component)
    if isinstance(component, type):
        if not issubclass(component, base):
            raise ComponentError(f"{component.__name__} is not an interpbench.{base.__name__} subclass")
        return component(**dict(params or {}))
    if params:
        raise ComponentError(f"params={dict(params)} given with an already built {type(component).__name__}; pass "
                             "the class or its registered name with params, or build the instance with them")
    return component
