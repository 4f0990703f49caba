"""Attacks (FGSM, PGD-Linf, CW-L2), the adversarial-detection metric and the consistency of units under attack.

The attacks are checked against known answers on linear models, against torchattacks (a test-only dependency) on
``shapes:cnn``, and for the epsilon ball on every image; the detector's maths (logistic regression, AUROC, TPR
at 5% FPR, weighted bootstrap) against scikit-learn (test-only) and hand-computed cases; the cross-validation
for leaks between an image and its adversarial copy; the metrics end to end on the shapes world.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import interpbench as ib
from interpbench.core.base import Batch, ComponentError, Model, RunContext
from interpbench.datasets.shapes import ShapesWorld
from interpbench.metrics import adversarial as adv
from interpbench.metrics.adversarial import AdversarialDetection
from interpbench.metrics.adversarial_consistency import AdversarialConsistency
from interpbench.ops.attack_specs import parse_attacks
from interpbench.ops.attacks import carlini_wagner_l2, fgsm, pgd_linf
from interpbench.ops.detection import (
    cross_validated_scores,
    fit_logistic_regression,
    image_folds,
)
from interpbench.ops.detection_features import (
    logit_features,
    map_dispersion_features,
    map_grid_features,
)
from interpbench.ops.stats import auroc, bootstrap_auroc, bootstrap_tpr, tpr_at_fpr
from interpbench.ops.unit_consistency import consistency_measures

# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads thrash on these small batches (measured up to
    40x slower); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes_model() -> Model:
    return ib.load_model("shapes:cnn")


@pytest.fixture(scope="module")
def shapes_images(shapes_model):
    """48 test images that shapes:cnn classifies correctly, and their labels."""
    images, labels = ShapesWorld("test", 64, n=64, task="shape").tensors(0, 64)
    with torch.no_grad():
        ok = shapes_model(images).argmax(1) == labels
    return images[ok][:48], labels[ok][:48]


class Linear(nn.Module):
    """Logits ``W x + b`` of flattened ``1 x 2 x 2`` images (an affine 2- or 3-class model)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(dim=1)


# --------------------------------------------------------------------------------------------- attacks: known answers


def test_fgsm_on_a_linear_model_moves_every_pixel_by_eps_against_the_true_class():
    # two classes: the CE gradient wrt x is (p1 - 1) w0 + p1 w1 ... = (1 - p0)(w1 - w0) for true class 0, so
    # FGSM moves each pixel by eps * sign(w1 - w0), clipped to [0, 1]
    w = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 2.5, 0.0]])
    model = Linear(w, torch.zeros(2))
    x = torch.tensor([[[[0.5, 0.99], [0.02, 0.3]]]])
    out = fgsm(model, x, torch.tensor([0]), eps=0.1)
    expected = torch.tensor([[[[0.4, 1.0], [0.12, 0.3]]]])  # signs of w1 - w0: -, +, +, 0 (zero gradient: unchanged)
    assert torch.allclose(out.images, expected, atol=1e-7)
    logits = model(expected)
    assert bool(out.success[0]) == bool(logits[0, 1] > logits[0, 0])


def test_pgd_without_random_start_reaches_the_box_corner_of_a_linear_model():
    # the loss of a linear model increases along sign(w1 - w0): 10 steps of eps/4 reach the corner x + eps*sign
    w = torch.tensor([[2.0, -1.0, 1.0, -3.0], [0.0, 0.0, 0.0, 0.0]])
    model = Linear(w, torch.tensor([0.0, 0.3]))
    x = torch.full((1, 1, 2, 2), 0.5)
    out = pgd_linf(model, x, torch.tensor([0]), eps=0.05, random_start=False, steps=10)
    assert torch.allclose(out.images, x + 0.05 * torch.sign(w[1] - w[0]).view(1, 1, 2, 2), atol=1e-7)


def test_carlini_wagner_finds_the_minimal_l2_perturbation_of_a_linear_model():
    # margin m(x) = (w0 - w1).x + (b0 - b1); the nearest point of the other class is at L2 distance m / |w0 - w1|
    torch.manual_seed(0)
    w = torch.randn(2, 4)
    bias = -(w @ torch.full((4,), 0.5))  # the classes tie at the grey image
    model = Linear(w, bias)
    x = 0.5 + 0.1 * (2 * torch.rand(6, 1, 2, 2) - 1)  # near grey: the nearest boundary point lies inside the box
    labels = model(x).argmax(1)
    direction = w[labels] - w[1 - labels]
    minimal = ((x.flatten(1) * direction).sum(1) + bias[labels] - bias[1 - labels]) / direction.norm(dim=1)
    out = carlini_wagner_l2(model, x, labels, binary_search_steps=9, steps=1000)
    distance = (out.images - x).flatten(1).norm(dim=1)
    assert bool(out.success.all())
    assert bool((distance >= minimal - 1e-4).all())  # a success lies beyond the decision boundary
    assert bool((distance <= minimal * 1.05 + 1e-3).all()), (distance, minimal)
    assert bool((model(out.images).argmax(1) != labels).all())


