"""The sanity check and CKA mean what their papers mean.

- Model randomisation (Adebayo et al., NeurIPS 2018): both models explain the same class of each image, chosen
  once from the original model, even where re-initialising the head changes the predicted class; the paper's three
  measures (Spearman rank correlation of the maps and of their absolute values, SSIM).
- CKA: the unbiased HSIC is Song et al. (JMLR 2012)'s U-statistic; the default (debiased, Nguyen, Raghu &
  Kornblith, ICLR 2021) reads near 0 on independent features where the plug-in one reads near 1; the Gram
  matrices built block by block (and merged from parts) are the full ones; every CKA row says on how many images.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import interpbench as ib
from interpbench.core.base import Batch, ComponentError, Method, RunContext
from interpbench.engine.feeding import collate
from interpbench.engine.runner import LimitedDataset
from interpbench.metrics.drift import (
    ExplanationDrift,
    UnitDrift,
    cka_grams,
    cka_table,
    drift_table,
)
from interpbench.ops.drift import (
    GramAccumulator,
    cka_from_grams,
    gram,
    hsic_biased,
    hsic_unbiased,
    linear_cka,
    map_rank_correlation,
    map_ssim,
    permuted_cka,
)

CPU = torch.device("cpu")
HEAD_PAIR = "shapes:cnn=>shapes:cnn~cascade:1"  # the classifier head re-initialised


@pytest.fixture(scope="module")
def shapes16():
    dataset = ib.load_dataset("shapes", split="test", size=(64, 64))
    return collate([dataset[i] for i in range(16)])


@pytest.fixture(scope="module")
def head_pair():
    return ib.load_model(HEAD_PAIR)


@pytest.fixture(scope="module")
def cascade2():
    return ib.load_model("shapes:cnn=>shapes:cnn~cascade:2")


# --------------------------------------------------------------------------------------------- sanity check


class ClassPattern(Method):
    """A model-independent map of the class: a fixed pattern per class. Two models explaining the same class
    give the same map (rank correlation 1); two classes give two different patterns."""

    name = "class_pattern"
    version = "1"

    def explain(self, model, images, targets):
        patterns = torch.randn(64, *images.shape[-2:], generator=torch.Generator().manual_seed(3))
        return patterns[targets.cpu()].to(images.device)


def test_head_reinit_changes_the_class_yet_both_models_explain_the_class_chosen_from_a(head_pair, shapes16):
    pair, data = head_pair, shapes16
    x = data["images"]
    with torch.no_grad():
        class_a, class_b = pair.reference(x).argmax(1), pair(x).argmax(1)
    assert (class_a != class_b).float().mean() > 0.5  # the random head predicts other classes on most images
    assert torch.equal(pair.choose_targets(x), class_a)  # the runner's target for a pair: A's prediction
    method = ClassPattern()
    batch = Batch(ids=data["ids"], images=x, targets=pair.choose_targets(x), samples=data["samples"],
                  labels=data.get("labels"), method=method, seed=0)
    metric = ExplanationDrift()
    metric.update(pair, batch, method.explain(pair, x, batch.targets))
    result = metric.compute()
    # the same class on both sides: identical maps, whatever the random head predicts
    assert result["rank_correlation"] == 1.0 and result["ssim"] == pytest.approx(1.0)
    assert result["class_from_a"] == 1.0 and result["prediction_agreement"] < 0.5
    # B's own class (what the runner used to hand over) is refused: the maps would be of two classes
    wrong = Batch(ids=data["ids"], images=x, targets=class_b, samples=data["samples"], labels=None, method=method,
                  seed=0)
    with pytest.raises(ComponentError, match="chosen from A"):
        ExplanationDrift().update(pair, wrong, method.explain(pair, x, class_b))


def test_run_on_a_head_reinit_pair_compares_gradcam_maps_of_a_class(head_pair, shapes16, tmp_path):
    table = ib.run(methods=["gradcam"], models=[HEAD_PAIR], metrics=["explanation_drift"], limit=8,
                   batch_size=4, out=tmp_path / "run", progress=False)
    value = {r.value_name: r.mean for r in table.itertuples()}
    pair, x = head_pair, shapes16["images"][:8]
    gradcam = ib.load_method("gradcam")
    with torch.no_grad():
        class_a, class_b = pair.reference(x).argmax(1), pair(x).argmax(1)
    maps_a = gradcam.explain(pair.reference, x, class_a)
    same_class = map_rank_correlation(maps_a, gradcam.explain(pair, x, class_a))
    own_class = map_rank_correlation(maps_a, gradcam.explain(pair, x, class_b))  # the comparison of old
    assert value["rank_correlation"] == pytest.approx(float(same_class.mean()), abs=1e-6)
    assert abs(float(same_class.mean()) - float(own_class.mean())) > 0.1  # the two protocols differ here
    assert value["rank_correlation_abs"] == pytest.approx(
        float(map_rank_correlation(maps_a.abs(), gradcam.explain(pair, x, class_a).abs()).mean()), abs=1e-6)
    assert value["ssim"] == pytest.approx(float(map_ssim(maps_a, gradcam.explain(pair, x, class_a)).mean()),
                                          abs=1e-6)
    assert value["class_from_a"] == 1.0


def test_pairs_of_two_label_spaces_explain_each_its_own_class(shapes16):
    pair = ib.load_model("shapes:cnn=>shapes:cnn.shape2color")
    x = shapes16["images"][:8]
    with torch.no_grad():
        assert torch.equal(pair.choose_targets(x), pair(x).argmax(1))  # B's colour, not A's shape
    assert pair.describe()["pair"]["explained_class"].startswith("each model its own")
    method = ClassPattern()
    targets = pair.choose_targets(x)
    batch = Batch(ids=[str(i) for i in range(8)], images=x, targets=targets, samples=[{}] * 8, method=method, seed=0)
    metric = ExplanationDrift()
    metric.update(pair, batch, method.explain(pair, x, targets))
    result = metric.compute()
    assert result["class_from_a"] == 0.0 and "prediction_agreement" not in result
    with torch.no_grad():
        expected = map_rank_correlation(method.explain(pair.reference, x, pair.reference(x).argmax(1)),
                                        method.explain(pair, x, targets))
    assert result["rank_correlation"] == pytest.approx(float(expected.mean()), abs=1e-12)


def test_map_ssim_known_values():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 16, 16, generator=g)
    assert map_ssim(a, a).tolist() == pytest.approx([1.0] * 3)
    assert map_ssim(a, 5 * a - 2).tolist() == pytest.approx([1.0] * 3)  # each map scaled to [0, 1] first
    flat = torch.zeros(1, 16, 16)
    assert map_ssim(flat, flat).item() == pytest.approx(1.0)  # two constant maps: nothing to tell apart
    # a constant map against a varying one: the structure term is 0, so SSIM = l * c * s is near 0
    assert abs(map_ssim(flat, a[:1]).item()) < 0.1
    assert map_ssim(a[:1], 1 - a[:1]).item() < -0.9  # the negated map: the structure term is -1


# --------------------------------------------------------------------------------------------- CKA


def test_unbiased_hsic_is_the_u_statistic_of_song_et_al():
    g = torch.Generator().manual_seed(1)
    n = 6
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = x[:, :2] + torch.randn(n, 2, generator=g, dtype=torch.float64)
    k, l = gram(x), gram(y)
    # HSIC = E[k_ij l_ij] + E[k_ij] E[l_qr] - 2 E[k_ij l_iq], averaged over all ordered tuples of 4 distinct examples
    terms = [k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
             for i, j, q, r in itertools.permutations(range(n), 4)]
    assert float(hsic_unbiased(k, l)) == pytest.approx(float(sum(terms) / len(terms)), rel=1e-10)
    # the plug-in HSIC: tr(K H L H) / (n - 1)^2
    h = torch.eye(n, dtype=torch.float64) - 1 / n
    assert float(hsic_biased(k, l)) == pytest.approx(float(torch.trace(k @ h @ l @ h)) / (n - 1) ** 2, rel=1e-12)


def test_default_cka_of_independent_features_is_near_zero_and_of_a_rotated_copy_near_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 2048, generator=g, dtype=torch.float64)
    y = torch.randn(128, 2048, generator=g, dtype=torch.float64)
    assert abs(linear_cka(x, y)) < 0.05
    assert linear_cka(x, y, debiased=False) > 0.85  # the plug-in estimate's bias with p >> n
    rotated = x
    for _ in range(3):  # three random Householder reflections: an orthogonal transform of the 2048 features
        v = torch.randn(2048, 1, generator=g, dtype=torch.float64)
        rotated = rotated - 2 * (rotated @ v) @ v.T / (v.T @ v)
    assert not torch.allclose(rotated, x) and torch.allclose(rotated.norm(dim=1), x.norm(dim=1))
    assert linear_cka(x, 3.0 * rotated) > 0.95
    # the noise floor: the same features with the images shuffled read as independent ones
    k, l = gram(x), gram(x + 0.5 * y)
    assert cka_from_grams(k, l) > 0.7
    assert abs(permuted_cka(k, l, permutations=5)) < 0.05
    assert permuted_cka(k, l, permutations=5, debiased=False) > 0.85


def test_gram_blocks_and_merged_parts_equal_the_full_gram():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 7, generator=g, dtype=torch.float64)
    edges = [(0, 4), (4, 8), (8, 10)]
    pairs = [(i, j) for i in range(3) for j in range(i + 1)]
    whole, part0, part1 = GramAccumulator(10), GramAccumulator(10), GramAccumulator(10)
    for m, (i, j) in enumerate(pairs):
        (lo_i, hi_i), (lo_j, hi_j) = edges[i], edges[j]
        for acc in (whole, part0 if m % 2 == 0 else part1):  # two "ranks", each with its own blocks
            acc.add(slice(lo_i, hi_i), x[lo_i:hi_i], slice(lo_j, hi_j), x[lo_j:hi_j])
    assert torch.allclose(whole.result(), x @ x.T, atol=1e-12)
    with pytest.raises(ComponentError, match="never"):
        part0.result()
    part0.merge(part1)
    assert torch.allclose(part0.result(), x @ x.T, atol=1e-12)
    with pytest.raises(ComponentError, match="same block"):
        part0.merge(part1)


def test_cka_grams_do_not_depend_on_the_memory_budget_or_the_layer_list(cascade2, shapes16):
    from interpbench.metrics.dissection import layer_activations

    pair, x = cascade2, shapes16["images"][:10]
    layers = [("layer2", "layer2"), ("layer3", "layer3")]
    big_a, big_b = cka_grams(pair.reference, pair, x, layers, device=CPU, cka_mb=512)  # one block of 10
    small_a, small_b = cka_grams(pair.reference, pair, x, layers[1:], device=CPU, cka_mb=1e-6)  # blocks of 4
    with torch.no_grad():
        direct = layer_activations(pair, x, ["layer3"])["layer3"].flatten(1)
    assert torch.allclose(small_b["layer3"], gram(direct), rtol=1e-10, atol=1e-8)
    assert torch.allclose(big_b["layer3"], small_b["layer3"], rtol=1e-10, atol=1e-8)
    assert torch.allclose(big_a["layer3"], small_a["layer3"], rtol=1e-10, atol=1e-8)


def test_every_cka_row_says_on_how_many_images(cascade2):
    probe = LimitedDataset(ib.load_dataset("shapes", size=(64, 64)), 16)
    ctx = RunContext(device=CPU, batch_size=8, seed=0, out_dir=None)
    result = UnitDrift(matchings="aligned", cka_images=12).evaluate(cascade2, probe, ctx)
    assert result["cka_n"] == 12 and result["n"] == 16
    for layer in ("stem", "layer1", "layer2"):  # below the re-initialised stages nothing changed
        assert result[f"{layer}.cka"] == pytest.approx(1.0, abs=1e-9)
        assert abs(result[f"{layer}.cka_floor"]) < result[f"{layer}.cka_biased_floor"]
    assert result["layer3.cka"] < 0.9
    import pandas as pd

    rows = [{"model": HEAD_PAIR, "dataset": "shapes", "method": "-", "metric": "unit_drift", "status": "done",
             "value_name": k, "mean": v} for k, v in result.items()]
    table = pd.DataFrame(rows)
    ckas = cka_table(table)
    assert len(ckas) == 4 and set(ckas["images"]) == {"12"}  # stem, layer1..3: every row with its n
    assert set(drift_table(table)["CKA images"]) == {"12"}
