"""Model source ``torchvision:NAME[@WEIGHTS]``: torchvision's classification models as ``interpbench.core.base.Model``.

Weights: none given -> the ``DEFAULT`` weights enum (offline ``resolve_weights`` hook first, then the torch hub
cache, then a download); ``@TAG`` -> a weights enum member (``IMAGENET1K_V2``); ``@random`` -> random init with a
fixed seed; ``@/path/to/file.pth`` -> a checkpoint. A spec never silently gets other weights than it names.
"""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from torch import nn

from interpbench.core.base import ComponentError, Model, ModelSource
from interpbench.models.timm_source import IMAGENET_1K, imagenet_class_names
from interpbench.models.weights import (
    RANDOM_INIT_SEED,
    file_sha256,
    load_weights,
    offline,
    read_checkpoint,
    seeded,
    state_dict_sha256,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNLOAD_TIMEOUT_S = 60
_HEAD_NAMES = {"avgpool", "fc", "classifier", "dropout", "flatten", "head", "heads", "aux1", "aux2", "AuxLogits"}
# Modules whose output is the last spatial feature map, in the order they are tried (swin's "permute" before its
# channels-last "features"); ResNets and VGG/AlexNet are handled before this list.
_CAM_CANDIDATES = ("trunk_output", "conv5", "inception5b", "Mixed_7c", "permute", "layers", "features", "blocks",
                   "encoder")
_STAGE_CONTAINERS = ("features", "trunk_output", "layers", "blocks")  # their children are the stages


# --------------------------------------------------------------------------------------------- names


def torchvision_classifiers() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def check_torchvision_name(arch: str) -> None:
    """ComponentError with close matches for a name that is not a torchvision classification model."""
    known = torchvision_classifiers()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.6)
        raise ComponentError(
            f"torchvision has no classification model {arch!r}"
            + (f"; close matches: {', '.join(close)}" if close else "")
            + "; see torchvision.models.list_models(module=torchvision.models)"
        )


