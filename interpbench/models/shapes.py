"""The embedded model ``shapes:cnn``: a small convnet trained on the shapes world on first use, then cached.

Specs: ``shapes:cnn`` (= ``shapes:cnn.shape``), ``shapes:cnn.color``, ``shapes:cnn.texture``; weights
``@random`` (seeded random init) or ``@/path/to/ckpt.pt`` (a state dict, loaded with ``weights_only=True``).
``shapes:cnn.shape2color``: ``shapes:cnn`` fine-tuned to the colour task (``interpbench.models.training.finetune_model``,
``TRANSFER_DEFAULTS``), made on first use and cached the same way. ``shapes:cnn-small.TASK@random``: a half-width
student architecture for distillation (no default weights).

Training is deterministic given the recipe (seeded init, seeded data order, deterministic ops) on a given machine
and thread count; the checkpoint lands in ``$INTERPBENCH_CACHE`` (default ``platformdirs.user_cache_dir
("interpbench")``) under a name that includes a hash of the recipe, so a changed recipe retrains.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from interpbench.core.base import ComponentError, Model, ModelSource
from interpbench.core.identity import file_sha256
from interpbench.datasets.shapes import GENERATOR_VERSION, TASKS, ShapesWorld
from interpbench.datasets.shortcut import (
    PATCH_FRACTION,
    SHORTCUT_VERSION,
    TRAIN_RELABEL,
    ShortcutWorld,
)
from interpbench.models.timm_source import timm_cam_layer
from interpbench.models.training import (
    OPTIMIZER,
    RECIPES_VERSION,
    deterministic,
    finetune_model,
    progress_bar,
)
from interpbench.models.weights import atomic_save, state_dict_sha256
from interpbench.ops.tokens import token_grid_of

log = logging.getLogger(__name__)

ARCH_VERSION = "shapes-cnn-1"
INPUT_SIZE = (64, 64)
# Per-channel mean / std of the shapes world (test split, 512 images), rounded.
MEAN = (0.34, 0.59, 0.61)
STD = (0.12, 0.12, 0.14)
WIDTHS = (24, 32, 64, 128)
TRAIN_DEFAULTS: dict[str, Any] = {
    "n_train": 4096,
    "epochs": 4,
    "batch_size": 64,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "n_test": 512,
}
DEFAULT_DATASET = {"shape": "shapes", "color": "shapes-color", "texture": "shapes-texture",
                   "shortcut": "shapes-shortcut"}
# Variants trained on another world, with the labels of a task: ``shapes:cnn.shortcut`` learns shapes on the
# planted-shortcut world (interpbench.datasets.shortcut), where a corner patch's colour predicts the label.
VARIANTS = {"shortcut": "shape"}
# Transfers: ``shapes:cnn.shape2color`` is ``shapes:cnn`` (shape task, same seed) fine-tuned to the colour task by
# interpbench.models.training.finetune_model with TRANSFER_DEFAULTS, trained on first use and cached like the others.
TRANSFERS = {"shape2color": ("shape", "color")}
TRANSFER_DEFAULTS: dict[str, Any] = {"n_train": 2048, "epochs": 2, "batch_size": 64, "lr": 2e-3,
                                     "weight_decay": 1e-4, "n_test": 512, "augment": "hflip", "head": "new"}
# Architectures: ``cnn`` and a half-width student for distillation (``cnn-small``: @random or a checkpoint only).
ARCHS = {"cnn": WIDTHS, "cnn-small": (12, 16, 32, 64)}
# ``shapes:vit``: a small vision transformer on the same world (timm's VisionTransformer: 8 px patches on 64 px, an
# 8 x 8 patch grid and a class token, pre-norm blocks), trained by the same loop with its own recipe.
VIT_ARCH_VERSION = "shapes-vit-1"
VIT_CONFIG: dict[str, Any] = {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0}
VIT_TRAIN_DEFAULTS: dict[str, Any] = {
    "n_train": 8192,
    "epochs": 24,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "n_test": 512,
}


def label_task(task: str) -> str:
    """The task whose labels ``task`` (a task, a variant or a transfer) predicts."""
    return TRANSFERS[task][1] if task in TRANSFERS else VARIANTS.get(task, task)


def _world(task: str, split: str, n: int):
    """The training / test world of ``task`` (a task of TASKS or a variant)."""
    if task == "shortcut":
        return ShortcutWorld(split, INPUT_SIZE, n=n, mode="agree")  # train: a quarter relabelled; test: agreeing
    return ShapesWorld(split, INPUT_SIZE, n=n, task=task)


def _variant_recipe(task: str) -> dict[str, Any]:
    if task != "shortcut":
        return {}

    return {"shortcut": SHORTCUT_VERSION, "patch": PATCH_FRACTION, "relabel": TRAIN_RELABEL}


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    # ReLU not in-place, so hooks on any module see tensors nobody overwrites
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def build_shapes_cnn(num_classes: int, widths: tuple[int, ...] = WIDTHS) -> nn.Sequential:
    """stem (stride 2) -> layer1 -> pool -> layer2 -> pool -> layer3 -> global average pool -> fc.

    At 64 px the stages see 32, 32, 16 and 8 px; ``layer3`` (8 x 8) is the CAM layer.
    """
    w0, w1, w2, w3 = widths
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(*_conv_bn_relu(3, w0, stride=2)),
        layer1=nn.Sequential(*_conv_bn_relu(w0, w1)),
        layer2=nn.Sequential(nn.MaxPool2d(2), *_conv_bn_relu(w1, w2)),
        layer3=nn.Sequential(nn.MaxPool2d(2), *_conv_bn_relu(w2, w3)),
        pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        fc=nn.Linear(w3, num_classes),
    ))


def build_shapes_vit(num_classes: int) -> nn.Module:
    """timm's VisionTransformer with :data:`VIT_CONFIG` at 64 px: patch embedding (8 px, 8 x 8 grid), class token,
    ``depth`` pre-norm blocks, final norm, linear head on the class token. The CAM layer is the last block's
    ``norm1`` (:func:`interpbench.models.timm_source.timm_cam_layer`)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=INPUT_SIZE, num_classes=num_classes, **VIT_CONFIG)