def test_carlini_wagner_returns_failed_images_unchanged():
    # c far too small and one search step: no success, the inputs come back as they were
    w = torch.tensor([[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    model = Linear(w, torch.zeros(2))
    x = torch.full((2, 1, 2, 2), 0.8)
    out = carlini_wagner_l2(model, x, torch.tensor([0, 0]), initial_const=1e-6, binary_search_steps=1, steps=20)
    assert not bool(out.success.any()) and torch.equal(out.images, x)


def test_attack_inputs_are_validated():
    model = Linear(torch.zeros(2, 4), torch.zeros(2))
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(ComponentError, match=r"\[0, 1\]"):
        fgsm(model, x * 255, torch.tensor([0, 1]), 0.1)
    with pytest.raises(ComponentError, match="one per image"):
        pgd_linf(model, x, torch.tensor([0]), 0.1)
    with pytest.raises(ComponentError, match="eps"):
        pgd_linf(model, x, torch.tensor([0, 1]), -1.0)
    with pytest.raises(ComponentError, match="generators"):
        pgd_linf(model, x, torch.tensor([0, 1]), 0.1, generator=[torch.Generator()])


def test_per_image_generators_make_an_attack_independent_of_its_batch(shapes_model, shapes_images):
    images, labels = shapes_images[0][:4], shapes_images[1][:4]
    spec = parse_attacks(["pgd4"], AdversarialDetection.defaults, "test")[0]
    ids = ["a", "b", "c", "d"]
    together = adv.run_attack(spec, shapes_model, images, labels, ids).images
    alone = adv.run_attack(spec, shapes_model, images[2:3], labels[2:3], ids[2:3]).images
    assert torch.allclose(together[2:3], alone, atol=1e-5)
    other = adv.run_attack(spec, shapes_model, images[2:3], labels[2:3], ["z"]).images
    assert not torch.allclose(other, alone, atol=1e-4)  # another id: another random start


# --------------------------------------------------------------------------------------------- attacks on shapes:cnn


def test_success_rises_with_epsilon_and_every_image_stays_in_the_ball(shapes_model, shapes_images):
    images, labels = shapes_images[0][:24], shapes_images[1][:24]
    rates = {"fgsm": [], "pgd": []}
    torch.manual_seed(0)
    for eps in (1 / 255, 2 / 255, 4 / 255, 8 / 255):
        for name, result in (("fgsm", fgsm(shapes_model, images, labels, eps)),
                             ("pgd", pgd_linf(shapes_model, images, labels, eps, steps=5))):
            assert bool((linf(result.images, images) <= eps + 1e-6).all()), name  # every image, float32 rounding
            assert float(result.images.min()) >= 0.0 and float(result.images.max()) <= 1.0
            with torch.no_grad():
                assert torch.equal(result.success, shapes_model(result.images).argmax(1) != labels)
            rates[name].append(float(result.success.float().mean()))
    for name, r in rates.items():
        assert all(a <= b for a, b in zip(r, r[1:])), (name, r)
        assert r[-1] - r[0] >= 0.5, (name, r)
    assert all(p >= f for p, f in zip(rates["pgd"], rates["fgsm"])), rates  # the iterative attack is stronger


def test_fgsm_and_pgd_agree_with_torchattacks(shapes_model, shapes_images):
    import torchattacks

    images, labels = shapes_images[0][:32], shapes_images[1][:32]
    eps = 4 / 255
    ours = fgsm(shapes_model, images, labels, eps)
    theirs = torchattacks.FGSM(shapes_model, eps=eps)(images, labels)
    assert float(linf(ours.images, theirs).max()) < 1e-6  # the same formula: the same images
    for eps in (2 / 255, 3 / 255):  # below saturation (about 40% and 80% success)
        torch.manual_seed(1)
        ours = pgd_linf(shapes_model, images, labels, eps, step_size=eps / 4, steps=5)
        theirs = torchattacks.PGD(shapes_model, eps=eps, alpha=eps / 4, steps=5, random_start=True)(images, labels)
        with torch.no_grad():
            theirs_rate = float((shapes_model(theirs).argmax(1) != labels).float().mean())
        # different random starts: within 2 images of 32
        ours_rate = float(ours.success.float().mean())
        assert abs(ours_rate - theirs_rate) <= 0.07, (eps, ours_rate, theirs_rate)


def test_carlini_wagner_agrees_with_torchattacks(shapes_model, shapes_images):
    import torchattacks

    class PaperCW(torchattacks.CW):
        """torchattacks' CW with the paper's f_6: torchattacks takes the logits as max(onehot * logits) and the
        runner-up as max((1 - onehot) * logits), which floors both at 0 and changes the loss wherever they are
        negative (the more confident the model, the more often)."""

        def f(self, outputs, labels):
            real = outputs.gather(1, labels.view(-1, 1)).squeeze(1)
            other = outputs.masked_fill(torch.nn.functional.one_hot(labels, outputs.shape[1]).bool(), -torch.inf)
            return torch.clamp(real - other.amax(dim=1), min=-self.kappa)

    images, labels = shapes_images[0][:16], shapes_images[1][:16]
    # torchattacks' CW has no binary search: ours with one search step at the same c, lr and steps
    for c in (0.05, 0.1, 0.2):
        ours = carlini_wagner_l2(shapes_model, images, labels, initial_const=c, binary_search_steps=1, steps=20,
                                 abort_early=False)
        theirs = PaperCW(shapes_model, c=c, kappa=0, steps=20, lr=0.01)(images, labels)
        with torch.no_grad():
            theirs_ok = shapes_model(theirs).argmax(1) != labels
        assert abs(float(ours.success.float().mean()) - float(theirs_ok.float().mean())) <= 0.07, c
        if bool(ours.success.any()) and bool(theirs_ok.any()):
            ours_l2 = (ours.images - images).flatten(1).norm(dim=1)[ours.success].mean()
            theirs_l2 = (theirs - images).flatten(1).norm(dim=1)[theirs_ok].mean()
            assert abs(float(ours_l2 / theirs_l2) - 1) < 0.3, c


# --------------------------------------------------------------------------------------------- features


def test_grid_features_are_the_shifted_maps_mass_per_cell():
    maps = torch.zeros(2, 4, 4)
    maps[0, :2, :2] = 3.0  # all mass in the top-left quadrant
    maps[1] = 7.0  # flat: uniform
    grid = map_grid_features(maps, 2)
    assert torch.allclose(grid[0], torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    assert torch.allclose(grid[1], torch.full((4,), 0.25, dtype=torch.float64))
    shifted = map_grid_features(maps - 5.0, 2)  # a constant offset changes nothing
    assert torch.allclose(shifted, grid)


def test_dispersion_features_by_hand():
    values = torch.arange(100, dtype=torch.float32).view(1, 10, 10)  # 0..99
    f = map_dispersion_features(values)[0]
    iqr = np.percentile(np.arange(100), 75) - np.percentile(np.arange(100), 25)  # 49.5
    assert f[0].item() == pytest.approx(math.log(iqr))
    assert f[1].item() == pytest.approx(math.log(np.arange(100).std()))
    assert f[2].item() == pytest.approx(iqr / 99)
    p = np.arange(100) / np.arange(100).sum()
    assert f[3].item() == pytest.approx(-(p[1:] * np.log(p[1:])).sum() / math.log(100))
    assert f[4].item() == pytest.approx(np.arange(90, 100).sum() / np.arange(100).sum())
    flat = map_dispersion_features(torch.full((1, 10, 10), 2.0))[0]
    assert flat[2].item() == 0.0 and flat[3].item() == pytest.approx(1.0) and flat[4].item() == pytest.approx(0.1)


def test_logit_features_by_hand():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    f = logit_features(z)[0]
    p = torch.softmax(z.double(), 1)[0]
    assert f[0].item() == pytest.approx(float(p.max()))
    assert f[1].item() == pytest.approx(float(-(p * p.log()).sum()))
    assert f[2].item() == pytest.approx(2.0) and f[3].item() == pytest.approx(2.0)
    assert f[4].item() == pytest.approx(math.log(math.exp(2) + 1 + math.exp(-1)))
    assert f[5].item() == pytest.approx(float(np.std([2.0, 0.0, -1.0])))


# --------------------------------------------------------------------------------------------- detector maths


def test_logistic_regression_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12))
    y = (x[:, 0] - x[:, 3] + 0.7 * rng.normal(size=300) > 0).astype(float)
    for C in (0.1, 1.0, 10.0):
        w, b = fit_logistic_regression(torch.tensor(x), torch.tensor(y), C)
        ref = LogisticRegression(C=C, tol=1e-12, max_iter=10000).fit(x, y)
        assert np.abs(w.numpy() - ref.coef_[0]).max() < 1e-5 and abs(float(b) - ref.intercept_[0]) < 1e-5
    separable = np.r_[rng.normal(size=(40, 2)) - 4, rng.normal(size=(40, 2)) + 4]
    labels = np.r_[np.zeros(40), np.ones(40)]
    w, b = fit_logistic_regression(torch.tensor(separable), torch.tensor(labels), 1.0)
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=10000).fit(separable, labels)
    assert np.abs(w.numpy() - ref.coef_[0]).max() < 1e-5  # finite: the L2 penalty bounds w on separable data


def test_auroc_and_tpr_at_5_percent_fpr_by_hand_and_against_scikit_learn():
    from sklearn.metrics import roc_auc_score, roc_curve

    clean, attacked = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0.9, 0.4, 0.7])
    # pairs (a > c) + ties/2: 0.9 beats 4; 0.4 beats 2, ties 1; 0.7 beats 3 -> (4 + 2.5 + 3) / 12
    assert auroc(clean, attacked) == pytest.approx(9.5 / 12)
    assert tpr_at_fpr(clean, attacked, 0.05) == pytest.approx(1 / 3)  # no false positive allowed: above 0.8
    assert tpr_at_fpr(clean, attacked, 0.25) == pytest.approx(2 / 3)  # one allowed: above 0.4
    rng = np.random.default_rng(1)
    for _ in range(5):
        c, a = rng.normal(size=97).round(1), (rng.normal(size=83) + 0.7).round(1)  # many ties
        scores, labels = np.r_[c, a], np.r_[np.zeros(97), np.ones(83)]
        assert auroc(c, a) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
        assert tpr_at_fpr(c, a, 0.05) == pytest.approx(tpr[fpr <= 0.05].max())


