"""Conformance checks for metrics, models and datasets (scikit-learn's ``check_estimator`` is the model).

Each ``*_checks(component, ...)`` returns a list of :class:`~interpbench.testing.report.Check`; the matching
``check_*`` runs them all and returns a :class:`~interpbench.testing.report.CheckReport`. A check raises
``AssertionError`` with a message that names the component, the value it saw and the fix.

The checks run on a *reference world* built so that the right answer is known: a tiny model whose target logit
can only be changed by the pixels of one known square (``REGION``), images whose colour inside that square is
the label, and ground truth (``label``, ``labels``, ``boxes``, ``masks``, ``concepts``) in the formats of the
built-in datasets. On it the oracle map (1 inside the square, 0 outside) is the right explanation, so a metric
of explanations must score it better than the inverted map.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from interpbench.core.base import (
    Batch,
    ComponentError,
    DatasetSource,
    Method,
    Metric,
    Model,
    RunContext,
    collate,
)
from interpbench.testing.report import (
    Check,
    CheckReport,
    apply_expected_failures,
    run_checks,
)

# The ground-truth fields the built-in datasets and the runner know (base.py).
KNOWN_FIELDS = frozenset({"id", "image", "label", "labels", "boxes", "masks", "difficult", "concepts", "objects"})
SCOPES = ("explanation", "model")

REFERENCE_SIZE = (32, 32)
REGION = (slice(8, 20), slice(4, 16))  # rows 8..19, columns 4..15: 144 of 1,024 pixels, off-centre
REFERENCE_CLASSES = ["red", "green", "blue"]
REFERENCE_MEAN = (0.5, 0.5, 0.5)
REFERENCE_STD = (0.25, 0.25, 0.25)
ATOL = 1e-5


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

    It passes every :func:`model_checks` check (the kit's own positive control)."""
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


# --------------------------------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------------------------------- metrics


def _scores(metric: Metric, model: Model, batch: Batch, maps: torch.Tensor) -> torch.Tensor:
    from interpbench.engine.runner import check_scores

    result = _seeded(lambda: metric.score(model, batch, maps))
    try:
        scores, _ = check_scores(result, len(batch), metric.name)
    except ComponentError as exc:
        raise AssertionError(str(exc)) from None
    return scores


def _dataset_result(metric: Metric, model: Model, parts: list[tuple[Batch, torch.Tensor]]) -> dict[str, float]:
    def go():
        metric.reset()
        for batch, maps in parts:
            metric.update(model, batch, maps)
        return metric.compute()

    return _finite_dict(f"metric {metric.name!r}: compute()", _seeded(go))


def _headline(metric: Metric, values: dict[str, float]) -> str | None:
    """The key of a dataset-level metric's main number: its own name, or the only non-CI key."""
    if metric.name in values:
        return metric.name
    keys = [k for k in values if not k.endswith(("_ci_low", "_ci_high")) and k != "n"]
    return keys[0] if len(keys) == 1 else None


