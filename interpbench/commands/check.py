"""``interpbench check NAME``: run the conformance checks on an installed method, metric, dataset or model.

NAME is looked up as a method, a metric, a dataset of datasets.yaml, a dataset loader, then a model spec
(``--kind`` decides when a name is taken twice). Exit code 0 when every check passes (or fails as the component
declares it expects, with a reason), 1 when a check fails or a declared failure passes, 2 for an unknown name.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from interpbench import api
from interpbench.core.base import ComponentError
from interpbench.core.config import parse_model_spec, read_datasets
from interpbench.core.registry import get_registry, unknown_message
from interpbench.testing.datasets import _resolve_dataset, dataset_checks
from interpbench.testing.methods import method_checks
from interpbench.testing.metrics import metric_checks
from interpbench.testing.models import model_checks
from interpbench.testing.pytest_helpers import _accepted
from interpbench.testing.report import run_expected

HELP = "check a method, metric, model or dataset against interpbench's contract (the plugin conformance kit)"
KINDS = ("method", "metric", "dataset", "model")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a method or metric name, a dataset or loader name, or a model spec "
                        "(SOURCE:NAME[@WEIGHTS]); see `interpbench list`")
    parser.add_argument("--kind", choices=KINDS, help="what NAME is, when it names several things")
    parser.add_argument("--param", action="append", metavar="PARAM=VALUE",
                        help="a parameter of the method or metric (value parsed as YAML), e.g. --param n_steps=8")
    parser.add_argument("--model", help="run method and metric checks on this model spec instead of the kit's "
                        "reference model (whose right answer is known)")
    parser.add_argument("--samples", type=int, default=8, help="dataset checks read the first N samples (default 8)")
    parser.add_argument("--traceback", action="store_true", help="print the traceback of each failed check")


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["n_steps=8", "layer=features"]`` -> ``{"n_steps": 8, "layer": "features"}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ComponentError(f"--param {item!r}: expected PARAM=VALUE, e.g. --param n_steps=8")
        out[key.strip()] = yaml.safe_load(value)
    return out


def resolve(name: str, kind: str | None = None) -> tuple[str, str]:
    """``(kind, what)``: which kind of component ``name`` is (``what`` says where it was found)."""
    reg = get_registry()
    found: list[tuple[str, str]] = []
    if name in reg.names("methods"):
        found.append(("method", "method"))
    if name in reg.names("metrics"):
        found.append(("metric", "metric"))
    if name in read_datasets():
        found.append(("dataset", "dataset (datasets.yaml)"))
    if name in reg.names("datasets"):
        found.append(("dataset", "dataset loader"))
    if ":" in name and parse_model_spec(name).source in reg.names("models"):
        found.append(("model", "model spec"))
    if kind is not None:
        found = [f for f in found if f[0] == kind]
    if not found:
        known = reg.names("methods") + reg.names("metrics") + list(read_datasets()) + reg.names("datasets")
        hint = unknown_message(kind or "component", name, known)
        raise ComponentError(hint.replace(f"`interpbench list {kind or 'component'}s`", "`interpbench list`"))
    return found[0]


def build_checks(name: str, kind: str, what: str, params: dict[str, Any], model_spec: str | None,
                 samples: int) -> tuple[Any, str, list]:
    """(the component, its label, its checks)."""
    if params and kind not in ("method", "metric", "dataset"):
        raise ComponentError(f"--param applies to methods, metrics and dataset loaders, not to the model {name!r}")
    model = api.load_model(model_spec) if model_spec else None
    if kind == "method":
        method = api.load_method(name, **params)
        options = {"model": model} if model is not None else {}
        return method, f"method {name}", method_checks(method, **_accepted(method_checks, options))
    if kind == "metric":
        metric = api.load_metric(name, **params)
        return metric, f"metric {name}", metric_checks(metric, model=model)
    if kind == "model":
        loaded = api.load_model(name)
        return loaded, f"model {name}", model_checks(loaded)
    if what == "dataset loader":
        source = get_registry().get("datasets", name)()
        dataset = source.load(**params)
        return dataset, f"dataset loader {name}", dataset_checks(dataset, n=samples, source=source,
                                                                            options=params)
    dataset, source, options = _resolve_dataset(name, **params)
    return dataset, f"dataset {name}", dataset_checks(dataset, n=samples, source=source, options=options)


def main(args: argparse.Namespace, console: Console) -> int:
    try:
        kind, what = resolve(args.name, args.kind)
        component, label, checks = build_checks(args.name, kind, what, parse_params(args.param), args.model,
                                                args.samples)
        report = run_expected(label, checks, component)
    except ComponentError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    declared = dict(getattr(component, "expected_failures", {}) or {})
    table = Table(title=f"interpbench check {args.name} ({what})")
    for col in ("check", "result", "details"):
        table.add_column(col)
    counts = {"passed": 0, "failed": 0, "expected to fail": 0, "not applicable": 0}
    for r in report.results:
        if r.status == "not_applicable" and r.name in declared:
            status, key = "[yellow]xfail[/yellow]", "expected to fail"
        elif r.status == "not_applicable":
            status, key = "n/a", "not applicable"
        elif r.status == "failed":
            status, key = "[red]FAIL[/red]", "failed"
        else:
            status, key = "ok", "passed"
        counts[key] += 1
        table.add_row(r.name, status, r.message)
    Console().print(table)
    if args.traceback:
        for r in report.failures:
            console.print(f"[bold]{r.name}[/bold]\n{r.detail}")
    console.print(f"{label}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v or k in ("passed", "failed")))
    return 0 if report.ok else 1