def test_weighted_bootstrap_equals_the_statistic_on_resampled_data():
    rng = np.random.default_rng(2)
    clean, attacked = rng.normal(size=40).round(1), (rng.normal(size=40) + 0.5).round(1)
    weights = adv.bootstrap_weights(40, 5, seed=3)
    boot_auc = bootstrap_auroc(clean, attacked, weights)
    boot_tpr = bootstrap_tpr(clean, attacked, weights, weights, 0.05)
    for r in range(5):
        index = np.repeat(np.arange(40), weights[r].astype(int))  # the resampled pairs, explicitly
        assert boot_auc[r] == pytest.approx(auroc(clean[index], attacked[index]))
        assert boot_tpr[r] == pytest.approx(tpr_at_fpr(clean[index], attacked[index], 0.05))


def test_batched_weighted_logistic_regression_equals_fits_on_resampled_data():
    rng = np.random.default_rng(7)
    x = torch.tensor(rng.normal(size=(60, 5)))
    y = torch.tensor((rng.normal(size=60) + x[:, 0].numpy() > 0).astype(float))
    counts = torch.tensor(adv.bootstrap_weights(60, 3, seed=8))
    beta = adv.fit_logistic_regression_batched(x, y, counts, torch.ones(3, 5), C=0.5)
    for r in range(3):
        index = torch.repeat_interleave(torch.arange(60), counts[r].long())
        w, b = fit_logistic_regression(x[index], y[index], 0.5)
        assert torch.allclose(beta[r, :-1], w, atol=1e-7) and abs(float(beta[r, -1] - b)) < 1e-7