def metric_checks(metric: Metric, *, model: Model | None = None, samples: list[dict] | None = None) -> list[Check]:
    """The conformance checks of a metric instance on the reference world (or on ``model`` and ``samples``).

    Every metric: ``contract`` (name, version, higher_is_better, scope, needs, which interface it implements),
    ``params_roundtrip`` (rebuilt from ``describe()``, JSON-serialisable), ``needs_known_fields``.
    Per-sample explanation metrics: ``score_shape`` (Tensor[B], finite), ``batch_independence`` (a sample's score
    does not depend on the other samples of its batch), ``reproducible`` (same seed, same scores),
    ``inputs_unchanged`` (images and maps are shared with the other metrics: never modify them in place),
    ``prefers_oracle_map`` (the known-right map scores better than the inverted map). Dataset-level metrics:
    ``compute_finite``, ``reset_clears_state``, ``batch_split_invariance``, ``inputs_unchanged``,
    ``prefers_oracle_map``. Model-scope metrics: ``evaluate_finite``, ``reproducible``.

    With another ``model`` the reference samples are drawn at its input size, the targets are their labels (0-2),
    and ``prefers_oracle_map`` is not applicable: only on the reference model is the right map known.
    """
    label = _label(metric)
    state: dict[str, Any] = {}

    def world():
        if not state:
            state["model"] = model if model is not None else reference_model()
            state["batch"] = reference_batch(model=state["model"], samples=samples)
            b = state["batch"]
            oracle = ReferenceOracleMethod().explain(state["model"], b.images, b.targets)
            state["oracle"], state["anti"] = oracle, 1.0 - oracle
        return state["model"], state["batch"], state["oracle"], state["anti"]

    def contract():
        problems = []
        if not isinstance(metric, Metric):
            raise AssertionError(f"{label}: {type(metric).__name__} is not an interpbench.Metric subclass")
        if not isinstance(metric.name, str) or not metric.name:
            problems.append("set a non-empty class attribute name = '...'")
        if not isinstance(metric.version, str) or not metric.version:
            problems.append(f"version must be a non-empty string, got {metric.version!r}")
        if not isinstance(metric.higher_is_better, bool):
            problems.append(f"higher_is_better must be True or False, got {metric.higher_is_better!r}")
        if metric.scope not in SCOPES:
            problems.append(f"scope must be one of {list(SCOPES)}, got {metric.scope!r}")
        if not all(isinstance(n, str) for n in metric.needs):
            problems.append(f"needs must be a set of field names, got {metric.needs!r}")
        if metric.scope == "model" and type(metric).evaluate is Metric.evaluate:
            problems.append("a model-scope metric implements evaluate(model, dataset, ctx)")
        if metric.scope == "explanation" and not metric.per_sample:
            missing = [m for m in ("update", "compute") if getattr(type(metric), m) is getattr(Metric, m)]
            if missing:
                problems.append(f"implement score(model, batch, maps) (per sample) or update/compute/reset "
                                f"(dataset level); missing {missing}")
        assert not problems, f"metric {label!r}: " + "; ".join(problems)

    def params_roundtrip():
        described = metric.describe()
        _json_ok(f"metric {label!r}: describe()", described)
        rebuilt = type(metric)(**metric.params).describe()
        assert rebuilt == described, (f"metric {label!r}: {type(metric).__name__}(**params).describe() gave {rebuilt}, "
                                      f"not {described}; keep every parameter in self.params")

    def needs_known_fields():
        unknown = set(metric.needs) - KNOWN_FIELDS
        assert not unknown, (f"metric {label!r} needs {sorted(unknown)}, which no built-in dataset provides (known: "
                             f"{sorted(KNOWN_FIELDS)}); fix the name, or declare this check expected to fail if your "
                             "own dataset provides the field")

    checks = [Check("contract", contract), Check("params_roundtrip", params_roundtrip),
              Check("needs_known_fields", needs_known_fields)]

    provided = set(ReferenceDataset.provides) | {"id", "image"} if samples is None else set().union(*map(set, samples))
    lacking = set(metric.needs) - provided
    na = dict(applies=False, reason=f"the reference samples lack {sorted(lacking)}; pass samples=[...] that have "
              "them") if lacking else {}
    na_oracle = dict(applies=False, reason="the right map is known only on the reference model (model=None)"
                     ) if model is not None else {}

    if metric.scope == "model":
        def evaluate_finite():
            m = model if model is not None else reference_model()
            with tempfile.TemporaryDirectory() as tmp:
                ctx = RunContext(device=m.device, batch_size=4, seed=0, out_dir=Path(tmp), limit=None)
                _finite_dict(f"metric {label!r}: evaluate()", metric.evaluate(m, ReferenceDataset(), ctx))

        def reproducible():
            m = model if model is not None else reference_model()
            runs = []
            for _ in range(2):
                with tempfile.TemporaryDirectory() as tmp:
                    ctx = RunContext(device=m.device, batch_size=4, seed=0, out_dir=Path(tmp), limit=None)
                    runs.append(_seeded(lambda ctx=ctx: metric.evaluate(m, ReferenceDataset(), ctx)))
            assert runs[0] == runs[1], (
                f"metric {label!r}: two evaluations with seed 0 gave {runs[0]} and {runs[1]}; draw random numbers "
                "from torch's global RNG or from ctx.seed")

        return checks + [Check("evaluate_finite", evaluate_finite, **na), Check("reproducible", reproducible, **na)]

    def inputs_unchanged_with(run: Callable[[Batch, torch.Tensor], Any]) -> Callable[[], None]:
        def inputs_unchanged():
            _, batch, oracle, _ = world()
            images, maps = batch.images.clone(), oracle.clone()  # copies: the other checks keep clean inputs
            run(dataclasses.replace(batch, images=images), maps)
            assert torch.equal(images, batch.images), (
                f"metric {label!r} modified batch.images in place; the batch is shared with the other metrics, so "
                "work on a copy (images.clone())")
            assert torch.equal(maps, oracle), (
                f"metric {label!r} modified the maps in place; they are shared with the other metrics, so work on a "
                "copy (maps.clone())")
        return inputs_unchanged

    if metric.per_sample:
        def score_shape():
            m, batch, oracle, _ = world()
            scores = _scores(metric, m, batch, oracle)
            return f"{len(scores)} scores in [{float(scores.min()):.4g}, {float(scores.max()):.4g}]"

        def batch_independence():
            m, batch, oracle, _ = world()
            together = _scores(metric, m, batch, oracle)
            alone = torch.cat([_scores(metric, m, _sub_batch(batch, [i]), oracle[i:i + 1]) for i in range(len(batch))])
            ok, diff = _close(alone, together)
            assert ok, (f"metric {label!r}: scores of samples scored one at a time {alone.tolist()} differ from their "
                        f"scores in one batch {together.tolist()} (max difference {diff:.3g}); a sample's score must "
                        "not depend on the other samples of its batch")
            return f"largest difference {diff:.2g}"

        def reproducible():
            m, batch, oracle, _ = world()
            a, b = _scores(metric, m, batch, oracle), _scores(metric, m, batch, oracle)
            assert torch.equal(a, b), (f"metric {label!r}: two calls with the same seed gave {a.tolist()} and "
                                       f"{b.tolist()}; draw random numbers from torch's global RNG (the runner "
                                       "seeds it) or from batch.seed")

        def prefers_oracle_map():
            m, batch, oracle, anti = world()
            right = float(_scores(metric, m, batch, oracle).mean())
            wrong = float(_scores(metric, m, batch, anti).mean())
            better = right > wrong if metric.higher_is_better else right < wrong
            arrow = "higher" if metric.higher_is_better else "lower"
            assert better, (
                f"metric {label!r} ({arrow} is better) gave the oracle map {right:.4g} and the inverted map "
                f"{wrong:.4g} on a model that only sees the oracle region; a metric of explanations must prefer the "
                "right map (declare this check expected to fail if the metric does not measure faithfulness or "
                "localisation)")
            return f"oracle map {right:.4g}, inverted map {wrong:.4g} ({arrow} is better)"

        return checks + [
            Check("score_shape", score_shape, **na),
            Check("batch_independence", batch_independence, **na),
            Check("reproducible", reproducible, **na),
            Check("inputs_unchanged", inputs_unchanged_with(lambda b, maps: _scores(metric, world()[0], b, maps)),
                  **na),
            Check("prefers_oracle_map", prefers_oracle_map, **(na or na_oracle)),
        ]

    # dataset-level explanation metric
    def whole(maps_of: str = "oracle") -> dict[str, float]:
        m, batch, oracle, anti = world()
        return _dataset_result(metric, m, [(batch, oracle if maps_of == "oracle" else anti)])

    def compute_finite():
        whole()

    def reset_clears_state():
        m, batch, oracle, anti = world()
        _dataset_result(metric, m, [(batch, oracle)])  # leaves state behind
        after_reset = _dataset_result(metric, m, [(batch, anti)])  # reset(), then another batch
        fresh = _dataset_result(type(metric)(**metric.params), m, [(batch, anti)])
        assert after_reset == fresh, (
            f"metric {label!r}: after reset() it gave {after_reset}, a fresh instance {fresh} on the same batch; "
            "reset() must clear every accumulated state")

    def batch_split_invariance():
        m, batch, oracle, _ = world()
        k = len(batch) // 2
        halves = [(_sub_batch(batch, list(range(k))), oracle[:k]),
                  (_sub_batch(batch, list(range(k, len(batch)))), oracle[k:])]
        split, together = _dataset_result(metric, m, halves), whole()
        assert split.keys() == together.keys() and all(
            abs(split[key] - together[key]) <= ATOL * max(1.0, abs(together[key])) for key in together), (
            f"metric {label!r}: one batch of {len(batch)} gave {together}, two batches of {k} and {len(batch) - k} "
            f"gave {split}; the result must not depend on how the dataset is cut into batches")

    def prefers_oracle_map():
        right, wrong = whole("oracle"), whole("anti")
        key = _headline(metric, right)
        assert key is not None, (f"metric {label!r}: cannot tell its main number among {sorted(right)}; name it "
                                 f"{metric.name!r}")
        better = right[key] > wrong[key] if metric.higher_is_better else right[key] < wrong[key]
        assert better, (f"metric {label!r}: {key} is {right[key]:.4g} for the oracle map and {wrong[key]:.4g} for the "
                        "inverted map on a model that only sees the oracle region; it must prefer the right map")
        return f"{key}: oracle map {right[key]:.4g}, inverted map {wrong[key]:.4g}"

    def run_dataset(batch: Batch, maps: torch.Tensor) -> None:
        metric.reset()
        _seeded(lambda: metric.update(world()[0], batch, maps))

    return checks + [
        Check("compute_finite", compute_finite, **na),
        Check("reset_clears_state", reset_clears_state, **na),
        Check("batch_split_invariance", batch_split_invariance, **na),
        Check("inputs_unchanged", inputs_unchanged_with(run_dataset), **na),
        Check("prefers_oracle_map", prefers_oracle_map, **(na or na_oracle)),
    ]


