"""ROAD (Rong et al., ICML 2022): the linear imputation against a direct sparse solve and a known harmonic answer,
the removal masks, and the curves against pytorch-grad-cam's ROAD on the same images and maps."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch
from pytorch_grad_cam.metrics.road import (
    NoisyLinearImputer,
    ROADLeastRelevantFirst,
    ROADMostRelevantFirst,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from interpbench.api import load_dataset, load_method, load_metric, load_model
from interpbench.core.base import Batch, ComponentError
from interpbench.metrics.road import removal_masks, road_curves
from interpbench.ops.imputation import (
    linear_imputation,
    neighbour_weights,
    noisy_linear_imputation,
)


def direct_solve(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The paper's system written out with scipy, one row per removed pixel, solved by spsolve (float64)."""
    c, h, w = image.shape
    idx = -np.ones((h, w), dtype=int)
    where = np.argwhere(removed)
    idx[removed] = np.arange(len(where))
    a = scipy.sparse.lil_matrix((len(where), len(where)))
    b = np.zeros((len(where), c))
    for row, (i, j) in enumerate(where):
        for (di, dj), weight in neighbour_weights():
            y, x = i + di, j + dj
            if not (0 <= y < h and 0 <= x < w):
                continue
            a[row, row] += weight
            if removed[y, x]:
                a[row, idx[y, x]] -= weight
            else:
                b[row] += weight * image[:, y, x]
    sol = scipy.sparse.linalg.spsolve(a.tocsc(), b)
    out = image.copy()
    out[:, removed] = sol.T
    return out


def test_neighbour_weights_are_the_papers():
    w = dict(neighbour_weights())
    assert w[(0, 1)] == w[(1, 0)] == w[(0, -1)] == w[(-1, 0)] == pytest.approx(1 / 6)
    assert w[(1, 1)] == w[(-1, -1)] == w[(1, -1)] == w[(-1, 1)] == pytest.approx(1 / 12)
    assert sum(w.values()) == pytest.approx(1.0)


def test_imputation_matches_a_direct_sparse_solve():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 12, 10, generator=gen, dtype=torch.float64)
    removed = torch.rand(2, 12, 10, generator=gen) < torch.tensor([0.3, 0.85]).view(2, 1, 1)
    removed[1, 0, 0] = False  # one known pixel at least
    filled, info = linear_imputation(images, removed, tol=1e-10, max_iter=2000)
    assert info["residual"] <= 1e-10
    for k in range(2):
        ref = direct_solve(images[k].numpy(), removed[k].numpy())
        np.testing.assert_allclose(filled[k].numpy(), ref, atol=1e-8)
        # and pytorch-grad-cam's (the ROAD authors') imputer, without noise, keep-mask convention
        theirs = NoisyLinearImputer(noise=0.0)(images[k].float(), (~removed[k]).float())
        np.testing.assert_allclose(filled[k].numpy(), theirs.numpy(), atol=1e-5)
    assert torch.equal(filled[~removed.unsqueeze(1).expand_as(images)], images[~removed.unsqueeze(1).expand_as(images)])


def test_imputation_of_a_ramp_is_the_ramp():
    """A linear function has the weighted-mean property away from the border, so a hole is filled exactly."""
    h, w = 40, 48
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    ramp = torch.stack([0.01 * yy, 0.02 * xx - 0.3, 0.5 + 0.005 * (yy - xx)]).unsqueeze(0)
    removed = torch.zeros(1, h, w, dtype=torch.bool)
    removed[0, 3:37, 2:45] = True  # a large hole (90 % of the pixels would need many CG iterations)
    filled, _ = linear_imputation(ramp, removed, tol=1e-7, max_iter=1000)
    assert (filled - ramp).abs().max() < 1e-4
    start = ramp.clone()
    start[:, :, removed[0]] = 0.0  # what was there does not matter
    filled2, _ = linear_imputation(start, removed, tol=1e-7, max_iter=1000)
    assert (filled2 - ramp).abs().max() < 1e-4


def test_imputation_refuses_an_empty_image():
    with pytest.raises(ComponentError, match="remove every pixel"):
        linear_imputation(torch.rand(1, 3, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))


