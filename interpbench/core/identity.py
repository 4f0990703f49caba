"""What a run records about its environment: versions, git sha, plugins, device."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import torch

#: interpbench's version (``interpbench.__version__``), recorded in every manifest and recipe record.
VERSION = "0.1.0"

LIBRARIES = ("torch", "torchvision", "timm", "numpy", "scipy", "pandas", "pluggy", "scikit-image")


def stable_hash(obj: Any, bits: int = 63) -> int:
    """A seed or key from the identity of a thing (canonical JSON), independent of run order and process."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << bits) - 1)


#: Fields that say where a file lies on this machine, or which plugin found it, not what it holds (the sha256 beside
#: them does): left out of cell identities, so that keys and the seeds drawn from them do not depend on where
#: interpbench is installed or its cache lies, and out of ``interpbench reproduce``'s comparisons.
LOCAL_FIELDS = ("path", "resolved_by")


def portable(obj: Any) -> Any:
    """``obj`` (JSON-like) without the :data:`LOCAL_FIELDS` keys of its dicts, at any depth."""
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items() if k not in LOCAL_FIELDS}
    if isinstance(obj, (list, tuple)):
        return [portable(v) for v in obj]
    return obj


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex): the identity of weights and of dataset index files."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def lines_sha256(lines: Iterable[str]) -> str:
    """sha256 (hex) of ``lines`` joined by newlines: the identity of a dataset's list of files or image ids."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def config_key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


#: The paths whose changes make a checkout "dirty" for :func:`git_sha`: the code that computes the numbers, not the
#: docs, the tests or the committed experiments (which a re-run of ``leaderboards/make.sh`` rewrites as it goes).
CODE_PATHS = ("interpbench", "plugins", "pyproject.toml")


def git_sha(root: str | Path | None = None) -> str | None:
    """The commit of the checkout at ``root`` (default: interpbench's own), with ``-dirty`` when the code
    (:data:`CODE_PATHS`) differs from it; None outside git."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]  # interpbench/core/identity.py
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                *CODE_PATHS], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for lib in LIBRARIES:
        try:
            versions[lib] = md.version(lib)
        except md.PackageNotFoundError:
            versions[lib] = None
    return versions


def device_info(device: torch.device) -> dict[str, Any]:
    """The device and the global settings that change its float rounding: the float32 matrix-product precision
    (``"high"`` allows TF32 or bf16 passes), and on a GPU cuDNN's TF32 convolutions (PyTorch's default: on),
    its benchmark mode (the kernel chosen per shape) and deterministic algorithms."""
    info: dict[str, Any] = {"device": str(device), "platform": platform.platform(),
                            "cpu_threads": torch.get_num_threads(),
                            "float32_matmul_precision": torch.get_float32_matmul_precision(),
                            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["cudnn_tf32"] = torch.backends.cudnn.allow_tf32
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        info["matmul_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def environment(device: torch.device, registry: Any) -> dict[str, Any]:
    return {
        "interpbench": {"version": VERSION, "git_sha": git_sha()},
        "libraries": library_versions(),
        "device": device_info(device),
        "plugins": [
            {"name": p.name, "distribution": p.dist, "version": p.version, "module": p.module}
            for p in registry.plugins.values()
        ],
        "plugin_failures": [str(f) for f in registry.failures],
    }
