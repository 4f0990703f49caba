"""Conformance kit: check a method, metric, model or dataset against interpbench's contract before publishing it.

::

    from interpbench.testing import check_method, check_metric, check_model, check_dataset

    report = check_method(MyMethod())       # a CheckReport: one result per check, every problem at once
    print(report)                           # ok / FAIL / n/a per check, with what it measured or what is wrong
    report.raise_if_failed()                # AssertionError listing the failed checks
    check_rescaling(MyMetric())             # maps x 1e-9 and x 1e9 must score as the maps (interpbench.testing.rescaling)

In a plugin's test suite (scikit-learn's ``parametrize_with_checks`` is the model)::

    from interpbench.testing import parametrize_with_checks

    @parametrize_with_checks([MyMethod(), MyMetric(), MyLoader],
                             xfail={"my_metric": {"prefers_oracle_map": "measures sparsity, not faithfulness"}})
    def test_conformance(component, check):
        check()

On the command line: ``interpbench check NAME`` (a method, metric, dataset, loader or model spec).
The checks are listed in the docstrings of :func:`method_checks`, :func:`metric_checks`, :func:`model_checks` and
:func:`dataset_checks`; docs/plugins.md explains each.

One module per kit, each check also a function of its own that a plugin author can call alone (as scikit-learn's
``sklearn.utils.estimator_checks``), with a docstring that says what it checks and the fix when it fails:
``interpbench.testing.methods`` (``check_method_output``, ``check_method_oracle``, ...),
``interpbench.testing.metrics`` (``check_metric_contract``, ``check_metric_batch_independence``, ...),
``interpbench.testing.models`` (``check_model_logits``, ``check_model_cam_layer``, ...),
``interpbench.testing.datasets`` (``check_dataset_sample_format``, ...) and ``interpbench.testing.rescaling``. The
kits run on the shared reference world of ``interpbench.testing.world`` (``reference_model``, ``ReferenceDataset``,
``reference_batch``, ``ReferenceWorld``; for methods, whose right answer depends on the target class, the
``oracle_model`` and ``oracle_images``); ``interpbench.testing.report`` holds the report they return.

Layer: ``interpbench.testing`` sits beside ``interpbench.publish``, above the engine (docs/design.md).
"""

from __future__ import annotations

from interpbench.testing.datasets import check_dataset, dataset_checks
from interpbench.testing.methods import (
    check_method,
    method_checks,
    oracle_images,
    oracle_model,
)
from interpbench.testing.metrics import check_metric, metric_checks
from interpbench.testing.models import check_model, model_checks
from interpbench.testing.pytest_helpers import CheckCase, parametrize_with_checks
from interpbench.testing.report import Check, CheckReport, CheckResult, run_checks
from interpbench.testing.rescaling import check_rescaling, rescaling_checks
from interpbench.testing.world import (
    ReferenceDataset,
    ReferenceOracleMethod,
    ReferenceWorld,
    reference_batch,
    reference_model,
)

__all__ = [
    "Check",
    "CheckCase",
    "CheckReport",
    "CheckResult",
    "ReferenceDataset",
    "ReferenceOracleMethod",
    "ReferenceWorld",
    "check_dataset",
    "check_method",
    "check_metric",
    "check_model",
    "check_rescaling",
    "dataset_checks",
    "method_checks",
    "metric_checks",
    "model_checks",
    "oracle_images",
    "oracle_model",
    "parametrize_with_checks",
    "rescaling_checks",
    "reference_batch",
    "reference_model",
    "run_checks",
]
