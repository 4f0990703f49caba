"""The functions behind the public API: names from all plugins, loading components by name, and the derived
models whose specs name other models (pairs ``A=>B``, ``SPEC~cascade:K``, ``sanity:SPEC``; their grammar is in
:mod:`interpbench.core.config`, the models themselves in :mod:`interpbench.models.derived`)."""

from __future__ import annotations

import os
from typing import Any

from interpbench.core.base import ComponentError, Method, Metric, Model
from interpbench.core.config import (
    PAIR,
    SANITY,
    DatasetEntry,
    is_derived,
    pair_spec,
    parse_cascade,
    parse_model_spec,
    parse_pair,
    read_datasets,
)
from interpbench.core.registry import get_registry, unknown_message
from interpbench.models.derived import PairModel, cascade_stages, randomize_top


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
    ``SPEC~cascade:K`` are built by :mod:`interpbench.models.derived`."""
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


# --------------------------------------------------------------------------------------------- derived models


def load_derived(spec: str, device: str | None = None) -> Model:
    """Load a pair, a randomised model or fail on ``sanity:`` (which names several models), in eval mode."""
    if spec.startswith(SANITY) and PAIR not in spec:
        raise ComponentError(
            f"model spec {spec!r} names one pair per randomisation depth, not one model; expand it first: "
            f"interpbench.api.sanity_pairs({spec[len(SANITY):]!r}), `interpbench run --pairs {spec}` or "
            f"`interpbench drift --sanity {spec[len(SANITY):]}`"
        )
    if PAIR in spec:
        a_spec, b_spec = parse_pair(spec)
        for part in (a_spec, b_spec):
            if part.startswith(SANITY):
                raise ComponentError(f"model pair {spec!r}: {part!r} is not a model spec; 'sanity:SPEC' stands for "
                                     "several pairs and cannot be half of one")
        a, b = load_model(a_spec), load_model(b_spec)
        model: Model = PairModel(a, b)
    else:
        base, depth, seed = parse_cascade(spec)  # type: ignore[misc]
        model = load_model(base)  # on the CPU: the re-initialisation draws from the CPU generator
        randomize_top(model, depth, seed)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def sanity_pairs(spec: str, depths: list[int] | None = None) -> list[str]:
    """``[SPEC=>SPEC~cascade:1, ..., SPEC=>SPEC~cascade:L]``: the model-randomisation check, one pair per depth."""
    if is_derived(spec):
        raise ComponentError(f"sanity:{spec}: give a plain model spec (SOURCE:NAME[@WEIGHTS]), not a pair or a "
                             "randomised model")
    total = len(cascade_stages(load_model(spec)))
    chosen = list(range(1, total + 1)) if depths is None else depths
    return [pair_spec(spec, f"{spec}~cascade:{k}") for k in chosen]


def expand_specs(specs: list[str]) -> list[str]:
    """Model specs with every ``sanity:SPEC`` replaced by its pairs (order kept, duplicates dropped)."""
    out: list[str] = []
    for spec in specs:
        for item in (sanity_pairs(spec[len(SANITY):]) if spec.startswith(SANITY) and PAIR not in spec else [spec]):
            if item not in out:
                out.append(item)
    return out
