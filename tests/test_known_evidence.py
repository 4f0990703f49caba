"""Faithfulness metrics checked against models whose evidence is known (the shapes-shortcut world).

``shapes:cnn.shortcut`` classifies by the corner patch (on the conflict test split it follows the patch's class in
every image) and ``shapes:cnn`` by the object. A faithfulness metric must then rank the map that marks the patch
above the map that marks the object on the first model, and the other way round on the second. The two maps
mark their region with 1 and order everything else either by small seeded noise (``outside="noise"``: the rest
goes in random order, the same for both maps) or by decreasing closeness to the region (``outside="distance"``:
the rest goes as one contiguous front); the explained class is the model's prediction, as in a run.

Deletion, insertion and ROAD MoRF pass with both orders. ROAD LeRF fails with the noise order on ``shapes:cnn``:
at 90 % removal the object map keeps the object alone and imputes the whole background from it, which smears the
object's colour outward and erases the edges the model reads its shape from (class probability 0.22 on 8 images),
while the patch map keeps 10 % scattered pixels, from which the imputation restores a low-pass copy of the whole
image, object included (0.47). LeRF then measures how well the kept pixels let the imputation rebuild the image,
which favours scattered over compact kept sets whatever they mark (on the photos, ``random`` gets the best LeRF
score); with the contiguous order it ranks the maps as the models' evidence says.

ROAR (remove and retrain) fails on ``shapes:cnn.shortcut`` by construction, and the test pins it: it retrains a new
network on the images with the map's pixels removed, so it ranks maps by what information the data keeps, not by
what the explained model used. On the shortcut world both cues predict the label; the network retrained without
the object learns the patch, which names another class on every conflict test image (its accuracy falls towards
0), while the one retrained without the patch learns the shape; the object map then wins by about 0.33 in accuracy
(128 images, t = 0.3, one seed). On ``shapes:cnn`` (trained without a patch) it passes: removing the object leaves
nothing to learn.

Run as a script for the table (metric x model, which map wins, by how much, with a bootstrap CI over images):

    python tests/test_known_evidence.py --images 64
"""

from __future__ import annotations

import argparse

import pytest
import torch
from scipy.ndimage import distance_transform_edt

from interpbench.api import load_dataset, load_metric, load_model
from interpbench.core.base import Batch
from interpbench.datasets.shortcut import ShortcutWorld
from interpbench.models.retrain import (
    RETRAIN_DEFAULTS,
    retrain_from_scratch,
    retrain_task,
)
from interpbench.ops.roar import replace_pixels

MODELS = {"shapes:cnn.shortcut": "patch", "shapes:cnn": "object"}  # model -> the map that must win
# metric name -> parameters; deletion/insertion at 16 steps (4 rows of 64 px each), ROAD at five fractions
METRICS = {
    "deletion": {"steps": 16},
    "insertion": {"steps": 16},
    "road_morf": {"fractions": [0.1, 0.3, 0.5, 0.7, 0.9]},
    "road_lerf": {"fractions": [0.1, 0.3, 0.5, 0.7, 0.9]},
}


