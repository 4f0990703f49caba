"""The contracts every component follows: Model, Method, Metric, Batch, Sample, DatasetSource.

Data conventions (interpbench/core/base.py):

- images: float ``B x 3 x H x W`` in ``[0, 1]``, RGB, on the model's device. Normalisation lives in the model.
- targets: ``LongTensor[B]``, the class being explained.
- maps: float ``B x H x W`` at the input resolution, larger = more evidence for the target, finite.
- a sample is a dict with a stable string ``id``, an ``image`` (``3 x H x W``) and whatever ground truth the
  dataset has (``label``, ``labels``, ``boxes``, ``masks``, ``difficult``, ``concepts``, ...).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import warnings
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
    #: Optional: conformance checks (``interpbench.testing``) this component fails by design, check name -> why;
    #: the kit reports them as expected failures instead of failures.
    expected_failures: ClassVar[dict[str, str]] = {}

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
    """A metric: one of three protocols, each with its base class (docs/plugins.md, "Metric protocols").

    - :class:`PerSampleMetric` (``kind = "per_sample"``, ``scope = "explanation"``): ``score(model, batch, maps) ->
      Tensor[B]`` (or a dict with key ``"score"`` and extra per-sample tensors, e.g. a curve, stored beside the score).
    - :class:`DatasetMetric` (``kind = "dataset"``, ``scope = "explanation"``): ``update(model, batch, maps)`` and
      ``compute() -> dict[str, float]`` (the torchmetrics shape), its state declared with ``add_state``.
    - :class:`ModelMetric` (``kind = "model"``, ``scope = "model"``): scores a model's representation on a dataset
      (e.g. dissection); ``evaluate(model, dataset, ctx) -> dict[str, float]``, artefacts under ``ctx.out_dir``.

    ``kind`` tells the runner which protocol a metric follows. A class that subclasses ``Metric`` directly (the older
    plugin API) still works: its kind is inferred once, when the class is created, from what it implements (``scope
    "model"``: model; ``score``: per sample; ``update``: dataset), with a DeprecationWarning naming the base class to
    use instead.

    ``needs`` names the sample fields the metric requires (e.g. ``{"masks"}``); the runner skips and reports
    datasets that lack them.
    """

    higher_is_better: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset()
    scope: ClassVar[str] = "explanation"
    #: which protocol: "per_sample" (score), "dataset" (update / compute) or "model" (evaluate); "" for a class that
    #: implements none of them yet (an abstract intermediate class)
    kind: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    #: Legacy (use ``DatasetMetric.add_state``): a dataset-level metric's state attributes and how the ranks' parts
    #: combine (a reduction of :data:`REDUCTIONS` or a function (metric, values) -> value). Still honoured, with a
    #: DeprecationWarning when the class is created.
    dist_state: ClassVar[dict[str, Any]] = {}
    #: A model-scope metric sets ``distributed = True`` when ``evaluate`` shards its work over ``ctx.dist``
    #: (:class:`interpbench.core.state.Dist`); otherwise it runs on rank 0 alone in a distributed run.
    distributed: ClassVar[bool] = False
    # The values a paper's headline table shows (``interpbench table``; the top of ``methods.md``): patterns over
    # the names the metric records, where ``*`` stands for one dot-free part of a name and ``**`` for one or more
    # parts (``"*.auroc"`` matches ``pgd8.auroc``, not ``baseline.pgd8.auroc``). Headline values are compared in
    # the metric's ``higher_is_better`` direction. ``None`` (a metric that does not say): the value named after
    # the metric, else every value with a confidence interval (every value but ``n`` where none has one).
    # Bookkeeping values (counts, skips, success rates) stay out of the headline and in ``--values all``.
    headline_values: ClassVar[tuple[str, ...] | None] = None
    #: Value names (patterns, as in ``headline_values``) that are the metric's internals: recorded in the store and
    #: the CSVs, but left out of the tables a person reads (e.g. adversarial detection's baseline and cross-attack
    #: detectors, which its own leaderboard section lays out apart). See :meth:`is_internal`.
    internal_values: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("dist_state"):
            warnings.warn(f"{cls.__module__}.{cls.__qualname__}: dist_state (and the hand-written reset() it must "
                          "match) is deprecated; subclass interpbench.DatasetMetric and declare each state with "
                          "self.add_state(name, default, reduce=...) in __init__ (docs/plugins.md)",
                          DeprecationWarning, stacklevel=2)
        if any(base.__dict__.get("_protocol_base", False) for base in cls.__mro__):
            return  # a PerSampleMetric / DatasetMetric / ModelMetric: its kind is declared
        kind = _infer_kind(cls)
        if kind:
            cls.kind = kind
            warnings.warn(f"{cls.__module__}.{cls.__qualname__} ({cls.name!r}) subclasses interpbench.Metric "
                          f"directly; subclass interpbench.{PROTOCOL_BASES[kind]} instead (its kind, {kind!r}, is "
                          "inferred from the methods it implements; docs/plugins.md)", DeprecationWarning,
                          stacklevel=2)

    @property
    def per_sample(self) -> bool:
        """Whether this metric scores each sample (``kind == "per_sample"``)."""
        return self.kind == "per_sample"

    @classmethod
    def is_internal(cls, value_name: str) -> bool:
        """Whether ``value_name`` is one of the metric's internals (:attr:`internal_values`)."""
        return any(value_pattern(p).match(value_name) for p in cls.internal_values)

    @classmethod
    def leaderboard_markdown(cls, rows: Any) -> str | None:
        """Optional: the metric's section of ``methods.md`` from its rows of the long results table (a metric with
        many values lays them out itself); None: the generic table of all its values."""
        return None

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


