"""The shape of a conformance report, shared by every ``check_*`` function in ``interpbench.testing``.

A check is a named callable that raises ``AssertionError`` (or any exception) when the component breaks the
contract, and returns ``None`` (or a short string with what it measured) when it passes. ``run_checks`` runs
them all and never stops at the first failure, so an author sees every problem at once. ``run_expected`` runs them
with the component's declared expected failures (every ``check_*`` entry point uses it).
"""

from __future__ import annotations

import dataclasses
import traceback
from typing import Any, Callable, Iterable

from interpbench.core.base import ComponentError


@dataclasses.dataclass(frozen=True)
class Check:
    name: str  # e.g. "output_shape"; shown in pytest ids as "<component>-<name>"
    run: Callable[[], Any]
    applies: bool = True  # False when the check does not apply to this component (reported, not run)
    reason: str = ""  # why it does not apply


@dataclasses.dataclass
class CheckResult:
    name: str
    status: str  # "passed" | "failed" | "not_applicable"
    message: str = ""
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status != "failed"


@dataclasses.dataclass
class CheckReport:
    component: str
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "failed"]

    def raise_if_failed(self) -> None:
        if not self.ok:
            lines = [f"{self.component}: {len(self.failures)} of {len(self.results)} checks failed"]
            lines += [f"  - {r.name}: {r.message}" for r in self.failures]
            raise AssertionError("\n".join(lines))

    def __str__(self) -> str:
        mark = {"passed": "ok  ", "failed": "FAIL", "not_applicable": "n/a "}
        rows = [f"{mark[r.status]} {r.name}" + (f": {r.message}" if r.message else "") for r in self.results]
        return f"{self.component}\n" + "\n".join("  " + row for row in rows)


def run_checks(component: str, checks: Iterable[Check]) -> CheckReport:
    results = []
    for check in checks:
        if not check.applies:
            results.append(CheckResult(check.name, "not_applicable", check.reason))
            continue
        try:
            message = check.run()
        except Exception as exc:  # noqa: BLE001 - a failing check is reported, the others still run
            results.append(CheckResult(check.name, "failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        else:
            results.append(CheckResult(check.name, "passed", message or ""))
    return CheckReport(component, results)


def apply_expected_failures(report: CheckReport, declared: dict[str, str]) -> CheckReport:
    """``declared`` (check name -> reason) are expected failures: one that fails is reported not applicable with
    its reason and the failure; one that passes is reported failed (a stale declaration must not hide)."""
    results = []
    for r in report.results:
        if r.name in declared and r.status == "failed":
            r = CheckResult(r.name, "not_applicable", f"expected failure ({declared[r.name]}): {r.message}", r.detail)
        elif r.name in declared and r.status == "passed":
            r = CheckResult(r.name, "failed", f"declared as an expected failure ({declared[r.name]}) but passed; "
                            "remove the declaration")
        results.append(r)
    return CheckReport(report.component, results)


def run_expected(component: str, checks: list[Check], instance: Any,
                 expected_failures: dict[str, str] | None = None) -> CheckReport:
    """Run ``checks``; a declared expected failure (the instance's ``expected_failures`` merged with the argument)
    that fails is reported n/a with its reason, one that passes is reported failed (stale declarations must not
    hide) - the convention of ``check_method``."""
    declared = {**dict(getattr(instance, "expected_failures", {}) or {}), **dict(expected_failures or {})}
    names = [c.name for c in checks]
    unknown = set(declared) - set(names)
    if unknown:
        raise ComponentError(f"{component}: expected failures name unknown checks {sorted(unknown)}; the checks are "
                             f"{names}")
    return apply_expected_failures(run_checks(component, checks), declared)