def seeded_vit(task: str, seed: int) -> nn.Module:
    """A freshly initialised ``shapes:vit`` for ``task``; the same ``seed`` gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_shapes_vit(len(TASKS[label_task(task)]))


def seeded_net(task: str, seed: int, widths: tuple[int, ...] = WIDTHS) -> nn.Sequential:
    """A freshly initialised network for ``task``; the same ``seed`` gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_shapes_cnn(len(TASKS[label_task(task)]), widths)


def recipe(task: str, seed: int, **overrides: Any) -> dict[str, Any]:
    """Everything that determines the trained weights; its hash names the cached checkpoint."""
    unknown = set(overrides) - set(TRAIN_DEFAULTS)
    if unknown:
        raise ComponentError(f"shapes:cnn training: unknown option(s) {sorted(unknown)}; "
                             f"known: {sorted(TRAIN_DEFAULTS)}")
    return {"arch": ARCH_VERSION, "widths": list(WIDTHS), "world": GENERATOR_VERSION, "size": list(INPUT_SIZE),
            "task": task, "seed": int(seed), "mean": list(MEAN), "std": list(STD), "optimizer": "adamw+onecycle",
            "augment": "hflip", **_variant_recipe(task), **TRAIN_DEFAULTS, **overrides}


def vit_recipe(task: str, seed: int, **overrides: Any) -> dict[str, Any]:
    """Everything that determines the trained ``shapes:vit`` weights; its hash names the cached checkpoint."""
    unknown = set(overrides) - set(VIT_TRAIN_DEFAULTS)
    if unknown:
        raise ComponentError(f"shapes:vit training: unknown option(s) {sorted(unknown)}; "
                             f"known: {sorted(VIT_TRAIN_DEFAULTS)}")
    return {"arch": VIT_ARCH_VERSION, **VIT_CONFIG, "world": GENERATOR_VERSION, "size": list(INPUT_SIZE),
            "task": task, "seed": int(seed), "mean": list(MEAN), "std": list(STD), "optimizer": "adamw+onecycle",
            "augment": "hflip", **_variant_recipe(task), **VIT_TRAIN_DEFAULTS, **overrides}


