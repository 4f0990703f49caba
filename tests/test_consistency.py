"""Dong et al.'s consistency of units (``adversarial_class_consistency``): the maths by hand, and a model whose
units are built to fire for one class each, attacked so that the answer is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from interpbench.core.base import ComponentError, RunContext
from interpbench.datasets.shapes import ShapesWorld
from interpbench.metrics.adversarial_consistency import AdversarialClassConsistency
from interpbench.ops.consistency import (
    chance_consistency,
    check_similarity,
    consistency,
    jaccard_similarity,
    top_label_distribution,
)


def test_top_label_distribution_and_consistency_by_hand():
    # 5 images (labels 0, 1, 1, 2, 0), 2 units; top-3 images of unit 0: images 4, 1, 2 -> classes 0, 1, 1
    acts = torch.tensor([[0.1, 5.0], [0.8, 4.0], [0.7, 0.0], [0.2, 3.0], [0.9, 4.0]])
    labels = torch.tensor([0, 1, 1, 2, 0])
    p = top_label_distribution(acts, labels, classes=3, top_k=3)
    # unit 1: 5.0 (image 0), then the tie 4.0 of images 1 and 4 (both taken), classes 0, 1, 0
    assert torch.allclose(p, torch.tensor([[1 / 3, 2 / 3, 0.0], [2 / 3, 1 / 3, 0.0]], dtype=torch.float64))
    a = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # p^T A p = p0^2 + p1^2 + 2 * 0.5 * p0 p1
    expected = torch.tensor([1 / 9 + 4 / 9 + 2 / 9, 4 / 9 + 1 / 9 + 2 / 9], dtype=torch.float64)
    assert torch.allclose(consistency(p, a), expected)
    # without image 0, unit 1's top-2 are the tied images 1 and 4 (classes 1 and 0)
    assert top_label_distribution(acts[1:], labels[1:], 3, 2)[1].tolist() == [0.5, 0.5, 0.0]


def test_ties_go_to_the_lower_image_index():
    acts = torch.tensor([[1.0], [1.0], [1.0], [1.0]])
    labels = torch.tensor([2, 0, 1, 1])
    assert top_label_distribution(acts, labels, 3, 2)[0].tolist() == [0.5, 0.0, 0.5]  # images 0 and 1


def test_chance_consistency_is_the_mean_over_all_k_subsets():
    import itertools

    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    a = torch.tensor([[1.0, 0.2, 0.0], [0.2, 1.0, 0.6], [0.0, 0.6, 1.0]])
    for k in (1, 2, 3):
        values = []
        for subset in itertools.combinations(range(6), k):
            p = torch.nn.functional.one_hot(labels[list(subset)], 3).double().mean(0)
            values.append(float(consistency(p, a)))
        assert chance_consistency(labels, a, k) == pytest.approx(sum(values) / len(values), abs=1e-12)


def test_shapes_similarity_is_the_attribute_overlap():
    a = ShapesWorld("test", 64, n=1).class_similarity()
    names = ShapesWorld("test", 64, n=1).classes
    tri, dia, circle, ring, square = (names.index(s) for s in ("triangle", "diamond", "circle", "ring", "square"))
    assert a[tri, dia] == pytest.approx(3 / 4) and a[circle, ring] == pytest.approx(1 / 2)
    assert a[circle, square] == pytest.approx(1 / 7)
    check_similarity(a, 7, "test")  # symmetric, ones on the diagonal, in [0, 1]
    assert torch.equal(ShapesWorld("test", 64, n=1, task="color").class_similarity(), torch.eye(11, dtype=torch.float64))
    assert torch.equal(jaccard_similarity([{"x"}, {"y"}]), torch.eye(2, dtype=torch.float64))
    with pytest.raises(ComponentError, match="diagonal"):
        check_similarity(torch.zeros(2, 2), 2, "test")


# --------------------------------------------------------------------------------------------- a built model


class ChannelModel(nn.Module):
    """Three classes, each the brightest colour channel; unit ``k`` of layer ``feat`` is channel ``k``, so it
    fires for class ``k`` and for nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * self.feat(x).mean(dim=(2, 3))


class ColourProbe:
    """``m`` flat images per class in the order 0, 1, 2, 0, 1, 2, ...: the labelled channel at ``high``, the
    others at ``1 - high``."""

    classes = ["c0", "c1", "c2"]

    def __init__(self, m: int, high: dict[int, float], similarity: torch.Tensor) -> None:
        self.items = []
        for i in range(3 * m):
            c = i % 3
            image = torch.full((3, 8, 8), 1 - high[c])
            image[c] = high[c]
            self.items.append({"image": image, "label": c})
        self.similarity = similarity

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def class_similarity(self) -> torch.Tensor:
        return self.similarity


A = torch.tensor([[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]], dtype=torch.float64)
CTX = RunContext(device=torch.device("cpu"), batch_size=5, seed=0)