def detection_problem(n: int, d: int, shift: float, seed: int):
    rng = np.random.default_rng(seed)
    clean, attacked = torch.tensor(rng.normal(size=(n, d))), torch.tensor(rng.normal(size=(n, d)))
    attacked[:, 0] += shift
    ids = [f"img{i}" for i in range(n)]
    fold_of = image_folds(ids, 5)
    return clean, attacked, ids, fold_of, torch.tensor([fold_of[i] for i in ids])


def test_refitting_bootstrap_reruns_the_whole_cross_validation():
    clean, attacked, ids, fold_of, folds = detection_problem(80, 6, 0.5, seed=9)
    _, sc, sa = adv.detection_scores(clean, attacked, ids, fold_of, 5, 1.0)
    auc, tpr = adv.bootstrap_detection(clean, attacked, folds, 5, 1.0, torch.ones(1, 80), 0.05)
    assert float(auc[0]) == pytest.approx(auroc(sc, sa)) and float(tpr[0]) == pytest.approx(tpr_at_fpr(sc, sa))
    counts = torch.tensor(adv.bootstrap_weights(80, 2, seed=10))
    auc, tpr = adv.bootstrap_detection(clean, attacked, folds, 5, 1.0, counts, 0.05)
    for r in range(2):  # each replicate = the cross-validation on the explicitly resampled pairs (copies keep folds)
        index = torch.repeat_interleave(torch.arange(80), counts[r].long())
        _, sc, sa = adv.detection_scores(clean[index], attacked[index], [ids[i] for i in index], fold_of, 5, 1.0)
        assert float(auc[r]) == pytest.approx(auroc(sc, sa)) and float(tpr[r]) == pytest.approx(tpr_at_fpr(sc, sa))


