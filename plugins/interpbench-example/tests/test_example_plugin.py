"""The example plugin's own tests: interpbench's conformance checks on each component, and known answers."""

import torch
from interpbench_example.dataset import SquaresSource
from interpbench_example.method import VarGrad, vargrad
from interpbench_example.metric import RankAccuracy, rank_accuracy

import interpbench as ib
from interpbench.core.registry import get_registry
from interpbench.testing import parametrize_with_checks


# Every check of interpbench.testing, one pytest case each (ids like "example:vargrad-oracle"). A cheaper VarGrad
# (8 samples) keeps the run fast; the published default (50) is what the benchmark runs.
@parametrize_with_checks([VarGrad(samples=8), RankAccuracy(), SquaresSource])
def test_conformance(component, check):
    check()


def test_the_plugin_is_installed_through_its_entry_point():
    registry = get_registry()
    assert "example:vargrad" in ib.list_methods() and "example:rank_accuracy" in ib.list_metrics()
    info = registry.plugin_of("datasets", "example:squares")
    assert (info.name, info.dist) == ("example", "interpbench-example")


def test_vargrad_is_the_variance_of_the_noisy_gradients():
    grads = torch.tensor([[[[[1.0]], [[2.0]], [[0.0]]]], [[[[3.0]], [[2.0]], [[4.0]]]]])  # 2 samples, B=1, 3 ch, 1x1
    # per channel: var(1, 3) = 1, var(2, 2) = 0, var(0, 4) = 4 -> summed: 5
    assert vargrad(grads).tolist() == [[[5.0]]]


def test_rank_accuracy_by_hand():
    maps = torch.tensor([[[0.9, 0.1], [0.8, 0.7]]])  # order: (0,0), (1,0), (1,1), (0,1)
    mask = torch.tensor([[[True, True], [False, False]]])  # K = 2: top-2 are (0,0) and (1,0): one hit
    assert rank_accuracy(maps, mask).tolist() == [0.5]
    assert rank_accuracy(torch.zeros(1, 2, 2), mask).tolist() == [1.0]  # ties by pixel index: (0,0), (0,1)


def test_squares_are_reproducible_and_labelled_by_colour():
    a, b = SquaresSource().load(size=32, n=4), SquaresSource().load(size=32, n=4)
    for i in range(4):
        s = a[i]
        assert torch.equal(s["image"], b[i]["image"]) and s["masks"][s["label"]].any()
        colour = s["image"][:, s["masks"][s["label"]]].mean(dim=1)
        assert int(colour.argmax()) == s["label"]  # red, green or blue is the brightest channel in the square
