"""``parametrize_with_checks``: every conformance check of every component as its own pytest case.

Modelled on scikit-learn's ``parametrize_with_checks``::

    from interpbench.testing import parametrize_with_checks

    @parametrize_with_checks([MyMethod(), MyMetric(), MyLoader], xfail={"my_metric": {"prefers_oracle_map": "..."}})
    def test_conformance(component, check):
        check()

Ids read ``<component>-<check>`` (``pytest -k "my_method and batch"`` picks one). A check that does not apply to a
component is not collected (``check_method(...)`` / ``interpbench check NAME`` list it as n/a). Expected failures
are declared with a reason, either in ``xfail=`` or on the component's class (``expected_failures = {"check":
"reason"}``), and become ``pytest.mark.xfail(strict=True)``: a declared failure that starts passing fails the
test, so a stale declaration cannot hide.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Iterable, Mapping

from interpbench.core.base import ComponentError, DatasetSource, Method, Metric, Model
from interpbench.testing.datasets import _resolve_dataset, dataset_checks, dataset_label
from interpbench.testing.methods import method_checks
from interpbench.testing.metrics import metric_checks
from interpbench.testing.models import model_checks
from interpbench.testing.report import Check


@dataclasses.dataclass
class CheckCase:
    """One check of one component; calling it runs the check (raising on failure)."""

    component: str
    check: Check

    @property
    def name(self) -> str:
        return self.check.name

    @property
    def id(self) -> str:
        return f"{self.component}-{self.check.name}"

    def __call__(self) -> None:
        self.check.run()

    def __repr__(self) -> str:
        return f"<check {self.id}>"


def component_kind(component: Any) -> str:
    """``"method"``, ``"metric"``, ``"model"`` or ``"dataset"`` for an instance, a class or a loaded dataset."""
    target = component if isinstance(component, type) else type(component)
    if issubclass(target, Method):
        return "method"
    if issubclass(target, Metric):
        return "metric"
    if issubclass(target, Model):
        return "model"
    if issubclass(target, DatasetSource) or hasattr(component, "__getitem__") and hasattr(component, "identity"):
        return "dataset"
    raise ComponentError(
        f"cannot check {component!r}: pass an ib.Method, ib.Metric, ib.Model, ib.DatasetSource or a dataset "
        "(instances, or classes that build with their defaults)"
    )


def component_name(component: Any) -> str:
    if isinstance(component, Model):
        return component.spec
    name = getattr(component, "name", None)
    return str(name) if name else type(component).__name__


def _accepted(fn: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword options that ``fn`` accepts (options are shared by components of different kinds)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in params}


def checks_for(component: Any, **options: Any) -> tuple[Any, str, list[Check]]:
    """(the component, built if a class was given; the name it is checked under; its checks) for any kind.

    ``options`` go to the matching ``*_checks`` function, each taking those it accepts (``model=``,
    ``samples=``, ``n=``, ``size=``, ...).
    """
    kind = component_kind(component)
    if kind in ("method", "metric"):
        make = method_checks if kind == "method" else metric_checks
        component = component() if isinstance(component, type) else component
        return component, component_name(component), make(component, **_accepted(make, options))
    if kind == "model":
        return component, component_name(component), model_checks(component)
    label = dataset_label(component)
    declared = getattr(component, "expected_failures", None)
    dataset, source, opts = _resolve_dataset(component, size=options.get("size"))
    if declared and not getattr(dataset, "expected_failures", None):
        try:
            dataset.expected_failures = dict(declared)  # the loader's declarations travel with what it loads
        except AttributeError:
            pass
    return dataset, label, dataset_checks(dataset, n=options.get("n", 8), source=source, options=opts)


def expected_failures(component: Any, xfail: Mapping[str, Any] | None, check_names: Iterable[str],
                      label: str | None = None) -> dict[str, str]:
    """Check name -> reason, from the component's ``expected_failures`` and the ``xfail`` argument.

    ``xfail`` maps a check name to a reason (every component), or a component name (or ``<component>-<check>``
    id) to a reason / to ``{check: reason}``. Unknown check names are an error, so a typo cannot hide a failure.
    """
    names = set(check_names)
    label = label or component_name(component)
    declared: dict[str, str] = dict(getattr(component, "expected_failures", {}) or {})
    for key, value in (xfail or {}).items():
        if isinstance(value, Mapping):
            if key == label:
                declared.update(value)
        elif key in names:
            declared[key] = value
        elif key.startswith(f"{label}-") and key[len(label) + 1:] in names:
            declared[key[len(label) + 1:]] = value
    unknown = set(declared) - names
    if unknown:
        raise ComponentError(
            f"{label}: expected failures name unknown checks {sorted(unknown)}; its checks are {sorted(names)}"
        )
    for check, reason in declared.items():
        if not isinstance(reason, str) or not reason.strip():
            raise ComponentError(f"{label}: the expected failure of {check!r} needs a reason (a non-empty string)")
    return declared


def _validate_xfail_keys(xfail: Mapping[str, Any], seen_components: set[str], seen_checks: set[str]) -> None:
    for key, value in xfail.items():
        if isinstance(value, Mapping):
            if key not in seen_components:
                raise ComponentError(f"xfail names component {key!r}, which is not among {sorted(seen_components)}")
        elif key not in seen_checks and not any(key == f"{c}-{k}" for c in seen_components for k in seen_checks):
            raise ComponentError(f"xfail names {key!r}, which is neither a check ({sorted(seen_checks)}) nor a "
                                 "'<component>-<check>' id")


def parametrize_with_checks(components: Iterable[Any], *, xfail: Mapping[str, Any] | None = None,
                            **options: Any):
    """A ``pytest.mark.parametrize("component, check", ...)`` over every applicable check of every component.

    ``components``: methods, metrics, models, datasets or dataset loaders (instances, or classes built with their
    defaults). ``xfail``: expected failures with reasons (see :func:`expected_failures`). ``options`` go to the
    ``*_checks`` functions (e.g. ``model=`` for method and metric checks).
    """
    import pytest

    params = []
    seen_components: set[str] = set()
    seen_checks: set[str] = set()
    for component in components:
        built, label, checks = checks_for(component, **dict(options))
        seen_components.add(label)
        seen_checks.update(c.name for c in checks)
        declared = expected_failures(built, xfail, [c.name for c in checks], label)
        for check in checks:
            if not check.applies:
                continue
            marks = [pytest.mark.xfail(strict=True, reason=declared[check.name])] if check.name in declared else []
            case = CheckCase(label, check)
            params.append(pytest.param(built, case, id=case.id, marks=marks))
    _validate_xfail_keys(xfail or {}, seen_components, seen_checks)
    return pytest.mark.parametrize("component, check", params)