def weights_enum(arch: str):
    """The weights enum class of ``arch`` (e.g. ResNet50_Weights), or None if it has no pretrained weights."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError):
        return None
    return enum if len(enum) else None


def weights_tag(arch: str, tag: str):
    """The enum member called ``tag`` (``DEFAULT`` allowed); ComponentError listing the tags otherwise."""
    enum = weights_enum(arch)
    tags = [w.name for w in enum] if enum is not None else []
    if tag == "DEFAULT" and enum is not None:
        return enum.DEFAULT
    if tag not in tags:
        raise ComponentError(
            f"torchvision:{arch}@{tag}: {tag!r} is neither an existing checkpoint file nor a weights tag of {arch} "
            f"(tags: {tags + ['DEFAULT'] if tags else 'none'}); or use @random or @/path/to/weights.pth"
        )
    return enum[tag]


# --------------------------------------------------------------------------------------------- layers


def _last_relu_before_pool(features: nn.Sequential) -> list[int]:
    """Indices of the ReLUs that end each conv block of a VGG/AlexNet ``features`` (the one before each pool)."""
    children = list(features)
    return [i - 1 for i, m in enumerate(children) if isinstance(m, nn.MaxPool2d) and i > 0
            and isinstance(children[i - 1], nn.ReLU)]


def torchvision_cam_layer(arch: str, net: nn.Module) -> str:
    """The last spatial feature map: ResNets ``layer4``, VGG/AlexNet the last conv's ReLU (relu5_3 = features.29
    for VGG16, as in the Grad-CAM paper), DenseNet/EfficientNet/MobileNet/ConvNeXt ``features``, ..."""
    children = dict(net.named_children())
    if "layer4" in children:
        return "layer4"
    if arch.startswith(("vgg", "alexnet")):
        return f"features.{_last_relu_before_pool(net.features)[-1]}"
    for name in _CAM_CANDIDATES:
        if name in children:
            if isinstance(children[name], nn.ModuleList):  # iterated, never called itself (MaxViT blocks)
                return f"{name}.{len(children[name]) - 1}"
            return name
    return [n for n in children if n not in _HEAD_NAMES][-1]


def torchvision_layers(arch: str, net: nn.Module, cam_layer: str) -> list[str]:
    """The named stages for dissection: ResNet layer1-4; VGG/AlexNet conv-block outputs; else feature children."""
    children = dict(net.named_children())
    if "layer4" in children:
        names = ["layer1", "layer2", "layer3", "layer4"]
    elif arch.startswith(("vgg", "alexnet")):
        names = [f"features.{i}" for i in _last_relu_before_pool(net.features)]
    elif any(isinstance(children.get(c), (nn.Sequential, nn.ModuleList)) for c in _STAGE_CONTAINERS):
        parent = next(c for c in _STAGE_CONTAINERS if isinstance(children.get(c), (nn.Sequential, nn.ModuleList)))
        names = [f"{parent}.{n}" for n, _ in children[parent].named_children()]
    else:
        names = [n for n in children if n not in _HEAD_NAMES]
    return names if cam_layer in names else [*names, cam_layer]


def classifier_head(net: nn.Module) -> tuple[str, int]:
    """The module producing the logits and its output count: the last Linear (or Conv2d: SqueezeNet) registered."""
    name, out = "", 0
    for n, m in net.named_modules():
        if isinstance(m, nn.Linear):
            name, out = n, m.out_features
        elif isinstance(m, nn.Conv2d):
            name, out = n, m.out_channels
    return name, int(out)


# --------------------------------------------------------------------------------------------- wrapper


def wrap_torchvision(arch: str, net: nn.Module, spec: str, weights_meta, identity: dict[str, Any]) -> Model:
    """An interpbench Model around a torchvision network; preprocessing and categories from the weights enum."""
    num_classes = classifier_head(net)[1]
    transforms = weights_meta.transforms() if weights_meta is not None else None
    mean = tuple(getattr(transforms, "mean", IMAGENET_MEAN))
    std = tuple(getattr(transforms, "std", IMAGENET_STD))
    crop = getattr(transforms, "crop_size", [224])
    size = (int(crop[0]), int(crop[-1]))
    categories = list((weights_meta.meta.get("categories") or []) if weights_meta is not None else [])
    if len(categories) == num_classes:
        class_names, label_space = categories, (IMAGENET_1K if num_classes == 1000 else f"unknown-{num_classes}")
    elif num_classes == 1000:
        class_names, label_space = list(imagenet_class_names(IMAGENET_1K)), IMAGENET_1K
    else:
        class_names, label_space = [f"class_{i}" for i in range(num_classes)], f"unknown-{num_classes}"
    cam_layer = torchvision_cam_layer(arch, net)
    return Model(
        net,
        spec=spec,
        mean=mean,
        std=std,
        input_size=size,
        class_names=class_names,
        cam_layer=cam_layer,
        label_space=label_space,
        default_dataset="photos" if label_space == IMAGENET_1K else "",
        weights=identity,
        layers=torchvision_layers(arch, net, cam_layer),
    ).eval()


def hub_checkpoint_path(weights) -> Path:
    """Where torch hub keeps the file of a weights enum member (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def _no_pretrained_error(arch: str, weights, cached: Path, error: Exception | None) -> ComponentError:
    if error is None:
        why = "offline mode is on and it is not cached"
    else:
        why = f"{type(error).__name__}: {str(error).strip().rstrip('.')[:300]}"
    return ComponentError(
        f"torchvision:{arch}: cannot get the weights {weights} ({why}). No other weights were substituted. "
        f"To fix, either (1) put {weights.url} at {cached} (torch hub cache; $TORCH_HOME moves it), "
        f"(2) give a file: torchvision:{arch}@/path/to/weights.pth, or (3) use random weights: "
        f"torchvision:{arch}@random"
    )


class TorchvisionSource(ModelSource):
    """``torchvision:NAME[@TAG | @random | @/path/to/weights]`` -> a torchvision classifier wrapped as a Model."""

    name = "torchvision"
    version = "1"

    def available(self) -> list[str]:
        return torchvision_classifiers()

    def load(self, name: str, weights: str | None, resolve_weights: Callable[..., Any] | None) -> Model:
        from torchvision.models import get_model

        check_torchvision_name(name)
        spec = f"torchvision:{name}" + (f"@{weights}" if weights else "")
        enum = weights_enum(name)

        if weights == "random":
            with seeded(RANDOM_INIT_SEED):
                net = get_model(name, weights=None)
            identity = {"source": "torchvision", "tag": "random", "path": None, "seed": RANDOM_INIT_SEED,
                        "sha256": state_dict_sha256(net.state_dict()), "sha256_of": "state_dict"}
            return wrap_torchvision(name, net, spec, enum.DEFAULT if enum else None, identity)

        if weights is None:
            path = resolve_weights(source="torchvision", name=name, tag=None) if resolve_weights else None
            if path:
                return self._from_file(name, Path(path), spec, enum, resolved_by="resolve_weights hook")
            if enum is None:
                raise ComponentError(
                    f"torchvision:{name} has no pretrained weights; use torchvision:{name}@random or @/path/to/file"
                )
            return self._from_enum(name, enum.DEFAULT, spec)

        path = Path(weights).expanduser()
        if not path.is_file() and os.sep not in weights and not path.suffix:
            return self._from_enum(name, weights_tag(name, weights), spec)
        return self._from_file(name, path, spec, enum, resolved_by=None)

    def _from_enum(self, arch: str, weights, spec: str) -> Model:
        """Load a weights enum member through the torch hub cache (downloading it only if absent and online)."""
        from torchvision.models import get_model

        cached = hub_checkpoint_path(weights)
        if not cached.is_file() and offline():
            raise _no_pretrained_error(arch, weights, cached, None)
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib in torch.hub has no timeout of its own
        try:
            with seeded(RANDOM_INIT_SEED):
                net = get_model(arch, weights=weights)
        except Exception as e:  # noqa: BLE001 - network, cache and hash errors all need the same advice
            raise _no_pretrained_error(arch, weights, cached, e) from e
        finally:
            socket.setdefaulttimeout(previous_timeout)
        identity = {"source": "torchvision", "tag": weights.name, "path": str(cached),
                    "sha256": file_sha256(cached), "sha256_of": "file"}
        return wrap_torchvision(arch, net, spec, weights, identity)

    def _from_file(self, arch: str, path: Path, spec: str, enum, resolved_by: str | None) -> Model:
        from torchvision.models import get_model

        owner = f"torchvision:{arch}"
        state = read_checkpoint(path, owner)
        with seeded(RANDOM_INIT_SEED):
            net = get_model(arch, weights=None)
            head, num_classes = classifier_head(net)
            head_weight = state.get(f"{head}.weight")
            if head_weight is not None and head_weight.shape[0] != num_classes:  # a fine-tuned head
                net = get_model(arch, weights=None, num_classes=int(head_weight.shape[0]))
        load_weights(net, state, owner, origin=str(path))
        identity = {"source": "torchvision", "tag": None, "path": str(path.resolve()),
                    "sha256": file_sha256(path), "sha256_of": "file"}
        if resolved_by:
            identity["resolved_by"] = resolved_by
        return wrap_torchvision(arch, net, spec, enum.DEFAULT if enum else None, identity)
