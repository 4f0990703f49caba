"""ROAR / KAR (interpbench/metrics/roar.py, interpbench/ops/roar.py, interpbench/models/retrain.py) against known
answers: the masking's exact pixel counts and ties, the area, a synthetic task whose label sits in a known patch
(the map that marks the patch drives ROAR to chance where ``random`` does not, and KAR the mirror), the cache, and
the parameter errors."""

from __future__ import annotations

import types

import pytest
import torch

from interpbench.api import load_method, load_metric, load_model
from interpbench.core.base import Batch, ComponentError, Method, NotApplicable
from interpbench.metrics import roar as roar_metric
from interpbench.models.retrain import retrain_task
from interpbench.ops.roar import (
    curve_area,
    pixel_count,
    replace_pixels,
    seed_interval,
    top_pixels,
)

# --------------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.9, 0.99])
def test_masks_mark_exactly_round_t_hw_pixels(fraction):
    maps = torch.rand(5, 16, 12, generator=torch.Generator().manual_seed(0))
    marked = top_pixels(maps, fraction)
    expected = int(round(fraction * 16 * 12))
    assert marked.flatten(1).sum(dim=1).tolist() == [expected] * 5
    # the marked pixels are the most salient: every marked value is >= every unmarked one
    for m, k in zip(maps, marked):
        if 0 < expected < m.numel():
            assert m[k].min() >= m[~k].max()


def test_ties_go_to_the_lower_pixel_index_first():
    maps = torch.zeros(1, 4, 4)
    maps[0, 3, 3] = 1.0  # the single most salient pixel, then the flat rest in index order
    marked = top_pixels(maps, 4 / 16)
    assert marked[0].flatten().nonzero().flatten().tolist() == [0, 1, 2, 15]
    assert pixel_count(0.5, 7) == 4 and pixel_count(0.25, 10) == 2  # Python's round: half to even


def test_roar_replaces_the_top_pixels_and_kar_the_others():
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 8, 8, generator=gen)
    maps = torch.rand(3, 8, 8, generator=gen)
    fill = torch.tensor([0.1, 0.2, 0.3])
    top = top_pixels(maps, 0.3)
    removed = replace_pixels(images, maps, 0.3, fill)
    kept = replace_pixels(images, maps, 0.3, fill, keep=True)
    for c in range(3):
        assert torch.all(removed[:, c][top] == fill[c]) and torch.equal(removed[:, c][~top], images[:, c][~top])
        assert torch.all(kept[:, c][~top] == fill[c]) and torch.equal(kept[:, c][top], images[:, c][top])
    assert int(top.sum()) == 3 * round(0.3 * 64)


