"""Leaderboard statistics, datasets.yaml resolution, model specs, and README/CI consistency."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import interpbench as ib
from interpbench.core.config import expand, parse_model_spec, read_datasets
from interpbench.ops.stats import bootstrap_ci

ROOT = Path(__file__).resolve().parent.parent


def test_bootstrap_ci_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    values = rng.normal(0.3, 0.1, size=400)
    lo, hi = bootstrap_ci(values, seed=1)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert lo < values.mean() < hi
    assert abs((hi - lo) / 2 - half) < 0.15 * half
    assert bootstrap_ci(values, seed=1) == (lo, hi)  # seeded
    assert bootstrap_ci(np.full(10, 0.25), seed=0) == (0.25, 0.25)
    assert bootstrap_ci(np.array([0.7]), seed=0) == (0.7, 0.7)


def test_datasets_yaml_override_order_and_expansion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets.yaml").write_text("photos:\n  loader: imagefolder\n  path: ${MY_PHOTOS:-~/pics}\n")
    entries = read_datasets()
    assert entries["photos"].loader == "imagefolder" and entries["photos"].path == str(Path.home() / "pics")
    assert entries["shapes"].loader == "shapes"  # packaged entries remain
    monkeypatch.setenv("MY_PHOTOS", "/data/p")
    assert read_datasets()["photos"].path == "/data/p"
    extra = tmp_path / "extra.yaml"
    extra.write_text("photos:\n  loader: photos\n")
    assert read_datasets(extra)["photos"].loader == "photos"
    bad = tmp_path / "bad.yaml"
    bad.write_text("x:\n  path: /a\n")
    with pytest.raises(ib.ComponentError, match="dataset 'x' needs a 'loader:'"):
        read_datasets(bad)
    with pytest.raises(ib.ComponentError, match="does not exist"):
        read_datasets(tmp_path / "missing.yaml")
    assert expand("${NOPE_NOT_SET:-fallback}/x") == "fallback/x"


def test_model_spec_grammar():
    assert parse_model_spec("timm:resnet50").weights is None
    spec = parse_model_spec("timm:resnet50.a1_in1k@/tmp/ft@2.pth")
    assert (spec.source, spec.name, spec.weights) == ("timm", "resnet50.a1_in1k", "/tmp/ft@2.pth")
    assert str(parse_model_spec("shapes:cnn@random")) == "shapes:cnn@random"
    with pytest.raises(ib.ComponentError):
        parse_model_spec(":x")


def readme_commands():
    """The two commands of the README's "Two commands" section (run the default experiment, run the tests)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)
    assert len(blocks) == 2 and all("\n" not in b for b in blocks), "the section holds two one-line bash commands"
    return blocks


# executables the tests run -> the Debian package that provides them
SYSTEM_PACKAGES = {"chromium": "chromium", "chromium-browser": "chromium", "pdflatex": "texlive-latex-recommended"}


def _toml(path):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    return tomllib.loads(path.read_text())


def _declared(requirements):
    """Distribution names (normalised) of requirement strings, with everything they require, as installed."""
    from importlib import metadata

    from packaging.requirements import Requirement

    def norm(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    todo = [Requirement(r).name for r in requirements]
    seen = set()
    while todo:
        name = norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [Requirement(r).name for r in metadata.requires(name) or [] if "extra ==" not in r]
        except metadata.PackageNotFoundError:
            pass
    return seen


def test_ci_runs_exactly_the_readme_test_command_and_it_installs_what_the_tests_use():
    import ast
    import sys
    from importlib import metadata

    install, test_cmd = readme_commands()
    assert install.startswith("python3 -m venv .venv") and install.endswith("&& interpbench run")
    # CI: the README's test command verbatim, after nothing but shell options, the repository root and removing a
    # stale virtual environment (a clean checkout has none)
    lines = [x.split("  #")[0].strip() for x in (ROOT / ".ci" / "run").read_text().splitlines()]
    lines = [x for x in lines if x and not x.startswith("#")]
    assert lines == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "rm -rf .venv", test_cmd]

    steps = [s.strip() for s in test_cmd.split("&&")]
    assert steps[-1] == "pytest"  # the whole suite, no -k / -m that would leave a test out
    # system packages: every executable a test runs is installed by the command's apt-get step
    apt = next(s for s in steps if " apt-get install " in f" {s} ")
    packages = set(apt.split("install", 1)[1].split()) - {"-y"}
    test_files = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "plugins").glob("*/tests/*.py"))
    sources = {p: p.read_text() for p in test_files}
    used = {m for text in sources.values() for m in re.findall(r"""which\(\s*["']([\w.-]+)["']""", text)}
    used |= {b for b in SYSTEM_PACKAGES if any(f'"{b}"' in text for text in sources.values())}
    assert "chromium" in used  # the report's browser test, mandatory (never skipped)
    for binary in used:
        assert binary in SYSTEM_PACKAGES, f"a test runs {binary!r}: add its Debian package to SYSTEM_PACKAGES"
        assert SYSTEM_PACKAGES[binary] in packages, f"the README's test command does not install {binary!r}"
    # Python packages: every third-party module a test imports comes with interpbench, its [test] extra or the
    # plugins the command installs
    pip = next(s for s in steps if s.startswith("pip install"))
    targets = shlex.split(pip)[2:]
    assert targets[0] == "-e" and targets[1].startswith(".[")
    extras = targets[1][2:-1].split(",")
    project = _toml(ROOT / "pyproject.toml")["project"]
    assert set(extras) <= set(project["optional-dependencies"]), extras
    requirements = list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]
    installed = {"interpbench"}
    for plugin in targets[2:]:
        if plugin == "-e":
            continue
        meta = _toml(ROOT / plugin / "pyproject.toml")["project"]
        installed.add(meta["name"])
        requirements += meta.get("dependencies", []) + meta.get("optional-dependencies", {}).get("test", [])
    provided = _declared(requirements) | installed | {"pip"}  # python3 -m venv ships pip
    local = {p.stem for p in test_files} | {"conftest"}
    distributions = metadata.packages_distributions()
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in local:
                    continue
                dists = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(top, [top])}
                assert dists & provided, (f"{path.relative_to(ROOT)} imports {top!r}, which the README's test command "
                                          "does not install: add it to the [test] extra of pyproject.toml")


