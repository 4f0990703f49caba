"""Named datasets (``datasets.yaml``) and model specs (``SOURCE:NAME[@WEIGHTS]``).

``datasets.yaml`` is looked up in this order, later files overriding earlier entries of the same name:
the packaged default (``interpbench/core/datasets.yaml``: in a checkout a link to the ``datasets.yaml`` at the top
of the repository, the registry a user reads and edits; a pip install carries a copy), ``./datasets.yaml`` in the
working directory, the file named by ``$INTERPBENCH_DATASETS``, and the file given on the command line
(``--datasets-config``).
Each entry::

    imagenet-val:
      loader: imagefolder                    # a dataset loader registered by a plugin
      path: ${IMAGENET_VAL:-~/data/imagenet/val}   # optional; environment variables and ~ are expanded
      description: ImageNet-1k validation images, one folder per synset
      options: {label_space: imagenet-1k}    # keyword arguments for the loader
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from interpbench.core.base import ComponentError

PACKAGED = Path(__file__).with_name("datasets.yaml")


@dataclasses.dataclass
class DatasetEntry:
    name: str
    loader: str
    path: str | None
    options: dict[str, Any]
    description: str
    source_file: str


_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand(value: str) -> str:
    """Expand ``${VAR}``, ``${VAR:-default}``, ``$VAR`` and ``~``."""
    value = _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
    return os.path.expanduser(os.path.expandvars(value))


def config_files(extra: str | os.PathLike | None = None) -> list[Path]:
    files = [PACKAGED, Path.cwd() / "datasets.yaml"]
    if os.environ.get("INTERPBENCH_DATASETS"):
        files.append(Path(os.environ["INTERPBENCH_DATASETS"]))
    if extra:
        path = Path(extra)
        if not path.is_file():
            raise ComponentError(f"datasets config {str(path)!r} does not exist; give the path of a datasets.yaml file")
        files.append(path)
    seen: list[Path] = []
    for f in files:
        if f.is_file() and f.resolve() not in [s.resolve() for s in seen]:
            seen.append(f)
    return seen


def read_datasets(extra: str | os.PathLike | None = None) -> dict[str, DatasetEntry]:
    entries: dict[str, DatasetEntry] = {}
    for file in config_files(extra):
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ComponentError(f"{file}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ComponentError(f"{file}: expected a mapping of dataset names to entries, got {type(data).__name__}")
        for name, spec in data.items():
            if not isinstance(spec, dict) or "loader" not in spec:
                raise ComponentError(f"{file}: dataset {name!r} needs a 'loader:' key (e.g. 'loader: imagefolder')")
            path = spec.get("path")
            entries[str(name)] = DatasetEntry(
                name=str(name),
                loader=str(spec["loader"]),
                path=expand(str(path)) if path else None,
                options=dict(spec.get("options") or {}),
                description=str(spec.get("description", "")),
                source_file=str(file),
            )
    return entries


# --------------------------------------------------------------------------------------------- model specs


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    source: str
    name: str
    weights: str | None  # None: the source's default pretrained weights

    def __str__(self) -> str:
        return f"{self.source}:{self.name}" + (f"@{self.weights}" if self.weights else "")


def parse_model_spec(spec: str) -> ModelSpec:
    """``timm:resnet50``, ``timm:resnet50.a1_in1k``, ``timm:resnet50@random``, ``timm:resnet50@/ckpt.pth``."""
    source, sep, rest = spec.partition(":")
    name, _, weights = rest.partition("@")
    if not sep or not source or not name:
        raise ComponentError(
            f"model spec {spec!r} is not of the form SOURCE:NAME[@WEIGHTS] "
            "(e.g. 'timm:resnet50', 'timm:resnet50@random', 'shapes:cnn')"
        )
    return ModelSpec(source.strip(), name.strip(), weights.strip() or None)


# --------------------------------------------------------------------------------------------- derived models
# The grammar of pairs and randomised models (interpbench.models.derived builds them; interpbench.api loads them).

PAIR = "=>"
SANITY = "sanity:"
_CASCADE = re.compile(r"^(?P<base>.+)~cascade:(?P<depth>\d+|all)(?::(?P<seed>\d+))?$")


def is_derived(spec: str) -> bool:
    """True for specs this module loads: pairs, randomised models, ``sanity:`` shorthands."""
    return isinstance(spec, str) and (PAIR in spec or spec.startswith(SANITY) or _CASCADE.match(spec) is not None)


def parse_pair(spec: str) -> tuple[str, str]:
    """``"A=>B"`` -> ``("A", "B")``."""
    parts = [p.strip() for p in spec.split(PAIR)]
    if len(parts) != 2 or not all(parts):
        raise ComponentError(f"model pair {spec!r} must be of the form A=>B with one '=>' between two model specs "
                             "(e.g. 'shapes:cnn=>shapes:cnn.shape2color')")
    return parts[0], parts[1]


def parse_cascade(spec: str) -> tuple[str, str, int] | None:
    """``"SPEC~cascade:K[:SEED]"`` -> ``(SPEC, K or "all", SEED)``; None when ``spec`` has no such suffix."""
    match = _CASCADE.match(spec)
    if match is None:
        return None
    return match["base"], match["depth"], int(match["seed"] or 0)


def pair_spec(a: str, b: str) -> str:
    return f"{a}{PAIR}{b}"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ComponentError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
    return dev