def check_metric(metric: Metric | type | str, *, params: dict[str, Any] | None = None,
                 expected_failures: dict[str, str] | None = None, **kwargs: Any) -> CheckReport:
    """Run :func:`metric_checks` on a metric (an instance, or a class or registered name built with ``params``).

    ``expected_failures`` (check -> reason), merged with the class's own ``expected_failures``, declares checks the
    metric fails by design: reported n/a with the reason when they fail, as failed when they pass.
    """
    metric = _instance(metric, "metrics", Metric, params)
    checks = metric_checks(metric, **kwargs)
    return run_expected(f"metric {_label(metric)}", checks, metric, expected_failures)


# --------------------------------------------------------------------------------------------- models


def _images_for(model: Model, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(2024)
    return torch.rand(n, 3, *model.input_size, generator=g).to(model.device)


def model_checks(model: Model) -> list[Check]:
    """The conformance checks of a loaded model (an ``ib.Model``).

    ``contract`` (an ib.Model with input_size, class_names, label_space, cam_layer, JSON-serialisable describe()),
    ``normalization_inside`` (mean/std of 3 channels, std > 0, forward = net(normalize(x))), ``logits``
    (B x num_classes, finite, on images in [0, 1] at input_size), ``deterministic_forward``, ``batch_independence``,
    ``input_gradient`` (finite, non-zero: gradient methods need it), ``cam_layer`` (a B x K x h x w feature map that
    runs once and that the logits depend on), ``layers`` (each named stage runs in forward),
    ``default_dataset`` (named in datasets.yaml).
    """
    label = _label(model)
    state: dict[str, Any] = {}

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def images() -> torch.Tensor:
        if "images" not in state:
            state["images"] = _images_for(model)
        return state["images"]

    def contract():
        assert isinstance(model, Model), (f"{label}: {type(model).__name__} is not an interpbench.Model; wrap the "
                                          "network with ib.Model(net, spec=..., mean=..., std=..., ...)")
        problems = []
        if len(model.input_size) != 2 or min(model.input_size) < 1:
            problems.append(f"input_size must be (H, W), got {model.input_size!r}")
        if not model.class_names or len(set(model.class_names)) != len(model.class_names):
            problems.append(f"class_names must be unique and non-empty ({len(model.class_names)} given)")
        if not isinstance(model.label_space, str) or not model.label_space:
            problems.append(f"label_space must be a non-empty string (e.g. 'imagenet-1k'), got {model.label_space!r}")
        if not model.weights:
            problems.append("weights must say where the weights came from (e.g. {'tag': ..., 'sha256': ...})")
        assert not problems, f"model {label!r}: " + "; ".join(problems)
        _json_ok(f"model {label!r}: describe()", model.describe())

    def normalization_inside():
        mean, std = model.mean.flatten(), model.std.flatten()
        assert mean.numel() == 3 and std.numel() == 3, f"model {label!r}: mean/std need 3 values, got {mean}, {std}"
        assert bool((std > 0).all()), f"model {label!r}: std must be positive, got {std.tolist()}"
        x = images()
        with torch.no_grad():  # same seed for both: a train-mode dropout is deterministic_forward's business
            direct = _seeded(lambda: model.net(model.normalize(x)))
        ok, diff = _close(_seeded(lambda: forward(x)), direct, 1e-4)
        assert ok, (f"model {label!r}: model(x) differs from net(normalize(x)) by {diff:.3g}; images come in [0, 1] "
                    "and normalisation belongs inside the model's forward")

    def logits():
        x = images()
        out = forward(x)
        assert isinstance(out, torch.Tensor), f"model {label!r} returned {type(out).__name__}, expected logits B x C"
        expected = (x.shape[0], model.num_classes)
        assert tuple(out.shape) == expected, (f"model {label!r} returned logits of shape {tuple(out.shape)} for "
                                              f"{x.shape[0]} images, expected {expected} (B x len(class_names))")
        assert out.is_floating_point() and bool(torch.isfinite(out).all()), (
            f"model {label!r} returned non-finite or non-float logits ({out.dtype})")
        return f"{tuple(out.shape)} logits for images of {tuple(x.shape[-2:])}"

    def deterministic_forward():
        x = images()
        a, b = forward(x), forward(x)
        assert torch.equal(a, b), (f"model {label!r}: two forward passes on the same images differ by "
                                   f"{float((a - b).abs().max()):.3g}; the model must be in eval mode (dropout off)")

    def batch_independence():
        x = images()
        together = forward(x)
        alone = torch.cat([forward(x[i:i + 1]) for i in range(x.shape[0])])
        ok, diff = _close(alone, together, 1e-4)
        assert ok, (f"model {label!r}: logits of images passed one at a time differ from those in a batch by "
                    f"{diff:.3g}; batch-norm must use running statistics (eval mode)")

    def input_gradient():
        x = images().clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(x)
            (grad,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), x)
        assert bool(torch.isfinite(grad).all()), f"model {label!r}: the input gradient has non-finite values"
        assert float(grad.abs().sum()) > 0, (f"model {label!r}: the gradient of the predicted logit w.r.t. the input "
                                             "is zero; gradient methods cannot work (is the forward detached?)")

    def cam_layer():
        from interpbench.ops.hooks import capture_outputs

        module = model.module(model.cam_layer)
        x = images().clone().requires_grad_(True)
        with torch.enable_grad(), capture_outputs({model.cam_layer: module}) as cap:
            out = model(x)
        raw = cap[model.cam_layer]
        from interpbench.ops.tokens import as_feature_map, token_grid_of

        folded = as_feature_map(raw, token_grid_of(model), module=module, image_size=tuple(x.shape[-2:]))
        act = raw if folded is None else folded  # a transformer's tokens, folded into their patch grid
        calls = cap.calls[model.cam_layer]
        assert calls == 1, (f"model {label!r}: cam_layer {model.cam_layer!r} ran "
                                                 f"{cap.calls[model.cam_layer]} times in one forward pass; choose a "
                                                 "layer that runs once")
        assert isinstance(act, torch.Tensor) and act.dim() == 4 and act.shape[0] == x.shape[0], (
            f"model {label!r}: cam_layer {model.cam_layer!r} outputs "
            f"{tuple(act.shape) if isinstance(act, torch.Tensor) else type(act).__name__}, not a B x K x h x w map")
        (grad,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), raw, allow_unused=True)
        assert grad is not None and float(grad.abs().sum()) > 0, (
            f"model {label!r}: the logits do not depend on cam_layer {model.cam_layer!r}; choose the last "
            "convolutional stage")
        return f"{model.cam_layer!r}: {tuple(act.shape[1:])}"

    def layers():
        from interpbench.ops.hooks import capture_outputs

        named = model.layers
        assert named, f"model {label!r} names no layers; pass layers=[...] (the stages worth dissecting)"
        with capture_outputs(named, detach=True) as cap:
            forward(images())
        silent = [n for n in named if cap.calls[n] == 0]
        assert not silent, f"model {label!r}: layers {silent} never run in forward(); name modules that forward() calls"

    def default_dataset():
        from interpbench.core.config import read_datasets

        known = read_datasets()
        assert model.default_dataset in known, (
            f"model {label!r}: default_dataset {model.default_dataset!r} is not in datasets.yaml (known: "
            f"{sorted(known)}); `interpbench run` uses it when no --dataset is given")

    return [Check("contract", contract), Check("normalization_inside", normalization_inside), Check("logits", logits),
            Check("deterministic_forward", deterministic_forward), Check("batch_independence", batch_independence),
            Check("input_gradient", input_gradient), Check("cam_layer", cam_layer), Check("layers", layers),
            Check("default_dataset", default_dataset)]