def test_units_built_for_one_class_are_consistent_on_real_images_and_not_on_adversarial_ones():
    # FGSM at 38/255 lowers the labelled channel to 0.45 and raises the two others to 0.55: every attack succeeds.
    # On real images unit k's top-4 images are the 4 images of class k: consistency 1. On adversarial images
    # unit k's top-4 are tied images of the two other classes, taken in index order: two of each, so unit 0 scores
    # 1/2 + A_12 / 2, unit 1 1/2 + A_02 / 2, unit 2 1/2 + A_01 / 2.
    probe = ColourProbe(4, {0: 0.6, 1: 0.6, 2: 0.6}, A)
    metric = AdversarialClassConsistency(attacks=["fgsm38"], layers=["feat"], top_k=4, bootstrap=50)
    out = metric.evaluate(ChannelModel(), probe, CTX)
    assert out["n"] == 12 and out["fgsm38.n"] == 12 and out["fgsm38.success"] == 1.0
    assert out["feat.fgsm38.real"] == pytest.approx(1.0, abs=1e-12)
    expected = (1.5 + (A[1, 2] + A[0, 2] + A[0, 1]) / 2) / 3
    assert out["feat.fgsm38.adversarial"] == pytest.approx(float(expected), abs=1e-12)
    assert out["feat.fgsm38.change"] == pytest.approx(float(expected) - 1.0, abs=1e-12)
    assert out["feat.fgsm38.chance"] == pytest.approx(chance_consistency(torch.arange(12) % 3, A, 4))
    assert out["feat.fgsm38.change_ci_low"] <= out["feat.fgsm38.change"] <= out["feat.fgsm38.change_ci_high"]
    # the identity similarity: two classes in equal parts, 1/2
    out = AdversarialClassConsistency(attacks=["fgsm38"], layers=["feat"], top_k=4, bootstrap=50,
                                      similarity="identity").evaluate(ChannelModel(), probe, CTX)
    assert out["feat.fgsm38.adversarial"] == pytest.approx(0.5, abs=1e-12)


def test_only_successful_attacks_enter_the_probe_and_real_images_are_the_same_ones():
    # class 2 is far from the boundary (0.95 against 0.05): FGSM at 38/255 fails on it. The probe keeps the 8
    # images of classes 0 and 1 (success 8/12); on their clean versions unit 2 is flat (0.4 everywhere), so it is
    # left out, and units 0 and 1 are perfectly consistent.
    probe = ColourProbe(4, {0: 0.6, 1: 0.6, 2: 0.95}, A)
    out = AdversarialClassConsistency(attacks=["fgsm38"], layers=["feat"], top_k=4, bootstrap=50).evaluate(
        ChannelModel(), probe, CTX)
    assert out["fgsm38.n"] == 8 and out["fgsm38.success"] == pytest.approx(8 / 12)
    assert out["feat.fgsm38.units"] == 2 and out["feat.fgsm38.real"] == pytest.approx(1.0, abs=1e-12)
    # adversarial: unit 0's top-4 are the class-1 images (0.55 against 0.45), unit 1's the class-0 ones
    assert out["feat.fgsm38.adversarial"] == pytest.approx(1.0, abs=1e-12)
    # fewer than 2 * top_k successes: counts only
    out = AdversarialClassConsistency(attacks=["fgsm38"], layers=["feat"], top_k=5, bootstrap=50).evaluate(
        ChannelModel(), probe, CTX)
    assert "feat.fgsm38.real" not in out and out["fgsm38.n"] == 8


def test_a_user_supplied_similarity_is_checked(tmp_path):
    import json

    import numpy as np

    probe = ColourProbe(4, {0: 0.6, 1: 0.6, 2: 0.6}, A)
    path = tmp_path / "a.npy"
    np.save(path, np.eye(3))
    ctx = RunContext(device=torch.device("cpu"), batch_size=5, seed=0, out_dir=tmp_path / "artifacts")
    out = AdversarialClassConsistency(attacks=["fgsm38"], layers=["feat"], top_k=4, bootstrap=20,
                                      similarity=str(path)).evaluate(ChannelModel(), probe, ctx)
    assert out["feat.fgsm38.adversarial"] == pytest.approx(0.5, abs=1e-12)
    record = json.loads((tmp_path / "artifacts" / "class-similarity.json").read_text())
    assert record["source"] == "file a.npy" and record["matrix"] == np.eye(3).tolist()
    units = (tmp_path / "artifacts" / "feat-fgsm38-class-consistency.csv").read_text().splitlines()
    assert units[0] == "unit,real,adversarial,real_top_class,adversarial_top_class" and len(units) == 4
    assert units[1].startswith("1,1.000000,0.500000,c0,")
    np.save(path, np.ones((2, 2)))
    with pytest.raises(ComponentError, match="3 x 3"):
        AdversarialClassConsistency(attacks=["fgsm38"], layers=["feat"], top_k=4,
                                    similarity=str(path)).evaluate(ChannelModel(), probe, CTX)


def test_the_metric_passes_the_conformance_kit():
    from interpbench.testing import check_metric

    check_metric("adversarial_class_consistency", params={"attacks": ["fgsm8"], "bootstrap": 50}).raise_if_failed()
