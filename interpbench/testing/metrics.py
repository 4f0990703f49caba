"""Conformance checks for metrics (scikit-learn's ``check_estimator`` is the model).

Layer: part of ``interpbench.testing`` (beside ``interpbench.publish``, docs/design.md); it runs on the reference
world of interpbench.testing.world and validates scores as the runner does (interpbench.engine.guards).

Each check is a function a plugin author can call on its own: ``check_metric_<name>(metric, ...)`` raises
``AssertionError`` with a message that names the metric, the value it saw and the fix, and returns ``None`` or a
short string with what it measured. :func:`metric_checks` lists the ones that apply to a metric as
:class:`~interpbench.testing.report.Check` objects; :func:`check_metric` runs them all and returns a
:class:`~interpbench.testing.report.CheckReport`.

Per-sample and dataset-level explanation metrics run on a :class:`~interpbench.testing.world.ReferenceWorld`
(``world=None`` builds the reference one); model-scope metrics are evaluated on ``model`` (``None``: the reference
model) and the reference dataset.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from interpbench.core.base import Batch, ComponentError, Metric, Model, RunContext
from interpbench.engine.guards import check_scores
from interpbench.testing.report import Check, CheckReport, run_expected
from interpbench.testing.world import (
    ATOL,
    SCOPES,
    ReferenceDataset,
    ReferenceWorld,
    _close,
    _finite_dict,
    _instance,
    _json_ok,
    _label,
    _seeded,
    _sub_batch,
    known_fields,
    reference_model,
)

# --------------------------------------------------------------------------------------------- helpers


def _scores(metric: Metric, model: Model, batch: Batch, maps: torch.Tensor) -> torch.Tensor:
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


def _world(world: ReferenceWorld | None) -> ReferenceWorld:
    return world if world is not None else ReferenceWorld()


def _whole(metric: Metric, world: ReferenceWorld, maps_of: str = "oracle") -> dict[str, float]:
    """A dataset-level metric's result on the world's batch, with the oracle or the inverted maps."""
    m, batch, oracle, anti = world()
    return _dataset_result(metric, m, [(batch, oracle if maps_of == "oracle" else anti)])


# --------------------------------------------------------------------------------------------- every metric


def check_metric_contract(metric: Metric) -> None:
    """The class attributes and the interface: a non-empty ``name`` and ``version``, ``higher_is_better`` a bool,
    ``scope`` "explanation" or "model", ``needs`` field names, and the methods of its kind (``evaluate`` for a
    model-scope metric; ``score``, or ``update``/``compute``/``reset``, for a metric of explanations).

    Fix: set the missing class attribute, or implement the methods the message lists.
    """
    label = _label(metric)
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


def check_metric_params_roundtrip(metric: Metric) -> None:
    """``describe()`` is JSON-serialisable and ``type(metric)(**metric.params)`` describes itself the same.

    Fix: keep every constructor parameter in ``self.params`` (the manifest records them, resume rebuilds from them),
    as plain numbers, strings, lists and dicts.
    """
    label = _label(metric)
    described = metric.describe()
    _json_ok(f"metric {label!r}: describe()", described)
    rebuilt = type(metric)(**metric.params).describe()
    assert rebuilt == described, (f"metric {label!r}: {type(metric).__name__}(**params).describe() gave {rebuilt}, "
                                  f"not {described}; keep every parameter in self.params")


def check_metric_needs_known_fields(metric: Metric) -> None:
    """Every field in ``needs`` is one the built-in datasets provide (:data:`~interpbench.testing.world.KNOWN_FIELDS`).

    Fix: correct the field name, or declare this check an expected failure if your own dataset provides the field.
    """
    label = _label(metric)
    unknown = set(metric.needs) - known_fields()
    assert not unknown, (f"metric {label!r} needs {sorted(unknown)}, which no built-in dataset provides (known: "
                         f"{sorted(known_fields())}); fix the name, or declare this check expected to fail if your "
                         "own dataset provides the field")


# --------------------------------------------------------------------------------------------- model-scope metrics


def check_metric_evaluate_finite(metric: Metric, model: Model | None = None) -> None:
    """A model-scope metric's ``evaluate(model, dataset, ctx)`` returns a non-empty dict of finite numbers (on the
    reference dataset; ``model=None`` is the reference model).

    Fix: return ``{name: float}``; a value that can be undefined must be handled inside the metric, not returned
    as NaN.
    """
    label = _label(metric)
    m = model if model is not None else reference_model()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(device=m.device, batch_size=4, seed=0, out_dir=Path(tmp), limit=None)
        _finite_dict(f"metric {label!r}: evaluate()", metric.evaluate(m, ReferenceDataset(), ctx))


def check_metric_evaluate_reproducible(metric: Metric, model: Model | None = None) -> None:
    """Two evaluations of a model-scope metric with seed 0 give the same result (check ``reproducible``).

    Fix: draw random numbers from torch's global RNG (the runner seeds it) or from ``ctx.seed``.
    """
    label = _label(metric)
    m = model if model is not None else reference_model()
    runs = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            ctx = RunContext(device=m.device, batch_size=4, seed=0, out_dir=Path(tmp), limit=None)
            runs.append(_seeded(lambda ctx=ctx: metric.evaluate(m, ReferenceDataset(), ctx)))
    assert runs[0] == runs[1], (
        f"metric {label!r}: two evaluations with seed 0 gave {runs[0]} and {runs[1]}; draw random numbers "
        "from torch's global RNG or from ctx.seed")


# --------------------------------------------------------------------------------------------- per-sample metrics


def check_metric_score_shape(metric: Metric, world: ReferenceWorld | None = None) -> str:
    """``score(model, batch, maps)`` returns one finite score per sample (a Tensor[B], as the runner checks it).

    Fix: return a 1-D tensor with one value per image of the batch (or the runner's ``(scores, extras)`` form).
    """
    m, batch, oracle, _ = _world(world)()
    scores = _scores(metric, m, batch, oracle)
    return f"{len(scores)} scores in [{float(scores.min()):.4g}, {float(scores.max()):.4g}]"


def check_metric_batch_independence(metric: Metric, world: ReferenceWorld | None = None) -> str:
    """A sample's score does not depend on the other samples of its batch (scored alone = scored in the batch).

    Fix: compute every statistic per image (no batch means, no batch-wide normalisation, no shared random draws
    whose order depends on the batch).
    """
    label = _label(metric)
    m, batch, oracle, _ = _world(world)()
    together = _scores(metric, m, batch, oracle)
    alone = torch.cat([_scores(metric, m, _sub_batch(batch, [i]), oracle[i:i + 1]) for i in range(len(batch))])
    ok, diff = _close(alone, together)
    assert ok, (f"metric {label!r}: scores of samples scored one at a time {alone.tolist()} differ from their "
                f"scores in one batch {together.tolist()} (max difference {diff:.3g}); a sample's score must "
                "not depend on the other samples of its batch")
    return f"largest difference {diff:.2g}"


def check_metric_reproducible(metric: Metric, world: ReferenceWorld | None = None) -> None:
    """Two calls of ``score`` with the same seed give the same scores (check ``reproducible``).

    Fix: draw random numbers from torch's global RNG (the runner seeds it) or from ``batch.seed``.
    """
    label = _label(metric)
    m, batch, oracle, _ = _world(world)()
    a, b = _scores(metric, m, batch, oracle), _scores(metric, m, batch, oracle)
    assert torch.equal(a, b), (f"metric {label!r}: two calls with the same seed gave {a.tolist()} and "
                               f"{b.tolist()}; draw random numbers from torch's global RNG (the runner "
                               "seeds it) or from batch.seed")


# --------------------------------------------------------------------------------------------- dataset-level metrics


def check_metric_compute_finite(metric: Metric, world: ReferenceWorld | None = None) -> None:
    """``reset()``, ``update()`` on one batch, then ``compute()`` gives a non-empty dict of finite numbers.

    Fix: return ``{name: float}`` from ``compute()``; handle an undefined value inside the metric.
    """
    _whole(metric, _world(world))


def check_metric_reset_clears_state(metric: Metric, world: ReferenceWorld | None = None) -> None:
    """After ``reset()`` the metric gives what a fresh instance gives on the same batch.

    Fix: clear every accumulated state (lists, sums, counts) in ``reset()``.
    """
    label = _label(metric)
    m, batch, oracle, anti = _world(world)()
    _dataset_result(metric, m, [(batch, oracle)])  # leaves state behind
    after_reset = _dataset_result(metric, m, [(batch, anti)])  # reset(), then another batch
    fresh = _dataset_result(type(metric)(**metric.params), m, [(batch, anti)])
    assert after_reset == fresh, (
        f"metric {label!r}: after reset() it gave {after_reset}, a fresh instance {fresh} on the same batch; "
        "reset() must clear every accumulated state")


def check_metric_batch_split_invariance(metric: Metric, world: ReferenceWorld | None = None) -> None:
    """The result on one batch equals the result on the same samples cut into two batches.

    Fix: accumulate per-sample quantities in ``update()`` and reduce them in ``compute()`` (not a mean of batch
    means).
    """
    label = _label(metric)
    world = _world(world)
    m, batch, oracle, _ = world()
    k = len(batch) // 2
    halves = [(_sub_batch(batch, list(range(k))), oracle[:k]),
              (_sub_batch(batch, list(range(k, len(batch)))), oracle[k:])]
    split, together = _dataset_result(metric, m, halves), _whole(metric, world)
    assert split.keys() == together.keys() and all(
        abs(split[key] - together[key]) <= ATOL * max(1.0, abs(together[key])) for key in together), (
        f"metric {label!r}: one batch of {len(batch)} gave {together}, two batches of {k} and {len(batch) - k} "
        f"gave {split}; the result must not depend on how the dataset is cut into batches")


# --------------------------------------------------------------------------------------------- explanation metrics


def check_metric_inputs_unchanged(metric: Metric, world: ReferenceWorld | None = None) -> None:
    """``score`` (per sample) or ``update`` (dataset level) leaves ``batch.images`` and the maps as they were.

    Fix: the images and maps are shared with the other metrics of the run: work on copies (``images.clone()``,
    ``maps.clone()``), never modify them in place.
    """
    label = _label(metric)
    world = _world(world)

    def run(batch: Batch, maps: torch.Tensor) -> Any:
        if metric.per_sample:
            return _scores(metric, world()[0], batch, maps)
        metric.reset()
        return _seeded(lambda: metric.update(world()[0], batch, maps))

    _, batch, oracle, _ = world()
    images, maps = batch.images.clone(), oracle.clone()  # copies: the other checks keep clean inputs
    run(dataclasses.replace(batch, images=images), maps)
    assert torch.equal(images, batch.images), (
        f"metric {label!r} modified batch.images in place; the batch is shared with the other metrics, so "
        "work on a copy (images.clone())")
    assert torch.equal(maps, oracle), (
        f"metric {label!r} modified the maps in place; they are shared with the other metrics, so work on a "
        "copy (maps.clone())")


def check_metric_prefers_oracle_map(metric: Metric, world: ReferenceWorld | None = None) -> str:
    """On the reference model the oracle map (1 inside the region the model sees, 0 outside) scores better than
    the inverted map: the mean score for a per-sample metric, the main number of ``compute()`` (the key named like
    the metric, or its only non-CI key) for a dataset-level one.

    Fix: a metric of explanations must prefer the right map; declare this check an expected failure if the metric
    does not measure faithfulness or localisation (e.g. sparsity). Only meaningful on the reference world.
    """
    label = _label(metric)
    world = _world(world)
    if metric.per_sample:
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
    right, wrong = _whole(metric, world, "oracle"), _whole(metric, world, "anti")
    key = _headline(metric, right)
    assert key is not None, (f"metric {label!r}: cannot tell its main number among {sorted(right)}; name it "
                             f"{metric.name!r}")
    better = right[key] > wrong[key] if metric.higher_is_better else right[key] < wrong[key]
    assert better, (f"metric {label!r}: {key} is {right[key]:.4g} for the oracle map and {wrong[key]:.4g} for the "
                    "inverted map on a model that only sees the oracle region; it must prefer the right map")
    return f"{key}: oracle map {right[key]:.4g}, inverted map {wrong[key]:.4g}"


# --------------------------------------------------------------------------------------------- the kit


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
    Check ``x`` is the function ``check_metric_x`` of this module (``reproducible`` of a model-scope metric is
    :func:`check_metric_evaluate_reproducible`).
    """
    world = ReferenceWorld(model, samples)

    def bound(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        return lambda: fn(metric, *args)

    checks = [Check("contract", bound(check_metric_contract)),
              Check("params_roundtrip", bound(check_metric_params_roundtrip)),
              Check("needs_known_fields", bound(check_metric_needs_known_fields))]

    provided = set(ReferenceDataset.provides) | {"id", "image"} if samples is None else set().union(*map(set, samples))
    lacking = set(metric.needs) - provided
    na = dict(applies=False, reason=f"the reference samples lack {sorted(lacking)}; pass samples=[...] that have "
              "them") if lacking else {}
    na_oracle = dict(applies=False, reason="the right map is known only on the reference model (model=None)"
                     ) if model is not None else {}

    if metric.scope == "model":
        return checks + [Check("evaluate_finite", bound(check_metric_evaluate_finite, model), **na),
                         Check("reproducible", bound(check_metric_evaluate_reproducible, model), **na)]

    if metric.per_sample:
        return checks + [
            Check("score_shape", bound(check_metric_score_shape, world), **na),
            Check("batch_independence", bound(check_metric_batch_independence, world), **na),
            Check("reproducible", bound(check_metric_reproducible, world), **na),
            Check("inputs_unchanged", bound(check_metric_inputs_unchanged, world), **na),
            Check("prefers_oracle_map", bound(check_metric_prefers_oracle_map, world), **(na or na_oracle)),
        ]

    # dataset-level explanation metric
    return checks + [
        Check("compute_finite", bound(check_metric_compute_finite, world), **na),
        Check("reset_clears_state", bound(check_metric_reset_clears_state, world), **na),
        Check("batch_split_invariance", bound(check_metric_batch_split_invariance, world), **na),
        Check("inputs_unchanged", bound(check_metric_inputs_unchanged, world), **na),
        Check("prefers_oracle_map", bound(check_metric_prefers_oracle_map, world), **(na or na_oracle)),
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