def check_model(model: Model | str, *, expected_failures: dict[str, str] | None = None,
                device: str | None = None) -> CheckReport:
    """Run :func:`model_checks` on a model (an ``ib.Model`` or a spec such as ``"shapes:cnn"``, loaded on
    ``device``); ``expected_failures`` as in :func:`check_metric`."""
    if isinstance(model, str):
        from interpbench.api import load_model

        model = load_model(model, device=device)
    return run_expected(f"model {_label(model)}", model_checks(model), model, expected_failures)


# --------------------------------------------------------------------------------------------- datasets


def dataset_checks(dataset: Any, *, n: int = 8, source: DatasetSource | None = None,
                   options: dict[str, Any] | None = None) -> list[Check]:
    """The conformance checks of a dataset (what a loader's ``load()`` returns) on its first ``n`` samples.

    ``attributes`` (name, classes, label_space, provides within the known fields, JSON-serialisable identity()),
    ``length``, ``sample_format`` (a dict with a string ``id`` and a finite float ``3 x H x W`` image in [0, 1]),
    ``stable_ids`` (unique, and the same sample every time it is read: resume relies on it), ``ground_truth``
    (every field in ``provides`` present and well formed: labels in range, masks H x W bool, boxes xyxy inside the
    image), ``index_error`` (reading past the end raises IndexError). Given the ``source`` it came from:
    ``size_option`` (``load(size=(H, W))`` gives H x W images; the runner asks for the model's input size).
    """
    label = _label(dataset)
    options = dict(options or {})

    def first() -> list[dict]:
        return [dataset[i] for i in range(min(n, len(dataset)))]

    def attributes():
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
        elif set(provides) - KNOWN_FIELDS:
            problems.append(f"provides unknown fields {sorted(set(provides) - KNOWN_FIELDS)} (known: "
                            f"{sorted(KNOWN_FIELDS)})")
        if not callable(getattr(dataset, "identity", None)):
            problems.append("implement identity() -> dict (recorded in the manifest)")
        assert not problems, f"dataset {label!r}: " + "; ".join(problems)
        identity = dataset.identity()
        _json_ok(f"dataset {label!r}: identity()", identity)
        assert identity == dataset.identity(), f"dataset {label!r}: identity() changes between calls"

    def length():
        size = len(dataset)
        assert isinstance(size, int) and size > 0, f"dataset {label!r} has {size!r} samples; expected at least one"

    def sample_format():
        shapes = set()
        for s in first():
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

    def stable_ids():
        a, b = first(), first()
        ids = [s["id"] for s in a]
        assert len(set(ids)) == len(ids), f"dataset {label!r}: duplicate ids among the first {len(ids)}: {ids}"
        for x, y in zip(a, b, strict=True):
            assert x["id"] == y["id"] and torch.equal(x["image"], y["image"]), (
                f"dataset {label!r}: reading sample {x['id']!r} twice gave a different id or image; samples must be "
                "a pure function of the index (seed any randomness from it)")

    def ground_truth():
        provides = set(getattr(dataset, "provides", ()))
        classes = len(getattr(dataset, "classes", []) or [])
        for s in first():
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

    def index_error():
        try:
            dataset[len(dataset)]
        except IndexError:
            return
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"dataset {label!r}: dataset[len(dataset)] raised {type(exc).__name__}, expected "
                                 "IndexError (iteration relies on it)") from None
        raise AssertionError(f"dataset {label!r}: dataset[len(dataset)] returned a sample, expected IndexError")

    checks = [Check("attributes", attributes), Check("length", length), Check("sample_format", sample_format),
              Check("stable_ids", stable_ids), Check("ground_truth", ground_truth), Check("index_error", index_error)]

    def size_option():
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

    checks.append(Check("size_option", size_option, applies=source is not None,
                        reason="" if source is not None else "checked only when given the loader (check_dataset of a "
                        "loader or a datasets.yaml name)"))
    return checks