@pytest.mark.parametrize("seed", [0, 8])
def test_refitting_bootstrap_covers_chance_where_resampling_test_scores_alone_does_not(seed):
    # pure noise, 100 pairs, 21 features: seeds where the cross-validated AUROC is far from 0.5 by chance (0.61,
    # 0.42). Resampling the out-of-fold scores alone ignores the detector's training variance and excludes 0.5 (it
    # covered chance in 25 of seeds 0-29 of this set-up); rerunning the cross-validation on each resample covers it
    # (30 of 30).
    clean, attacked, ids, fold_of, folds = detection_problem(100, 21, 0.0, seed=seed)
    _, sc, sa = adv.detection_scores(clean, attacked, ids, fold_of, 5, 1.0)
    weights = adv.bootstrap_weights(100, 300, seed)
    low, high = adv.percentile_interval(bootstrap_auroc(sc, sa, weights))
    assert not low <= 0.5 <= high
    auc, _ = adv.bootstrap_detection(clean, attacked, folds, 5, 1.0, torch.tensor(weights), 0.05)
    low, high = adv.percentile_interval(auc.numpy())
    assert low <= 0.5 <= high


def pairs_dataset(n: int, clean: np.ndarray, attacked: np.ndarray):
    features = torch.tensor(np.r_[clean, attacked])
    labels = torch.cat([torch.zeros(n), torch.ones(n)]).double()
    groups = [f"img{i}" for i in range(n)] * 2  # an image and its adversarial copy share a group
    return features, labels, groups


def test_detector_on_a_perfect_feature_scores_auroc_1():
    rng = np.random.default_rng(4)
    n = 200
    noise = rng.normal(size=(2 * n, 3))
    separating = np.r_[rng.uniform(0, 1, n), rng.uniform(2, 3, n)][:, None]
    features, labels, groups = pairs_dataset(n, np.c_[separating[:n], noise[:n]], np.c_[separating[n:], noise[n:]])
    scores = cross_validated_scores(features, labels, groups).numpy()
    assert auroc(scores[:n], scores[n:]) == 1.0
    assert tpr_at_fpr(scores[:n], scores[n:], 0.05) == 1.0


def test_detector_on_pure_noise_scores_about_one_half():
    # n = 400 pairs: the cross-validated AUROC of a chance detector has mean 0.500 and standard deviation 0.032
    # (measured over 20 seeds of this set-up); tolerance 0.1, about 3 SD
    rng = np.random.default_rng(5)
    n = 400
    features, labels, groups = pairs_dataset(n, rng.normal(size=(n, 21)), rng.normal(size=(n, 21)))
    scores = cross_validated_scores(features, labels, groups).numpy()
    assert abs(auroc(scores[:n], scores[n:]) - 0.5) < 0.1


def test_no_leak_between_an_image_and_its_adversarial_copy():
    # Each image i has its own coordinate e_i; its clean sample sits at -s_i e_i and its adversarial copy at
    # +s_i e_i (random signs s_i). Nothing generalises across images, so a leak-free cross-validation scores
    # every held-out sample with w_i = 0 (AUROC exactly 0.5), while a split that puts the clean image in training
    # and its copy in the test fold learns w_i from the clean image and detects the copy.
    rng = np.random.default_rng(6)
    n = 60
    signs = rng.choice([-1.0, 1.0], size=n)
    eye = np.eye(n)
    features, labels, groups = pairs_dataset(n, -signs[:, None] * eye, signs[:, None] * eye)
    folds = image_folds(groups, 5)
    assert all(folds[f"img{i}"] == folds[g] for i, g in enumerate(groups[n:]))
    scores = cross_validated_scores(features, labels, groups).numpy()
    assert auroc(scores[:n], scores[n:]) == 0.5
    leaky_groups = [f"sample{i}" for i in range(2 * n)]  # folds over samples, not images: the leak this guards
    leaky = cross_validated_scores(features, labels, leaky_groups).numpy()
    assert auroc(leaky[:n], leaky[n:]) > 0.75


def test_image_folds_are_balanced_and_independent_of_order():
    ids = [f"x{i}" for i in range(103)]
    folds = image_folds(ids, 5)
    assert image_folds(list(reversed(ids)), 5) == folds
    counts = np.bincount(list(folds.values()))
    assert counts.max() - counts.min() <= 1