def evidence_maps(samples: list[dict], outside: str = "noise", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(patch maps, object maps), ``B x H x W``: 1 + noise on the region (patch; objects of the label's class) and
    below 1 elsewhere: noise under 1e-3 (``"noise"``) or ``0.5 exp(-d / 16)`` of the distance ``d`` in px to the
    region plus the noise (``"distance"``); the same noise (seeded) in both, so no two pixels tie."""
    patch = torch.stack([torch.as_tensor(s["patch_mask"]).bool() for s in samples])
    obj = torch.stack([torch.as_tensor(s["masks"][int(s.get("shape_label", s["label"]))]).bool() for s in samples])
    noise = 1e-3 * torch.rand(patch.shape, generator=torch.Generator().manual_seed(seed))

    def one(region: torch.Tensor) -> torch.Tensor:
        if outside == "noise":
            rest = torch.zeros(region.shape)
        elif outside == "distance":
            d = torch.stack([torch.as_tensor(distance_transform_edt(~r.numpy()), dtype=torch.float32) for r in region])
            rest = 0.5 * torch.exp(-d / 16.0)
        else:
            raise ValueError(f"outside must be 'noise' or 'distance', got {outside!r}")
        return torch.where(region, torch.ones(()), rest) + noise

    return one(patch), one(obj)


def patch_advantage(model_spec: str, metric_name: str, params: dict, n_images: int,
                    outside: str = "noise") -> torch.Tensor:
    """Per image: how much better the patch map scores than the object map (positive: the patch map wins),
    in the metric's units, signed by its direction."""
    model = load_model(model_spec).eval()
    ds = load_dataset("shapes-shortcut", split="test")
    samples = [ds[i] for i in range(n_images)]
    images = torch.stack([s["image"] for s in samples])
    with torch.no_grad():
        targets = model(images).argmax(1)
    batch = Batch(ids=[s["id"] for s in samples], images=images, targets=targets, samples=samples, seed=7)
    metric = load_metric(metric_name, **params)
    patch_map, object_map = evidence_maps(samples, outside)
    with torch.no_grad():
        patch_score = metric.score(model, batch, patch_map)["score"]
        object_score = metric.score(model, batch, object_map)["score"]
    diff = patch_score - object_score
    return diff if metric.higher_is_better else -diff


def bootstrap_ci(values: torch.Tensor, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(values), (n_boot, len(values)), generator=gen)
    means = values[idx].mean(dim=1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


# the test's budget: 8 images, ROAD at three fractions (the table uses more)
TEST_METRICS = {**METRICS, "road_morf": {"fractions": [0.3, 0.6, 0.9]}, "road_lerf": {"fractions": [0.3, 0.6, 0.9]}}


def winner(adv: torch.Tensor) -> str:
    low, high = bootstrap_ci(adv)
    return "patch" if low > 0 else "object" if high < 0 else "neither"


@pytest.mark.parametrize("metric_name", ["deletion", "insertion", "road_morf"])
def test_metrics_rank_the_evidence_the_model_uses(metric_name):
    for model_spec, expected in MODELS.items():
        adv = patch_advantage(model_spec, metric_name, TEST_METRICS[metric_name], n_images=8)
        assert winner(adv) == expected, (metric_name, model_spec, adv)


def test_road_lerf_needs_compact_orders():
    """LeRF ranks the models' evidence with contiguous orders outside the region, and fails on the object model
    with scattered ones (the module docstring says why)."""
    params = TEST_METRICS["road_lerf"]
    for model_spec, expected in MODELS.items():
        assert winner(patch_advantage(model_spec, "road_lerf", params, 8, outside="distance")) == expected
    assert winner(patch_advantage("shapes:cnn.shortcut", "road_lerf", params, 8)) == "patch"
    assert winner(patch_advantage("shapes:cnn", "road_lerf", params, 8)) == "patch"  # the failure


ROAR_CHECK = {"n_train": 384, "n_test": 128, "fraction": 0.3, "seed": 0}  # the test's small configuration


def roar_patch_advantage(model_spec: str, n_train: int = 512, n_test: int = 128, fraction: float = 0.3,
                         seed: int = 0, outside: str = "noise") -> torch.Tensor:
    """ROAR's version of :func:`patch_advantage`: per test image, whether the network retrained with the patch map's
    top ``fraction`` removed is wrong where the one retrained with the object map's removed is right (+1), the
    reverse (-1), or neither (0); positive: the patch map wins (ROAR: lower accuracy is better).

    Training images: those the model was trained on (``shapes:cnn.shortcut``: the shortcut world's training split,
    patch included, a quarter relabelled; ``shapes:cnn``: the same images without the patch, shape labels), with
    their evidence maps; test images: the conflict test split, as in the other checks, labelled by shape. One seed,
    the default retraining recipe (interpbench/models/retrain.py)."""
    model = load_model(model_spec).eval()
    task = retrain_task(model)
    world = ShortcutWorld("train", model.input_size, n=n_train, mode="agree")
    train = [world[i] for i in range(n_train)]
    if task == "shortcut":
        train_images, train_labels = torch.stack([s["image"] for s in train]), torch.tensor([s["label"] for s in train])
    else:  # shapes:cnn was trained on the shapes world: the same images without the patch, labelled by shape
        train_images = torch.stack([s["clean_image"] for s in train])
        train_labels = torch.tensor([s["shape_label"] for s in train])
    ds = load_dataset("shapes-shortcut", split="test")
    test = [ds[i] for i in range(n_test)]
    test_images, test_labels = torch.stack([s["image"] for s in test]), torch.tensor([s["label"] for s in test])
    fill = model.mean.flatten()
    correct = []
    for train_map, test_map in zip(evidence_maps(train, outside), evidence_maps(test, outside)):
        net = retrain_from_scratch(task, replace_pixels(train_images, train_map, fraction, fill), train_labels, seed,
                                   dict(RETRAIN_DEFAULTS))
        with torch.no_grad():
            predicted = net(replace_pixels(test_images, test_map, fraction, fill)).argmax(1)
        correct.append((predicted == test_labels).float())
    return correct[1] - correct[0]  # object map's correctness minus the patch map's: positive when the patch wins


def test_roar_ranks_the_information_left_in_the_data_not_the_model():
    """ROAR passes on ``shapes:cnn`` and fails on ``shapes:cnn.shortcut`` (the module docstring says why): on the
    shortcut world the network retrained without the object learns the patch, which names another class on every
    conflict test image, so the object map gets the lower accuracy whatever the explained model relied on."""
    adv = roar_patch_advantage("shapes:cnn", **ROAR_CHECK)
    assert winner(adv) == MODELS["shapes:cnn"], adv.mean()
    adv = roar_patch_advantage("shapes:cnn.shortcut", **ROAR_CHECK)
    assert winner(adv) == "object", adv.mean()  # the failure: the patch map should win on the shortcut model


def main() -> None:
    ap = argparse.ArgumentParser(description="the known-evidence table")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--outside", default="noise,distance")
    args = ap.parse_args()
    print(f"| metric | model | outside | must win | winner | patch advantage (mean, 95 % CI, n = {args.images}) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for metric_name, params in METRICS.items():
        for model_spec, expected in MODELS.items():
            for outside in args.outside.split(","):
                adv = patch_advantage(model_spec, metric_name, params, args.images, outside)
                low, high = bootstrap_ci(adv)
                print(f"| {metric_name} | {model_spec} | {outside} | {expected} | {winner(adv)} | "
                      f"{float(adv.mean()):+.3f} [{low:+.3f}, {high:+.3f}] |", flush=True)
    for model_spec, expected in MODELS.items():  # ROAR: one retraining per map (ROAR_CHECK, n_test images)
        for outside in args.outside.split(","):
            adv = roar_patch_advantage(model_spec, **{**ROAR_CHECK, "n_test": args.images}, outside=outside)
            low, high = bootstrap_ci(adv)
            print(f"| roar (t = {ROAR_CHECK['fraction']}) | {model_spec} | {outside} | {expected} | {winner(adv)} | "
                  f"{float(adv.mean()):+.3f} [{low:+.3f}, {high:+.3f}] |", flush=True)


if __name__ == "__main__":
    main()
