"""From-scratch retraining for remove-and-retrain (ROAR / KAR, :mod:`interpbench.metrics.roar`): which models
declare a from-scratch training recipe, their training split, the reduced retraining recipe, the retraining itself
(:func:`interpbench.models.training.fit` under deterministic algorithms) and the cache of its results.

Only the shapes CNNs (``shapes:cnn``, ``shapes:cnn.TASK``, ``shapes:cnn.shortcut``) declare one: they were trained
from scratch on a generated world whose training split the metric can regenerate. Other models (timm, torchvision,
the shapes ViT, transfers, pairs) raise :class:`NotApplicable` with the reason.

The retrained network is the explained one's architecture at half width behind a 2 x 2 average pool (the
``cnn-small`` widths on 32 px), trained by :data:`RETRAIN_DEFAULTS`: a ROAR cell retrains it 27 times per method
(9 fractions x 3 seeds), so the full ``shapes:cnn`` recipe (about a minute each) does not fit a laptop's budget.
docs/protocols.md (ROAR and KAR) records the recipe and its accuracy on intact images.

Results are cached in ``$INTERPBENCH_CACHE/roar/`` (the cache of :mod:`interpbench.models.shapes`) under the hash of
everything that made them, written atomically, so a re-run or a resumed run does not retrain.

Layer: models (imports core, datasets and the models layer's own modules).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from interpbench.core.base import ComponentError, Model, NotApplicable
from interpbench.core.identity import config_key
from interpbench.datasets.shapes import GENERATOR_VERSION, TASKS
from interpbench.models import shapes
from interpbench.models.training import OPTIMIZER, RECIPES_VERSION, accuracy, fit
from interpbench.models.weights import atomic_save

log = logging.getLogger(__name__)

#: Changes whenever the retraining code changes what it computes (part of every cached result's identity).
RETRAIN_VERSION = "1"
#: The reduced from-scratch recipe of ROAR / KAR: training images of the model's world (train split, world seed 0),
#: epochs, batch size, peak learning rate (AdamW, cosine schedule), weight decay, augmentation, and the architecture
#: (``pool``: average-pooling factor in front; ``widths``: the four stage widths), and the CPU threads training uses
#: (``threads``: one by default, so a retrained network's bits do not depend on the machine's core count, and a
#: small network does not lose most of its time to thread synchronisation on a busy 2-core machine).
RETRAIN_DEFAULTS: dict[str, Any] = {
    "n_train": 512,
    "epochs": 10,
    "batch_size": 32,
    "lr": 5e-3,
    "weight_decay": 1e-4,
    "augment": "hflip",
    "pool": 2,
    "widths": [12, 16, 32, 64],
    "threads": 1,
}


def retrain_task(model: Model) -> str:
    """The shapes task (or variant) of a model that declares a from-scratch recipe; :class:`NotApplicable` with the
    reason otherwise."""
    info = getattr(model, "weights", {}) or {}
    tag = str(info.get("tag", "")).partition("@")[0]  # cnn.shortcut@random: the same architecture and world
    arch, _, task = tag.partition(".")
    task = task or "shape"
    if info.get("source") != "shapes" or arch != "cnn" or task in shapes.TRANSFERS:
        raise NotApplicable(f"model {getattr(model, 'spec', model)!r}: remove-and-retrain retrains the model from "
                            "scratch on its training data, which only models that declare a from-scratch training "
                            "recipe allow: the shapes CNNs (shapes:cnn, shapes:cnn.TASK, shapes:cnn.shortcut)")
    return task


def check_recipe(recipe: dict[str, Any], who: str) -> dict[str, Any]:
    """``recipe`` over :data:`RETRAIN_DEFAULTS` with its keys and values checked (clear errors naming ``who``)."""
    if not isinstance(recipe, dict):
        raise ComponentError(f"{who}: recipe must be a dict of retraining options {sorted(RETRAIN_DEFAULTS)}, "
                             f"got {recipe!r}")
    unknown = set(recipe) - set(RETRAIN_DEFAULTS)
    if unknown:
        raise ComponentError(f"{who}: unknown recipe option(s) {sorted(unknown)}; known: {sorted(RETRAIN_DEFAULTS)}")
    rec = {**RETRAIN_DEFAULTS, **recipe}
    for key in ("n_train", "batch_size", "pool", "threads"):
        if isinstance(rec[key], bool) or not isinstance(rec[key], int) or rec[key] < 1:
            raise ComponentError(f"{who}: recipe {key} must be a positive int, got {rec[key]!r}")
    if isinstance(rec["epochs"], bool) or not isinstance(rec["epochs"], int) or rec["epochs"] < 1:
        raise ComponentError(f"{who}: recipe epochs must be a positive int, got {rec['epochs']!r}")
    for key in ("lr", "weight_decay"):
        if isinstance(rec[key], bool) or not isinstance(rec[key], (int, float)) or rec[key] < 0:
            raise ComponentError(f"{who}: recipe {key} must be a number >= 0, got {rec[key]!r}")
    widths = rec["widths"]
    if (not isinstance(widths, (list, tuple)) or len(widths) != 4
            or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)):
        raise ComponentError(f"{who}: recipe widths must be four positive ints (the stage widths), got {widths!r}")
    rec["widths"] = [int(w) for w in widths]
    rec["lr"], rec["weight_decay"] = float(rec["lr"]), float(rec["weight_decay"])
    return rec


def training_split(task: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images (``N x 3 x H x W`` in [0, 1]) and labels of the world ``task`` was trained
    on (the shortcut variant: its training world, a quarter of it relabelled)."""
    return shapes._world(task, "train", n).tensors()