# --------------------------------------------------------------------------------------------- the metrics


def test_attack_names_and_parameters_are_validated():
    specs = parse_attacks(["fgsm2", "pgd8", "cw"], AdversarialDetection.defaults, "t")
    assert [s.kind for s in specs] == ["fgsm", "pgd", "cw"]
    assert specs[1].params == {"eps": 8 / 255, "step_size": 2 / 255, "steps": 10, "random_start": True}
    with pytest.raises(ComponentError, match="unknown attack 'pgd'"):
        AdversarialDetection(attacks=["pgd"])
    with pytest.raises(ComponentError, match="listed twice"):
        AdversarialDetection(attacks=["pgd8", "pgd8"])
    with pytest.raises(ComponentError, match="folds"):
        AdversarialDetection(folds=1)
    with pytest.raises(ComponentError, match="thresholds"):
        AdversarialConsistency(thresholds="mine")


def test_update_needs_the_method_that_made_the_maps(shapes_model, shapes_images):
    images, labels = shapes_images[0][:2], shapes_images[1][:2]
    batch = Batch(ids=["a", "b"], images=images, targets=labels, samples=[{}, {}], labels=labels)
    with pytest.raises(ComponentError, match="batch.method"):
        AdversarialDetection(attacks=["fgsm8"]).update(shapes_model, batch, torch.rand(2, 64, 64))


def test_detection_through_the_runner_on_the_shapes_world(shapes_model, tmp_path, monkeypatch):
    calls = []
    real = adv.run_attack
    monkeypatch.setattr(adv, "run_attack", lambda spec, *a, **k: calls.append(spec.name) or real(spec, *a, **k))
    adv.ATTACK_CACHE.clear()
    params = {"attacks": ["fgsm8", "pgd4"], "bootstrap": 300}
    table = ib.run(methods=["gradient", "center"], models=["shapes:cnn"], metrics=["adversarial_detection"],
                   out=tmp_path, limit=32, batch_size=16, progress=False,
                   metric_params={"adversarial_detection": params})
    assert calls == ["fgsm8", "pgd4", "fgsm8", "pgd4"]  # each batch attacked once, whatever the number of methods
    values = {(r.method, r.value_name): (r.mean, r.ci_low, r.ci_high) for r in table.itertuples()}
    for attack in ("fgsm8", "pgd4"):
        # a map that is the same for every image carries no information: chance, exactly
        assert values[("center", f"{attack}.auroc")][0] == 0.5
        # the method-free baseline is computed on the same pairs and folds in every method's cell
        assert values[("center", f"baseline.{attack}.auroc")] == values[("gradient", f"baseline.{attack}.auroc")]
        assert values[("gradient", f"baseline.{attack}.auroc")][0] > 0.7  # confident clean vs near-boundary adv
        n, rate = values[("gradient", f"{attack}.n")][0], values[("gradient", f"{attack}.success")][0]
        assert n == round(rate * values[("gradient", "n")][0]) and n >= 10
        mean, low, high = values[("gradient", f"{attack}.auroc")]
        assert low <= mean <= high
        gain = values[("gradient", f"{attack}.auroc_gain")][0]
        assert gain == pytest.approx(mean - values[("gradient", f"baseline.{attack}.auroc")][0])
    assert ("gradient", "cross.fgsm8.pgd4.auroc") in values and ("gradient", "cross.pgd4.fgsm8.auroc") in values
    assert values[("gradient", "adaptive_attacks")][0] == 0
    summary = adv.detection_table(table)
    assert list(summary["method"]) == ["center", "gradient", "baseline (softmax/logits)"]
    assert list(summary.columns[3:]) == ["fgsm8", "pgd4"] and summary["fgsm8"][0].startswith("0.500 [")
    manifest = (tmp_path / "manifest.json").read_text()
    assert '"pgd_step_ratio": 0.25' in manifest  # the attack parameters are recorded
    # the run hands the dataset-level metric its artefact folder: cross-attack table and ROC points per method
    import pandas as pd

    folder = tmp_path / "artifacts" / "shapes_cnn__shapes__adversarial_detection"
    cross = pd.read_csv(folder / "gradient-cross.csv", index_col=0)
    assert cross.loc["fgsm8", "pgd4"] == pytest.approx(values[("gradient", "cross.fgsm8.pgd4.auroc")][0], abs=1e-4)
    assert cross.loc["pgd4", "pgd4"] == pytest.approx(values[("gradient", "pgd4.auroc")][0], abs=1e-4)
    for stem, prefix in (("gradient-roc", ""), ("center-roc", ""), ("baseline-roc", "baseline."),
                         ("gradient-baseline-roc", "baseline.")):
        roc = pd.read_csv(folder / f"{stem}.csv")
        assert list(roc.columns) == ["attack", "fpr", "tpr"] and set(roc["attack"]) == {"fgsm8", "pgd4"}
        for attack, points in roc.groupby("attack"):
            # the trapezoidal area under the written points is the reported AUROC
            area = float(np.trapezoid(points["tpr"], points["fpr"]))
            assert area == pytest.approx(values[("gradient" if "gradient" in stem else "center",
                                                 f"{prefix}{attack}.auroc")][0], abs=1e-12)


