"""What a run is asked to do (engine layer, read by :mod:`interpbench.engine.runner` and the publishing layer):
:class:`RunConfig` with its checks, the accepted targets and precisions, and the grids of an experiment made of
parts (:data:`PART_KEYS`, :func:`grids`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from interpbench.core.base import ComponentError
from interpbench.engine.compile import check_compile_options

TARGETS = ("predicted", "label")


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass
class RunConfig:
    methods: list[str]
    models: list[str]
    metrics: list[str]
    datasets: list[str] | None = None  # None: each model's default dataset
    out: str | Path = "runs/default"
    limit: int | None = None
    batch_size: int = 16
    device: str = "auto"
    target: str = "predicted"
    seed: int = 0
    method_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    method_limits: dict[str, int] = dataclasses.field(default_factory=dict)  # method -> its first N samples
    metric_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    datasets_config: str | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast for methods and metrics; see PRECISIONS)
    channels_last: bool = False  # model parameters and input batches in torch.channels_last memory format
    compile: str | None = None  # None: eager; else a mode of COMPILE_MODES for torch.compile (see compile_model)
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager" / "eager": no C++ compiler needed)
    progress: bool = True
    experiment: str | None = None
    command: str | None = None
    # An experiment may be several grids: each part overrides some of PART_KEYS (e.g. every method on one model,
    # four methods on another). The top-level methods / models / metrics are then the union of the parts'.
    parts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)  # free text for the manifest (e.g. a budget)
    workers: int = 0  # data-loading worker processes per rank (0: load in the main process)

    def __post_init__(self) -> None:
        self.methods, self.models, self.metrics = list(self.methods), list(self.models), list(self.metrics)
        for i, part in enumerate(self.parts):
            unknown = sorted(set(part) - set(PART_KEYS))
            if unknown:
                raise ComponentError(f"experiment part {i}: unknown keys {unknown}; a part may set {list(PART_KEYS)}")
            for kind in ("methods", "models", "metrics"):
                for name in part.get(kind) or []:
                    if name not in getattr(self, kind):
                        getattr(self, kind).append(name)
            if part.get("target", self.target) not in TARGETS:
                raise ComponentError(f"experiment part {i}: target {part['target']!r}: choose one of {list(TARGETS)}")
            if not part.get("models") and not self.models:
                raise ComponentError(f"experiment part {i}: no models")
        if self.target not in TARGETS:
            raise ComponentError(f"--target {self.target!r}: choose one of {list(TARGETS)}")
        if self.batch_size < 1:
            raise ComponentError(f"--batch-size {self.batch_size}: must be a positive integer")
        if self.precision not in PRECISIONS:
            raise ComponentError(f"--precision {self.precision!r}: choose one of {list(PRECISIONS)}")
        if not isinstance(self.channels_last, bool):
            raise ComponentError(f"--channels-last {self.channels_last!r}: must be True or False")
        check_compile_options(self.compile, self.compile_backend)
        if self.limit is not None and self.limit < 1:
            raise ComponentError(f"--limit {self.limit}: must be a positive integer")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ComponentError(f"--workers {self.workers!r}: must be 0 (load in the main process) or a positive integer")
        for kind, names in (("methods", self.methods), ("models", self.models), ("metrics", self.metrics)):
            if not names:
                raise ComponentError(f"no {kind} given; name at least one (see `interpbench list {kind}`)")


PART_KEYS = ("methods", "models", "metrics", "datasets", "limit", "method_limits", "target", "batch_size")


def grids(config: RunConfig) -> list[RunConfig]:
    """The grids of an experiment: the config itself, or one config per part (the part's keys over the rest)."""
    if not config.parts:
        return [config]
    out = []
    for part in config.parts:
        fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "parts"}
        fields.update({"methods": [], **part})
        grid = RunConfig.__new__(RunConfig)  # a part may have no methods (model-scope metrics only)
        grid.__dict__.update(fields, parts=[])
        out.append(grid)
    return out
