"""Recipes that make the second model of a pair reproducibly: fine-tune, distil, prune.

Each recipe takes model specs (or loaded Models) and named datasets (``datasets.yaml``), trains on the CPU or a GPU
with a fixed seed (seeded head, data order, augmentation and dropout; deterministic algorithms), and writes

- a checkpoint ``{"state_dict", "recipe", "test_accuracy"}`` loadable as a model spec ``SOURCE:NAME@PATH`` (the
  spec is printed, returned and checked: loading it gives the trained network's outputs), and
- a JSON record beside it (``PATH`` with ``.json``): the recipe, its parameters, the seed, the source weights'
  sha256, the datasets' identities, the final test accuracy, the wall time and the library versions.

- :func:`finetune`: all layers trained on a new dataset / task (a new classifier head when the label space
  changes, e.g. ``shapes:cnn`` from the shape task to the colour task, or an ImageNet model to the shapes world);
- :func:`distil`: a teacher into a (smaller) student with the soft-target loss of Hinton, Vinyals, Dean,
  "Distilling the knowledge in a neural network" (2015): ``alpha T^2 KL(p_T(teacher) || p_T(student)) +
  (1 - alpha) CE(y, student)``;
- :func:`prune`: global magnitude pruning (Han, Pool, Tran, Dally, NeurIPS 2015; global across layers as in
  Frankle & Carbin, ICLR 2019) of the Conv/Linear weights to an exact sparsity, with optional fine-tuning that
  keeps the pruned weights at zero.

The training itself (the loop, fine-tuning a loaded Model, the distillation loss, pruning masks) is in
:mod:`interpbench.models.training`; the built-in transfer ``shapes:cnn.shape2color`` uses its
:func:`~interpbench.models.training.finetune_model` and is cached like ``shapes:cnn``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from interpbench import api
from interpbench.core.base import ComponentError, Model
from interpbench.core.config import is_derived, parse_model_spec
from interpbench.core.tabular import slug
from interpbench.models.training import (
    OPTIMIZER,
    _environment,
    _identity,
    _resolve_device,
    accuracy,
    dataset_tensors,
    finetune_model,
    fit,
    global_magnitude_masks,
    prunable_weights,
    rewrap,
    soft_target_loss,
)
from interpbench.models.weights import atomic_save, file_sha256, state_dict_sha256

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RecipeResult:
    """What a recipe made: the spec that loads it, the checkpoint and record files, and the record itself."""

    spec: str
    path: Path
    record_path: Path
    record: dict[str, Any]


# --------------------------------------------------------------------------------------------- data


def load_recipe_dataset(name: str, split: str, model: Model, config: Any = None):
    return api.load_dataset(name, split=split, size=model.input_size, config=config)


# --------------------------------------------------------------------------------------------- models


def as_model(model: Model | str, what: str) -> Model:
    if isinstance(model, Model):
        return model
    if not isinstance(model, str) or is_derived(model):
        raise ComponentError(f"{what}: {model!r} must be a plain model spec SOURCE:NAME[@WEIGHTS] (not a pair) or a "
                             "loaded interpbench Model")
    return api.load_model(model)


def checkpoint_spec(source_spec: str, path: Path, label_space: str | None = None) -> str:
    """The spec that loads a checkpoint of ``source_spec``'s architecture: ``SOURCE:NAME@PATH``; for the shapes
    source with a new head, the name of the head's task (``shapes:cnn.color@PATH``)."""
    parsed = parse_model_spec(source_spec)
    name = parsed.name
    if parsed.source == "shapes" and label_space is not None:
        if not label_space.startswith("shapes:"):
            raise ComponentError(f"recipe: the shapes source builds heads for the shapes-world tasks only, not for "
                                 f"label space {label_space!r}; fine-tune shapes:cnn on a shapes dataset")
        arch, task = name.partition(".")[0], label_space.split(":", 1)[1]
        name = arch if task == "shape" else f"{arch}.{task}"
    return f"{parsed.source}:{name}@{Path(path).resolve()}"


# --------------------------------------------------------------------------------------------- training