def test_detection_results_do_not_depend_on_the_cache_or_the_batching(shapes_model, shapes_images):
    images, labels = shapes_images[0][:24], shapes_images[1][:24]
    method = ib.load_method("gradient")

    def result(batch_size: int) -> dict[str, float]:
        adv.ATTACK_CACHE.clear()
        metric = AdversarialDetection(attacks=["pgd4"], bootstrap=100)
        for s in range(0, 24, batch_size):
            x, y = images[s:s + batch_size], labels[s:s + batch_size]
            ids = [f"img{i}" for i in range(s, s + len(x))]
            batch = Batch(ids=ids, images=x, targets=y, samples=[{}] * len(x), labels=y, method=method)
            metric.update(shapes_model, batch, method.explain(shapes_model, x, y))
        return metric.compute()

    a, b = result(12), result(8)
    assert a.keys() == b.keys()
    assert all(abs(a[k] - b[k]) < 1e-6 for k in a), {k: (a[k], b[k]) for k in a if abs(a[k] - b[k]) >= 1e-6}


@pytest.fixture(scope="module")
def probe():
    from interpbench.engine.runner import LimitedDataset

    return LimitedDataset(ib.load_dataset("shapes", split="test", size=(64, 64)), 48)


def test_consistency_with_a_null_attack_keeps_every_label(shapes_model, probe, tmp_path):
    # epsilon 0: the "adversarial" probe is the probe itself, so every measure is exactly at its null value (this
    # also checks that each adversarial image is matched with its own probe image)
    metric = AdversarialConsistency(attacks=["fgsm0"], bootstrap=200, ci_blocks=12, probe="all")
    ctx = RunContext(device=torch.device("cpu"), batch_size=16, seed=0, out_dir=tmp_path)
    out = metric.evaluate(shapes_model, probe, ctx)
    assert out["layer3.fgsm0.label_kept"] == 1.0 and out["layer3.fgsm0.label_kept_ci_low"] == 1.0
    assert out["layer3.fgsm0.iou_change"] == 0.0 and out["layer3.fgsm0.activation_change"] == 0.0
    assert out["layer3.fgsm0.success"] == 0.0 and out["layer3.fgsm0.detectors"] == out["layer3.detectors"] > 0
    assert (tmp_path / "layer3-fgsm0-units.csv").is_file()
    # by default only successful attacks enter the probe: a null attack fools no image, so nothing is measured
    out = AdversarialConsistency(attacks=["fgsm0"], bootstrap=20, ci_blocks=12).evaluate(shapes_model, probe, ctx)
    assert out["layer3.fgsm0.n"] == 0 and out["layer3.fgsm0.success"] == 0 and "layer3.fgsm0.label_kept" not in out


def test_consistency_under_pgd_matches_the_dissections(shapes_model, probe):
    from interpbench.metrics.dissection import dissect

    metric = AdversarialConsistency(attacks=["pgd8"], bootstrap=200, ci_blocks=12, probe="all")
    out = metric.evaluate(shapes_model, probe, RunContext(device=torch.device("cpu"), batch_size=16, seed=0))
    clean = dissect(shapes_model, probe, ["layer3"], batch_size=16)
    spec = parse_attacks(["pgd8"], metric.params, "t")[0]
    images, success = adv.adversarial_probe(shapes_model, probe, spec, batch_size=16, device=torch.device("cpu"))
    attacked = dissect(shapes_model, probe, ["layer3"], batch_size=16,
                       image_transform=lambda x, idx: images[idx.cpu()])
    expected = consistency_measures(clean.layers["layer3"].iou, attacked.layers["layer3"].iou, 0.04)
    assert out["layer3.detectors"] == float(clean.detectors("layer3").sum())
    assert out["layer3.pgd8.label_kept"] == pytest.approx(float(expected["label_kept"]))
    assert out["layer3.pgd8.iou_change"] == pytest.approx(float(expected["iou_change"]))
    assert out["layer3.pgd8.success"] == pytest.approx(float(success.float().mean()))
    assert out["layer3.pgd8.success"] > 0.9
    assert out["layer3.pgd8.activation_change"] > 0.1 and out["layer3.pgd8.label_kept"] < 1.0
    for key in ("label_kept", "iou_change", "activation_change"):
        assert out[f"layer3.pgd8.{key}_ci_low"] <= out[f"layer3.pgd8.{key}_ci_high"]