#: The metric kinds and the base class of each.
PROTOCOL_BASES = {"per_sample": "PerSampleMetric", "dataset": "DatasetMetric", "model": "ModelMetric"}

#: How the ranks' values of a declared state combine (``DatasetMetric.add_state``; applied by
#: :func:`interpbench.core.state.merge_values`), besides a function of the list of the ranks' values.
REDUCTIONS = ("cat", "sum", "max", "min", "first")


def _infer_kind(cls: type) -> str:
    """The protocol a class that subclasses ``Metric`` directly implements ("" when none yet)."""
    if cls.scope == "model" or cls.evaluate is not Metric.evaluate:
        return "model"
    if cls.score is not Metric.score:
        return "per_sample"
    if cls.update is not Metric.update or cls.compute is not Metric.compute:
        return "dataset"
    return ""


def value_pattern(pattern: str) -> re.Pattern:
    """A value-name pattern (``headline_values``, ``internal_values``) as a regular expression: ``*`` one dot-free
    part of a name, ``**`` one or more parts."""
    parts = [".+" if p == "**" else "[^.]+" if p == "*" else re.escape(p).replace(r"\*", "[^.]*")
             for p in pattern.split(".")]
    return re.compile("^" + r"\.".join(parts) + "$")


class PerSampleMetric(Metric):
    """A metric that scores each sample: implement ``score(model, batch, maps) -> Tensor[B]`` (or a dict with key
    ``"score"`` and extra per-sample tensors). The runner stores one score per sample, skips stored samples on
    resume, and splits a batch into chunks on out-of-memory errors."""

    _protocol_base: ClassVar[bool] = True
    kind: ClassVar[str] = "per_sample"
    scope: ClassVar[str] = "explanation"


