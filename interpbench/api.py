"""The functions behind the public API: names from all plugins, and loading components by name."""

from __future__ import annotations

import os
from typing import Any

from .base import ComponentError, Method, Metric, Model
from .config import DatasetEntry, parse_model_spec, read_datasets
from .registry import get_registry, unknown_message


def list_methods() -> list[str]:
    return get_registry().names("methods")


def list_metrics() -> list[str]:
    return get_registry().names("metrics")


def list_models() -> list[str]:
    """Model specs worth showing: each source's ``available()`` names (timm and torchvision accept many more)."""
    reg = get_registry()
    out: list[str] = []
    for source in reg.names("models"):
        out += [f"{source}:{name}" for name in reg.get("models", source)().available()]
    return out


def list_datasets(config: str | os.PathLike | None = None) -> list[str]:
    return sorted(read_datasets(config))


def load_method(name: str, **params: Any) -> Method:
    return get_registry().get("methods", name)(**params)


def load_metric(name: str, **params: Any) -> Metric:
    return get_registry().get("metrics", name)(**params)


def load_model(spec: str, device: str | None = None) -> Model:
    """Load ``SOURCE:NAME[@WEIGHTS]`` in eval mode (on ``device`` if given); pairs ``A=>B`` and randomised models
    ``SPEC~cascade:K`` are built by :mod:`interpbench.pairs`."""
    from .pairs import is_derived, load_derived

    if is_derived(spec):
        return load_derived(spec, device)
    parsed = parse_model_spec(spec)
    reg = get_registry()
    if parsed.source not in reg.names("models"):
        raise ComponentError(
            f"model spec {spec!r}: unknown model source {parsed.source!r}; installed sources: "
            f"{reg.names('models')} (e.g. 'timm:resnet50', 'shapes:cnn')"
        )
    source = reg.get("models", parsed.source)()
    model = source.load(parsed.name, parsed.weights, reg.resolve_weights)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def dataset_entry(name: str, config: Any = None) -> DatasetEntry:
    """The datasets.yaml entry of ``name``; a loader's own name works too (a plugin's loader needs no entry)."""
    entries = read_datasets(config)
    if name in entries:
        return entries[name]
    reg = get_registry()
    if name in reg.names("datasets"):
        return DatasetEntry(name=name, loader=name, path=None, options={}, description="", source_file="(loader)")
    raise ComponentError(unknown_message("dataset", name, list(entries) + reg.names("datasets")))


def load_dataset(name: str, split: str = "test", *, size: Any = None, config: Any = None, **options: Any):
    """A named dataset from ``datasets.yaml`` (``size``: the image size, e.g. the model's input size)."""
    entry = dataset_entry(name, config)
    loader = get_registry().get("datasets", entry.loader)()
    kwargs = {**entry.options, **options, "split": split}
    if size is not None:
        kwargs["size"] = size
    if entry.path is not None:
        kwargs.setdefault("path", entry.path)
    dataset = loader.load(**kwargs)
    dataset.name = name
    return dataset