def test_consistency_on_successful_attacks_only_dissects_the_fooled_images(shapes_model, probe):
    # PGD at 2/255 fools about two thirds of the probe: the clean and the adversarial dissections are those of the
    # fooled images alone, and the failed attacks (clean images, unchanged) no longer count as labels kept
    from interpbench.metrics.adversarial_units import _ProbeSubset
    from interpbench.metrics.dissection import dissect

    metric = AdversarialConsistency(attacks=["pgd2"], bootstrap=20, ci_blocks=12)
    out = metric.evaluate(shapes_model, probe, RunContext(device=torch.device("cpu"), batch_size=16, seed=0))
    spec = parse_attacks(["pgd2"], metric.params, "t")[0]
    images, success = adv.adversarial_probe(shapes_model, probe, spec, batch_size=16, device=torch.device("cpu"))
    keep = torch.nonzero(success).squeeze(1)
    assert 0.3 < len(keep) / len(probe) < 0.95 and out["layer3.pgd2.n"] == len(keep)
    subset = _ProbeSubset(probe, keep.tolist())
    clean = dissect(shapes_model, subset, ["layer3"], batch_size=16)
    attacked = dissect(shapes_model, subset, ["layer3"], batch_size=16,
                       image_transform=lambda x, idx: images[keep][idx.cpu()])
    expected = consistency_measures(clean.layers["layer3"].iou, attacked.layers["layer3"].iou, 0.04)
    assert out["layer3.pgd2.clean_detectors"] == float(clean.detectors("layer3").sum())
    assert out["layer3.pgd2.label_kept"] == pytest.approx(float(expected["label_kept"]))
    everything = AdversarialConsistency(attacks=["pgd2"], bootstrap=20, ci_blocks=12, probe="all").evaluate(
        shapes_model, probe, RunContext(device=torch.device("cpu"), batch_size=16, seed=0))
    assert out["layer3.pgd2.label_kept"] < everything["layer3.pgd2.label_kept"]  # failed attacks inflated it


def test_consistency_measures_by_hand():
    clean = torch.tensor([[0.10, 0.02, 0.00],   # detector of concept 0
                          [0.01, 0.30, 0.05],   # detector of concept 1
                          [0.01, 0.02, 0.03]],  # not a detector
                         dtype=torch.float64)
    attacked = torch.tensor([[0.08, 0.01, 0.00],  # keeps concept 0
                             [0.01, 0.03, 0.20],  # switches to concept 2
                             [0.50, 0.00, 0.00]], dtype=torch.float64)
    m = consistency_measures(clean, attacked, 0.04)
    assert float(m["label_kept"]) == 0.5 and float(m["detectors"]) == 2 and float(m["adv_detectors"]) == 3
    assert float(m["iou_change"]) == pytest.approx(((0.08 - 0.10) + (0.03 - 0.30)) / 2)


def test_both_metrics_pass_the_conformance_kit():
    from interpbench.testing import check_metric

    check_metric("adversarial_detection", params={"attacks": ["fgsm8", "pgd8"], "bootstrap": 100}).raise_if_failed()
    check_metric("adversarial_consistency", params={"attacks": ["pgd8"], "bootstrap": 100}).raise_if_failed()


def test_attacks_leave_no_gradients_on_the_model():
    model = Linear(torch.randn(2, 4), torch.zeros(2))
    x, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0])
    fgsm(model, x, y, 0.1)
    pgd_linf(model, x, y, 0.1, steps=2)
    carlini_wagner_l2(model, x, y, binary_search_steps=2, steps=5)
    assert all(p.grad is None for p in model.parameters())


def test_samples_without_a_label_are_left_out(shapes_model, shapes_images):
    # the runner sets Batch.labels only when every sample has a label; then the labelled samples still count
    images, labels = shapes_images[0][:3], shapes_images[1][:3]
    method = ib.load_method("center")
    samples = [{"label": int(labels[0])}, {}, {"label": int(labels[2])}]
    batch = Batch(ids=["a", "b", "c"], images=images, targets=labels, samples=samples, labels=None, method=method)
    metric = AdversarialDetection(attacks=["fgsm8"])
    metric.update(shapes_model, batch, method.explain(shapes_model, images, labels))
    out = metric.compute()
    assert out["n"] == 2 and out["accuracy"] == 1.0 and "fgsm8.auroc" not in out  # too few pairs for 5 folds
