"""interpbench: a benchmark suite for the interpretability of image classifiers."""

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. The benchmark's many small CPU ops
# (a 64 px model, per-iteration mask updates) otherwise run up to 10-20x slower whenever another process shares
# the cores (measured: meaningful perturbation, 16 images, 2 threads beside one busy process: 57 s spinning,
# 5.5 s passive). Set OMP_WAIT_POLICY yourself to override; it has no effect if torch was imported first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from interpbench.api import (  # noqa: E402
    list_datasets,
    list_methods,
    list_metrics,
    list_models,
    load_dataset,
    load_method,
    load_metric,
    load_model,
)
from interpbench.core import compat as _compat  # noqa: E402
from interpbench.core.base import (  # noqa: E402
    Batch,
    ComponentError,
    DatasetMetric,
    DatasetSource,
    Method,
    Metric,
    Model,
    ModelMetric,
    ModelSource,
    NotApplicable,
    PerSampleMetric,
    RunContext,
)
from interpbench.core.hookspecs import hookimpl  # noqa: E402
from interpbench.core.identity import VERSION as __version__  # noqa: E402

_compat.install()  # `import interpbench.base` and the other old paths of moved modules (interpbench.core.compat)


def __getattr__(name: str):
    # ``interpbench.run`` loads the engine (pandas, rich, the runner) on first use, so that ``import interpbench``
    # (what a plugin module does) stays light.
    if name == "run":
        from interpbench.publish.experiment import run

        return run
    # ``ib.registry``, ``ib.base``, ...: a module that moved into a layer folder (interpbench.core.compat).
    moved = _compat.moved_attribute(name)
    if moved is not None:
        return moved
    raise AttributeError(f"module 'interpbench' has no attribute {name!r}")


__all__ = [
    "Batch",
    "ComponentError",
    "DatasetMetric",
    "DatasetSource",
    "Method",
    "Metric",
    "Model",
    "ModelMetric",
    "ModelSource",
    "NotApplicable",
    "PerSampleMetric",
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
