"""The former single module of the metric, model and dataset kits, kept so that ``interpbench.testing.components``
imports keep working; new code imports from where the names now live.

Layer: part of ``interpbench.testing``. The reference world is interpbench.testing.world, the kits are
interpbench.testing.metrics, interpbench.testing.models and interpbench.testing.datasets, and ``run_expected`` is
in interpbench.testing.report. To extend the known ground-truth fields in a test, patch
``interpbench.testing.world.KNOWN_FIELDS`` (the checks read it there).
"""

from __future__ import annotations

from interpbench.testing.datasets import (  # noqa: F401
    _resolve_dataset,
    check_dataset,
    dataset_checks,
    dataset_label,
)
from interpbench.testing.metrics import (  # noqa: F401
    _dataset_result,
    _headline,
    _scores,
    check_metric,
    metric_checks,
)
from interpbench.testing.models import _images_for, check_model, model_checks  # noqa: F401
from interpbench.testing.report import run_expected  # noqa: F401
from interpbench.testing.world import (  # noqa: F401
    ATOL,
    KNOWN_FIELDS,
    REFERENCE_CLASSES,
    REFERENCE_MEAN,
    REFERENCE_SIZE,
    REFERENCE_STD,
    REGION,
    SCOPES,
    ReferenceDataset,
    ReferenceOracleMethod,
    RegionNet,
    _close,
    _finite_dict,
    _instance,
    _json_ok,
    _label,
    _seeded,
    _sub_batch,
    reference_batch,
    reference_model,
    reference_sample,
    region_mask,
)