def test_noise_is_on_removed_pixels_only_and_seeded():
    images = torch.rand(2, 3, 8, 8)
    removed = torch.zeros(2, 8, 8, dtype=torch.bool)
    removed[:, 2:6, 2:6] = True
    clean, _ = linear_imputation(images, removed)
    a, _ = noisy_linear_imputation(images, removed, 0.5, seeds=[1, 2])
    b, _ = noisy_linear_imputation(images, removed, 0.5, seeds=[1, 3])
    diff = (a - clean).abs()
    assert diff[:, :, ~removed[0]].max() == 0 and diff[:, :, removed[0]].min() > 0
    assert 0.3 < float((a - clean)[:, :, removed[0]].std()) < 0.7
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])  # image 0's noise hangs on its seed alone


def test_removal_masks_counts_order_and_ties():
    maps = torch.tensor([[[4.0, 3.0], [2.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    morf = removal_masks(maps, [0.25, 0.5, 0.75], True)
    lerf = removal_masks(maps, [0.25, 0.5, 0.75], False)
    assert morf.sum(dim=(2, 3)).tolist() == [[1, 2, 3], [1, 2, 3]]
    assert morf[0, 0].tolist() == [[True, False], [False, False]]
    assert lerf[0, 0].tolist() == [[False, False], [False, True]]
    assert morf[1, 0].tolist() == lerf[1, 0].tolist() == [[True, False], [False, False]]  # ties: lower index first


@pytest.fixture(scope="module")
def shapes_case():
    torch.manual_seed(0)
    model = load_model("shapes:cnn").eval()
    ds = load_dataset("shapes", split="test")
    images = torch.stack([ds[i]["image"] for i in range(4)])
    with torch.no_grad():
        targets = model(images).argmax(1)
    maps = load_method("gradcam")(model, images, targets).detach()
    maps = maps + 1e-6 * torch.rand(maps.shape)  # no ties: pytorch-grad-cam's percentile removes all tied pixels
    return model, images, targets, maps


class Normalised(torch.nn.Module):
    """The network on normalised tensors, as pytorch-grad-cam's metrics take it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, z):
        return self.model.net(z)


def grad_cam_road(model, images, targets, maps, fractions, morf, noise):
    """pytorch-grad-cam's ROAD curve: its percentile p keeps the cam below the p-th percentile (MoRF) or the
    1 - cam below it (LeRF), so a removed fraction f is its percentile 100 (1 - f) in both directions."""
    z = (images - model.mean) / model.std
    out = []
    for f in fractions:
        metric = (ROADMostRelevantFirst if morf else ROADLeastRelevantFirst)(percentile=100 * (1 - f))
        metric.perturbation.imputer.noise = noise
        out.append(metric(z, maps.numpy(), [ClassifierOutputSoftmaxTarget(int(c)) for c in targets],
                          Normalised(model), return_diff=False))
    return np.stack(out, 1)


@pytest.mark.parametrize("morf", [True, False])
def test_curves_agree_with_pytorch_grad_cam(shapes_case, morf):
    model, images, targets, maps = shapes_case
    fractions = [0.1, 0.5, 0.9]
    ours, _ = road_curves(model, images, targets, maps, fractions, most_relevant_first=morf, noise=0.0, tol=1e-5)
    theirs = grad_cam_road(model, images, targets, maps, fractions, morf, 0.0)
    assert np.abs(ours.numpy() - theirs).max() < 2e-3
    # with ROAD's noise (0.01 in normalised space, different draws) the curves still agree within 0.01
    torch.manual_seed(1)
    noisy = load_metric("road_morf" if morf else "road_lerf", fractions=fractions).score(
        model, Batch(ids=[str(i) for i in range(4)], images=images, targets=targets, samples=[{}] * 4, seed=3), maps)
    theirs_noisy = grad_cam_road(model, images, targets, maps, fractions, morf, 0.01)
    assert np.abs(noisy["curve"].numpy() - theirs_noisy).max() < 0.01
    assert torch.allclose(noisy["score"], noisy["curve"].mean(dim=1))
    # MoRF lowers the probability of Grad-CAM's class far more than LeRF does
    if morf:
        assert float(ours[:, -1].mean()) < 0.5
    else:
        assert float(ours[:, 0].mean()) > 0.9


def test_metric_is_seeded_by_the_batch(shapes_case):
    model, images, targets, maps = shapes_case
    metric = load_metric("road_morf", fractions=[0.5], noise=0.5)
    batch = Batch(ids=[str(i) for i in range(4)], images=images, targets=targets, samples=[{}] * 4, seed=11)
    a = metric.score(model, batch, maps)["curve"]
    b = metric.score(model, batch, maps)["curve"]
    c = metric.score(model, Batch(**{**batch.__dict__, "seed": 12}), maps)["curve"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ComponentError, match="fractions"):
        load_metric("road_lerf", fractions=[0.5, 1.0])
