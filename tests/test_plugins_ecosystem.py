"""The plugin ecosystem: hook documentation that runs, the plugin packages of plugins/, broken plugins reported by
name while the run completes, and the conformance kit (interpbench.testing, `interpbench check`) catching what it
must catch."""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata as md
import inspect
import json
import re
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
from rich.console import Console
from torch import nn

import interpbench as ib
import interpbench.core.registry as registry_module
from interpbench.commands import check as check_command
from interpbench.commands.cli import main
from interpbench.core import hookspecs
from interpbench.core.registry import get_registry
from interpbench.testing import (
    ReferenceDataset,
    check_dataset,
    check_method,
    check_metric,
    check_model,
    parametrize_with_checks,
    reference_model,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "plugins.md"
PLUGIN_PACKAGES = {"interpbench-example": "example", "interpbench-captum": "captum"}


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps at the terminal width; keep table rows on one line


@pytest.fixture
def fresh_registry():
    """Tests that build the process-wide registry with in-process plugins restore the default one afterwards."""
    yield
    registry_module._REGISTRY = None


def docs_blocks() -> dict[str, str]:
    """The code blocks of docs/plugins.md marked ``<!-- test: NAME -->``, by name."""
    return dict(re.findall(r"<!-- test: ([\w-]+) -->\n```\w+\n(.*?)```", DOCS.read_text(), re.S))


def docs_module(name: str, code: str) -> types.ModuleType:
    module = types.ModuleType(f"docs_{name.replace('-', '_')}")
    exec(compile(code, f"docs/plugins.md[{name}]", "exec"), module.__dict__)  # noqa: S102 - our own docs
    return module


def toml_table(text: str, table: str) -> dict[str, object]:
    """The one-line ``key = "string"`` / ``key = ["a", "b"]`` entries of ``[table]`` in a small TOML file (Python 3.10
    has no tomllib; other values are left out)."""
    body = re.search(rf"^\[{re.escape(table)}\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert body, f"no [{table}] table"
    out: dict[str, object] = {}
    for key, value in re.findall(r'^([\w.-]+)\s*=\s*(.+)$', body.group(1), re.M):
        try:
            out[key] = json.loads(value)  # "string" or ["a", "b"]: valid JSON too
        except json.JSONDecodeError:
            continue
    return out


def hookspec_names() -> list[str]:
    return sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, f"{hookspecs.PROJECT}_spec"))


def check_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    check_command.configure(parser)
    return check_command.main(parser.parse_args(argv), Console(stderr=True))


# --------------------------------------------------------------------------------------------- hook documentation


def test_every_hookspec_has_a_docstring_example_and_a_tested_example_in_the_docs():
    blocks = docs_blocks()
    names = hookspec_names()
    assert {"register_methods", "register_metrics", "register_models", "register_datasets",
            "resolve_weights"} <= set(names)
    for name in names:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "Example::" in doc and "@ib.hookimpl" in doc and f"def {name}(" in doc, f"hookspec {name}: no example"
        assert f"def {name}(" in blocks.get(f"hook-{name}", ""), f"docs/plugins.md has no tested example of {name}"


