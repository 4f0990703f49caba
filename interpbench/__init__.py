"""interpbench: a benchmark suite for the interpretability of image classifiers."""

from .api import (
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
