"""The command line a new user meets: `list` in a pipe, a half-given `run`, and the end-of-run summary (80 columns
and up, failed cells grouped by cause) on the committed default experiment and on a toy run."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import interpbench as ib
from interpbench.commands import cli
from interpbench.core.registry import get_registry
from interpbench.publish import summary
from interpbench.publish.headline import headline_mask
from interpbench.publish.results import load_experiment

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "leaderboards" / "default"
INTERPBENCH = Path(sys.executable).parent / "interpbench"  # the entry point pip installed beside this Python


def first_paragraph(cls):
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


# --------------------------------------------------------------------------------------------- list


def test_list_in_a_pipe_prints_full_names_grep_finds_them():
    done = subprocess.run(["bash", "-c", f"'{INTERPBENCH}' list methods | grep -w integrated_gradients"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    cls = get_registry().get("methods", "integrated_gradients")
    assert line.split()[0] == "integrated_gradients" and line.endswith(first_paragraph(cls))  # nothing cut
    assert "…" not in line and "│" not in line  # no rich table in a pipe


def test_list_plain_and_json_hold_every_entry_uncut(capsys):
    assert cli.main(["list", "methods", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"]: r for r in rows}
    assert set(names) == set(ib.list_methods())
    for name, row in names.items():
        assert row["description"] == first_paragraph(get_registry().get("methods", name))
    assert cli.main(["list", "methods"]) == 0  # capsys is not a terminal: plain columns
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "version", "plugin", "distribution", "description"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(names)
    longest = max(names.values(), key=lambda r: len(r["description"]))
    assert any(line.endswith(longest["description"]) for line in lines)


# --------------------------------------------------------------------------------------------- half-given run


def captured_config(monkeypatch, argv):
    captured = {}

    class Capture:
        def __init__(self, config, console):
            captured["config"] = config

        def run(self, publish=None):
            raise SystemExit(0)

    monkeypatch.setattr("interpbench.engine.runner.Runner", Capture)
    with pytest.raises(SystemExit):
        cli.main(argv)
    return captured["config"]


def test_a_half_given_run_takes_the_rest_from_the_defaults(monkeypatch, capsys):
    config = captured_config(monkeypatch, ["run", "--methods", "gradcam", "--limit", "8", "--no-progress"])
    assert config.models == ["shapes:cnn", "shapes:vit", "timm:tf_efficientnet_lite0"]  # the default models ...
    assert config.datasets is None  # ... each on its embedded dataset
    assert config.methods == ["gradcam"] and config.metrics == ["deletion", "insertion"] and config.limit == 8
    assert "the default models" in capsys.readouterr().err
    config = captured_config(monkeypatch, ["run", "--models", "shapes:cnn", "--no-progress"])
    assert config.models == ["shapes:cnn"] and config.methods == ["gradient", "gradcam", "random", "center"]
    config = captured_config(monkeypatch, ["run", "--metrics", "pointing_game", "--no-progress"])
    assert config.models == cli.DEFAULT_MODELS and config.metrics == ["pointing_game"]
    # a dataset with no model is a usage error that says what to add
    assert cli.main(["run", "--methods", "gradcam", "--dataset", "photos", "--no-progress"]) == 2
    assert "name the models to run on it with --models" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- the summary


@pytest.fixture(scope="module")
def default_table():
    return load_experiment(DEFAULT).table  # read-only: the committed default experiment


@pytest.mark.parametrize("width", [80, 120])
def test_the_default_experiments_summary_fits_the_width_with_nothing_cut(default_table, width):
    table = default_table
    text = summary.render_text(table, width, title=f"default: {DEFAULT}", files=summary.written_files(DEFAULT))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "nan" not in text.lower() and "…" not in text
    # every method's row, with its full name, and each headline mean at three decimals in it
    heads = table[headline_mask(table) & (table["scope"] == "explanation") & (table["status"] == "done")
                  & (table["metric"] != "explanation_drift")]
    for (model, dataset), part in heads.groupby(["model", "dataset"], sort=False):
        start = lines.index(next(x for x in lines if x.startswith(f"{model} on {dataset}")))
        end = lines.index("", start)
        rows = {}
        for line in lines[start + 1:end]:
            name = line.split()[0]
            if name in set(part["method"]):
                rows.setdefault(name, []).extend(v.rstrip("*") for v in line.split()[1:])
        assert set(rows) == set(part["method"])
        for _, r in part.iterrows():
            assert f"{r['mean']:.3f}" in rows[r["method"]], (model, r["method"], r["value_name"])
    # best marks: deletion (lower is better) and insertion on the shapes world, by hand from the table
    shapes = heads[(heads["model"] == "shapes:cnn") & (heads["dataset"] == "shapes")]
    for metric, pick in (("deletion", "idxmin"), ("insertion", "idxmax")):
        values = shapes[shapes["value_name"] == metric].set_index("method")["mean"]
        best = getattr(values, pick)()
        row = next(x for x in lines if x.split() and x.split()[0] == best)
        assert f"{values[best]:.3f}*" in row
    # the sanity check: one line per method, the correlation at full randomisation and the verdict
    full = table[(table["metric"] == "explanation_drift") & (table["model"] == "shapes:cnn=>shapes:cnn~cascade:5")]
    verdicts = full[full["value_name"] == "sanity_pass"].set_index("method")["mean"]
    rho = full[full["value_name"] == "rank_correlation"].set_index("method")["mean"]
    start = next(i for i, x in enumerate(lines) if x.startswith("sanity check:"))
    sanity = [x for x in lines[start:] if x.split() and x.split()[0] in verdicts.index]
    assert len(sanity) == len(verdicts)
    for line in sanity:
        method = line.split()[0]
        assert line.split()[-1] == ("pass" if verdicts[method] == 1 else "FAIL")
        assert line.split()[-2] == f"{rho[method]:.3f}"
    assert any(x.strip().endswith("store.sqlite") for x in lines)  # the files written close it


def test_wider_terminals_put_more_columns_side_by_side(default_table):
    narrow = summary.render_text(default_table, 80).splitlines()
    wide = summary.render_text(default_table, 120).splitlines()
    assert sum(x.startswith("method ") for x in narrow) > sum(x.startswith("method ") for x in wide)


def test_failed_cells_are_summarised_once_per_cause():
    error = "timm:resnet50: cannot get timm's pretrained weights offline; give a file or use @random"
    rows = [{"model": "timm:resnet50", "dataset": "-", "method": m, "metric": x, "value_name": x, "mean": float("nan"),
             "ci_low": float("nan"), "ci_high": float("nan"), "n": 0, "higher_is_better": True, "status": "failed",
             "error": error, "scope": "explanation", "wall_time": 0.0, "key": f"{m}{x}"}
            for m in ("gradient", "gradcam") for x in ("deletion", "insertion")]
    text = summary.render_text(pd.DataFrame(rows), 80)
    assert text.count("cannot get timm's pretrained") == 1 and "4 cells failed" in text
    assert "models timm:resnet50; methods gradient, gradcam; metrics deletion, insertion" in " ".join(text.split())
    assert "fail " not in text and "nan" not in text  # no table of failed cells


def test_a_run_prints_the_summary_the_causes_once_and_writes_the_report(toy, tmp_path, capsys):
    out = tmp_path / "exp"
    code = cli.main(["run", "--methods", "gradient,toy_raises,toy_na", "--models", "toy:net,toy:missing",
                     "--metrics", "deletion,insertion", "--limit", "8", "--out", str(out), "--no-progress"])
    assert code == 1
    captured = capsys.readouterr()
    both = captured.out + captured.err
    assert both.count("toy method exploded") == 1  # two failed cells, one cause
    assert both.count("toy source has no model 'missing'") == 1  # six failed cells, one cause
    assert both.count("toy_na needs a model with attention layers") == 1
    assert re.search(r"^gradient\s+0\.\d{3}\s+0\.\d{3}\s*$", captured.out, flags=re.M)  # the toy net's row
    # not a terminal: no progress bar, one log line per finished cell with its time
    for metric in ("deletion", "insertion"):
        assert re.search(rf"^\[ +\d+ s\] done +toy:net on toy: gradient / {metric} \(\d+\.\d s\)$", captured.err,
                         flags=re.M)
        assert re.search(rf"^\[ +\d+ s\] failed +toy:net on toy: toy_raises / {metric} ", captured.err, flags=re.M)
    assert "━" not in captured.err
    assert (out / "report.html").is_file() and f"{out / 'report.html'}" in captured.out
    assert cli.main(["run", "--methods", "gradient", "--models", "toy:net", "--metrics", "deletion", "--limit", "8",
                     "--out", str(tmp_path / "quiet"), "--no-progress", "--no-report"]) == 0
    assert not (tmp_path / "quiet" / "report.html").exists() and (tmp_path / "quiet" / "methods.md").is_file()


def test_on_a_terminal_progress_bars_say_what_runs_and_no_log_lines(toy, tmp_path):
    import io

    from rich.console import Console

    from interpbench.engine.config import RunConfig
    from interpbench.engine.runner import Runner
    from interpbench.publish.leaderboard import write_leaderboard

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    config = RunConfig(methods=["gradient"], models=["toy:net"], metrics=["deletion"], out=tmp_path / "exp", limit=8,
                       experiment="mine")
    Runner(config, console).run(publish=write_leaderboard)
    text = screen.getvalue()
    assert "experiment mine: 1 model runs" in text and "toy:net on toy" in text  # what runs ...
    assert re.search(r"0:00:\d\d", text)  # ... with elapsed and remaining time
    assert "] done" not in text  # the log lines are for logs


def test_the_default_experiment_covers_every_builtin_and_records_its_budget(monkeypatch):
    from test_cli import captured_config

    from interpbench.engine.config import grids

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
