"""interpbench: a benchmark suite for the interpretability of image classifiers."""

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. The benchmark's many small CPU ops
# (a 64 px model, per-iteration mask updates) otherwise run up to 10-20x slower whenever another process shares
# the cores (measured: meaningful perturbation, 16 images, 2 threads beside one busy process: 57 s spinning,
# 5.5 s passive). Set OMP_WAIT_POLICY yourself to override; it has no effect if torch was imported first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .api import (  # noqa: E402
    list_datasets,
    list_methods,
    list_metrics,
    list_models,
    load_dataset,
    load_method,
    load_metric,
    load_model,
)
from .base import Batch, ComponentError, DatasetSource, Method, Metric, Model, ModelSource, NotApplicable, RunContext
from .hookspecs import hookimpl
from .runner import run

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "ComponentError",
    "DatasetSource",
    "Method",
    "Metric",
    "Model",
    "ModelSource",
    "NotApplicable",
    "RunContext",
    "hookimpl",
    "list_datasets",
    "list_methods",
    "list_metrics",
    "list_models",
    "load_dataset",
    "load_method",
    "load_metric",
    "load_model",
    "run",
    "__version__",
]