def recipe_hash(rec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """``$INTERPBENCH_CACHE`` or the user cache dir of interpbench."""
    env = os.environ.get("INTERPBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("interpbench"))


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``net`` on images in [0, 1] (normalised here)."""
    net.eval()
    hits = sum(int((net(_normalize(images[i:i + batch_size])).argmax(1) == labels[i:i + batch_size]).sum())
               for i in range(0, len(images), batch_size))
    return hits / max(len(images), 1)


def train_shapes_cnn(task: str = "shape", seed: int = 0, *, show_progress: bool | None = None,
                     **overrides: Any) -> tuple[nn.Sequential, float]:
    """Train ``shapes:cnn`` for ``task`` from ``seed``; return the network (eval mode) and its test accuracy.

    Data: the shapes world, train split (world seed 0, ``n_train`` images, random horizontal flips), evaluated on
    the first ``n_test`` images of the test split. AdamW with a one-cycle learning-rate schedule.
    """
    if task not in TASKS and task not in VARIANTS:
        raise ComponentError(f"shapes:cnn: task {task!r} is not one of {sorted(TASKS) + sorted(VARIANTS)}")
    return _fit(seeded_net(task, seed), recipe(task, seed, **overrides), task, seed, "cnn", show_progress)


def train_shapes_vit(task: str = "shape", seed: int = 0, *, show_progress: bool | None = None,
                     **overrides: Any) -> tuple[nn.Module, float]:
    """Train ``shapes:vit`` for ``task`` from ``seed`` (:data:`VIT_TRAIN_DEFAULTS`: twice the data and six times
    the epochs of ``shapes:cnn``, as a transformer without convolutional priors needs); the same loop and data as
    :func:`train_shapes_cnn`. Returns the network (eval mode) and its test accuracy."""
    if task not in TASKS and task not in VARIANTS:
        raise ComponentError(f"shapes:vit: task {task!r} is not one of {sorted(TASKS) + sorted(VARIANTS)}")
    return _fit(seeded_vit(task, seed), vit_recipe(task, seed, **overrides), task, seed, "vit", show_progress)


def _fit(net: nn.Module, rec: dict[str, Any], task: str, seed: int, arch: str,
         show_progress: bool | None) -> tuple[nn.Module, float]:
    """The training loop of the shapes models: AdamW with a one-cycle schedule, seeded data order and flips."""
    images, labels = _world(task, "train", rec["n_train"]).tensors()
    test_images, test_labels = _world(task, "test", rec["n_test"]).tensors()
    steps_per_epoch = len(images) // rec["batch_size"]
    optimizer = torch.optim.AdamW(net.parameters(), lr=rec["lr"], weight_decay=rec["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=rec["lr"], epochs=rec["epochs"],
                                                   steps_per_epoch=steps_per_epoch)
    order_rng = torch.Generator().manual_seed(seed)
    progress = progress_bar(rec["epochs"] * steps_per_epoch, f"training shapes:{arch}.{task}", show_progress,
                            transient=True)
    bar = progress.add_task(f"training shapes:{arch}.{task}", total=rec["epochs"] * steps_per_epoch, status="") \
        if progress else None
    with deterministic(torch.device("cpu")), (progress or contextlib.nullcontext()):
        for epoch in range(rec["epochs"]):
            net.train()
            order = torch.randperm(len(images), generator=order_rng)
            flips = torch.rand(len(images), generator=order_rng) < 0.5
            total_loss = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * rec["batch_size"]:(step + 1) * rec["batch_size"]]
                x = images[idx]
                x = torch.where(flips[idx].view(-1, 1, 1, 1), x.flip(-1), x)
                loss = nn.functional.cross_entropy(net(_normalize(x)), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total_loss += loss.item()
                if progress:
                    progress.update(bar, advance=1, status=f"epoch {epoch + 1} loss {loss.item():.3f}")
            log.info("shapes:%s.%s epoch %d/%d: mean loss %.4f", arch, task, epoch + 1, rec["epochs"],
                     total_loss / steps_per_epoch)
    acc = accuracy(net, test_images, test_labels)
    log.info("shapes:%s.%s: test accuracy %.4f on %d images", arch, task, acc, len(test_images))
    return net.eval(), acc


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; the atomic rename still keeps the file whole
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Checkpoints shipped inside the package (``python -m interpbench.models.shapes`` remakes them): the default
# experiment's models, so that every machine scores the same weights and nobody waits for training. A file is
# used only when its name (task, seed, recipe hash) is the one the current recipe asks for; otherwise the recipe
# trains on first use as before.
PACKAGED_DIR = Path(__file__).with_name("packaged")
PACKAGED = ("shape", "shape2color", "shortcut")
PACKAGED_VIT = ("shape",)  # shapes:vit


def packaged_checkpoint(name: str) -> Path | None:
    path = PACKAGED_DIR / name
    return path if path.is_file() else None


def cached_checkpoint(task: str = "shape", seed: int = 0, *, show_progress: bool | None = None,
                      arch: str = "cnn") -> Path:
    """The path of the trained checkpoint for (task, seed) of ``arch`` (``cnn`` or ``vit``): the packaged one, or
    the cached one, training and caching it first if needed."""
    rec = vit_recipe(task, seed) if arch == "vit" else recipe(task, seed)
    train = train_shapes_vit if arch == "vit" else train_shapes_cnn

    def make(path: Path) -> None:
        log.warning("shapes:%s.%s: no cached weights at %s; training them now (%s on a CPU)", arch, task, path,
                    "several minutes" if arch == "vit" else "about a minute")
        start = time.perf_counter()
        net, acc = train(task, seed, show_progress=show_progress)
        seconds = time.perf_counter() - start
        atomic_save({"state_dict": net.state_dict(), "recipe": rec, "test_accuracy": acc,
                      "train_seconds": seconds}, path)
        log.info("shapes:%s.%s: trained in %.1f s, test accuracy %.4f, saved to %s", arch, task, seconds, acc, path)

    return _packaged_or_cached(f"shapes-{arch}-{task}-seed{seed}-{recipe_hash(rec)}.pt", make)


def _packaged_or_cached(name: str, make: Callable[[Path], None]) -> Path:
    """The packaged checkpoint ``name``, else the cached one, made by ``make(path)`` first if needed (one process
    makes it, the others wait for its file)."""
    shipped = packaged_checkpoint(name)
    if shipped is not None:
        return shipped
    path = cache_dir() / name
    if path.exists():
        return path
    with _file_lock(path.with_name(path.name + ".lock")):
        if not path.exists():
            make(path)
    return path


def transfer_recipe(tag: str, seed: int) -> dict[str, Any]:
    """Everything that determines the weights of a transfer (``shape2color``): the source's recipe hash, the target
    task, the fine-tuning recipe and its code version; its hash names the cached checkpoint."""
    source, target = TRANSFERS[tag]
    return {"recipe": "finetune", "recipes_version": RECIPES_VERSION, "optimizer": OPTIMIZER,
            "source": f"shapes:cnn.{source}", "source_recipe": recipe_hash(recipe(source, seed)), "target": target,
            "world": GENERATOR_VERSION, "seed": int(seed), **TRANSFER_DEFAULTS}


def cached_transfer(tag: str, seed: int = 0, *, show_progress: bool | None = None) -> Path:
    """The checkpoint of transfer ``tag`` (e.g. ``shape2color``) for ``seed``, fine-tuning and caching it first if
    needed (from the cached ``shapes:cnn`` of the source task; about 15 s on 2 CPU cores)."""
    rec = transfer_recipe(tag, seed)

    def make(path: Path) -> None:
        source, target = TRANSFERS[tag]
        log.warning("shapes:cnn.%s: no cached weights at %s; fine-tuning shapes:cnn.%s to the %s task now", tag, path,
                    source, target)
        base = ShapesModelSource(seed=seed).load(f"cnn.{source}", None, None)
        p = TRANSFER_DEFAULTS
        train = ShapesWorld("train", INPUT_SIZE, n=p["n_train"], task=target)
        test = ShapesWorld("test", INPUT_SIZE, n=p["n_test"], task=target)
        tuned, acc, record = finetune_model(base, train, test, seed=seed, epochs=p["epochs"], lr=p["lr"],
                                            batch_size=p["batch_size"], n_train=p["n_train"], n_test=p["n_test"],
                                            weight_decay=p["weight_decay"], augment=p["augment"], head=p["head"],
                                            device="cpu", show_progress=show_progress)
        atomic_save({"state_dict": tuned.net.state_dict(), "recipe": rec, "test_accuracy": acc,
                      "train_seconds": record["wall_time_s"]}, path)
        log.info("shapes:cnn.%s: fine-tuned in %.1f s, test accuracy %.4f, saved to %s", tag, record["wall_time_s"],
                 acc, path)

    return _packaged_or_cached(f"shapes-cnn-{tag}-seed{seed}-{recipe_hash(rec)}.pt", make)


def load_checkpoint(path: str | os.PathLike, spec: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A state dict and its metadata from a file (a bare state dict or ``{"state_dict": ..., ...}``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ComponentError(f"model {spec!r}: weights file {str(path)!r} does not exist; give the path of a state "
                             "dict saved with torch.save(net.state_dict(), path), or use @random")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ComponentError(f"model {spec!r}: could not read weights file {str(path)!r} with "
                             f"torch.load(weights_only=True): {error}") from error
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ComponentError(f"model {spec!r}: {str(path)!r} holds a {type(obj).__name__}, not a state dict")


class ShapesModelSource(ModelSource):
    """Model source ``shapes``: ``shapes:cnn`` / ``shapes:cnn.color`` / ``shapes:cnn.texture`` /
    ``shapes:cnn.shortcut``, and the vision transformer ``shapes:vit`` (same tasks and variants)."""

    name = "shapes"
    defaults = {"seed": 0}

    def available(self) -> list[str]:
        return ["cnn", "cnn.shape", "cnn.color", "cnn.texture", "cnn.shortcut", *[f"cnn.{t}" for t in TRANSFERS],
                "cnn-small@random", "vit", "vit.shape", "vit.color", "vit.texture", "vit.shortcut"]

    def load(self, name: str, weights: str | None, resolve_weights: Callable[..., Any] | None = None) -> Model:
        arch, _, task = name.partition(".")
        task = task or "shape"
        if (arch not in ARCHS and arch != "vit") or (task not in TASKS and task not in VARIANTS and task not in TRANSFERS) \
                or (arch == "cnn-small" and task not in TASKS) or (arch == "vit" and task in TRANSFERS):
            raise ComponentError(f"model 'shapes:{name}': unknown name {name!r}; the shapes source has "
                                 f"{self.available()} (e.g. 'shapes:cnn')")
        tag = arch if task == "shape" else f"{arch}.{task}"
        spec = f"shapes:{tag}" + (f"@{weights}" if weights else "")
        if arch == "cnn-small" and weights is None:
            raise ComponentError(f"model {spec!r} has no default weights: {arch} is a student architecture for "
                                 f"`interpbench distil`; use shapes:{tag}@random or "
                                 f"shapes:{tag}@/path/to/checkpoint.pt")
        seed = int(self.params["seed"])
        net = seeded_vit(task, seed) if arch == "vit" else seeded_net(task, seed, ARCHS[arch])
        info: dict[str, Any] = {"source": "shapes", "tag": tag}
        if weights == "random":
            info.update(tag=f"{tag}@random", path=None, sha256=state_dict_sha256(net.state_dict()),
                        sha256_of="state_dict", seed=seed)
        else:
            if weights is not None:
                path = weights
            else:  # a plugin may serve the weights; else train-or-load the cached ones
                path = resolve_weights(source="shapes", name=name, tag=None) if resolve_weights else None
                if path is None:
                    path = cached_transfer(task, seed) if task in TRANSFERS else cached_checkpoint(task, seed,
                                                                                                   arch=arch)
            state, meta = load_checkpoint(path, spec)
            try:
                net.load_state_dict(state)
            except RuntimeError as error:
                raise ComponentError(f"model {spec!r}: {str(path)!r} does not fit the shapes:{arch} architecture "
                                     f"for task {task!r} ({len(TASKS[label_task(task)])} classes): "
                                     f"{error}") from error
            # The identity is the weights themselves: the file also holds training metadata (its wall time).
            info.update(path=str(path), sha256=state_dict_sha256(state), sha256_of="state_dict",
                        file_sha256=file_sha256(Path(path)), recipe=meta.get("recipe"),
                        test_accuracy=meta.get("test_accuracy"))
        labels = label_task(task)
        if arch == "vit":
            cam_layer = timm_cam_layer(net)  # blocks.3.norm1
            layers = ["patch_embed", *[f"blocks.{i}" for i in range(len(net.blocks))], cam_layer]
        else:
            cam_layer, layers = "layer3", ["stem", "layer1", "layer2", "layer3"]
        model = Model(net.eval(), spec=spec, mean=MEAN, std=STD, input_size=INPUT_SIZE,
                      class_names=list(TASKS[labels]), cam_layer=cam_layer, label_space=f"shapes:{labels}",
                      default_dataset=DEFAULT_DATASET[task if task in DEFAULT_DATASET else labels],
                      weights=info, layers=layers)
        if arch == "vit":
            model.token_grid = token_grid_of(net)  # 8 x 8 patches after one class token
        return model


def write_packaged(directory: Path = PACKAGED_DIR, seed: int = 0) -> list[Path]:
    """Train the ``PACKAGED`` models from their recipes (one thread, so that the bits do not depend on the
    machine's thread count) and write them to ``directory``; stale packaged files are removed."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in [*directory.glob("shapes-cnn-*.pt"), *directory.glob("shapes-vit-*.pt")]:
        old.unlink()
    previous, cache = torch.get_num_threads(), os.environ.get("INTERPBENCH_CACHE")
    torch.set_num_threads(1)
    written = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["INTERPBENCH_CACHE"] = tmp  # train into an empty cache, never reuse a stale file
            for task in PACKAGED:
                made = cached_transfer(task, seed) if task in TRANSFERS else cached_checkpoint(task, seed)
                target = directory / made.name
                shutil.copyfile(made, target)
                written.append(target)
            for task in PACKAGED_VIT:
                made = cached_checkpoint(task, seed, arch="vit")
                target = directory / made.name
                shutil.copyfile(made, target)
                written.append(target)
    finally:
        torch.set_num_threads(previous)
        if cache is None:
            os.environ.pop("INTERPBENCH_CACHE", None)
        else:
            os.environ["INTERPBENCH_CACHE"] = cache
    return written


if __name__ == "__main__":  # python -m interpbench.models.shapes: remake the packaged checkpoints
    for written_path in write_packaged():
        print(written_path, file_sha256(written_path))