def test_the_docs_hook_examples_run_end_to_end_and_exercise_every_hook(tmp_path, monkeypatch, fresh_registry):
    blocks = docs_blocks()
    calls: dict[str, list] = {}
    plugins = []
    for name in hookspec_names():
        module = docs_module(f"hook-{name}", blocks[f"hook-{name}"])

        def record(fn, hook=name):
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                result = fn(*args, **kwargs)
                calls.setdefault(hook, []).append(result)
                return result
            return wrapper

        setattr(module, name, record(getattr(module, name)))
        plugins.append((f"docs-{name}", module))
    # The weights that the resolve_weights example serves for the model source example.
    models = dict(plugins)["docs-register_models"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        trained = models.tiny_net()
    weights = tmp_path / "weights" / "mine" / "tiny.pt"
    weights.parent.mkdir(parents=True)
    torch.save(trained.state_dict(), weights)
    monkeypatch.setenv("MINE_WEIGHTS", str(tmp_path / "weights"))
    (tmp_path / "datasets.yaml").write_text(blocks["datasets-yaml"])
    monkeypatch.setenv("INTERPBENCH_DATASETS", str(tmp_path / "datasets.yaml"))
    get_registry(refresh=True, extra_plugins=plugins)

    model = ib.load_model("mine:tiny")
    assert model.weights["path"] == str(weights)  # served by the resolve_weights example, not random
    assert torch.equal(model.net.fc.weight, trained.fc.weight)
    for report in (check_model(model), check_dataset("mine-blobs"), check_metric("mine:mass_inside"),
                   check_method("mine:edges")):
        assert report.ok, str(report)
    edges = check_method("mine:edges")
    assert {r.name for r in edges.results if r.status == "not_applicable"} == {"target_sensitivity", "oracle"}

    table = ib.run(methods=["mine:edges", "gradient"], models=["mine:tiny"], metrics=["mine:mass_inside", "deletion"],
                   datasets=["mine-blobs"], target="label", limit=8, batch_size=8, out=tmp_path / "run", progress=False,
                   metric_params={"deletion": {"step": 512}})  # 8 steps at 64 x 64
    assert table.attrs["ok"] and set(table.status) == {"done"} and set(table.n) == {8}
    assert "mine:edges" in (tmp_path / "run" / "methods.md").read_text()
    # every hook was called and answered (the registration hooks with components, resolve_weights with a path)
    assert set(calls) == set(hookspec_names())
    assert all(any(result for result in results) for results in calls.values())


def _install_from_docs(site: Path) -> tuple[str, str]:
    """Build the walkthrough's distribution from docs/plugins.md: its module and its entry point, as pip would."""
    blocks = docs_blocks()
    pyproject = blocks["walkthrough-pyproject"]
    project = toml_table(pyproject, "project")
    (module_name,) = toml_table(pyproject, "tool.setuptools")["py-modules"]
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module_name}.py").write_text(blocks["walkthrough-module"])
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entry_points = toml_table(pyproject, "project.entry-points.interpbench")
    (info / "entry_points.txt").write_text("[interpbench]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return project["name"], project["version"]


def test_the_docs_walkthrough_shows_up_in_list_and_on_a_leaderboard(toy, tmp_path, monkeypatch, capsys):
    site = tmp_path / "walkthrough-site"
    dist, version = _install_from_docs(site)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    get_registry(refresh=True)
    try:
        assert main(["list", "plugins"]) == 0 and main(["list", "methods"]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"mine\s+{dist}\s+{re.escape(version)}", out)  # plain columns: capsys is not a terminal
        assert re.search(rf"mine:gxi\s+1\s+mine\s+{dist} {re.escape(version)}", out)
        report = check_method("mine:gxi")
        assert report.ok and {r.name for r in report.results if r.status == "passed"} >= {"oracle", "output"}
        assert main(["run", "--methods", "mine:gxi,gradient,random", "--models", "toy:net", "--metrics", "deletion",
                     "--out", str(tmp_path / "lb"), "--no-progress"]) == 0
        board = (tmp_path / "lb" / "methods.md").read_text()
        assert all(name in board for name in ("mine:gxi", "gradient", "random"))
        manifest = json.loads((tmp_path / "lb" / "manifest.json").read_text())
        assert {"name": "mine", "distribution": dist, "version": version,
                "module": "interpbench_mine"} in manifest["environment"]["plugins"]
    finally:
        sys.modules.pop("interpbench_mine", None)


# --------------------------------------------------------------------------------------------- the plugin packages


def test_the_plugin_packages_are_installed_listed_with_versions_and_run_beside_builtins(toy, tmp_path, capsys):
    for dist, plugin in PLUGIN_PACKAGES.items():
        declared = toml_table((ROOT / "plugins" / dist / "pyproject.toml").read_text(), "project")["version"]
        try:
            installed = md.version(dist)
        except md.PackageNotFoundError:
            pytest.fail(f"{dist} is not installed: pip install -e plugins/{dist} (CI installs both plugin packages)")
        assert installed == declared
        assert get_registry().plugins[plugin].dist == dist
    assert main(["list", "plugins"]) == 0 and main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"example\s+interpbench-example\s+0\.1\.0", out)  # plain columns: capsys is not a terminal
    assert re.search(r"captum\s+interpbench-captum\s+0\.1\.0", out)
    assert re.search(r"captum:IntegratedGradients\s+1\+captum[\d.]+\s+captum\s+interpbench-captum 0\.1\.0", out)
    assert re.search(r"example:vargrad\s+1\s+example\s+interpbench-example 0\.1\.0", out)

    datasets = tmp_path / "datasets.yaml"  # written by the toy fixture; add the example plugin's loader
    datasets.write_text(datasets.read_text() + "example-squares:\n  loader: example:squares\n  options: {n: 8}\n")
    out = tmp_path / "exp"
    table = ib.run(methods=["captum:IntegratedGradients", "gradient", "example:vargrad"], models=["toy:net"],
                   metrics=["deletion"], datasets=["example-squares"], batch_size=4, out=out, progress=False,
                   method_params={"captum:IntegratedGradients": {"n_steps": 16}, "example:vargrad": {"samples": 8}})
    assert table.attrs["ok"] and sorted(table.method) == ["captum:IntegratedGradients", "example:vargrad", "gradient"]
    assert set(table.status) == {"done"} and set(table.n) == {8} and table["mean"].between(0, 1).all()
    manifest = json.loads((out / "manifest.json").read_text())
    plugins = {p["distribution"]: p["version"] for p in manifest["environment"]["plugins"]}
    assert plugins["interpbench-captum"] == "0.1.0" and plugins["interpbench-example"] == "0.1.0"
    assert manifest["methods"]["captum:IntegratedGradients"]["params"]["n_steps"] == 16
    assert manifest["methods"]["captum:IntegratedGradients"]["version"].endswith(md.version("captum"))
    assert "captum:IntegratedGradients" in (out / "methods.md").read_text()