def check_dataset(dataset: Any, *, n: int = 8, size: Any = None, expected_failures: dict[str, str] | None = None,
                  **options: Any) -> CheckReport:
    """Run :func:`dataset_checks` on a dataset, a loader (``ib.DatasetSource`` class or instance: loaded with
    ``options``), or a name from datasets.yaml; ``expected_failures`` as in :func:`check_metric` (also read from the
    loader's and the dataset's ``expected_failures``)."""
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
        from interpbench.api import load_dataset
        from interpbench.core.config import read_datasets
        from interpbench.core.registry import get_registry

        entries = read_datasets()
        if dataset not in entries:
            from interpbench.core.registry import unknown_message

            raise ComponentError(unknown_message("dataset", dataset, entries))
        entry = entries[dataset]
        source = get_registry().get("datasets", entry.loader)()
        loaded = load_dataset(dataset, size=size, **options)
        opts = {**entry.options, **options, "split": "test"}
        if entry.path is not None:
            opts.setdefault("path", entry.path)
        return loaded, source, opts
    return dataset, None, options


# --------------------------------------------------------------------------------------------- shared


def _instance(component: Any, kind: str, base: type, params: dict[str, Any] | None = None) -> Any:
    """An instance from an instance, or a class or registered name built with ``params``."""
    if isinstance(component, str):
        from interpbench.core.registry import get_registry

        component = get_registry().get(kind, component)
    if isinstance(component, type):
        if not issubclass(component, base):
            raise ComponentError(f"{component.__name__} is not an interpbench.{base.__name__} subclass")
        return component(**dict(params or {}))
    if params:
        raise ComponentError(f"params={dict(params)} given with an already built {type(component).__name__}; pass "
                             "the class or its registered name with params, or build the instance with them")
    return component


def run_expected(component: str, checks: list[Check], instance: Any,
                 expected_failures: dict[str, str] | None = None) -> CheckReport:
    """Run ``checks``; a declared expected failure (the instance's ``expected_failures`` merged with the argument)
    that fails is reported n/a with its reason, one that passes is reported failed (stale declarations must not
    hide) - the convention of ``check_method``."""
    declared = {**dict(getattr(instance, "expected_failures", {}) or {}), **dict(expected_failures or {})}
    names = [c.name for c in checks]
    unknown = set(declared) - set(names)
    if unknown:
        raise ComponentError(f"{component}: expected failures name unknown checks {sorted(unknown)}; the checks are "
                             f"{names}")
    return apply_expected_failures(run_checks(component, checks), declared)
