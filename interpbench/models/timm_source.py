"""Model source ``timm:NAME[.TAG][@WEIGHTS]``: any timm classifier, wrapped as an ``interpbench.core.base.Model``.

Weights: none given -> the default pretrained weights (first the offline ``resolve_weights`` hook, then timm's
own Hugging Face / torch hub cache and download); ``@random`` -> random init with a fixed seed;
``@/path/to/file.pth`` -> a checkpoint. A spec never silently gets other weights than the ones it names.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any, Callable

from torch import nn

from interpbench.core.base import ComponentError, Model, ModelSource
from interpbench.models.weights import (
    RANDOM_INIT_SEED,
    file_sha256,
    load_weights,
    out_features,
    read_checkpoint,
    seeded,
    state_dict_sha256,
)
from interpbench.ops.tokens import token_grid_of

IMAGENET_1K = "imagenet-1k"
_HEAD_NAMES = {"global_pool", "head", "fc", "classifier", "pre_logits", "head_drop", "flatten", "fc_norm"}


# --------------------------------------------------------------------------------------------- names


@functools.lru_cache(maxsize=None)
def imagenet_class_names(subset: str = IMAGENET_1K) -> tuple[str, ...]:
    """Class names of an ImageNet label space from timm's bundled metadata (no network), e.g. 'Egyptian cat'."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo(subset)
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


def split_timm_name(name: str) -> tuple[str, str | None]:
    """``"resnet50.a1_in1k"`` -> ``("resnet50", "a1_in1k")``; no tag -> ``(name, None)``."""
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def check_timm_name(arch: str, tag: str | None) -> None:
    """ComponentError with close matches for an unknown architecture or pretrained tag."""
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        raise ComponentError(
            f"timm has no architecture {arch!r}"
            + (f"; close matches: {', '.join(close)}" if close else "")
            + f"; see timm.list_models('*{arch[:4]}*') (timm {timm.__version__})"
        )
    if tag is not None:
        tagged = timm.list_pretrained(f"{arch}.*")
        if f"{arch}.{tag}" not in tagged:
            raise ComponentError(
                f"timm architecture {arch!r} has no pretrained tag {tag!r}; its tags: "
                f"{[t.split('.', 1)[1] for t in tagged] or 'none'}"
            )


# --------------------------------------------------------------------------------------------- layers


def _stage_names(net: nn.Module) -> list[str]:
    """Module names of the network's stages from timm's ``feature_info``, else its top-level feature children."""
    info = getattr(net, "feature_info", None)
    if info:
        return [f["module"] for f in info]
    return [n for n, _ in net.named_children() if n not in _HEAD_NAMES]


def _before_pool(net: nn.Module, name: str) -> str:
    """If ``name`` is a pooling layer inside a Sequential (VGG), the module just before it; else ``name``."""
    modules = dict(net.named_modules())
    if not isinstance(modules[name], (nn.MaxPool2d, nn.AvgPool2d)) or "." not in name:
        return name
    parent, _, index = name.rpartition(".")
    if index.isdigit() and int(index) > 0 and isinstance(modules[parent], nn.Sequential):
        return f"{parent}.{int(index) - 1}"
    return name


def timm_cam_layer(net: nn.Module) -> str:
    """The layer Grad-CAM is usually applied to: the last spatial feature map before global pooling.

    EfficientNet / MobileNetV2 / MnasNet family: ``bn2`` (conv_head + BN + activation, the 1x1-conv head that
    precedes pooling). Everything else: the last ``feature_info`` stage (ResNet ``layer4``, ConvNeXt
    ``stages.3``, DenseNet ``features.norm5``), stepping back over a trailing max-pool (VGG: the last conv's ReLU).
    Vision transformers with a class token (ViT, DeiT, ...): the last block's first norm ``blocks.{L-1}.norm1``
    (pytorch-grad-cam's choice): the classifier reads only the class token of the last block's output, so the
    patch tokens there get no gradient, while the last block's attention still mixes them into the class token.
    Swin (``B x h x w x C`` stages): the last stage. Token layers are folded by
    :func:`interpbench.ops.tokens.as_feature_map`.
    """
    from timm.models.efficientnet import EfficientNet

    modules = dict(net.named_modules())
    if isinstance(net, EfficientNet) and "bn2" in modules and "conv_head" in modules:
        return "bn2"
    layout = token_grid_of(net)
    blocks = getattr(net, "blocks", None)
    if layout is not None and not layout.channels_last and isinstance(blocks, nn.Sequential) and len(blocks):
        last = f"blocks.{len(blocks) - 1}"
        if layout.pool == "token" and layout.prefix > 0 and f"{last}.norm1" in modules:
            return f"{last}.norm1"
        return last
    return _before_pool(net, _stage_names(net)[-1])


def timm_layers(net: nn.Module, cam_layer: str) -> list[str]:
    """The named stages for dissection: timm's feature_info modules, plus the CAM layer if it is not one."""
    names = _stage_names(net)
    return names if cam_layer in names else [*names, cam_layer]


# --------------------------------------------------------------------------------------------- wrapper


