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
"""

from __future__ import annotations

from interpbench.testing.components import (
    ReferenceDataset,
    ReferenceOracleMethod,
    check_dataset,
    check_metric,
    check_model,
    dataset_checks,
    metric_checks,
    model_checks,
    reference_batch,
    reference_model,
)
from interpbench.testing.methods import (
    check_method,
    method_checks,
    oracle_images,
    oracle_model,
)
from interpbench.testing.pytest_helpers import CheckCase, parametrize_with_checks
from interpbench.testing.report import Check, CheckReport, CheckResult, run_checks
from interpbench.testing.rescaling import check_rescaling, rescaling_checks

__all__ = [
    "Check",
    "CheckCase",
    "CheckReport",
    "CheckResult",
    "ReferenceDataset",
    "ReferenceOracleMethod",
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
