"""The contracts every component follows: Model, Method, Metric, Batch, Sample, DatasetSource.

Data conventions (interpbench/core/base.py):

- images: float ``B x 3 x H x W`` in ``[0, 1]``, RGB, on the model's device. Normalisation lives in the model.
- targets: ``LongTensor[B]``, the class being explained.
- maps: float ``B x H x W`` at the input resolution, larger = more evidence for the target, finite.
- a sample is a dict with a stable string ``id``, an ``image`` (``3 x H x W``) and whatever ground truth the
  dataset has (``label``, ``labels``, ``boxes``, ``masks``, ``difficult``, ``concepts``, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch
from torch import nn

Sample = dict  # {"id": str, "image": Tensor[3,H,W], "label": int, ...}


class ComponentError(Exception):
    """A component (method, metric, model, dataset) was used wrongly or produced bad output.

    The message names the component, the value and the fix.
    """


class NotApplicable(ComponentError):
    """The component cannot run on this combination (e.g. guided backprop on a model without ReLUs).

    The runner records the cell as "not applicable" instead of "failed".
    """


# --------------------------------------------------------------------------------------------- components


class Component:
    """Something with a name, a version and the parameters it was built with (recorded in the manifest)."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.default_params())
        if unknown:
            raise ComponentError(
                f"{type(self).__name__} ({self.name!r}) got unknown parameter(s) {sorted(unknown)}; "
                f"it accepts {sorted(self.default_params())}"
            )
        self.params: dict[str, Any] = {**self.default_params(), **params}

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """The parameters this component accepts, with their defaults. Override in subclasses."""
        return dict(getattr(cls, "defaults", {}))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "params": dict(self.params)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class Method(Component):
    """An explanation method. Subclasses set ``name``, ``version``, ``defaults`` and implement ``explain``.

    ``explain(model, images, targets)`` returns ``B x H x W`` finite float maps at the input resolution.
    Stochastic methods draw from torch's global RNG; the runner seeds it from the cell's identity.
    """

    requires_grad: ClassVar[bool] = False
    deterministic: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}
    #: True for a baseline whose maps peak at the image centre by construction (``center``): the pointing game then
    #: scores TorchRay's centre point (W/2, H/2) instead of the map's maximum (``centre_point=True``, its default).
    points_at_centre: ClassVar[bool] = False

    def explain(self, model: "Model", images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: "Model", images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.explain(model, images, targets)


class Metric(Component):
    """A metric.

    ``scope = "explanation"``: scores a method's maps. Per-sample metrics implement
    ``score(model, batch, maps) -> Tensor[B]`` (or a dict with key ``"score"`` and extra per-sample tensors,
    e.g. a curve, stored beside the score). Dataset-level ones implement ``update(model, batch, maps)``,
    ``compute() -> dict[str, float]`` and ``reset()`` (the torchmetrics shape).

    ``scope = "model"``: scores a model's representation on a dataset (e.g. dissection); implement
    ``evaluate(model, dataset, ctx) -> dict[str, float]`` and write any tables or images under ``ctx.out_dir``.

    ``needs`` names the sample fields the metric requires (e.g. ``{"masks"}``); the runner skips and reports
    datasets that lack them.
    """

    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset()
    scope: ClassVar[str] = "explanation"
    defaults: ClassVar[dict[str, Any]] = {}
    # Distributed runs (interpbench.engine.distributed): a dataset-level metric names its state attributes and how the
    # ranks' parts combine ("cat", "sum", "max", "min", "first" or a function (metric, values) -> value); without
    # them it runs on rank 0 alone. A model-scope metric sets ``distributed = True`` when ``evaluate`` shards its
    # work over ``ctx.dist``; otherwise it runs on rank 0 alone.
    dist_state: ClassVar[dict[str, Any]] = {}
    distributed: ClassVar[bool] = False
    # The values a paper's headline table shows (``interpbench table``; the top of ``methods.md``): patterns over
    # the names the metric records, where ``*`` stands for one dot-free part of a name and ``**`` for one or more
    # parts (``"*.auroc"`` matches ``pgd8.auroc``, not ``baseline.pgd8.auroc``). Headline values are compared in
    # the metric's ``higher_is_better`` direction. ``None`` (a metric that does not say): the value named after
    # the metric, else every value with a confidence interval (every value but ``n`` where none has one).
    # Bookkeeping values (counts, skips, success rates) stay out of the headline and in ``--values all``.
    headline_values: ClassVar[tuple[str, ...] | None] = None

    @property
    def per_sample(self) -> bool:
        return type(self).score is not Metric.score

    def score(self, model: "Model", batch: "Batch", maps: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError

    def update(self, model: "Model", batch: "Batch", maps: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def reset(self) -> None:
        pass

    def evaluate(self, model: "Model", dataset: Any, ctx: "RunContext") -> dict[str, float]:
        raise NotImplementedError


@dataclasses.dataclass
class RunContext:
    """What the runner hands a model-scope metric (and what a dataset-level metric may use)."""

    device: torch.device
    batch_size: int
    seed: int
    out_dir: Any = None  # pathlib.Path where artefacts (CSV, PNG) go, or None
    progress: Callable[[int, int], None] | None = None  # progress(done, total)
    limit: int | None = None
    dist: Any = None  # interpbench.engine.distributed.Dist of a distributed run (metrics with distributed = True), else None
    workers: int = 0  # data-loading worker processes (the run's --workers)


# --------------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class Batch:
    """A batch of samples on a device: what per-sample metrics receive.

    ``samples`` keeps each sample's ground truth (everything but the image) for metrics that need it.
    """

    ids: list[str]
    images: torch.Tensor
    targets: torch.Tensor
    samples: list[dict]
    labels: torch.Tensor | None = None
    method: "Method | None" = None  # the method that made the maps (metrics that re-explain, e.g. attacks)
    seed: int = 0  # derived from the cell and the batch identity; for metrics that draw random numbers

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> "Batch":
        return dataclasses.replace(
            self,
            images=self.images.to(device),
            targets=self.targets.to(device),
            labels=None if self.labels is None else self.labels.to(device),
        )


def collate(samples: list[dict]) -> dict:
    """Stack images; keep everything else per sample. Used as the DataLoader's ``collate_fn``."""
    images = torch.stack([s["image"] for s in samples])
    rest = [{k: v for k, v in s.items() if k != "image"} for s in samples]
    out = {"ids": [str(s["id"]) for s in samples], "images": images, "samples": rest}
    if all("label" in s for s in samples):
        out["labels"] = torch.as_tensor([int(s["label"]) for s in samples], dtype=torch.long)
    return out


class DatasetSource(Component):
    """A dataset loader registered through ``register_datasets``; ``datasets.yaml`` names it in ``loader:``.

    ``load(split=..., size=..., path=..., **options)`` returns a ``torch.utils.data.Dataset`` of samples with
    attributes ``name``, ``classes`` (list of class names), ``label_space`` (e.g. ``"imagenet-1k"``),
    ``provides`` (set of ground-truth fields) and ``identity()`` (a dict recorded in the manifest).
    """

    def load(self, **options: Any):  # pragma: no cover - interface
        raise NotImplementedError


class ModelSource(Component):
    """A model source keyed by the ``SOURCE:`` prefix of a model spec (``timm``, ``torchvision``, ``shapes``).

    ``load(name, weights, hook)`` returns an ``interpbench.Model``. ``weights`` is ``None`` (the source's
    default pretrained weights), ``"random"``, a tag, or a path. ``hook`` calls the ``resolve_weights`` hook.
    """

    def load(self, name: str, weights: str | None, resolve_weights: Callable[..., Any]) -> "Model":
        raise NotImplementedError

    def available(self) -> list[str]:
        """Names this source knows (may be long); used for close-match suggestions and ``list``."""
        return []


# --------------------------------------------------------------------------------------------- model


class Model(nn.Module):
    """A classifier called on images in ``[0,1]`` that returns logits ``B x C``.

    Normalisation happens inside. It knows its ``layers`` (name -> module), default ``cam_layer``,
    ``input_size`` (H, W), ``class_names``, ``label_space``, ``default_dataset`` and ``weights`` identity.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        spec: str,
        mean: Iterable[float],
        std: Iterable[float],
        input_size: tuple[int, int],
        class_names: list[str],
        cam_layer: str,
        label_space: str,
        default_dataset: str,
        weights: Mapping[str, Any],
        layers: Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.register_buffer("mean", torch.as_tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))
        self.input_size = tuple(int(x) for x in input_size)
        self.class_names = list(class_names)
        self.label_space = label_space
        self.default_dataset = default_dataset
        self.weights = dict(weights)
        modules = dict(net.named_modules())
        if cam_layer not in modules:
            raise ComponentError(f"model {spec!r}: cam_layer {cam_layer!r} is not a module of the network")
        self.cam_layer = cam_layer
        names = list(layers) if layers is not None else [n for n, m in net.named_children()]
        self._layer_names = [n for n in names if n in modules]

    @property
    def name(self) -> str:
        return self.spec

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def layers(self) -> dict[str, nn.Module]:
        """The named stages worth dissecting or explaining (name -> module of ``net``)."""
        modules = dict(self.net.named_modules())
        return {n: modules[n] for n in self._layer_names}

    def module(self, name: str) -> nn.Module:
        modules = dict(self.net.named_modules())
        if name not in modules:
            close = [n for n in modules if name in n][:5]
            raise ComponentError(
                f"model {self.spec!r} has no layer {name!r}; named stages: {self._layer_names}"
                + (f"; close: {close}" if close else "")
            )
        return modules[name]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # images in [0, 1]
        return self.net(self.normalize(images))

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "weights": self.weights,
            "input_size": list(self.input_size),
            "num_classes": self.num_classes,
            "label_space": self.label_space,
            "cam_layer": self.cam_layer,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
        }
