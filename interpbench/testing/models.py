"""Conformance checks for models (scikit-learn's ``check_estimator`` is the model).

Layer: part of ``interpbench.testing`` (beside ``interpbench.publish``, docs/design.md); it uses the api (to
load a model spec), the hook helpers of ``interpbench.ops`` and datasets.yaml's reader.

Each check is a function a plugin author can call on its own: ``check_model_<name>(model, images=None)`` raises
``AssertionError`` with a message that names the model, the value it saw and the fix. ``images`` are the probe
images (``B x 3 x H x W`` in [0, 1] at the model's input size, or a function returning them; ``None``: three
seeded noise images, see :func:`probe_images`). :func:`model_checks` lists them as
:class:`~interpbench.testing.report.Check` objects that share one set of probe images; :func:`check_model` runs
them all.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from interpbench.api import load_model
from interpbench.core.base import Model
from interpbench.core.config import read_datasets
from interpbench.ops.hooks import capture_outputs
from interpbench.ops.tokens import as_feature_map, token_grid_of
from interpbench.testing.report import Check, CheckReport, run_expected
from interpbench.testing.world import _close, _json_ok, _label, _seeded

# --------------------------------------------------------------------------------------------- helpers


def _images_for(model: Model, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(2024)
    return torch.rand(n, 3, *model.input_size, generator=g).to(model.device)


Images = torch.Tensor | Callable[[], torch.Tensor] | None


def probe_images(model: Model, images: Images = None) -> torch.Tensor:
    """``images`` (a tensor, or a function that returns one, called when a check first needs the images), or three
    seeded uniform-noise images in [0, 1] at the model's input size, on its device."""
    if callable(images):
        return images()
    return images if images is not None else _images_for(model)


