"""Conformance checks for datasets and dataset loaders (scikit-learn's ``check_estimator`` is the model).

Layer: part of ``interpbench.testing`` (beside ``interpbench.publish``, docs/design.md); it imports the api, the
registry and datasets.yaml's reader only to resolve a dataset given by name.

Each check is a function a plugin author can call on its own: ``check_dataset_<name>(dataset, n=8)`` reads the
first ``n`` samples and raises ``AssertionError`` with a message that names the dataset, the sample and the fix.
:func:`dataset_checks` lists them as :class:`~interpbench.testing.report.Check` objects; :func:`check_dataset`
runs them all on a dataset, a loader or a datasets.yaml name.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from interpbench.api import load_dataset
from interpbench.core.base import ComponentError, DatasetSource
from interpbench.core.config import read_datasets
from interpbench.core.registry import get_registry, unknown_message
from interpbench.testing.report import Check, CheckReport, run_expected
from interpbench.testing.world import _json_ok, _label, known_fields

# --------------------------------------------------------------------------------------------- helpers


def _first(dataset: Any, n: int) -> list[dict]:
    return [dataset[i] for i in range(min(n, len(dataset)))]


# --------------------------------------------------------------------------------------------- the checks


def check_dataset_attributes(dataset: Any) -> None:
    """``name`` (a string), ``classes`` (class names), ``label_space``, ``provides`` (field names among
    :data:`~interpbench.testing.world.KNOWN_FIELDS`) and an ``identity()`` that is JSON-serialisable and stable.

    Fix: set the attribute the message names on the dataset; ``identity()`` returns plain values (the manifest
    records it) that do not change between calls.
    """
    label = _label(dataset)
    problems = []
    if not isinstance(getattr(dataset, "name", None), str):
        problems.append("set .name (a string)")
    classes = getattr(dataset, "classes", None)
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        problems.append(f"classes must be a list of class names, got {classes!r}")
    if not isinstance(getattr(dataset, "label_space", None), str):
        problems.append("set .label_space (e.g. 'imagenet-1k'); --target label compares it with the model's")
    provides = getattr(dataset, "provides", None)
    if provides is None or not all(isinstance(p, str) for p in provides):
        problems.append(f"provides must be a set of field names, got {provides!r}")
    elif set(provides) - known_fields():
        problems.append(f"provides unknown fields {sorted(set(provides) - known_fields())} (known: "
                        f"{sorted(known_fields())})")
    if not callable(getattr(dataset, "identity", None)):
        problems.append("implement identity() -> dict (recorded in the manifest)")
    assert not problems, f"dataset {label!r}: " + "; ".join(problems)
    identity = dataset.identity()
    _json_ok(f"dataset {label!r}: identity()", identity)
    assert identity == dataset.identity(), f"dataset {label!r}: identity() changes between calls"


def check_dataset_length(dataset: Any) -> None:
    """``len(dataset)`` is a positive int.

    Fix: implement ``__len__``; an empty dataset usually means a wrong path or split.
    """
    label = _label(dataset)
    size = len(dataset)
    assert isinstance(size, int) and size > 0, f"dataset {label!r} has {size!r} samples; expected at least one"


def check_dataset_sample_format(dataset: Any, n: int = 8) -> str:
    """A sample is a dict with a non-empty string ``id`` and a float32 ``3 x H x W`` image in [0, 1], every image
    of the same size (unless the dataset declares ``variable_size = True``).

    Fix: return RGB images in [0, 1] without normalisation (it belongs to the model), resized in ``load()``.
    """
    label = _label(dataset)
    shapes = set()
    for s in _first(dataset, n):
        assert isinstance(s, dict), f"dataset {label!r}: a sample is {type(s).__name__}, expected a dict"
        assert isinstance(s.get("id"), str) and s["id"], (
            f"dataset {label!r}: sample id {s.get('id')!r} is not a non-empty string")
        img = s.get("image")
        assert isinstance(img, torch.Tensor) and img.dim() == 3 and img.shape[0] == 3, (
            f"dataset {label!r}: sample {s['id']!r} image is "
            f"{tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__}, expected 3 x H x W RGB")
        assert img.dtype == torch.float32, f"dataset {label!r}: image {s['id']!r} is {img.dtype}, expected float32"
        lo, hi = float(img.min()), float(img.max())
        assert math.isfinite(lo) and math.isfinite(hi) and lo >= 0 and hi <= 1, (
            f"dataset {label!r}: image {s['id']!r} has values in [{lo:.3g}, {hi:.3g}], expected [0, 1] (no "
            "normalisation: it belongs to the model)")
        shapes.add(tuple(img.shape))
    if getattr(dataset, "variable_size", False):  # e.g. aspect ratio kept: the runner batches equal sizes
        return f"{min(n, len(dataset))} samples, images {sorted(shapes)} (variable_size)"
    assert len(shapes) == 1, (f"dataset {label!r}: images of different sizes {sorted(shapes)}; resize them in "
                              "load(), or declare variable_size = True on the dataset")
    return f"{min(n, len(dataset))} samples, images {shapes.pop()}"


def check_dataset_stable_ids(dataset: Any, n: int = 8) -> None:
    """Ids are unique, and reading a sample twice gives the same id and image (resume relies on it).

    Fix: make a sample a pure function of its index (seed any randomness from the index).
    """
    label = _label(dataset)
    a, b = _first(dataset, n), _first(dataset, n)
    ids = [s["id"] for s in a]
    assert len(set(ids)) == len(ids), f"dataset {label!r}: duplicate ids among the first {len(ids)}: {ids}"
    for x, y in zip(a, b, strict=True):
        assert x["id"] == y["id"] and torch.equal(x["image"], y["image"]), (
            f"dataset {label!r}: reading sample {x['id']!r} twice gave a different id or image; samples must be "
            "a pure function of the index (seed any randomness from it)")


def check_dataset_ground_truth(dataset: Any, n: int = 8) -> None:
    """Every field in ``provides`` is in every sample and well formed: ``label`` an int class index, ``labels`` in
    range, ``masks`` class -> bool ``H x W``, ``boxes`` class -> ``K x 4`` xyxy pixel boxes inside the image.

    Fix: the formats are those of the built-in datasets (docs/protocols.md); drop a field from ``provides`` if not
    every sample has it.
    """
    label = _label(dataset)
    provides = set(getattr(dataset, "provides", ()))
    classes = len(getattr(dataset, "classes", []) or [])
    for s in _first(dataset, n):
        h, w = s["image"].shape[-2:]
        sid = s["id"]
        multilabel = "labels" in s and "label" not in s and getattr(dataset, "multilabel", False)
        for field in provides:
            if field == "label" and multilabel:
                continue
            assert field in s, f"dataset {label!r}: provides {field!r} but sample {sid!r} lacks it"
        if "label" in s:
            assert isinstance(s["label"], int) and 0 <= s["label"] < classes, (
                f"dataset {label!r}: sample {sid!r} label {s['label']!r} is not an int in 0..{classes - 1}")
        for c in s.get("labels", []):
            assert 0 <= int(c) < classes, f"dataset {label!r}: sample {sid!r} labels {s['labels']} out of range"
        for c, mask in (s.get("masks") or {}).items():
            assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and tuple(mask.shape) == (h, w), (
                f"dataset {label!r}: sample {sid!r} mask of class {c} must be a bool {h} x {w} tensor, got "
                f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
        for c, boxes in (s.get("boxes") or {}).items():
            boxes = torch.as_tensor(boxes, dtype=torch.float32)
            ok = (boxes.dim() == 2 and boxes.shape[1] == 4 and bool((boxes[:, 0] < boxes[:, 2]).all())
                  and bool((boxes[:, 1] < boxes[:, 3]).all()) and float(boxes.min()) >= 0
                  and bool((boxes[:, 2] <= w).all()) and bool((boxes[:, 3] <= h).all()))
            assert ok, (f"dataset {label!r}: sample {sid!r} boxes of class {c} must be K x 4 xyxy pixel "
                        f"coordinates inside the {w} x {h} image, got {boxes.tolist()}")


def check_dataset_index_error(dataset: Any) -> None:
    """``dataset[len(dataset)]`` raises ``IndexError`` (iteration relies on it).

    Fix: check the index in ``__getitem__`` and raise ``IndexError`` past the end.
    """
    label = _label(dataset)
    try:
        dataset[len(dataset)]
    except IndexError:
        return
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"dataset {label!r}: dataset[len(dataset)] raised {type(exc).__name__}, expected "
                             "IndexError (iteration relies on it)") from None
    raise AssertionError(f"dataset {label!r}: dataset[len(dataset)] returned a sample, expected IndexError")


def check_dataset_size_option(dataset: Any, source: DatasetSource, options: dict[str, Any] | None = None) -> None:
    """The loader honours ``size``: ``source.load(**options, size=(40, 56))`` gives 40 x 56 images and masks (with
    ``variable_size``, images whose shorter side is 40); the runner asks for the model's input size.

    Fix: resize images (and masks, boxes) to ``size`` in ``load()``.
    """
    label = _label(dataset)
    options = dict(options or {})
    size = (40, 56)  # not square: catches H/W swaps
    other = source.load(**{**options, "size": size})
    img = other[0]["image"]
    got = tuple(img.shape[-2:])
    if getattr(other, "variable_size", False):  # the aspect ratio kept: the shorter side is the input's
        assert min(got) == min(size), (f"dataset {label!r} (variable_size): load(size={size}) gave images of "
                                       f"{got}, whose shorter side is not the input's {min(size)}")
    else:
        assert got == size, (f"dataset {label!r}: load(size={size}) gave images of {got}; the runner asks for the "
                             "model's input size")
    for mask in (other[0].get("masks") or {}).values():
        assert tuple(mask.shape) == got, f"dataset {label!r}: load(size={size}) gave {tuple(mask.shape)} masks"


# --------------------------------------------------------------------------------------------- the kit


def dataset_checks(dataset: Any, *, n: int = 8, source: DatasetSource | None = None,
                   options: dict[str, Any] | None = None) -> list[Check]:
    """The conformance checks of a dataset (what a loader's ``load()`` returns) on its first ``n`` samples.

    ``attributes`` (name, classes, label_space, provides within the known fields, JSON-serialisable identity()),
    ``length``, ``sample_format`` (a dict with a string ``id`` and a finite float ``3 x H x W`` image in [0, 1]),
    ``stable_ids`` (unique, and the same sample every time it is read: resume relies on it), ``ground_truth``
    (every field in ``provides`` present and well formed: labels in range, masks H x W bool, boxes xyxy inside the
    image), ``index_error`` (reading past the end raises IndexError). Given the ``source`` it came from:
    ``size_option`` (``load(size=(H, W))`` gives H x W images; the runner asks for the model's input size).
    Check ``x`` is the function ``check_dataset_x`` of this module.
    """
    options = dict(options or {})
    checks = [Check("attributes", lambda: check_dataset_attributes(dataset)),
              Check("length", lambda: check_dataset_length(dataset)),
              Check("sample_format", lambda: check_dataset_sample_format(dataset, n)),
              Check("stable_ids", lambda: check_dataset_stable_ids(dataset, n)),
              Check("ground_truth", lambda: check_dataset_ground_truth(dataset, n)),
              Check("index_error", lambda: check_dataset_index_error(dataset))]
    checks.append(Check("size_option", lambda: check_dataset_size_option(dataset, source, options),
                        applies=source is not None,
                        reason="" if source is not None else "checked only when given the loader (check_dataset of a "
                        "loader or a datasets.yaml name)"))
    return checks


def check_dataset(dataset: Any, *, n: int = 8, size: Any = None, expected_failures: dict[str, str] | None = None,
                  **options: Any) -> CheckReport:
    """Run :func:`dataset_checks` on a dataset, a loader (``ib.DatasetSource`` class or instance: loaded with
    ``options``), or a name from datasets.yaml; ``expected_failures`` as in
    :func:`~interpbench.testing.metrics.check_metric` (also read from the loader's and the dataset's
    ``expected_failures``)."""
    declared = {**dict(getattr(dataset, "expected_failures", {}) or {}), **(expected_failures or {})}
    label = dataset_label(dataset)
    dataset, source, options = _resolve_dataset(dataset, size=size, **options)
    checks = dataset_checks(dataset, n=n, source=source, options=options)
    return run_expected(f"dataset {label}", checks, dataset, declared)


def dataset_label(component: Any) -> str:
    """The name a dataset is checked under: a loader's name, a datasets.yaml name, or the dataset's ``name``."""
    if isinstance(component, str):
        return component
    return _label(component)


def _resolve_dataset(dataset: Any, size: Any = None, **options: Any) -> tuple[Any, DatasetSource | None, dict]:
    """(dataset, the loader it came from or None, the loader options) for a dataset, a loader or a yaml name."""
    if isinstance(dataset, type) and issubclass(dataset, DatasetSource):
        dataset = dataset()
    if isinstance(dataset, DatasetSource):
        source = dataset
        opts = {**options, **({"size": size} if size is not None else {})}
        return source.load(**opts), source, options
    if isinstance(dataset, str):
        entries = read_datasets()
        if dataset not in entries:
            raise ComponentError(unknown_message("dataset", dataset, entries))
        entry = entries[dataset]
        source = get_registry().get("datasets", entry.loader)()
        loaded = load_dataset(dataset, size=size, **options)
        opts = {**entry.options, **options, "split": "test"}
        if entry.path is not None:
            opts.setdefault("path", entry.path)
        return loaded, source, opts
    return dataset, None, options