def _save(net: nn.Module, record: dict[str, Any], out: Path, accuracy_value: float) -> tuple[Path, Path]:
    out = Path(out).expanduser()
    atomic_save({"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                  "recipe": json.loads(json.dumps(record, default=str)), "test_accuracy": float(accuracy_value)}, out)
    record_path = out.with_suffix(".json")
    return out, record_path


def _finish(result_net: nn.Module, record: dict[str, Any], out: Path, acc: float, spec_of: Callable[[Path], str],
            probe: torch.Tensor, device: torch.device) -> RecipeResult:
    """Save the checkpoint, check that its spec loads the same network (``record["_probe_logits"]``: the trained
    network's logits on ``probe``), write the JSON record."""
    expected = record.pop("_probe_logits")
    path, record_path = _save(result_net, record, out, acc)
    spec = spec_of(path)
    loaded = api.load_model(spec, device=str(device))
    with torch.no_grad():
        got = loaded(probe.to(device)).float().cpu()
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
        diff = float((got - expected).abs().max()) if got.shape == expected.shape else math.inf
        raise ComponentError(f"recipe: the checkpoint {str(path)!r} loaded as {spec!r} does not reproduce the trained "
                             f"network's outputs (max difference {diff:.3g}); the source's loader builds another "
                             "architecture for it")
    record.update(spec=spec, checkpoint=str(path.resolve()), checkpoint_sha256=file_sha256(path),
                  weights_sha256=state_dict_sha256({k: v.detach().cpu() for k, v in result_net.state_dict().items()}))
    record_path.write_text(json.dumps(record, indent=1, default=str))
    return RecipeResult(spec=spec, path=path, record_path=record_path, record=record)


def _default_out(kind: str, source: str, tag: str, seed: int) -> Path:
    return Path("checkpoints") / f"{slug(source)}.{kind}-{slug(tag)}-seed{seed}.pt"


# --------------------------------------------------------------------------------------------- fine-tune


def finetune(model: Model | str, dataset: str, *, out: str | Path | None = None, seed: int = 0, epochs: int = 2,
             lr: float = 1e-3, batch_size: int = 64, n_train: int | None = 2048, n_test: int | None = 512,
             weight_decay: float = 1e-4, augment: str = "hflip", head: str = "auto", device: str | None = "cpu",
             show_progress: bool | None = None, datasets_config: Any = None) -> RecipeResult:
    """Fine-tune ``model`` on the named dataset's train split, evaluate on its test split, write the checkpoint
    and its record; returns the spec that loads it (e.g. ``shapes:cnn.color@/abs/path.pt``)."""
    source = as_model(model, "finetune")
    dev = _resolve_device(device)
    train = load_recipe_dataset(dataset, "train", source, datasets_config)
    test = load_recipe_dataset(dataset, "test", source, datasets_config)
    tuned, acc, record = finetune_model(source, train, test, seed=seed, epochs=epochs, lr=lr, batch_size=batch_size,
                                        n_train=n_train, n_test=n_test, weight_decay=weight_decay, augment=augment,
                                        head=head, device=dev, show_progress=show_progress)
    probe = dataset_tensors(test, 4, "finetune (check)", need_labels=False)[0]
    with torch.no_grad():
        record["_probe_logits"] = tuned(probe.to(dev)).float().cpu()
    new_space = record["dataset"]["label_space"] if record["new_head"] else None
    out = Path(out) if out is not None else _default_out("finetune", source.spec, dataset, seed)
    return _finish(tuned.net, record, out, acc, lambda p: checkpoint_spec(source.spec, p, new_space), probe, dev)


# --------------------------------------------------------------------------------------------- distil


def distil(teacher: Model | str, student: Model | str, dataset: str | None = None, *,
           out: str | Path | None = None, temperature: float = 4.0, alpha: float = 0.9, seed: int = 0,
           epochs: int = 4, lr: float = 3e-3, batch_size: int = 64, n_train: int | None = 4096,
           n_test: int | None = 512, weight_decay: float = 1e-4, augment: str = "hflip",
           device: str | None = "cpu", show_progress: bool | None = None, datasets_config: Any = None) -> RecipeResult:
    """Distil ``teacher`` into ``student`` (e.g. ``shapes:cnn`` into ``shapes:cnn-small@random``) on the named
    dataset (default: the teacher's) with the soft-target loss; write the student's checkpoint and record."""
    if not temperature > 0:
        raise ComponentError(f"distil: temperature {temperature!r} must be > 0 (Hinton et al. use 1-20; default 4)")
    if not 0.0 <= alpha <= 1.0:
        raise ComponentError(f"distil: alpha {alpha!r} (weight of the soft-target term) must lie in [0, 1]")
    t_model, s_model = as_model(teacher, "distil (teacher)"), as_model(student, "distil (student)")
    if t_model.class_names != s_model.class_names:
        raise ComponentError(f"distil: student {s_model.spec!r} predicts {s_model.num_classes} classes "
                             f"({s_model.label_space}) but teacher {t_model.spec!r} predicts {t_model.num_classes} "
                             f"({t_model.label_space}); give a student spec for the teacher's label space (e.g. "
                             "shapes:cnn-small.color@random for shapes:cnn.color)")
    dev = _resolve_device(device)
    name = dataset or t_model.default_dataset
    if not name:
        raise ComponentError(f"distil: teacher {t_model.spec!r} has no default dataset; name one (--dataset)")
    train = load_recipe_dataset(name, "train", s_model, datasets_config)
    test = load_recipe_dataset(name, "test", s_model, datasets_config)
    same_labels = getattr(train, "label_space", None) == t_model.label_space
    if alpha < 1.0 and not same_labels:
        raise ComponentError(f"distil: alpha {alpha} < 1 mixes in the dataset's labels, but {name!r} is labelled in "
                             f"{getattr(train, 'label_space', None)!r}, not the teacher's {t_model.label_space!r}; "
                             "use alpha=1 (soft targets only) or a dataset in the teacher's label space")
    t0 = time.perf_counter()
    images, labels = dataset_tensors(train, n_train, "distil (train)", need_labels=alpha < 1.0)
    test_images, test_labels = dataset_tensors(test, n_test, "distil (test)", need_labels=same_labels)
    t_model = t_model.to(dev).eval()
    net = copy.deepcopy(s_model.net).cpu()
    pupil = rewrap(s_model, net, spec=f"{s_model.spec}+distil")
    pupil.to(dev)

    def loss_fn(logits: torch.Tensor, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = t_model(x).float()
        y = labels[index].to(dev) if labels is not None else None
        return soft_target_loss(logits.float(), teacher_logits, y, temperature, alpha)

    losses = fit(pupil, images, loss_fn, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                 seed=seed, augment=augment, device=dev, description=f"distilling {t_model.spec} into {s_model.spec}",
                 show_progress=show_progress)
    record: dict[str, Any] = {
        "recipe": "distil",
        "params": {"temperature": temperature, "alpha": alpha, "epochs": epochs, "lr": lr, "batch_size": batch_size,
                   "n_train": len(images), "n_test": len(test_images), "weight_decay": weight_decay,
                   "augment": augment, "optimizer": OPTIMIZER,
                   "loss": "alpha T^2 KL(teacher_T || student_T) + (1 - alpha) CE (Hinton et al. 2015)"},
        "seed": int(seed),
        "teacher": {"spec": t_model.spec, "weights_sha256": t_model.weights.get("sha256"),
                    "parameters": sum(p.numel() for p in t_model.net.parameters())},
        "student": {"spec": s_model.spec, "weights_sha256": s_model.weights.get("sha256"),
                    "parameters": sum(p.numel() for p in pupil.net.parameters())},
        "source": {"spec": s_model.spec, "weights_sha256": s_model.weights.get("sha256")},
        "dataset": {"name": name, "train": _identity(train), "test": _identity(test)},
        "epoch_losses": losses,
    }
    with torch.no_grad():
        chunks = [test_images[i:i + 256].to(dev) for i in range(0, len(test_images), 256)]
        agree = sum(int((t_model(x).argmax(1) == pupil(x).argmax(1)).sum()) for x in chunks)
    record["teacher_agreement"] = agree / len(test_images)
    if test_labels is not None:
        record["final_accuracy"] = accuracy(pupil, test_images, test_labels, device=dev)
        record["teacher_accuracy"] = accuracy(t_model, test_images, test_labels, device=dev)
    else:
        record["final_accuracy"] = record["teacher_agreement"]
        record["final_accuracy_is"] = "agreement with the teacher's top-1 (the dataset has no labels of its classes)"
    record["wall_time_s"] = time.perf_counter() - t0
    record["environment"] = _environment(dev)
    probe = test_images[:4]
    with torch.no_grad():
        record["_probe_logits"] = pupil(probe.to(dev)).float().cpu()
    out = Path(out) if out is not None else _default_out("distil", t_model.spec, s_model.spec, seed)
    return _finish(pupil.net, record, out, record["final_accuracy"], lambda p: checkpoint_spec(s_model.spec, p),
                   probe, dev)


# --------------------------------------------------------------------------------------------- prune


def prune(model: Model | str, sparsity: float, dataset: str | None = None, *, out: str | Path | None = None,
          include_head: bool = True, finetune_epochs: int = 0, lr: float = 1e-4, batch_size: int = 64,
          n_train: int | None = 2048, n_test: int | None = 512, weight_decay: float = 0.0, augment: str = "hflip",
          seed: int = 0, device: str | None = "cpu", show_progress: bool | None = None,
          datasets_config: Any = None) -> RecipeResult:
    """Global magnitude pruning of ``model`` to ``sparsity`` (share of its Conv/Linear weights set to zero), then
    ``finetune_epochs`` of fine-tuning with the pruned weights held at zero; accuracy on the named dataset's test
    split (default: the model's dataset). Units stay aligned, so ``unit_drift`` compares them unit by unit."""
    source = as_model(model, "prune")
    dev = _resolve_device(device)
    name = dataset or source.default_dataset
    if not name:
        raise ComponentError(f"prune: model {source.spec!r} has no default dataset to measure accuracy on; name one "
                             "(--dataset)")
    test = load_recipe_dataset(name, "test", source, datasets_config)
    if getattr(test, "label_space", None) != source.label_space:
        raise ComponentError(f"prune: dataset {name!r} is labelled in {getattr(test, 'label_space', None)!r}, the "
                             f"model predicts {source.label_space!r}; name a dataset of the model's classes")
    t0 = time.perf_counter()
    net = copy.deepcopy(source.net).cpu()
    pruned = rewrap(source, net, spec=f"{source.spec}+prune")
    weights = prunable_weights(net, include_head)
    masks = global_magnitude_masks(weights, float(sparsity))
    with torch.no_grad():
        for key, w in weights.items():
            w.mul_(masks[key].to(w.dtype))
    pruned.to(dev)
    masks = {k: m.to(dev) for k, m in masks.items()}
    weights = prunable_weights(net, include_head)
    losses: list[float] = []
    if finetune_epochs:
        train = load_recipe_dataset(name, "train", source, datasets_config)
        images, labels = dataset_tensors(train, n_train, "prune (fine-tune)")

        def reapply() -> None:
            with torch.no_grad():
                for key, w in weights.items():
                    w.mul_(masks[key].to(w.dtype))

        losses = fit(pruned, images, lambda logits, x, i: F.cross_entropy(logits, labels[i].to(dev)),
                     epochs=finetune_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
                     augment=augment, device=dev, description=f"fine-tuning {source.spec} pruned to {sparsity:.0%}",
                     show_progress=show_progress, after_step=reapply)
    test_images, test_labels = dataset_tensors(test, n_test, "prune (test)")
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    record: dict[str, Any] = {
        "recipe": "prune",
        "params": {"sparsity": float(sparsity), "criterion": "global magnitude |w| (Han et al. 2015)",
                   "include_head": include_head, "pruned": "Conv/Linear weights", "finetune_epochs": finetune_epochs,
                   "lr": lr, "batch_size": batch_size, "n_train": n_train if finetune_epochs else 0,
                   "n_test": len(test_images), "weight_decay": weight_decay, "augment": augment,
                   "optimizer": OPTIMIZER if finetune_epochs else None},
        "seed": int(seed),
        "source": {"spec": source.spec, "weights_sha256": source.weights.get("sha256"),
                   "accuracy": accuracy(source.to(dev), test_images, test_labels, device=dev)},
        "dataset": {"name": name, "test": _identity(test)},
        "achieved_sparsity": zeros / total,
        "pruned_weights": total,
        "per_layer_sparsity": {k: float((w == 0).double().mean()) for k, w in weights.items()},
        "epoch_losses": losses,
        "final_accuracy": accuracy(pruned, test_images, test_labels, device=dev),
        "wall_time_s": time.perf_counter() - t0,
        "environment": _environment(dev),
    }
    probe = test_images[:4]
    with torch.no_grad():
        record["_probe_logits"] = pruned(probe.to(dev)).float().cpu()
    out = Path(out) if out is not None else _default_out("prune", source.spec, f"{sparsity:g}", seed)
    return _finish(net, record, out, record["final_accuracy"], lambda p: checkpoint_spec(source.spec, p), probe, dev)


__all__ = ["RecipeResult", "checkpoint_spec", "distil", "finetune", "prune"]