# --------------------------------------------------------------------------------------------- broken plugins


def test_broken_plugins_are_reported_by_name_and_the_rest_of_the_run_completes(toy, tmp_path, capsys, monkeypatch):
    # All at once: a plugin that fails to import, one that reuses a method name, and methods returning NaN and
    # maps of the wrong shape, beside a built-in method and a captum one.
    toy("interpbench-broken", ["brokenplugin"], {"broken": "brokenplugin"}, version="0.1")
    toy("interpbench-dup", ["dupplugin"], {"dup": "dupplugin"}, version="0.2")
    out = tmp_path / "exp"
    code = main(["run", "--methods", "toy_nan,toy_wrong_shape,gradient,captum:Saliency", "--models", "toy:net",
                 "--metrics", "deletion,toy_brightness", "--out", str(out), "--no-progress"])
    assert code == 1
    captured = capsys.readouterr()
    err = captured.err + captured.out  # named as they fail, with the cause in the end-of-run summary
    assert "method toy_nan on toy:net" in err and "non-finite" in err
    assert "method toy_wrong_shape on toy:net" in err and "shape (16, 4, 4)" in err
    cells = pd.read_csv(out / "methods.csv")
    status = {(r.method, r.metric): (r.status, str(r.error)) for r in cells.itertuples()}
    for method in ("gradient", "captum:Saliency"):
        for metric in ("deletion", "toy_brightness"):
            assert status[(method, metric)][0] == "done"
    assert status[("toy_nan", "deletion")][0] == "failed" and "'toy_nan'" in status[("toy_nan", "deletion")][1]
    assert "expected (B, H, W) = (16, 16, 16)" in status[("toy_wrong_shape", "toy_brightness")][1]
    failures = json.loads((out / "manifest.json").read_text())["environment"]["plugin_failures"]
    assert any(f.startswith("plugin 'broken' from interpbench-broken: ImportError: brokenplugin needs")
               for f in failures)
    assert any("method name 'toy_noise' is registered by both" in f and "interpbench-toy" in f
               and "interpbench-dup" in f for f in failures)

    assert main(["list", "plugins"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"broken\s+interpbench-broken\s+failed: ImportError", listing)
    # The duplicated name is refused with both plugins named and the fix; the switch applies the fix.
    assert main(["run", "--methods", "toy_noise", "--models", "toy:net", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'toy_noise' is registered by both" in err and "interpbench-toy" in err and "interpbench-dup" in err
    assert re.search(r"INTERPBENCH_DISABLE_PLUGINS=(toy|dup)\b", err)
    monkeypatch.setenv("INTERPBENCH_DISABLE_PLUGINS", "dup")  # keep the toy plugin: it also provides the model
    get_registry(refresh=True)
    assert main(["run", "--methods", "toy_noise", "--models", "toy:net", "--metrics", "deletion",
                 "--out", str(tmp_path / "fixed"), "--no-progress"]) == 0
    monkeypatch.delenv("INTERPBENCH_DISABLE_PLUGINS")
    get_registry(refresh=True)
    # The conformance kit finds the broken methods before a run does.
    assert check_cli(["toy_nan"]) == 1 and check_cli(["toy_wrong_shape"]) == 1
    report = capsys.readouterr().out
    assert re.search(r"output\s*│\s*FAIL\s*│\s*AssertionError: toy_nan: \d+ non-finite", report)
    assert re.search(r"output\s*│\s*FAIL\s*│\s*AssertionError: toy_wrong_shape: maps of shape \(\d+, \d+, \d+\), "
                     r"expected \(B, H, W\)", report)


# --------------------------------------------------------------------------------------------- the kit itself


class _PerSample(ib.Metric):
    """Share of the positive map inside the target's mask (a correct per-sample metric)."""

    name = "kit:mass"
    needs = frozenset({"masks"})

    def score(self, model, batch, maps):
        masks = torch.stack([s["masks"][int(t)] for s, t in zip(batch.samples, batch.targets, strict=True)]).float()
        positive = maps.clamp(min=0).flatten(1)
        return (positive * masks.flatten(1)).sum(1) / positive.sum(1).clamp(min=1e-12)


class _InPlace(_PerSample):
    name = "kit:in_place"

    def score(self, model, batch, maps):
        maps.mul_(2)
        return super().score(model, batch, maps)


class _BatchDependent(_PerSample):
    name = "kit:batch_dependent"  # each map's share of the whole batch's mass

    def score(self, model, batch, maps):
        return maps.flatten(1).sum(1) / maps.sum()


class _Backwards(_PerSample):
    name = "kit:backwards"  # claims higher is better but rewards mass outside the mask

    def score(self, model, batch, maps):
        return 1 - super().score(model, batch, maps)


class _NaN(_PerSample):
    name = "kit:nan"

    def score(self, model, batch, maps):
        return torch.full((len(batch),), float("nan"))


class _DatasetLevel(ib.Metric):
    """Share of all positive map mass inside the targets' masks, over the dataset (a correct dataset-level metric)."""

    name = "kit:dataset_mass"
    needs = frozenset({"masks"})

    def __init__(self, **params):
        super().__init__(**params)
        self.inside, self.total = 0.0, 0.0

    def reset(self):
        self.inside, self.total = 0.0, 0.0

    def update(self, model, batch, maps):
        masks = torch.stack([s["masks"][int(t)] for s, t in zip(batch.samples, batch.targets, strict=True)]).float()
        self.inside += float((maps.clamp(min=0) * masks).sum())
        self.total += float(maps.clamp(min=0).sum())

    def compute(self):
        return {"kit:dataset_mass": self.inside / self.total}


class _NoReset(_DatasetLevel):
    name = "kit:no_reset"

    def reset(self):
        pass


@pytest.mark.parametrize("metric, failing", [
    (_PerSample(), set()),
    (_DatasetLevel(), set()),
    (_InPlace(), {"inputs_unchanged"}),
    (_BatchDependent(), {"batch_independence", "prefers_oracle_map"}),
    (_Backwards(), {"prefers_oracle_map"}),
    (_NaN(), {"score_shape", "batch_independence", "reproducible", "inputs_unchanged", "prefers_oracle_map"}),
    (_NoReset(), {"reset_clears_state", "batch_split_invariance"}),
])
def test_check_metric_finds_what_breaks_the_contract(metric, failing):
    report = check_metric(metric)
    assert {r.name for r in report.failures} == failing, str(report)
    assert report.ok is not failing


def test_check_metric_reports_the_measured_values_and_names_the_fix():
    deletion = check_metric("deletion", params={"step": 64})
    assert deletion.ok, str(deletion)
    [prefers] = [r for r in deletion.results if r.name == "prefers_oracle_map"]
    right, wrong = map(float, re.findall(r"map (\d\.\d+)", prefers.message))
    assert right < wrong  # deletion: lower is better, and the oracle map deletes the evidence first
    [nan] = [r for r in check_metric(_NaN()).failures if r.name == "score_shape"]
    assert "metric 'kit:nan' returned 6 non-finite scores" in nan.message
    stale = check_metric(_PerSample(), expected_failures={"contract": "a stale declaration"})
    assert [r.name for r in stale.failures] == ["contract"] and "remove the declaration" in stale.failures[0].message
    with pytest.raises(ib.ComponentError, match=r"unknown checks \['contrcat'\]"):
        check_metric(_PerSample(), expected_failures={"contrcat": "typo"})


class _SkipsNormalisation(ib.Model):
    def forward(self, images):
        return self.net(images)


def test_check_model_finds_what_breaks_the_contract():
    assert check_model(reference_model()).ok, str(check_model(reference_model()))
    good = reference_model()
    train_mode = reference_model()
    train_mode.net.features.append(nn.Dropout(0.5))
    train_mode.train()
    skips = _SkipsNormalisation(good.net, spec="kit:skips", mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(32, 32),
                                class_names=["a", "b", "c"], cam_layer="features", label_space="kit",
                                default_dataset="shapes", weights={"tag": "x"}, layers=["features"]).eval()
    flat_cam = ib.Model(good.net, spec="kit:flat", mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(32, 32),
                        class_names=["a", "b", "c"], cam_layer="head", label_space="kit", default_dataset="nowhere",
                        weights={"tag": "x"}, layers=["features"]).eval()
    assert {r.name for r in check_model(train_mode).failures} == {"deterministic_forward", "batch_independence"}
    assert {r.name for r in check_model(skips).failures} == {"normalization_inside"}
    assert {r.name for r in check_model(flat_cam).failures} == {"cam_layer", "default_dataset"}


class _Broken(ReferenceDataset):
    def __init__(self, flaw):
        super().__init__(n=4)
        self.flaw = flaw
        self.name = f"kit:{flaw}"

    def __getitem__(self, index):
        if self.flaw == "no_index_error":
            index = index % self.n
        sample = super().__getitem__(index)
        if self.flaw == "bytes":
            sample["image"] = sample["image"] * 255
        if self.flaw == "random_ids":
            sample["id"] = f"x{torch.randint(10**9, (1,)).item()}"
        if self.flaw == "masks":
            sample["masks"] = {k: m[:-1].float() for k, m in sample["masks"].items()}
        return sample


class _FixedSizeLoader(ib.DatasetSource):
    name = "kit:fixed_size"

    def load(self, size=32, **options):
        return ReferenceDataset(n=4)  # ignores the size the runner asks for


@pytest.mark.parametrize("dataset, failing", [
    (ReferenceDataset(n=4), set()),
    (_Broken("bytes"), {"sample_format"}),
    (_Broken("random_ids"), {"stable_ids"}),
    (_Broken("masks"), {"ground_truth"}),
    (_Broken("no_index_error"), {"index_error"}),
    (_FixedSizeLoader, {"size_option"}),
])
def test_check_dataset_finds_what_breaks_the_contract(dataset, failing):
    report = check_dataset(dataset)
    assert {r.name for r in report.failures} == failing, str(report)


def test_parametrize_with_checks_ids_expected_failures_and_not_applicable_checks():
    mark = parametrize_with_checks(
        [ib.load_method("gradient"), ib.load_method("random"), ib.load_metric("deletion", step=64),
         reference_model(), ReferenceDataset(n=4)],
        xfail={"random": {"oracle": "uniform noise ignores the model", "target_sensitivity": "ignores the target"}},
    )
    argnames, params = mark.args
    assert argnames == "component, check"
    ids = [p.id for p in params]
    assert {"gradient-output", "gradient-oracle", "deletion-prefers_oracle_map", "reference:region-cam_layer",
            "reference-stable_ids", "random-determinism"} <= set(ids)
    assert "random-batch_independence" not in ids  # not applicable to a stochastic method: not collected
    assert "reference-size_option" not in ids  # needs the loader
    marks = {p.id: p.marks for p in params if p.marks}
    assert set(marks) == {"random-oracle", "random-target_sensitivity"}
    [xfail] = marks["random-oracle"]
    assert xfail.name == "xfail" and xfail.kwargs == {"strict": True, "reason": "uniform noise ignores the model"}
    component, case = params[ids.index("gradient-oracle")].values
    assert component.name == "gradient" and case.name == "oracle"
    case()  # runs the check (and raises if it failed)
    with pytest.raises(ib.ComponentError, match=r"unknown checks \['orcale'\]"):
        parametrize_with_checks([ib.load_method("random")], xfail={"random": {"orcale": "typo"}})
    with pytest.raises(ib.ComponentError, match=r"needs a reason"):
        parametrize_with_checks([ib.load_method("random")], xfail={"oracle": ""})
    with pytest.raises(ib.ComponentError, match=r"xfail names component 'randm'"):
        parametrize_with_checks([ib.load_method("random")], xfail={"randm": {"oracle": "typo"}})


def test_interpbench_check_resolves_names_and_sets_the_exit_code(capsys):
    assert check_cli(["deletion", "--param", "step=64"]) == 0
    assert check_cli(["shapes", "--samples", "2"]) == 0
    out = capsys.readouterr()
    assert re.search(r"prefers_oracle_map\s*│\s*ok\s*│\s*oracle map", out.out)
    assert "dataset shapes: 7 passed, 0 failed" in out.err
    assert check_cli(["captum:LayerActivation", "--param", "n_steps=2"]) == 2  # not a parameter of it
    assert "unknown parameter" in capsys.readouterr().err
    assert check_cli(["captum:LayerActivation"]) == 0  # its declared failures fail as declared
    out = capsys.readouterr()
    assert re.search(r"target_sensitivity\s*│\s*xfail\s*│\s*expected failure \(class-agnostic", out.out)
    assert "2 expected to fail" in out.err
    assert check_cli(["deletoin"]) == 2
    assert "unknown component 'deletoin'. Did you mean 'deletion'?" in capsys.readouterr().err