def test_the_default_experiment_covers_every_builtin_and_records_its_budget(monkeypatch):
    from test_cli import captured_config

    from interpbench.engine.runner import grids

    config = captured_config(monkeypatch, ["run", "--no-progress"])
    builtin = {n for n in ib.list_methods() if ":" not in n}  # plugins' methods carry their prefix
    transformer_only = {"attention_rollout", "transformer_attribution"}  # not applicable to the CNN
    builtin -= transformer_only
    parts = grids(config)
    cells = {(m, d, x) for g in parts for m in g.models for d in (g.methods or ["-"]) for x in g.metrics}
    for method in builtin:  # every built-in method on the shapes world with every explanation metric
        for metric in ("deletion", "insertion", "pointing_game", "energy_pointing_game", "grid_pointing_game",
                       "adversarial_detection"):
            assert ("shapes:cnn", method, metric) in cells, (method, metric)
    for method in [*sorted(transformer_only), "gradcam", "random"]:  # the same world in a vision transformer
        for metric in ("deletion", "insertion", "pointing_game"):
            assert ("shapes:vit", method, metric) in cells, (method, metric)
    for model in ("shapes:cnn", "shapes:cnn@random"):
        assert (model, "-", "dissection") in cells
    assert ("shapes:cnn", "-", "adversarial_consistency") in cells
    for method in ("gradient", "gradcam", "random", "center"):
        assert ("timm:tf_efficientnet_lite0", method, "deletion") in cells
    assert any("=>" in m for g in parts for m in g.models)  # a fine-tuning pair for the drift metrics
    # the budget is recorded: limits per part and method, reduced parameters named in the notes
    assert all(g.limit for g in parts) and config.notes
    for name, params in config.method_params.items():
        assert all(k in ib.load_method(name).params for k in params)
        assert name in " ".join(config.notes)
    # --limit shrinks every part (and no method limit exceeds it)
    small = grids(captured_config(monkeypatch, ["run", "--no-progress", "--limit", "8"]))
    assert all(g.limit == 8 and all(v <= 8 for v in g.method_limits.values()) for g in small)


def test_metric_sections_use_a_metrics_own_layout_and_fall_back_when_it_fails(monkeypatch):
    import pandas as pd

    from interpbench.publish import leaderboard

    rows = [{"model": "m", "dataset": "d", "method": "x", "metric": metric, "value_name": name, "mean": 0.5,
             "ci_low": 0.4, "ci_high": 0.6, "n": 3, "higher_is_better": True, "status": "done", "error": None,
             "scope": "explanation", "wall_time": 0.0, "key": metric}
            for metric, name in (("mine", "mine"), ("mine", "extra"), ("broken", "broken"), ("plain", "plain"))]
    table = pd.DataFrame(rows)

    class Mine:
        @classmethod
        def leaderboard_markdown(cls, part):
            return f"custom layout of {len(part)} values\n"

    class Broken:
        @classmethod
        def leaderboard_markdown(cls, part):
            raise ValueError("boom")

    monkeypatch.setattr(leaderboard, "_metric_class", {"mine": Mine, "broken": Broken}.get)
    with pytest.warns(UserWarning, match="broken.leaderboard_markdown failed .ValueError: boom"):
        text = leaderboard.metric_sections(table)
    assert "## mine\n\ncustom layout of 2 values" in text
    assert "## broken\n\n| model | dataset | method | broken ↑ |" in text  # the generic table instead
    assert "## plain\n\n| model | dataset | method | plain ↑ |" in text
    # the headline summary keeps one column per metric (in the run's order), the value named after it
    assert list(leaderboard.headline_table(table).columns) == ["model", "dataset", "method", "mine ↑", "broken ↑",
                                                               "plain ↑"]