def _forward(model: Model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# --------------------------------------------------------------------------------------------- the checks


def check_model_contract(model: Model) -> None:
    """An ``ib.Model`` with ``input_size`` (H, W), unique non-empty ``class_names``, a ``label_space``, ``weights``
    provenance, and a JSON-serialisable ``describe()``.

    Fix: wrap the network with ``ib.Model(net, spec=..., mean=..., std=..., input_size=..., class_names=...,
    label_space=..., weights=...)``.
    """
    label = _label(model)
    assert isinstance(model, Model), (f"{label}: {type(model).__name__} is not an interpbench.Model; wrap the "
                                      "network with ib.Model(net, spec=..., mean=..., std=..., ...)")
    problems = []
    if len(model.input_size) != 2 or min(model.input_size) < 1:
        problems.append(f"input_size must be (H, W), got {model.input_size!r}")
    if not model.class_names or len(set(model.class_names)) != len(model.class_names):
        problems.append(f"class_names must be unique and non-empty ({len(model.class_names)} given)")
    if not isinstance(model.label_space, str) or not model.label_space:
        problems.append(f"label_space must be a non-empty string (e.g. 'imagenet-1k'), got {model.label_space!r}")
    if not model.weights:
        problems.append("weights must say where the weights came from (e.g. {'tag': ..., 'sha256': ...})")
    assert not problems, f"model {label!r}: " + "; ".join(problems)
    _json_ok(f"model {label!r}: describe()", model.describe())


def check_model_normalization_inside(model: Model, images: Images = None) -> None:
    """``mean``/``std`` have 3 values (std > 0) and ``model(x)`` equals ``model.net(model.normalize(x))``.

    Fix: images come in [0, 1]; give the model its mean and std and let ``ib.Model`` normalise inside forward
    (do not normalise again inside the network).
    """
    label = _label(model)
    mean, std = model.mean.flatten(), model.std.flatten()
    assert mean.numel() == 3 and std.numel() == 3, f"model {label!r}: mean/std need 3 values, got {mean}, {std}"
    assert bool((std > 0).all()), f"model {label!r}: std must be positive, got {std.tolist()}"
    x = probe_images(model, images)
    with torch.no_grad():  # same seed for both: a train-mode dropout is deterministic_forward's business
        direct = _seeded(lambda: model.net(model.normalize(x)))
    ok, diff = _close(_seeded(lambda: _forward(model, x)), direct, 1e-4)
    assert ok, (f"model {label!r}: model(x) differs from net(normalize(x)) by {diff:.3g}; images come in [0, 1] "
                "and normalisation belongs inside the model's forward")


def check_model_logits(model: Model, images: Images = None) -> str:
    """The forward pass returns finite float logits of shape ``B x len(class_names)``.

    Fix: return the raw logits (not a tuple, not probabilities of another shape) with one column per class name.
    """
    label = _label(model)
    x = probe_images(model, images)
    out = _forward(model, x)
    assert isinstance(out, torch.Tensor), f"model {label!r} returned {type(out).__name__}, expected logits B x C"
    expected = (x.shape[0], model.num_classes)
    assert tuple(out.shape) == expected, (f"model {label!r} returned logits of shape {tuple(out.shape)} for "
                                          f"{x.shape[0]} images, expected {expected} (B x len(class_names))")
    assert out.is_floating_point() and bool(torch.isfinite(out).all()), (
        f"model {label!r} returned non-finite or non-float logits ({out.dtype})")
    return f"{tuple(out.shape)} logits for images of {tuple(x.shape[-2:])}"


def check_model_deterministic_forward(model: Model, images: Images = None) -> None:
    """Two forward passes on the same images give the same logits.

    Fix: put the model in eval mode (dropout off); ``ib.Model(...).eval()``.
    """
    label = _label(model)
    x = probe_images(model, images)
    a, b = _forward(model, x), _forward(model, x)
    assert torch.equal(a, b), (f"model {label!r}: two forward passes on the same images differ by "
                               f"{float((a - b).abs().max()):.3g}; the model must be in eval mode (dropout off)")


def check_model_batch_independence(model: Model, images: Images = None) -> None:
    """The logits of an image do not depend on the other images of its batch.

    Fix: batch-norm must use its running statistics (eval mode); no batch-wide operations in forward.
    """
    label = _label(model)
    x = probe_images(model, images)
    together = _forward(model, x)
    alone = torch.cat([_forward(model, x[i:i + 1]) for i in range(x.shape[0])])
    ok, diff = _close(alone, together, 1e-4)
    assert ok, (f"model {label!r}: logits of images passed one at a time differ from those in a batch by "
                f"{diff:.3g}; batch-norm must use running statistics (eval mode)")


def check_model_input_gradient(model: Model, images: Images = None) -> None:
    """The gradient of the predicted logit w.r.t. the input is finite and not zero (gradient methods need it).

    Fix: do not detach the input or convert it to numpy inside forward.
    """
    label = _label(model)
    x = probe_images(model, images).clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        (grad,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), x)
    assert bool(torch.isfinite(grad).all()), f"model {label!r}: the input gradient has non-finite values"
    assert float(grad.abs().sum()) > 0, (f"model {label!r}: the gradient of the predicted logit w.r.t. the input "
                                         "is zero; gradient methods cannot work (is the forward detached?)")


def check_model_cam_layer(model: Model, images: Images = None) -> str:
    """``cam_layer`` runs once per forward pass, outputs a ``B x K x h x w`` map (a transformer's tokens are folded
    into their patch grid), and the logits depend on it.

    Fix: name the last convolutional stage (a module that runs once, before the pooling).
    """
    label = _label(model)
    module = model.module(model.cam_layer)
    x = probe_images(model, images).clone().requires_grad_(True)
    with torch.enable_grad(), capture_outputs({model.cam_layer: module}) as cap:
        out = model(x)
    raw = cap[model.cam_layer]

    folded = as_feature_map(raw, token_grid_of(model), module=module, image_size=tuple(x.shape[-2:]))
    act = raw if folded is None else folded  # a transformer's tokens, folded into their patch grid
    calls = cap.calls[model.cam_layer]
    assert calls == 1, (f"model {label!r}: cam_layer {model.cam_layer!r} ran "
                                             f"{cap.calls[model.cam_layer]} times in one forward pass; choose a "
                                             "layer that runs once")
    assert isinstance(act, torch.Tensor) and act.dim() == 4 and act.shape[0] == x.shape[0], (
        f"model {label!r}: cam_layer {model.cam_layer!r} outputs "
        f"{tuple(act.shape) if isinstance(act, torch.Tensor) else type(act).__name__}, not a B x K x h x w map")
    (grad,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), raw, allow_unused=True)
    assert grad is not None and float(grad.abs().sum()) > 0, (
        f"model {label!r}: the logits do not depend on cam_layer {model.cam_layer!r}; choose the last "
        "convolutional stage")
    return f"{model.cam_layer!r}: {tuple(act.shape[1:])}"


