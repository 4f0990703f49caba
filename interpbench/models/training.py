"""Training a Model: the loop (:func:`fit`: AdamW, cosine schedule, seeded order and augmentation, deterministic
algorithms), fine-tuning to a new task (:func:`finetune_model`), the soft-target loss of distillation, magnitude
pruning masks, and the helpers they share (a dataset as tensors, the classifier head, accuracy).

Plain functions on loaded Models and tensors: the model layer uses them to train the embedded shapes models, and
:mod:`interpbench.engine.recipes` wraps them into recipes that take specs and named datasets and write checkpoints
with their records.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import platform
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from interpbench.core.base import ComponentError, Model, collate
from interpbench.core.config import resolve_device
from interpbench.core.identity import VERSION

log = logging.getLogger(__name__)


RECIPES_VERSION = "1"


OPTIMIZER = "adamw+cosine"  # AdamW (Loshchilov & Hutter 2019), learning rate annealed to 0 by a cosine over all steps


AUGMENTATIONS = ("hflip", "none")


MAX_TRAIN_BYTES = 4 << 30


def dataset_tensors(dataset: Any, n: int | None, what: str, batch_size: int = 64,
                    need_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``n`` samples of ``dataset`` as ``N x 3 x H x W`` images in [0, 1] and ``N`` labels (CPU)."""
    count = len(dataset) if n is None else min(int(n), len(dataset))
    if count < 1:
        raise ComponentError(f"{what}: dataset {getattr(dataset, 'name', dataset)!r} has no samples")
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    subset = torch.utils.data.Subset(dataset, range(count))
    for batch in torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        if images and batch["images"].shape[1:] != images[0].shape[1:]:
            raise ComponentError(f"{what}: images of dataset {getattr(dataset, 'name', '?')!r} differ in size; load "
                                 "it at a fixed size")
        images.append(batch["images"].float())
        if need_labels:
            if "labels" not in batch:
                raise ComponentError(f"{what}: dataset {getattr(dataset, 'name', '?')!r} has samples without a single "
                                     "'label'; a recipe trains on single-label classification data")
            labels.append(batch["labels"])
        if sum(x.numel() for x in images) * 4 > MAX_TRAIN_BYTES:
            raise ComponentError(f"{what}: {count} images do not fit the {MAX_TRAIN_BYTES >> 30} GiB in-memory "
                                 "training set; lower n_train (--n-train)")
    return torch.cat(images), (torch.cat(labels) if need_labels else None)


def classifier_name(net: nn.Module) -> str:
    """The module that produces the logits: timm's ``get_classifier()``, else the last Linear (or Conv2d,
    SqueezeNet) registered."""
    if hasattr(net, "get_classifier"):
        head = net.get_classifier()
        for name, module in net.named_modules():
            if module is head:
                return name
    name = ""
    for n, m in net.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            name = n
    if not name:
        raise ComponentError("recipe: the network has no Linear or Conv2d layer to use as the classifier head")
    return name


def replace_classifier(net: nn.Module, num_classes: int, seed: int) -> str:
    """A new, seeded classifier head for ``num_classes`` (the layer a source builds for that class count, so the
    checkpoint loads as ``SOURCE:NAME@PATH``). Returns the head's module name."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(net, "reset_classifier") and hasattr(net, "get_classifier"):  # timm
            net.reset_classifier(num_classes)
            return classifier_name(net)
        name = classifier_name(net)
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        old = getattr(parent, attr)
        if isinstance(old, nn.Linear):
            new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        else:
            new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                            bias=old.bias is not None)
        setattr(parent, attr, new.to(old.weight.device))
        return name


def rewrap(model: Model, net: nn.Module, *, spec: str, class_names: list[str] | None = None,
           label_space: str | None = None, default_dataset: str | None = None,
           weights: dict[str, Any] | None = None) -> Model:
    """A Model around ``net`` with ``model``'s normalisation, size and layers (and new classes if given)."""
    return Model(net, spec=spec, mean=model.mean.flatten().tolist(), std=model.std.flatten().tolist(),
                 input_size=model.input_size, class_names=class_names or model.class_names,
                 cam_layer=model.cam_layer, label_space=label_space or model.label_space,
                 default_dataset=model.default_dataset if default_dataset is None else default_dataset,
                 weights=weights or dict(model.weights), layers=model._layer_names).eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256,
             device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of a Model (images in [0, 1]) on ``images`` / ``labels``."""
    was_training = model.training
    model.eval()
    hits = 0
    for i in range(0, len(images), batch_size):
        logits = model(images[i:i + batch_size].to(device))
        hits += int((logits.argmax(1).cpu() == labels[i:i + batch_size]).sum())
    model.train(was_training)
    return hits / max(len(images), 1)


@contextlib.contextmanager
def deterministic(device: torch.device):
    """Deterministic algorithms while training (CPU: enforced; CUDA: warnings only, cuBLAS needs
    CUBLAS_WORKSPACE_CONFIG set before start-up for bitwise repeatability)."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def progress_bar(total: int, description: str, show: bool | None, transient: bool = False):
    """A rich progress bar (on a TTY unless ``show`` says otherwise), or None; ``transient``: erased when done."""
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}"), transient=transient)


