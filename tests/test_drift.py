"""Unit drift, explanation drift, model pairs, the randomisation check and the recipes (issue 7).

Known answers: hand-computed CKA / ranks / overlaps / retention; a model against itself (retention 1, CKA 1, drift
0); a copy with its units permuted (aligned retention at chance, matched retention 1, CKA 1); a random rotation of
a layer's units (CKA 1, fewer detectors, Bau et al. 2017); model-independent baselines failing the
randomisation test (Adebayo et al. 2018); recipes that repeat bit for bit and reach their targets.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import interpbench as ib
from interpbench.api import expand_specs, sanity_pairs
from interpbench.core.base import ComponentError, NotApplicable, RunContext
from interpbench.core.config import parse_pair
from interpbench.datasets.shapes import COLOR_NAMES
from interpbench.engine.recipes import distil, prune
from interpbench.engine.runner import LimitedDataset
from interpbench.metrics.drift import (
    ExplanationDrift,
    UnitDrift,
    drift_table,
    sanity_table,
)
from interpbench.models.derived import PairModel, cascade_stages
from interpbench.models.training import (
    finetune_model,
    global_magnitude_masks,
    prunable_weights,
    soft_target_loss,
)
from interpbench.ops.drift import (
    CrossCorrelation,
    average_ranks,
    best_partners,
    hungarian_partners,
    linear_cka,
    map_rank_correlation,
    rank_correlation_rows,
    top_fraction_overlap,
    unit_drift_measures,
)

CPU = torch.device("cpu")
PROBE_N = 48


@pytest.fixture(scope="module")
def base():
    return ib.load_model("shapes:cnn")


@pytest.fixture(scope="module")
def probe():
    return LimitedDataset(ib.load_dataset("shapes", size=(64, 64)), PROBE_N)


def ctx(tmp_path=None):
    return RunContext(device=CPU, batch_size=48, seed=0, out_dir=tmp_path)


def images(dataset, n=8):
    return torch.stack([dataset[i]["image"] for i in range(n)])


# --------------------------------------------------------------------------------------------- maths


def test_linear_cka_known_values_and_invariances():
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [0.0], [2.0]])
    # one feature each: the plug-in linear CKA is the squared Pearson correlation, here (1 / (sqrt 2 sqrt 2))^2 = 1/4
    assert linear_cka(x, y, debiased=False) == pytest.approx(0.25, abs=1e-12)
    with pytest.raises(ComponentError, match="at least 4"):  # the unbiased HSIC needs 4 examples
        linear_cka(x, y)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 6, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert linear_cka(a, a @ q) == pytest.approx(1.0, abs=1e-12)  # orthogonal transform
    assert linear_cka(a, 3 * a + 7) == pytest.approx(1.0, abs=1e-12)  # isotropic scale and shift
    assert linear_cka(a, a * torch.tensor([1.0, 1, 1, 1, 1, 10], dtype=torch.float64)) < 0.9  # not invariant to this
    for debiased in (True, False):
        assert linear_cka(a, a @ q, debiased) == pytest.approx(1.0, abs=1e-12)
        wide = torch.randn(5, 30, generator=g, dtype=torch.float64)  # n < p
        assert linear_cka(wide, wide @ torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))[0],
                          debiased) == pytest.approx(1.0, abs=1e-12)
        assert math.isnan(linear_cka(torch.ones(4, 2), a[:4], debiased))


def test_ranks_spearman_and_top_overlap_by_hand():
    assert average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]])).tolist() == [[3.5, 1.0, 3.5, 2.0]]
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    y = torch.tensor([[10.0, 20.0, 30.0, 40.0], [4.0, 3.0, 2.0, 1.0]])
    assert rank_correlation_rows(x, y).tolist() == pytest.approx([1.0, -1.0])
    # ranks [1,2,3,4] vs [1,3,2,4]: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert rank_correlation_rows(x[:1], torch.tensor([[1.0, 3.0, 2.0, 4.0]])).item() == pytest.approx(0.8)
    # constant maps: identical -> 1, against a varying map -> 0
    flat = torch.zeros(2, 2, 2)
    varying = torch.arange(8.0).view(2, 2, 2)
    assert map_rank_correlation(flat, flat).tolist() == [1.0, 1.0]
    assert map_rank_correlation(flat, varying).tolist() == [0.0, 0.0]
    # top 25% of 8 pixels = 2 pixels: {7, 6} vs {7, 0} -> 1/2
    a = torch.arange(8.0).view(1, 2, 4)
    b = torch.tensor([[[5.0, 0, 0, 0], [0, 0, 0, 9.0]]])
    assert top_fraction_overlap(a, b, 0.25).item() == pytest.approx(0.5)
    with pytest.raises(ComponentError, match="fraction"):
        top_fraction_overlap(a, b, 0.0)


def test_streaming_correlation_matches_corrcoef_and_matching_recovers_a_permutation():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(300, 5, generator=g, dtype=torch.float64) * 3 + 100  # a large mean: the shift keeps accuracy
    perm = torch.tensor([3, 0, 4, 1, 2])
    b = torch.cat([a[:, perm] * 2 + torch.randn(300, 5, generator=g, dtype=torch.float64) * 0.1,
                   torch.full((300, 1), 5.0, dtype=torch.float64)], dim=1)  # a constant unit
    acc = CrossCorrelation(5, 6)
    for i in range(0, 300, 70):
        acc.update(a[i:i + 70], b[i:i + 70])
    corr, valid_a, valid_b = acc.result()
    expected = torch.corrcoef(torch.cat([a, b[:, :5]], dim=1).T)[:5, 5:]
    assert torch.allclose(corr[:, :5], expected, atol=1e-10)
    assert valid_a.all() and valid_b.tolist() == [True] * 5 + [False] and (corr[:, 5] == 0).all()
    inverse = torch.argsort(perm)  # unit u of a is unit inverse[u] of b
    assert hungarian_partners(corr).tolist() == inverse.tolist()
    assert best_partners(corr).tolist() == inverse.tolist()


def test_unit_measures_on_a_hand_made_case():
    # concepts: 0, 1 (category 0 "color"), 2 (category 1 "shape")
    category_of = torch.tensor([0, 0, 1])
    iou_a = torch.tensor([[0.5, 0.1, 0.0], [0.0, 0.2, 0.1], [0.0, 0.0, 0.3], [0.01, 0.0, 0.0]], dtype=torch.float64)
    iou_b = torch.tensor([[0.4, 0.1, 0.0], [0.3, 0.1, 0.0], [0.0, 0.0, 0.02], [0.0, 0.0, 0.5]], dtype=torch.float64)
    label_a, label_b = iou_a.argmax(1), iou_b.argmax(1)
    change = unit_drift_measures(iou_a, iou_b, label_a, label_b, category_of, 2, 0.04, torch.arange(4))
    # unit 0 keeps concept 0; unit 1 (concept 1) -> concept 0: same category; unit 2 (shape) -> not a detector;
    # unit 3 is not a detector in A (0.01) and its partner detects shape
    assert change.detector_a.tolist() == [True, True, True, False]
    assert change.kept_concept.tolist() == [True, False, False, False]
    assert change.kept_category.tolist() == [True, True, False, False]
    assert change.switch.tolist() == [[2, 0, 0], [0, 0, 1], [0, 1, 0]]  # rows color, shape, none
    s = change.summary()
    assert s["concept_retention"] == pytest.approx(1 / 3) and s["category_retention"] == pytest.approx(2 / 3)
    assert s["iou_change"] == pytest.approx(((0.4 - 0.5) + (0.1 - 0.2) + (0.02 - 0.3)) / 3)
    # an unmatched unit keeps nothing and counts as "none" in B
    partial = unit_drift_measures(iou_a, iou_b, label_a, label_b, category_of, 2, 0.04, torch.tensor([0, -1, 2, 3]))
    assert partial.kept_category.tolist() == [True, False, False, False] and partial.switch[0].tolist() == [1, 0, 1]


# --------------------------------------------------------------------------------------------- pairs


def test_pair_specs_load_both_models(base):
    pair = ib.load_model("shapes:cnn=>shapes:cnn.shape2color")
    assert isinstance(pair, PairModel) and pair.spec == "shapes:cnn=>shapes:cnn.shape2color"
    assert pair.reference.spec == "shapes:cnn" and pair.class_names == list(COLOR_NAMES)
    assert pair.default_dataset == "shapes" and not pair.training and not pair.reference.training
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(pair.reference(x), base(x)) and pair(x).shape == (2, 11)
    info = json.loads(json.dumps(pair.describe()))
    assert info["pair"]["from"]["spec"] == "shapes:cnn" and info["pair"]["to"]["spec"] == "shapes:cnn.shape2color"
    assert pair.weights["from"]["sha256"] == base.weights["sha256"] and len(pair.weights["sha256"]) == 64
    # the built-in transfer: fine-tuned from the cached shapes:cnn, reproducibly, to the colour task
    target = pair.weights["to"]
    assert target["recipe"]["recipe"] == "finetune" and target["recipe"]["target"] == "color"
    assert target["test_accuracy"] >= 0.95
    assert parse_pair("a:b => c:d") == ("a:b", "c:d")
    for bad in ("a:b=>", "a:b=>c:d=>e:f"):
        with pytest.raises(ComponentError, match="A=>B"):
            parse_pair(bad)
    with pytest.raises(ComponentError, match="expand it first"):
        ib.load_model("sanity:shapes:cnn")


def test_cascading_randomisation_stages_and_determinism(base):
    stages = cascade_stages(base)
    assert [s for s, _ in stages] == ["stem", "layer1", "layer2", "layer3", "head"]
    assert stages[-1][1] == ["fc"] and stages[3][1] == ["layer3.1", "layer3.2"]
    two = ib.load_model("shapes:cnn~cascade:2")
    three = ib.load_model("shapes:cnn~cascade:3")
    again = ib.load_model("shapes:cnn~cascade:2")
    s0, s2, s3 = base.net.state_dict(), two.net.state_dict(), three.net.state_dict()
    changed = {k for k in s0 if not torch.equal(s0[k], s2[k])}
    assert changed and all(k.startswith(("fc.", "layer3.")) for k in changed)
    assert any(k.startswith("fc.") for k in changed) and any(k.startswith("layer3.1") for k in changed)
    assert all(torch.equal(s2[k], again.net.state_dict()[k]) for k in s2)  # seeded
    # cascading: depth 3 keeps depth 2's random head and layer3 and re-initialises layer2 too
    assert all(torch.equal(s2[k], s3[k]) for k in s2 if k.startswith(("fc.", "layer3.")))
    assert not torch.equal(s0["layer2.1.weight"], s3["layer2.1.weight"])
    assert two.spec == "shapes:cnn~cascade:2" and two.weights["randomized"]["stages"] == ["head", "layer3"]
    assert sanity_pairs("shapes:cnn") == [f"shapes:cnn=>shapes:cnn~cascade:{k}" for k in range(1, 6)]
    assert expand_specs(["shapes:cnn", "sanity:shapes:cnn"])[1:3] == sanity_pairs("shapes:cnn")[:2]
    with pytest.raises(ComponentError, match=r"1\.\.5"):
        ib.load_model("shapes:cnn~cascade:6")


# --------------------------------------------------------------------------------------------- must-show tests


def test_model_against_itself_retention_one_cka_one_drift_zero(tmp_path):
    table = ib.run(methods=["gradient", "random"], models=["shapes:cnn=>shapes:cnn"],
                   metrics=["unit_drift", "explanation_drift"], limit=16, out=tmp_path / "run", progress=False)
    assert table.attrs["ok"]
    value = {(r.method, r.value_name): r.mean for r in table.itertuples()}
    for layer in ("stem", "layer1", "layer2", "layer3"):  # CKA per layer
        assert value[("-", f"{layer}.cka")] == pytest.approx(1.0, abs=1e-9)
    for matching in ("aligned", "hungarian", "best"):
        assert value[("-", f"layer3.{matching}.concept_retention")] == 1.0
        assert value[("-", f"layer3.{matching}.category_retention")] == 1.0
        assert value[("-", f"layer3.{matching}.iou_change")] == 0.0
        assert value[("-", f"layer3.{matching}.activation_correlation")] == pytest.approx(1.0, abs=1e-9)
    assert value[("-", "layer3.detectors_a")] == value[("-", "layer3.detectors_b")] > 0
    assert value[("-", "layer3.concept_overlap")] == 1.0
    for method in ("gradient", "random"):  # random: the same draws for A and B (the runner's batch seed)
        assert value[(method, "explanation_drift")] == pytest.approx(0.0, abs=1e-12)
        assert value[(method, "rank_correlation")] == pytest.approx(1.0, abs=1e-12)
        assert value[(method, "top10_overlap")] == 1.0 and value[(method, "prediction_agreement")] == 1.0
    drift = drift_table(table)
    assert list(drift["matching"]) == ["aligned", "hungarian", "best"] and set(drift["concept retention"]) == {"1.000"}
    artifacts = tmp_path / "run" / "artifacts" / "shapes_cnn__shapes_cnn__shapes__unit_drift"
    assert (artifacts / "layer3-switch.png").is_file() and (artifacts / "layer3-units.csv").is_file()
    switch = (artifacts / "layer3-switch.csv").read_text().splitlines()
    assert switch[0] == "matching,from \\ to,color,texture,shape,none"


class Rotate(nn.Module):
    """Multiply the units of a B x U x h x w map by an orthogonal U x U matrix."""

    def __init__(self, q: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("q", q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("vu,buhw->bvhw", self.q, x)


def permuted_copy(model, perm):
    """The same function with layer3's units permuted (conv rows, batch norm and the classifier's columns)."""
    b = copy.deepcopy(model)
    conv, bn = b.net.layer3[1], b.net.layer3[2]
    with torch.no_grad():
        conv.weight.copy_(conv.weight[perm])
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.copy_(t[perm])
        b.net.fc.weight.copy_(b.net.fc.weight[:, perm])
    return b.eval()


def rotated_copy(model, q):
    """The same function with layer3's output rotated by ``q`` (the classifier gets ``W q^T``: the pooling is
    linear), as the random-rotation experiment of Bau et al. 2017."""
    b = copy.deepcopy(model)
    b.net.layer3 = nn.Sequential(*b.net.layer3, Rotate(q))
    with torch.no_grad():
        b.net.fc.weight.copy_(b.net.fc.weight @ q.T)
    return b.eval()


def test_permuted_units_drift_unaligned_but_match_back(base, probe):
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    other = permuted_copy(base, perm)
    x = images(probe)
    assert torch.allclose(base(x), other(x), atol=1e-4)  # the same function
    result = UnitDrift().evaluate(PairModel(base, other), probe, ctx())
    assert result["layer3.cka"] == pytest.approx(1.0, abs=1e-9)
    assert result["layer3.detectors_a"] == result["layer3.detectors_b"]
    # unit k is another unit now: retention at chance level (a few concepts are detected by many units)
    assert result["layer3.aligned.concept_retention"] < 0.3
    assert result["layer3.aligned.activation_correlation"] < 0.5
    for matching in ("hungarian", "best"):  # matching by activation correlation undoes the permutation
        assert result[f"layer3.{matching}.concept_retention"] == 1.0
        assert result[f"layer3.{matching}.iou_profile_rho"] == pytest.approx(1.0, abs=1e-9)
        assert result[f"layer3.{matching}.activation_correlation"] == pytest.approx(1.0, abs=1e-9)


def test_random_rotation_keeps_cka_and_lowers_detectors(base, probe):
    q, _ = torch.linalg.qr(torch.randn(128, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    other = rotated_copy(base, q.float())
    x = images(probe)
    assert torch.allclose(base(x), other(x), atol=1e-4)
    result = UnitDrift(matchings="aligned").evaluate(PairModel(base, other), probe, ctx())
    assert result["layer3.cka"] == pytest.approx(1.0, abs=1e-6)
    assert result["layer3.detectors_b"] < result["layer3.detectors_a"]
    assert result["layer3.aligned.concept_retention"] < 0.5


def test_metrics_need_a_pair(base, probe):
    with pytest.raises(NotApplicable, match="A=>B"):
        UnitDrift().evaluate(base, probe, ctx())
    with pytest.raises(ComponentError, match="matchings"):
        UnitDrift(matchings="nearest").evaluate(ib.load_model("shapes:cnn=>shapes:cnn"), probe, ctx())


# --------------------------------------------------------------------------------------------- default pair + sanity


def test_finetuned_pair_switches_shape_units_to_colour(probe, tmp_path):
    pair = ib.load_model("shapes:cnn=>shapes:cnn.shape2color")
    result = UnitDrift().evaluate(pair, probe, ctx(tmp_path))
    # shapes:cnn's layer3 detects shapes; fine-tuned to colour, its units turn to colour (Bau et al. 2017)
    assert result["layer3.switch.shape->color"] > result["layer3.switch.shape->shape"]
    assert result["layer3.shape.detectors_change"] < 0 < result["layer3.color.detectors_change"]
    assert 0 <= result["layer3.aligned.concept_retention"] < 0.5 and 0 < result["layer3.cka"] < 0.9
    assert all(math.isfinite(v) for v in result.values())
    assert (tmp_path / "layer3-switch.png").stat().st_size > 0 and (tmp_path / "from" / "layer3-tally.csv").is_file()


def test_randomisation_check_fails_model_independent_maps(tmp_path):
    table = ib.run(methods=["gradient", "center", "random"], models=["shapes:cnn=>shapes:cnn~cascade:5"],
                   metrics=["explanation_drift"], limit=8, out=tmp_path / "run", progress=False)
    value = {(r.method, r.value_name): r.mean for r in table.itertuples()}
    assert value[("center", "sanity_pass")] == 0.0 and value[("center", "rank_correlation")] == 1.0
    assert value[("random", "sanity_pass")] == 0.0  # the same noise for both models: a model-independent map
    assert value[("gradient", "sanity_pass")] == 1.0 and value[("gradient", "rank_correlation")] < 0.5
    assert value[("gradient", "randomized_stages")] == value[("gradient", "stages")] == 5
    sanity = sanity_table(table)
    assert sorted(set(sanity["measure"])) == ["SSIM", "Spearman ρ", "Spearman ρ, absolute maps"]
    rho_rows = sanity[sanity["measure"] == "Spearman ρ"]
    verdict = dict(zip(rho_rows["method"], rho_rows["randomisation test"]))
    assert verdict == {"gradient": "pass", "center": "FAIL", "random": "FAIL"}
    assert value[("center", "ssim")] == 1.0 and value[("center", "rank_correlation_abs")] == 1.0  # one map, twice
    assert value[("gradient", "class_from_a")] == 1.0  # a cascade keeps the label space: one class, from A


def test_explanation_drift_needs_the_method_and_a_shared_label_space_for_same_targets():
    pair = ib.load_model("shapes:cnn=>shapes:cnn.shape2color")
    x = torch.rand(2, 3, 64, 64)
    batch = ib.Batch(ids=["a", "b"], images=x, targets=pair(x).argmax(1), samples=[{}, {}])
    with pytest.raises(ComponentError, match="batch.method"):
        ExplanationDrift().update(pair, batch, torch.zeros(2, 64, 64))
    batch.method = ib.load_method("gradient")
    with pytest.raises(ComponentError, match="label space"):
        ExplanationDrift(reference_target="same").update(pair, batch, torch.zeros(2, 64, 64))


# --------------------------------------------------------------------------------------------- recipes


def test_finetune_is_deterministic_per_seed(base):
    from interpbench.datasets.shapes import ShapesWorld

    train, test = ShapesWorld("train", 64, n=128, task="color"), ShapesWorld("test", 64, n=32, task="color")
    kwargs = dict(epochs=1, n_train=128, n_test=32, batch_size=32, show_progress=False)
    a, acc_a, rec = finetune_model(base, train, test, seed=3, **kwargs)
    b, acc_b, _ = finetune_model(base, train, test, seed=3, **kwargs)
    c, _, _ = finetune_model(base, train, test, seed=4, **kwargs)
    sa, sb, sc = a.net.state_dict(), b.net.state_dict(), c.net.state_dict()
    assert acc_a == acc_b and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["fc.weight"], sc["fc.weight"])
    assert sa["fc.weight"].shape == (11, 128) and a.class_names[0] == "black"  # a new head for the colour task
    assert not torch.equal(sa["stem.0.weight"], base.net.state_dict()["stem.0.weight"])  # every layer trained
    assert rec["seed"] == 3 and rec["source"]["weights_sha256"] == base.weights["sha256"] and rec["new_head"] == "fc"


def test_global_magnitude_masks_by_hand():
    weights = {"a": torch.tensor([[3.0, -1.0], [0.5, 2.0]]), "b": torch.tensor([-4.0, 0.1, 1.0])}
    masks = global_magnitude_masks(weights, 3 / 7)  # the 3 smallest |w| of 7: 0.1, 0.5, then -1 before 1 (order)
    assert masks["a"].tolist() == [[True, False], [False, True]] and masks["b"].tolist() == [True, False, True]
    with pytest.raises(ComponentError, match="sparsity"):
        global_magnitude_masks(weights, 1.0)


def test_prune_reaches_the_sparsity_and_keeps_zeros_while_finetuning(tmp_path):
    result = prune("shapes:cnn", 0.3, out=tmp_path / "pruned.pt", finetune_epochs=1, n_train=128, n_test=64,
                   batch_size=32, show_progress=False)
    loaded = ib.load_model(result.spec)
    weights = prunable_weights(loaded.net)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == round(0.3 * total) and result.record["achieved_sparsity"] == pytest.approx(zeros / total)
    record = json.loads(result.record_path.read_text())
    assert record["recipe"] == "prune" and record["spec"] == result.spec and 0 <= record["final_accuracy"] <= 1
    assert result.spec == f"shapes:cnn@{(tmp_path / 'pruned.pt').resolve()}"


def test_distilled_student_beats_chance(tmp_path):
    result = distil("shapes:cnn.shape2color", "shapes:cnn-small.color@random", out=tmp_path / "student.pt",
                    n_train=512, epochs=2, lr=1e-2, n_test=128, show_progress=False)
    chance = 1 / 11
    assert result.record["final_accuracy"] > 3 * chance
    assert result.record["student"]["parameters"] < result.record["teacher"]["parameters"] / 2
    assert ib.load_model(result.spec).spec.startswith("shapes:cnn-small.color@")
    with pytest.raises(ComponentError, match="label space"):
        distil("shapes:cnn", "shapes:cnn-small.color@random", out=tmp_path / "x.pt", epochs=0)


def test_soft_target_loss_is_hintons():
    s = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)
    t = torch.tensor([[2.0, 0.5, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    temperature = 2.0
    p = torch.softmax(t / temperature, 1)
    q = torch.softmax(s / temperature, 1)
    kl = float((p * (p.log() - q.log())).sum())
    assert float(soft_target_loss(s, t, y, temperature, 1.0)) == pytest.approx(kl * temperature**2)
    ce = float(torch.nn.functional.cross_entropy(s, y))
    assert float(soft_target_loss(s, t, y, temperature, 0.25)) == pytest.approx(0.25 * kl * 4 + 0.75 * ce)


def test_pair_metrics_pass_the_conformance_kit_on_a_pair():
    from interpbench.testing import check_metric

    pair = ib.load_model("shapes:cnn=>shapes:cnn~cascade:1")
    for name in ("unit_drift", "explanation_drift"):
        report = check_metric(name, model=pair)
        assert report.ok, report


def test_cka_per_layer_sees_where_the_cascade_reached(base, probe):
    result = UnitDrift(matchings="aligned").evaluate(ib.load_model("shapes:cnn=>shapes:cnn~cascade:2"), probe, ctx())
    for layer in ("stem", "layer1", "layer2"):  # below the re-initialised stages nothing changed
        assert result[f"{layer}.cka"] == pytest.approx(1.0, abs=1e-9)
    assert result["layer3.cka"] < 0.9 and result["cka_n"] == PROBE_N
    assert result["layer3.detectors_b"] < result["layer3.detectors_a"]