def check_model_layers(model: Model, images: Images = None) -> None:
    """``layers`` is non-empty and each named module runs in forward (network dissection hooks them).

    Fix: pass ``layers=[...]`` naming the stages worth dissecting, modules that ``forward()`` calls.
    """
    label = _label(model)
    named = model.layers
    assert named, f"model {label!r} names no layers; pass layers=[...] (the stages worth dissecting)"
    with capture_outputs(named, detach=True) as cap:
        _forward(model, probe_images(model, images))
    silent = [n for n in named if cap.calls[n] == 0]
    assert not silent, f"model {label!r}: layers {silent} never run in forward(); name modules that forward() calls"


def check_model_default_dataset(model: Model) -> None:
    """``default_dataset`` is a name in datasets.yaml (``interpbench run`` uses it when no --dataset is given).

    Fix: set ``default_dataset`` to a dataset of the model's label space listed in datasets.yaml.
    """
    label = _label(model)
    known = read_datasets()
    assert model.default_dataset in known, (
        f"model {label!r}: default_dataset {model.default_dataset!r} is not in datasets.yaml (known: "
        f"{sorted(known)}); `interpbench run` uses it when no --dataset is given")


# --------------------------------------------------------------------------------------------- the kit


def model_checks(model: Model) -> list[Check]:
    """The conformance checks of a loaded model (an ``ib.Model``).

    ``contract`` (an ib.Model with input_size, class_names, label_space, cam_layer, JSON-serialisable describe()),
    ``normalization_inside`` (mean/std of 3 channels, std > 0, forward = net(normalize(x))), ``logits``
    (B x num_classes, finite, on images in [0, 1] at input_size), ``deterministic_forward``, ``batch_independence``,
    ``input_gradient`` (finite, non-zero: gradient methods need it), ``cam_layer`` (a B x K x h x w feature map that
    runs once and that the logits depend on), ``layers`` (each named stage runs in forward),
    ``default_dataset`` (named in datasets.yaml). Check ``x`` is the function ``check_model_x`` of this module.
    """
    state: dict[str, Any] = {}

    def images() -> torch.Tensor:
        if "images" not in state:
            state["images"] = _images_for(model)
        return state["images"]

    def probed(fn: Callable[[Model, Images], Any]) -> Callable[[], Any]:
        return lambda: fn(model, images)  # the images are drawn when the first check needs them, then shared

    return [Check("contract", lambda: check_model_contract(model)),
            Check("normalization_inside", probed(check_model_normalization_inside)),
            Check("logits", probed(check_model_logits)),
            Check("deterministic_forward", probed(check_model_deterministic_forward)),
            Check("batch_independence", probed(check_model_batch_independence)),
            Check("input_gradient", probed(check_model_input_gradient)),
            Check("cam_layer", probed(check_model_cam_layer)),
            Check("layers", probed(check_model_layers)),
            Check("default_dataset", lambda: check_model_default_dataset(model))]


def check_model(model: Model | str, *, expected_failures: dict[str, str] | None = None,
                device: str | None = None) -> CheckReport:
    """Run :func:`model_checks` on a model (an ``ib.Model`` or a spec such as ``"shapes:cnn"``, loaded on
    ``device``); ``expected_failures`` as in :func:`~interpbench.testing.metrics.check_metric`."""
    if isinstance(model, str):
        model = load_model(model, device=device)
    return run_expected(f"model {_label(model)}", model_checks(model), model, expected_failures)