def fit(model: Model, images: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        *, epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int, augment: str,
        device: torch.device, description: str, show_progress: bool | None = None,
        after_step: Callable[[], None] | None = None) -> list[float]:
    """Train every parameter of ``model`` (a Model: images in [0, 1]) with AdamW and a cosine schedule.

    ``loss_fn(logits, images, index)`` gets the batch's logits, its (augmented) images and its sample indices.
    Data order and flips come from a generator seeded with ``seed``; torch's global RNG (dropout) is seeded too.
    Returns the mean loss per epoch.
    """
    if augment not in AUGMENTATIONS:
        raise ComponentError(f"recipe: augment {augment!r}: choose one of {list(AUGMENTATIONS)}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < (0 if name == "epochs" else 1):
            kind = "non-negative" if name == "epochs" else "positive"
            raise ComponentError(f"recipe: {name} {value!r} must be a {kind} int")
    steps_per_epoch = max(1, len(images) // batch_size)
    total = epochs * steps_per_epoch
    losses: list[float] = []
    if total == 0:
        return losses
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    order_rng = torch.Generator().manual_seed(seed)
    bar = progress_bar(total, description, show_progress)
    task = bar.add_task(description, total=total, status="") if bar else None
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), deterministic(device), (bar or contextlib.nullcontext()):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(images), generator=order_rng)
            flips = torch.rand(len(images), generator=order_rng) < 0.5
            running = 0.0
            for step in range(steps_per_epoch):
                index = order[step * batch_size:(step + 1) * batch_size]
                x = images[index].to(device)
                if augment == "hflip":
                    x = torch.where(flips[index].view(-1, 1, 1, 1).to(device), x.flip(-1), x)
                loss = loss_fn(model(x), x, index)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if after_step is not None:
                    after_step()
                running += float(loss.detach())
                if bar:
                    bar.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {float(loss):.3f}")
            losses.append(running / steps_per_epoch)
            log.info("%s: epoch %d/%d, mean loss %.4f", description, epoch + 1, epochs, losses[-1])
    model.eval()
    return losses


