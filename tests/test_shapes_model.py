"""The embedded model shapes:cnn: trained accuracy, seeded random weights, checkpoints, the training cache.

The trained weights are cached in the user cache dir (or $INTERPBENCH_CACHE): the first run on a machine trains
them (about a minute on 2 CPU cores), later runs load them.
"""

import json
from pathlib import Path

import pytest
import torch

from interpbench.core.base import ComponentError, Model
from interpbench.datasets.shapes import COLOR_NAMES, SHAPES, ShapesWorld
from interpbench.models import shapes as shapes_model
from interpbench.models.shapes import (
    ShapesModelSource,
    file_sha256,
    recipe,
    recipe_hash,
    train_shapes_cnn,
)
from interpbench.models.weights import atomic_save, state_dict_sha256


@pytest.fixture(scope="module")
def trained() -> Model:
    return ShapesModelSource().load("cnn", None, None)


@torch.no_grad()
def held_out_accuracy(model: Model, start: int, stop: int) -> float:
    images, labels = ShapesWorld("test", 64, n=stop, task="shape").tensors(start, stop)
    return (model(images).argmax(1) == labels).float().mean().item()


def test_trained_model_reaches_95_percent_on_held_out_test_images(trained):
    # the recorded accuracy uses test images 0..511; these 512 were seen by nobody
    assert held_out_accuracy(trained, 512, 1024) >= 0.95
    assert trained.weights["test_accuracy"] >= 0.95


def test_model_wrapper_fields(trained):
    assert trained.spec == "shapes:cnn" and trained.class_names == list(SHAPES)
    assert trained.cam_layer == "layer3" and list(trained.layers) == ["stem", "layer1", "layer2", "layer3"]
    assert trained.input_size == (64, 64) and trained.label_space == "shapes:shape"
    assert trained.default_dataset == "shapes"
    w = trained.weights
    assert w["source"] == "shapes" and w["tag"] == "cnn" and w["file_sha256"] == file_sha256(Path(w["path"]))
    assert w["sha256"] == state_dict_sha256(torch.load(w["path"], weights_only=True)["state_dict"])
    assert recipe_hash(w["recipe"]) in Path(w["path"]).name and w["recipe"] == recipe("shape", 0)
    # layer3 is the 8 x 8 stage at 64 px
    features = {}
    handle = trained.module("layer3").register_forward_hook(lambda m, i, o: features.setdefault("x", o))
    assert trained(torch.rand(2, 3, 64, 64)).shape == (2, len(SHAPES))
    handle.remove()
    assert features["x"].shape[-2:] == (8, 8)


def test_random_weights_are_deterministic_per_seed(trained):
    a = ShapesModelSource().load("cnn", "random", None)
    b = ShapesModelSource().load("cnn", "random", None)
    c = ShapesModelSource(seed=1).load("cnn", "random", None)
    sa, sb, sc = a.net.state_dict(), b.net.state_dict(), c.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["fc.weight"], sc["fc.weight"])
    assert a.spec == "shapes:cnn@random" and a.weights["sha256"] == state_dict_sha256(a.net.state_dict())
    assert held_out_accuracy(a, 0, 128) < 0.5  # an untrained net is near chance (1/7), unlike the trained one


def test_other_tasks_have_their_own_heads_and_label_spaces():
    model = ShapesModelSource().load("cnn.color", "random", None)
    assert model.class_names == list(COLOR_NAMES) and model.label_space == "shapes:color"
    assert model.default_dataset == "shapes-color" and model(torch.rand(1, 3, 64, 64)).shape == (1, 11)
    assert ShapesModelSource().load("cnn.texture", "random", None).default_dataset == "shapes-texture"
    with pytest.raises(ComponentError, match="'cnn.size'"):
        ShapesModelSource().load("cnn.size", "random", None)


def test_checkpoint_path_round_trips(trained, tmp_path):
    path = tmp_path / "ft.pth"
    torch.save(trained.net.state_dict(), path)
    loaded = ShapesModelSource().load("cnn", str(path), None)
    x = ShapesWorld("test", 64, n=4).tensors()[0]
    assert torch.equal(loaded(x), trained(x))
    assert loaded.spec == f"shapes:cnn@{path}" and loaded.weights["file_sha256"] == file_sha256(path)
    with pytest.raises(ComponentError, match="does not exist") as info:
        ShapesModelSource().load("cnn", str(tmp_path / "missing.pth"), None)
    assert str(tmp_path / "missing.pth") in str(info.value)
    with pytest.raises(ComponentError, match="does not fit"):  # a 7-class checkpoint for the 11-class colour task
        ShapesModelSource().load("cnn.color", str(path), None)