class DatasetMetric(Metric):
    """A dataset-level metric: ``update(model, batch, maps)`` per batch, ``compute() -> dict[str, float]`` at the end.

    Its state is declared in ``__init__``, one attribute at a time, as torchmetrics does::

        self.add_state("trials", [], reduce="cat")
        self.add_state("skipped", 0, reduce="sum")

    ``add_state`` sets the attribute to a fresh copy of ``default``; :meth:`reset` restores every declared state to
    a fresh copy of its default (never a shared mutable object). In a distributed run every rank updates its own
    state over its batches and rank 0 merges the ranks' states, in rank order, as the declarations say
    (:func:`interpbench.core.state.merge_metric`): ``reduce`` is one of :data:`REDUCTIONS` (``"cat"`` puts the
    ranks' parts end to end, which is the one-process order), a function of the list of the ranks' values, or
    None (a state each rank keeps for itself, e.g. the model last seen: reset, never merged). A metric that
    declares no merged state runs on rank 0 alone, over every batch.
    """

    _protocol_base: ClassVar[bool] = True
    kind: ClassVar[str] = "dataset"
    scope: ClassVar[str] = "explanation"
    #: Set by the runner before the first ``update``: the run's context (device, seed, ``out_dir`` for artefacts).
    run_context: "RunContext | None" = None
    #: Optional: where ``compute()`` writes artefacts when the metric is used outside a run (an attribute, not a
    #: parameter); a run's ``run_context.out_dir`` takes its place.
    out_dir: Any = None

    def add_state(self, name: str, default: Any, *, reduce: str | Callable[[list[Any]], Any] | None) -> None:
        """Declare the state attribute ``name``: set it to a fresh copy of ``default`` (and :meth:`reset` does again)
        and say how the ranks' values combine (``reduce``: one of :data:`REDUCTIONS`, a function of the list of the
        ranks' values in rank order, or None: kept by each rank, never merged)."""
        if not (reduce is None or callable(reduce) or reduce in REDUCTIONS):
            raise ComponentError(f"{type(self).__name__}.add_state({name!r}): unknown reduction {reduce!r}; use one of "
                                 f"{list(REDUCTIONS)}, a function of the list of the ranks' values, or None")
        if not name.isidentifier() or name in ("params", "run_context", "out_dir"):
            raise ComponentError(f"{type(self).__name__}.add_state({name!r}): the name must be an attribute name "
                                 "that is not already the metric's own")
        self.__dict__.setdefault("_declared_state", {})[name] = (default, reduce)
        setattr(self, name, copy.deepcopy(default))

    def states(self) -> dict[str, str | Callable[[list[Any]], Any] | None]:
        """The declared states, in declaration order: name -> reduction (legacy ``dist_state`` entries after them,
        their functions bound to this metric)."""
        out = {name: reduce for name, (_, reduce) in self.__dict__.get("_declared_state", {}).items()}
        for name, how in (type(self).dist_state or {}).items():
            if name not in out:
                out[name] = functools.partial(how, self) if callable(how) else how
        return out

    def reset(self) -> None:
        """Every declared state back to a fresh copy of its default."""
        for name, (default, _) in self.__dict__.get("_declared_state", {}).items():
            setattr(self, name, copy.deepcopy(default))


class ModelMetric(Metric):
    """A model-scope metric: ``evaluate(model, dataset, ctx) -> dict[str, float]`` once per (model, dataset), with
    tables or images written under ``ctx.out_dir``. Set ``distributed = True`` when ``evaluate`` shards its work over
    ``ctx.dist`` (:class:`interpbench.core.state.Dist`)."""

    _protocol_base: ClassVar[bool] = True
    kind: ClassVar[str] = "model"
    scope: ClassVar[str] = "model"


@dataclasses.dataclass
class RunContext:
    """What the runner hands a model-scope metric (and what a dataset-level metric may use)."""

    device: torch.device
    batch_size: int
    seed: int
    out_dir: Any = None  # pathlib.Path where artefacts (CSV, PNG) go, or None
    progress: Callable[[int, int], None] | None = None  # progress(done, total)
    limit: int | None = None
    dist: Any = None  # interpbench.core.state.Dist of a distributed run (metrics with distributed = True), else None
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