def test_curve_area_and_seed_interval():
    assert curve_area([0.1, 0.5, 0.9], [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert curve_area([0.1, 0.2, 0.9], [1.0, 1.0, 0.0]) == pytest.approx((0.1 * 1.0 + 0.7 * 0.5) / 0.8)
    assert curve_area([0.3], [0.7]) == 0.7
    assert seed_interval([0.2, 0.9, 0.5]) == (0.2, 0.9)
    with pytest.raises(ValueError, match="increase"):
        curve_area([0.5, 0.1], [1.0, 0.0])


# --------------------------------------------------------------------------------------------- known answers

PATCH = (slice(0, 8), slice(0, 8))  # the label lives in the colour of this corner patch (64 of 4096 pixels)


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images with faint noise; label 0: a red corner patch, label 1: a blue one. Nothing else carries it."""
    gen = torch.Generator().manual_seed(seed)
    images = 0.5 + 0.1 * (torch.rand(n, 3, 64, 64, generator=gen) - 0.5)
    labels = torch.randint(0, 2, (n,), generator=gen)
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])[labels]
    images[:, :, PATCH[0], PATCH[1]] = colours.view(n, 3, 1, 1)
    return images, labels


class PatchOracle(Method):
    """Marks the patch (1) above everything else (seeded noise under 1e-3)."""

    name = "patch_oracle"

    def explain(self, model, images, targets):
        maps = 1e-3 * torch.rand(images.shape[0], *images.shape[-2:], generator=torch.Generator().manual_seed(0))
        maps[:, PATCH[0], PATCH[1]] += 1.0
        return maps


RECIPE = {"n_train": 256, "epochs": 4, "batch_size": 32, "lr": 5e-3}


def score(metric_name: str, method: Method, fraction: float, monkeypatch, tmp_path) -> float:
    monkeypatch.setenv("INTERPBENCH_CACHE", str(tmp_path))
    train = synthetic(256, seed=1)
    monkeypatch.setattr(roar_metric, "training_split", lambda task, n: (train[0][:n], train[1][:n]))
    model = load_model("shapes:cnn")  # a model with a from-scratch recipe: its mean fills, its task sizes the net
    images, labels = synthetic(200, seed=2)
    metric = load_metric(metric_name, fractions=[fraction], seeds=[0], recipe=RECIPE, baseline=False)
    with torch.no_grad():
        targets = model(images).argmax(1)
    batch = Batch(ids=[str(i) for i in range(len(images))], images=images, targets=targets,
                  samples=[{"label": int(y)} for y in labels], labels=labels, method=method)
    torch.manual_seed(0)
    metric.update(model, batch, method.explain(model, images, targets))
    return metric.compute()[roar_metric.fraction_name(fraction)]


def test_roar_drives_the_oracle_to_chance_where_random_does_not(monkeypatch, tmp_path):
    oracle = score("roar", PatchOracle(), 0.1, monkeypatch, tmp_path)  # removes the whole patch
    random = score("roar", load_method("random"), 0.1, monkeypatch, tmp_path)  # removes a tenth of it
    assert oracle < 0.65, oracle  # chance is 0.5
    assert random > 0.9, random


def test_kar_keeps_the_oracle_accurate_where_random_is_not(monkeypatch, tmp_path):
    # a single kept pixel of the patch gives its colour away, so the fraction must leave random maps none in most
    # images: 0.5 % keeps 20 pixels, all of the oracle's in the patch, and none of random's in 73 % of the images
    oracle = score("kar", PatchOracle(), 0.005, monkeypatch, tmp_path)
    random = score("kar", load_method("random"), 0.005, monkeypatch, tmp_path)
    assert oracle > 0.9, oracle
    assert random < oracle - 0.2, (random, oracle)


# --------------------------------------------------------------------------------------------- cache, errors


def test_a_second_run_reads_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERPBENCH_CACHE", str(tmp_path))
    calls = []
    real = roar_metric.retrained_accuracy

    def counting(*args, **kwargs):
        calls.append(args[3])  # the seed
        return real(*args, **kwargs)

    monkeypatch.setattr(roar_metric, "retrained_accuracy", counting)
    model = load_model("shapes:cnn")
    method = load_method("gradient")
    images, labels = synthetic(16, seed=3)
    targets = torch.zeros(16, dtype=torch.long)
    batch = Batch(ids=[str(i) for i in range(16)], images=images, targets=targets,
                  samples=[{"label": int(y)} for y in labels], labels=labels, method=method)
    maps = method.explain(model, images, targets)
    results = []
    for _ in range(2):
        metric = load_metric("roar", fractions=[0.3, 0.6], seeds=[0, 1],
                             recipe={"n_train": 64, "epochs": 1, "batch_size": 32})
        metric.update(model, batch, maps)
        results.append(metric.compute())
    assert len(calls) == 2 * 2 + 2  # fractions x seeds, plus the intact baseline per seed: the first run only
    assert results[0] == results[1]
    assert len(list(tmp_path.glob("roar/*.pt"))) == 6


@pytest.mark.parametrize("params, message", [
    ({"fractions": [0.5, 1.2]}, "fractions must be"),
    ({"fractions": [0.5, 0.2]}, "increasing"),
    ({"fractions": []}, "non-empty"),
    ({"seeds": []}, "seeds must be"),
    ({"seeds": [0, 0]}, "distinct"),
    ({"recipe": {"epoch": 3}}, "unknown recipe option"),
    ({"recipe": {"epochs": 0}}, "epochs must be a positive int"),
    ({"recipe": {"widths": [8, 8]}}, "four positive ints"),
    ({"baseline": "yes"}, "baseline must be"),
    ({"seed": 1}, "unknown parameter"),
])
def test_bad_parameters_say_what_is_wrong(params, message):
    with pytest.raises(ComponentError, match=message):
        load_metric("kar", **params)


def test_models_without_a_from_scratch_recipe_are_not_applicable():
    fake = types.SimpleNamespace(spec="timm:resnet18", weights={"source": "timm", "tag": "resnet18"})
    with pytest.raises(NotApplicable, match="from-scratch training"):
        retrain_task(fake)
    vit = types.SimpleNamespace(spec="shapes:vit", weights={"source": "shapes", "tag": "vit"})
    with pytest.raises(NotApplicable):
        retrain_task(vit)
    assert retrain_task(types.SimpleNamespace(spec="s", weights={"source": "shapes", "tag": "cnn.shortcut"})) \
        == "shortcut"
    assert retrain_task(types.SimpleNamespace(spec="s", weights={"source": "shapes", "tag": "cnn@random"})) == "shape"


def test_registered_with_directions():
    assert load_metric("roar").higher_is_better is False and load_metric("kar").higher_is_better is True
    assert load_metric("roar").params["fractions"] == roar_metric.PAPER_FRACTIONS
    assert load_metric("roar").params["seeds"] == [0, 1, 2]