def finetune_model(model: Model, train: Any, test: Any, *, seed: int = 0, epochs: int = 2, lr: float = 1e-3,
                   batch_size: int = 64, n_train: int | None = 2048, n_test: int | None = 512,
                   weight_decay: float = 1e-4, augment: str = "hflip", head: str = "auto",
                   device: str | torch.device | None = "cpu", show_progress: bool | None = None
                   ) -> tuple[Model, float, dict[str, Any]]:
    """Fine-tune a copy of ``model`` on the ``train`` dataset (all layers, cross-entropy on its labels) and return
    ``(fine-tuned Model, accuracy on the first n_test samples of test, record)``; the caller's model is unchanged.

    ``head``: ``"auto"`` (a new seeded head when the dataset's classes differ from the model's), ``"new"``,
    ``"keep"``.
    """
    if head not in ("auto", "new", "keep"):
        raise ComponentError(f"finetune: head {head!r}: choose 'auto', 'new' or 'keep'")
    dev = _resolve_device(device)
    classes = list(getattr(train, "classes", []) or [])
    label_space = getattr(train, "label_space", None)
    if not classes:
        raise ComponentError(f"finetune: dataset {getattr(train, 'name', train)!r} lists no classes; a recipe trains "
                             "on a classification dataset (attribute 'classes')")
    new_head = head == "new" or (head == "auto" and (classes != model.class_names or label_space != model.label_space))
    if head == "keep" and len(classes) != model.num_classes:
        raise ComponentError(f"finetune: head='keep' but the model predicts {model.num_classes} classes and dataset "
                             f"{getattr(train, 'name', '?')!r} has {len(classes)}; use head='auto'")
    t0 = time.perf_counter()
    images, labels = dataset_tensors(train, n_train, "finetune (train)")
    test_images, test_labels = dataset_tensors(test, n_test, "finetune (test)")
    net = copy.deepcopy(model.net).cpu()
    head_name = replace_classifier(net, len(classes), seed) if new_head else None
    tuned = rewrap(model, net, spec=f"{model.spec}+finetune", class_names=classes if new_head else None,
                   label_space=label_space if new_head else None, default_dataset=getattr(train, "name", None))
    tuned.to(dev)
    losses = fit(tuned, images, lambda logits, x, i: F.cross_entropy(logits, labels[i].to(dev)), epochs=epochs,
                 batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, augment=augment, device=dev,
                 description=f"fine-tuning {model.spec} on {getattr(train, 'name', 'data')}",
                 show_progress=show_progress)
    acc = accuracy(tuned, test_images, test_labels, device=dev)
    record = {
        "recipe": "finetune",
        "params": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "n_train": len(images),
                   "n_test": len(test_images), "weight_decay": weight_decay, "augment": augment, "head": head,
                   "optimizer": OPTIMIZER, "trained": "all layers", "loss": "cross-entropy"},
        "seed": int(seed),
        "source": {"spec": model.spec, "weights_sha256": model.weights.get("sha256"),
                   "classes": model.class_names, "label_space": model.label_space},
        "new_head": head_name,
        "dataset": {"name": getattr(train, "name", None), "train": _identity(train), "test": _identity(test),
                    "classes": classes, "label_space": label_space},
        "final_accuracy": acc,
        "epoch_losses": losses,
        "wall_time_s": time.perf_counter() - t0,
        "environment": _environment(dev),
    }
    log.info("finetune %s -> %s: test accuracy %.4f", model.spec, getattr(train, "name", "?"), acc)
    return tuned, acc, record


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                     temperature: float, alpha: float) -> torch.Tensor:
    """Hinton et al. 2015, eq. (2) and section 2: ``alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha)
    CE(y, s)`` (the T^2 keeps the soft-target gradients' scale when T changes); batch mean."""
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t
    if alpha >= 1.0 or labels is None:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def prunable_weights(net: nn.Module, include_head: bool = True) -> dict[str, torch.Tensor]:
    """``{module name: weight}`` of every Conv and Linear layer (biases and normalisation layers are not pruned)."""
    head = classifier_name(net) if not include_head else None
    return {name: m.weight for name, m in net.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and name != head}


def global_magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Han et al. 2015, global variant: keep-masks that zero exactly ``round(sparsity * N)`` of the ``N`` weights,
    the smallest in absolute value across all layers (ties: the earlier weight, in layer order, goes first)."""
    if not 0.0 <= sparsity < 1.0:
        raise ComponentError(f"prune: sparsity {sparsity!r} must lie in [0, 1) (the share of weights set to zero)")
    if not weights:
        raise ComponentError("prune: the network has no Conv or Linear weights to prune")
    flat = torch.cat([w.detach().abs().flatten().double().cpu() for w in weights.values()])
    k = int(round(sparsity * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k:
        keep[torch.sort(flat, stable=True).indices[:k]] = False
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start:start + w.numel()].view_as(w).to(w.device)
        start += w.numel()
    return masks


def _environment(device: torch.device) -> dict[str, Any]:
    return {"interpbench": VERSION, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "threads": torch.get_num_threads(), "recipes_version": RECIPES_VERSION}


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """The run's device rule (``auto``, ``cpu``, ``cuda:N``, with its clear error); None is the CPU."""
    return resolve_device("cpu" if device is None else str(device))


def _identity(dataset: Any) -> Any:
    identity = getattr(dataset, "identity", None)
    return identity() if callable(identity) else None