def retrain_net(task: str, seed: int, recipe: dict[str, Any]) -> nn.Module:
    """The freshly initialised retraining network for ``task``: a ``pool x pool`` average pool, then the shapes CNN
    with ``recipe["widths"]``; the same ``seed`` gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = shapes.build_shapes_cnn(len(TASKS[shapes.label_task(task)]), tuple(recipe["widths"]))
    return nn.Sequential(nn.AvgPool2d(recipe["pool"]), net) if recipe["pool"] > 1 else net


def retrain_from_scratch(task: str, images: torch.Tensor, labels: torch.Tensor, seed: int, recipe: dict[str, Any],
                         device: torch.device | str = "cpu") -> Model:
    """A new network for ``task`` trained from ``seed`` on ``images`` / ``labels`` (CPU tensors, images in [0, 1])
    by ``recipe`` (:data:`RETRAIN_DEFAULTS`; :func:`interpbench.models.training.fit`: AdamW, cosine schedule,
    seeded order and flips, deterministic algorithms). Returns it as a Model in eval mode."""
    device = torch.device(device)
    net = retrain_net(task, seed, recipe)
    model = Model(net, spec=f"shapes:cnn.{task}+retrain", mean=shapes.MEAN, std=shapes.STD,
                  input_size=shapes.INPUT_SIZE, class_names=list(TASKS[shapes.label_task(task)]), cam_layer="",
                  label_space=f"shapes:{shapes.label_task(task)}", default_dataset="shapes", weights={}).to(device)
    with _threads(recipe["threads"]):
        fit(model, images, lambda logits, x, i: F.cross_entropy(logits, labels[i].to(device)),
            epochs=recipe["epochs"], batch_size=recipe["batch_size"], lr=recipe["lr"],
            weight_decay=recipe["weight_decay"], seed=seed, augment=recipe["augment"], device=device,
            description=f"retraining shapes:cnn.{task}", show_progress=False)
    return model.eval()


@contextlib.contextmanager
def _threads(n: int):
    """torch's intra-op CPU threads set to ``n`` for the block, then restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def retrain_identity(task: str, seed: int, recipe: dict[str, Any]) -> dict[str, Any]:
    """What of a retraining the cache key holds besides the data: the code and world versions, task, seed, recipe."""
    return {"retrain": RETRAIN_VERSION, "recipes": RECIPES_VERSION, "optimizer": OPTIMIZER,
            "world": GENERATOR_VERSION, "arch": shapes.ARCH_VERSION, "size": list(shapes.INPUT_SIZE),
            "task": task, "seed": int(seed), "recipe": dict(recipe)}


def cache_path(identity: dict[str, Any]) -> Path:
    """Where the result with ``identity`` is cached: ``$INTERPBENCH_CACHE/roar/<hash>.pt``."""
    return shapes.cache_dir() / "roar" / f"{config_key(identity)}.pt"


def cached_result(identity: dict[str, Any], make: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """The cached result of ``identity``, else ``make()`` (a dict of numbers) timed, saved atomically with its
    identity, and returned (with ``seconds`` and ``cached``: whether it came from the cache)."""
    path = cache_path(identity)
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("identity") == json.loads(json.dumps(identity, default=str)):
                return {**stored["result"], "cached": True}
        except Exception as error:  # noqa: BLE001 - a damaged entry is recomputed
            log.warning("roar cache: could not read %s (%s); recomputing", path, error)
    start = time.perf_counter()
    result = {k: float(v) for k, v in make().items()}
    result["seconds"] = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"identity": json.loads(json.dumps(identity, default=str)), "result": result}, path)
    return {**result, "cached": False}


def retrained_accuracy(task: str, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                       seed: int, recipe: dict[str, Any], device: torch.device | str = "cpu") -> float:
    """Test accuracy of a network retrained from scratch on ``train`` (images, labels), on ``test``."""
    model = retrain_from_scratch(task, train[0], train[1], seed, recipe, device)
    with _threads(recipe["threads"]):
        return accuracy(model, test[0], test[1], device=device)


__all__ = ["RETRAIN_DEFAULTS", "RETRAIN_VERSION", "cache_path", "cached_result", "check_recipe",
           "retrain_from_scratch", "retrain_identity", "retrain_net", "retrain_task", "retrained_accuracy",
           "training_split"]