def test_resolve_weights_hook_is_asked_first(trained, tmp_path):
    path = tmp_path / "served.pt"
    torch.save(trained.net.state_dict(), path)
    asked = []

    def resolve(source, name, tag):
        asked.append((source, name, tag))
        return str(path)

    model = ShapesModelSource().load("cnn", None, resolve)
    assert asked == [("shapes", "cnn", None)] and model.weights["path"] == str(path)


def test_training_is_deterministic_and_cached_by_recipe(tmp_path, monkeypatch):
    small = {"n_train": 128, "epochs": 1, "batch_size": 32, "n_test": 32}
    net_a, acc_a = train_shapes_cnn("shape", 3, show_progress=False, **small)
    net_b, acc_b = train_shapes_cnn("shape", 3, show_progress=False, **small)
    sa, sb = net_a.state_dict(), net_b.state_dict()
    assert acc_a == acc_b and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["fc.weight"], shapes_model.seeded_net("shape", 3).state_dict()["fc.weight"])  # it trained
    # the cache file name carries the recipe hash: a changed recipe is a different file
    assert recipe_hash(recipe("shape", 0)) != recipe_hash(recipe("shape", 0, epochs=1))
    assert recipe_hash(recipe("shape", 0)) != recipe_hash(recipe("shape", 1))
    monkeypatch.setenv("INTERPBENCH_CACHE", str(tmp_path / "cache"))
    assert shapes_model.cache_dir() == tmp_path / "cache"
    # a cached file is used as is (no training): put one where the recipe says and load through the source
    monkeypatch.setattr(shapes_model, "TRAIN_DEFAULTS", {**shapes_model.TRAIN_DEFAULTS, **small})
    rec = recipe("shape", 3)
    target = tmp_path / "cache" / f"shapes-cnn-shape-seed3-{recipe_hash(rec)}.pt"
    atomic_save({"state_dict": sa, "recipe": rec, "test_accuracy": acc_a}, target)
    monkeypatch.setattr(shapes_model, "train_shapes_cnn", lambda *a, **k: pytest.fail("retrained a cached model"))
    model = ShapesModelSource(seed=3).load("cnn", None, None)
    assert model.weights["path"] == str(target) and model.weights["test_accuracy"] == acc_a
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"] == []


def test_the_packaged_weights_are_those_the_current_recipes_ask_for():
    # a changed recipe (or world) must come with remade packaged files (python -m interpbench.models.shapes);
    # otherwise every user would silently train on first use again
    for task in shapes_model.PACKAGED:
        if task in shapes_model.TRANSFERS:
            rec = shapes_model.transfer_recipe(task, 0)
        else:
            rec = recipe(task, 0)
        name = f"shapes-cnn-{task}-seed0-{recipe_hash(rec)}.pt"
        path = shapes_model.packaged_checkpoint(name)
        assert path is not None, f"no packaged {name}: run python -m interpbench.models.shapes"
        stored = torch.load(path, weights_only=True)
        assert stored["recipe"] == json.loads(json.dumps(rec)) and stored["test_accuracy"] >= 0.95
    model = ShapesModelSource().load("cnn", None, None)
    assert Path(model.weights["path"]).parent == shapes_model.PACKAGED_DIR


def test_the_full_recipe_trains_to_95_percent_from_scratch():
    # what `python -m interpbench.models.shapes` does for the packaged file (about a minute on one core)
    net, acc = train_shapes_cnn("shape", 0, show_progress=False)
    model = Model(net, spec="shapes:cnn", mean=shapes_model.MEAN, std=shapes_model.STD, input_size=(64, 64),
                  class_names=list(SHAPES), cam_layer="layer3", label_space="shapes:shape", default_dataset="shapes",
                  weights={})
    assert acc >= 0.95 and held_out_accuracy(model, 512, 1024) >= 0.95