def wrap_timm(net: nn.Module, spec: str, weights: dict[str, Any]) -> Model:
    """An interpbench Model around a timm network: timm's data config for mean/std/size, ImageNet names."""
    from timm.data import infer_imagenet_subset, resolve_data_config

    config = resolve_data_config({}, model=net)
    num_classes = int(getattr(net, "num_classes", 0) or 0)
    subset = infer_imagenet_subset(net) if num_classes else None
    if subset is not None and len(imagenet_class_names(subset)) == num_classes:
        class_names, label_space = list(imagenet_class_names(subset)), subset
    else:
        class_names, label_space = [f"class_{i}" for i in range(num_classes)], f"unknown-{num_classes}"
    cam_layer = timm_cam_layer(net)
    input_size = tuple(config["input_size"][-2:])
    fixed = getattr(getattr(net, "patch_embed", None), "img_size", None)  # a transformer built for another size
    if fixed is not None and not getattr(net.patch_embed, "dynamic_img_size", False):
        input_size = tuple(int(s) for s in fixed)
    model = Model(
        net,
        spec=spec,
        mean=config["mean"],
        std=config["std"],
        input_size=input_size,
        class_names=class_names,
        cam_layer=cam_layer,
        label_space=label_space,
        default_dataset="photos" if label_space == IMAGENET_1K else "",
        weights=weights,
        layers=timm_layers(net, cam_layer),
    ).eval()
    model.token_grid = token_grid_of(net)  # None for CNNs; how token layers fold into B x C x h x w maps
    return model


def _no_pretrained_error(name: str, net_cfg: dict, error: Exception) -> ComponentError:
    where = net_cfg.get("hf_hub_id") or net_cfg.get("url") or "timm's hub"
    why = str(error).strip().rstrip(".")[:300]
    return ComponentError(
        f"timm:{name}: cannot get timm's pretrained weights ({where}): {type(error).__name__}: {why}. "
        "No other weights were substituted. To fix, either (1) fill the cache on a machine with network: "
        f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\" and copy "
        "~/.cache/huggingface (or $HF_HOME; torch hub: ~/.cache/torch) here, (2) give a file: "
        f"timm:{name}@/path/to/weights.pth, or (3) use random weights: timm:{name}@random. "
        "With no network, HF_HUB_OFFLINE=1 makes this fail fast."
    )


class TimmSource(ModelSource):
    """``timm:NAME[.TAG][@random | @/path/to/weights]`` -> a timm classifier wrapped as a Model."""

    name = "timm"
    version = "1"

    def available(self) -> list[str]:
        import timm

        return list(timm.list_models())

    def load(self, name: str, weights: str | None, resolve_weights: Callable[..., Any] | None) -> Model:
        import timm

        arch, tag = split_timm_name(name)
        check_timm_name(arch, tag)
        spec = f"timm:{name}" + (f"@{weights}" if weights else "")

        if weights is None:
            path = resolve_weights(source="timm", name=arch, tag=tag) if resolve_weights else None
            if path:
                return self._from_file(name, Path(path), spec, resolved_by="resolve_weights hook")
            try:
                with seeded(RANDOM_INIT_SEED):  # the init before loading must not consume the caller's RNG
                    net = timm.create_model(name, pretrained=True)
            except Exception as e:  # noqa: BLE001 - hub, cache and network errors all need the same advice
                cfg = timm.models.get_pretrained_cfg(name)
                raise _no_pretrained_error(name, cfg.to_dict() if cfg is not None else {}, e) from e
            cfg = net.pretrained_cfg
            identity = {"source": "timm", "tag": cfg.get("tag"), "path": None,
                        "hub": cfg.get("hf_hub_id") or cfg.get("url"),
                        "sha256": state_dict_sha256(net.state_dict()), "sha256_of": "state_dict"}
            return wrap_timm(net, spec, identity)

        if weights == "random":
            with seeded(RANDOM_INIT_SEED):
                net = timm.create_model(name, pretrained=False)
            identity = {"source": "timm", "tag": "random", "path": None, "seed": RANDOM_INIT_SEED,
                        "sha256": state_dict_sha256(net.state_dict()), "sha256_of": "state_dict"}
            return wrap_timm(net, spec, identity)

        path = Path(weights).expanduser()
        if not path.is_file() and timm.is_model_pretrained(f"{arch}.{weights}"):
            raise ComponentError(
                f"timm:{name}@{weights}: timm tags go in the name, not after '@': use timm:{arch}.{weights}"
            )
        return self._from_file(name, path, spec, resolved_by=None)

    def _from_file(self, name: str, path: Path, spec: str, resolved_by: str | None) -> Model:
        import timm

        owner = f"timm:{name}"
        state = read_checkpoint(path, owner)
        with seeded(RANDOM_INIT_SEED):
            probe_cfg = timm.models.get_pretrained_cfg(name)
            classifier = probe_cfg.classifier if probe_cfg is not None else None
            n = out_features(state, classifier if isinstance(classifier, str) else None)
            net = timm.create_model(name, pretrained=False, **({"num_classes": n} if n else {}))
        load_weights(net, state, owner, origin=str(path))
        identity = {"source": "timm", "tag": split_timm_name(name)[1], "path": str(path.resolve()),
                    "sha256": file_sha256(path), "sha256_of": "file"}
        if resolved_by:
            identity["resolved_by"] = resolved_by
        return wrap_timm(net, spec, identity)
