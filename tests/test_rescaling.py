"""Every built-in metric of explanations scores maps times 1e-9 and times 1e9 as it scores the maps themselves."""

from __future__ import annotations

import pytest
import torch

import interpbench as ib
from interpbench.core.registry import get_registry
from interpbench.metrics import localization
from interpbench.models.derived import PairModel
from interpbench.testing.components import reference_model, reference_sample
from interpbench.testing.rescaling import check_rescaling, graded_maps

FAST = {"n_boot": 20}


def _shapes(n: int) -> tuple[ib.Model, list[dict]]:
    model = ib.load_model("shapes:cnn")
    dataset = ib.load_dataset("shapes", size=(64, 64))
    return model, [dataset[i] for i in range(n)]


def _pair() -> PairModel:
    a, b = reference_model(), reference_model()
    with torch.no_grad():
        b.net.head.weight.mul_(-1)  # B prefers other colours: maps differ, predictions differ
    return PairModel(a, b)


def _shortcut() -> tuple[ib.Model, list[dict]]:
    from interpbench.datasets.shortcut import ShortcutSource

    dataset = ShortcutSource().load(n=8)
    return ib.load_model("shapes:cnn"), [dataset[i] for i in range(8)]


# metric -> (params, world): the reference world unless the metric needs other models or ground truth
WORLDS = {
    "deletion": ({"steps": 8}, None),
    "insertion": ({"steps": 8}, None),
    "pointing_game": (FAST, None),
    "energy_pointing_game": (FAST, None),
    "energy_pointing_game_masks": (FAST, None),
    # attacks strong enough to succeed on the reference model, so that the detector is trained and scored
    "adversarial_detection": ({"attacks": ["fgsm128"], "folds": 2, "bootstrap": 5, "cross_attack": False},
                              lambda: (None, [reference_sample(i) for i in range(12)])),
    "explanation_drift": ({}, lambda: (_pair(), None)),
    "grid_pointing_game": ({"confidence": 0.9, "grids": 2, "fit_input": True, **FAST}, lambda: _shapes(24)),
    "shortcut_localization": (FAST, _shortcut),
    "road_morf": ({"fractions": [0.3, 0.7], "max_iter": 10}, None),  # the imputation's solve, cut short
    "road_lerf": ({"fractions": [0.3, 0.7], "max_iter": 10}, None),
    # remove and retrain: a model with a from-scratch recipe, one fraction and seed, a tiny retraining
    "roar": ({"fractions": [0.5], "seeds": [0], "recipe": {"n_train": 64, "epochs": 1}, "baseline": False},
             lambda: _shapes(16)),
    "kar": ({"fractions": [0.5], "seeds": [0], "recipe": {"n_train": 64, "epochs": 1}, "baseline": False},
            lambda: _shapes(16)),
}


def test_every_builtin_metric_of_explanations_is_listed():
    registry = get_registry()
    builtin = {name: registry.get("metrics", name) for name in registry.names("metrics")}
    explanation = {name for name, cls in builtin.items()
                   if cls.__module__.startswith("interpbench.metrics.") and cls.scope == "explanation"}
    assert explanation == set(WORLDS)


@pytest.mark.parametrize("name", sorted(WORLDS))
def test_rescaled_maps_score_the_same(name):
    params, world = WORLDS[name]
    model, samples = world() if world is not None else (None, None)
    report = check_rescaling(name, params=params, model=model, samples=samples)
    assert report.ok, report
    assert [r.status for r in report.results] == ["passed", "passed"]


def test_the_check_catches_an_absolute_guard(monkeypatch):
    def absolute_guard(maps, regions, eps=1e-7):  # the guard before: positive mass <= 1e-7 scores 0
        positive = maps.float().clamp(min=0).flatten(1)
        inside = (positive * regions.flatten(1).float()).sum(dim=1)
        total = positive.sum(dim=1)
        return torch.where(total > eps, inside / total.clamp(min=1e-30), torch.zeros_like(total))

    monkeypatch.setattr(localization, "positive_share", absolute_guard)
    report = check_rescaling("energy_pointing_game_masks", params=FAST)
    assert [r.status for r in report.results] == ["failed", "passed"]  # unit mass x 1e-9 fell under 1e-7
    assert "multiplied by 1e-09" in report.results[0].message


def test_graded_maps_have_unit_mass_and_signs():
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = graded_maps(images)
    assert torch.allclose(maps.abs().flatten(1).sum(1), torch.ones(3))
    assert bool((maps < 0).any()) and bool((maps > 0).any())
    assert not torch.equal(maps[0], maps[1])


def test_shares_are_exact_for_all_zero_maps():
    regions = torch.zeros(2, 4, 4, dtype=torch.bool)
    regions[:, :2] = True
    zero = torch.zeros(2, 4, 4)
    assert localization.positive_share(zero, regions).tolist() == [0.0, 0.0]
    assert localization.energy_share(zero, regions).tolist() == [0.0, 0.0]
    tiny = torch.zeros(2, 4, 4)
    tiny[:, 0, 0] = 1e-30  # all the (positive) mass in the region, however small
    assert localization.positive_share(tiny, regions).tolist() == [1.0, 1.0]
    assert localization.energy_share(tiny, regions).tolist() == [1.0, 1.0]
