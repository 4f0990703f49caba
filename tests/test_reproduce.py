"""`interpbench reproduce`: a committed experiment reproduces; a changed parameter, a changed stored number, other
weights or another dataset make it fail and name what differs; a changed environment only warns."""

import argparse
import hashlib
import json
import math
import shutil
import sqlite3

import pandas as pd
import pytest
from rich.console import Console

import interpbench as ib
from interpbench.commands import reproduce as reproduce_cmd
from interpbench.publish import compare
from interpbench.publish import reproduce as rp

METHODS = ["gradient", "center", "toy_noise"]
METRICS = ["deletion", "toy_brightness", "toy_mean_map"]


def make_experiment(out):
    """The 'committed' experiment: the toy model on 12 toy images, deterministic and random methods, a per-sample
    metric with curves, a per-sample toy metric and a dataset-level one (a value without a CI)."""
    ib.run(methods=METHODS, models=["toy:net"], metrics=METRICS, out=out, limit=12, batch_size=8, progress=False,
           command="interpbench run --methods gradient,center,toy_noise --models toy:net ...")
    return out


def tree_digest(directory):
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def cli(directory, *extra):
    parser = argparse.ArgumentParser()
    reproduce_cmd.configure(parser)
    return parser.parse_args([str(directory), "--no-progress", *extra])


def failing(result):
    return {c.cell: c.problems for c in result.failing_cells}


@pytest.fixture
def committed(toy, tmp_path):
    return make_experiment(tmp_path / "committed")


def test_a_committed_experiment_reproduces_and_is_left_untouched(committed, capsys):
    before = tree_digest(committed)
    result = rp.reproduce(committed)
    assert result.ok, (result.failures, failing(result))
    published = json.loads((committed / "results.json").read_text())["results"]
    assert len(result.comparisons) == len(published) == 3 * 3  # 3 methods x 3 metrics (toy_mean_map: one value)
    per_sample = [c for c in result.comparisons if c.value_name == c.metric and c.metric != "toy_mean_map"]
    assert len(per_sample) == 6 and all(c.max_sample_diff == 0 for c in per_sample)  # same machine: identical
    assert result.level == rp.IDENTICAL and result.counts == {rp.IDENTICAL: 9, rp.WITHIN: 0, rp.DIFFERENT: 0}
    assert result.rounding_runs == 0  # nothing moved: nothing to measure
    assert any("no sha256" in w and "toy:net" in w for w in result.warnings)  # the toy model records none
    assert rp.reproduce(committed, exact=True).ok  # CI bounds and per-sample scores equal too
    assert tree_digest(committed) == before  # no -wal / -shm, nothing rewritten

    assert reproduce_cmd.main(cli(committed), Console(stderr=True)) == 0
    out = capsys.readouterr().out
    assert "9 identical, 0 equal within numerical tolerance, 0 different" in out
    assert "reproduced: identical" in out and "NOT reproduced" not in out


def test_a_changed_parameter_fails_and_names_the_cells(committed, capsys):
    manifest = json.loads((committed / "manifest.json").read_text())
    manifest["config"]["metric_params"] = {"deletion": {"step": 64}}  # the experiment now claims 64 px per step
    manifest["metrics"]["deletion"]["params"]["step"] = 64
    (committed / "manifest.json").write_text(json.dumps(manifest))
    result = rp.reproduce(committed)
    assert not result.ok
    bad = failing(result)
    assert set(bad) == {f"toy:net / toy / {m} / deletion" for m in METHODS}
    for problems in bad.values():
        assert any("metric.params.step: null -> 64" in p for p in problems)
    assert reproduce_cmd.main(cli(committed), Console(stderr=True)) == 1
    out = capsys.readouterr().out
    assert "toy:net / toy / center / deletion" in out and "NOT reproduced" in out


def test_a_manifest_that_contradicts_itself_fails(committed):
    manifest = json.loads((committed / "manifest.json").read_text())
    manifest["config"]["metric_params"] = {"deletion": {"step": 64}}  # the component's recorded params say null
    (committed / "manifest.json").write_text(json.dumps(manifest))
    result = rp.reproduce(committed)
    assert any("config.metric_params.deletion.step = 64" in f and "params.step = None" in f for f in result.failures)


def test_a_changed_published_number_fails_and_names_the_cell(committed):
    path = committed / "results.json"
    data = json.loads(path.read_text())
    row = next(r for r in data["results"] if r["method"] == "toy_noise" and r["metric"] == "toy_brightness")
    row["mean"] = row["ci_high"] + 2 * (row["ci_high"] - row["ci_low"])  # outside its own CI
    path.write_text(json.dumps(data))
    result = rp.reproduce(committed)
    bad = failing(result)
    assert set(bad) == {"toy:net / toy / toy_noise / toy_brightness"}
    assert "results.json gives another number than store.sqlite" in bad["toy:net / toy / toy_noise / toy_brightness"][0]
    assert len(result.failures) == 1  # results.json no longer matches its own store
    assert "toy_noise / toy_brightness: results.json disagrees with store.sqlite" in result.failures[0]


def test_a_changed_stored_score_fails_and_names_the_cell(committed):
    db = sqlite3.connect(str(committed / "store.sqlite"))
    key, sample, value = db.execute(
        "SELECT s.cell, s.sample, s.value FROM scores s JOIN cells c ON c.key = s.cell "
        "WHERE c.method = 'gradient' AND c.metric = 'deletion' ORDER BY s.sample LIMIT 1").fetchone()
    db.execute("UPDATE scores SET value = ? WHERE cell = ? AND sample = ?", (value + 0.5, key, sample))
    db.commit()
    db.close()
    result = rp.reproduce(committed)
    assert not result.ok
    assert len(result.failures) == 1 and result.failures[0].startswith("toy:net / toy / gradient / deletion: ")
    cell = next(c for c in result.comparisons if c.cell == "toy:net / toy / gradient / deletion")
    assert cell.max_sample_diff == pytest.approx(0.5)
    exact = rp.reproduce(committed, exact=True)
    assert "toy:net / toy / gradient / deletion" in failing(exact)
    assert any(f"largest at {sample}" in p for p in failing(exact)["toy:net / toy / gradient / deletion"])


def test_a_value_without_ci_is_judged_by_its_rounding_runs_or_the_explicit_tolerance(committed):
    path = committed / "results.json"
    data = json.loads(path.read_text())
    row = next(r for r in data["results"] if r["method"] == "center" and r["value_name"] == "mean_map")
    assert row["ci_low"] is None  # a dataset-level value without a CI
    row["mean"] += 1e-4
    path.write_text(json.dumps(data))
    (committed / "store.sqlite").unlink()  # only the published numbers: compared without the integrity check
    result = rp.reproduce(committed)  # the value moved where rounding moves it not at all: different
    assert set(failing(result)) == {"toy:net / toy / center / toy_mean_map.mean_map"}
    assert "beyond the rounding tolerance" in failing(result)["toy:net / toy / center / toy_mean_map.mean_map"][0]
    assert result.rounding_runs == 2 and result.rounding_cells == 1
    assert rp.reproduce(committed, atol=1e-3, rounding=0).ok  # the explicit tolerance instead
    assert not rp.reproduce(committed, atol=1e-5, rounding=0).ok


def test_other_weights_or_another_dataset_fail(committed):
    manifest = json.loads((committed / "manifest.json").read_text())
    manifest["models"]["toy:net"]["weights"]["sha256"] = "ab" * 32
    manifest["datasets"]["toy"]["toy:net"]["size"] = 32
    (committed / "manifest.json").write_text(json.dumps(manifest))
    result = rp.reproduce(committed)
    assert not result.ok and not result.failing_cells  # the numbers agree, the identities do not
    assert any("model 'toy:net': weights differ" in f and "ab" * 32 in f for f in result.failures)
    assert any("dataset 'toy': identity field toy:net.size 32 -> 16" in f for f in result.failures)
    allowed = rp.reproduce(committed, allow_different_weights=True)
    assert any("weights differ" in w for w in allowed.warnings)
    assert [f for f in allowed.failures if "weights" in f] == []


def test_a_different_environment_warns_but_passes(committed):
    manifest = json.loads((committed / "manifest.json").read_text())
    env = manifest["environment"]
    env["libraries"]["torch"] = "1.0.0"
    env["device"]["device"] = "cuda:0"
    env["plugins"] = [p for p in env["plugins"] if p["distribution"] != "interpbench-toy"]
    manifest["metrics"]["deletion"]["version"] = "0"
    (committed / "manifest.json").write_text(json.dumps(manifest))
    result = rp.reproduce(committed)
    assert result.ok
    text = "\n".join(result.warnings)
    assert "torch 1.0.0 committed" in text and "device cuda:0 committed, cpu here" in text
    assert "plugin distribution interpbench-toy absent committed, 1.2.3 here" in text
    assert "metric 'deletion': version 0 committed, 1 here" in text


def test_a_missing_experiment_is_a_usage_error(tmp_path, capsys):
    assert reproduce_cmd.main(cli(tmp_path / "nothing"), Console(stderr=True)) == 2
    assert "neither manifest.json nor store.sqlite" in capsys.readouterr().err


def frame(rows):
    cols = ["model", "dataset", "method", "metric", "value_name", "mean", "ci_low", "ci_high", "n", "status", "error"]
    return pd.DataFrame([dict(zip(cols, ["m", "d", *r])) for r in rows], columns=cols)


def test_compare_tables_tolerances_by_hand():
    old = frame([("a", "x", "x", 0.50, 0.40, 0.60, 10, "done", None),
                 ("b", "x", "x", 0.50, 0.40, 0.60, 10, "done", None),
                 ("a", "y", "count", 7.0, math.nan, math.nan, 10, "done", None),
                 ("a", "z", "z", math.nan, math.nan, math.nan, 0, "failed", "boom"),
                 ("c", "x", "x", 0.50, 0.40, 0.60, 10, "done", None),
                 ("e", "x", "x", 0.50, 0.40, 0.60, 10, "done", None)])
    new = frame([("a", "x", "x", 0.59, 0.50, 0.70, 10, "done", None),   # inside the CI: no tolerance for that
                 ("b", "x", "x", 0.50, 0.50, 0.70, 10, "done", None),   # the same mean, other CI bounds
                 ("a", "y", "count", 7.0 + 5e-6, math.nan, math.nan, 10, "done", None),
                 ("a", "z", "z", math.nan, math.nan, math.nan, 0, "failed", "boom"),
                 ("c", "x", "x", 0.50, 0.40, 0.60, 9, "done", None),    # one sample fewer
                 ("d", "x", "x", 0.50, 0.40, 0.60, 10, "done", None),   # new
                 ("e", "x", "x", 0.50, 0.40, 0.60, 10, "done", None)])  # the same
    result = {c.cell: c for c in rp.compare_tables(old, new)}
    assert result["m / d / a / x"].level == rp.DIFFERENT  # 0.09 is far beyond 1e-6 + 1e-5 * 0.5
    assert result["m / d / a / x"].ci_note == "0.9 × CI half-width"  # shown beside it, never the tolerance
    assert result["m / d / b / x"].level == rp.IDENTICAL  # without --exact the CI bounds are not compared
    assert result["m / d / a / y.count"].level == rp.WITHIN  # |5e-6| <= 1e-6 + 1e-5 * 7
    assert result["m / d / a / z"].ok  # failed both times
    assert result["m / d / c / x"].problems == ["n 10 -> 9"]
    assert result["m / d / d / x"].problems == ["not in the committed table"]
    assert result["m / d / e / x"].level == rp.IDENTICAL
    exact = {c.cell: c for c in rp.compare_tables(old, new, exact=True)}
    assert exact["m / d / b / x"].level == rp.DIFFERENT  # --exact: CI bounds too
    assert exact["m / d / e / x"].level == rp.IDENTICAL
    tight = {c.cell: c for c in rp.compare_tables(old, new, atol=1e-7, rtol=1e-7)}
    assert not tight["m / d / a / y.count"].ok


def test_cell_configuration_differences_are_classified():
    old = {"method": {"name": "m", "version": "1", "params": {"k": 1}}, "seed": 0, "dataset": {"size": [16, 16]},
           "model": {"weights": {"path": "/a/w.pt", "sha256": "x"}}, "target": "predicted"}
    new = {"method": {"name": "m", "version": "2", "params": {"k": 2}}, "seed": 0, "dataset": {"size": [32, 32]},
           "model": {"weights": {"path": "/b/w.pt", "sha256": "y"}}, "target": "label"}
    failures, warnings = compare.cell_config_differences(old, new)  # weights: checked per model, not per cell
    assert failures == ["dataset.size: [16, 16] -> [32, 32]", "method.params.k: 1 -> 2", "target: predicted -> label"]
    assert warnings == ["method.version: 1 -> 2"]


def test_where_files_lie_is_never_a_difference_at_any_depth():
    old = {"loader": "coco", "path": {"annotations": "/a/instances.json", "images": "/a/val2014"},
           "annotations_sha256": "x", "n": 5}
    moved = {**old, "path": {"annotations": "/b/instances.json", "images": "/b/val2014"}}
    assert compare.dict_differences(old, moved) == []
    assert compare.dict_differences(old, {**moved, "annotations_sha256": "y"}) == [("annotations_sha256", "x", "y")]
    assert compare.dict_differences({"path": 1}, {"path": 2}, local=False) == [("path", 1, 2)]  # method parameters


def test_reproducing_into_the_experiment_itself_is_refused(committed):
    with pytest.raises(ib.ComponentError, match="the experiment being reproduced"):
        rp.reproduce(committed, out=committed)
    shutil.rmtree(committed / "artifacts", ignore_errors=True)


def test_git_sha_is_dirty_for_code_changes_only(tmp_path):
    import subprocess

    from interpbench.core.identity import git_sha

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    for path in ("interpbench/core.py", "leaderboards/default/methods.md", "docs/guide.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("v1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    sha = git_sha(tmp_path)
    assert sha is not None and len(sha) == 40
    # a re-generated experiment or an edited doc is not a change of the code that computes the numbers
    (tmp_path / "leaderboards/default/methods.md").write_text("v2\n")
    (tmp_path / "docs/guide.md").write_text("v2\n")
    assert git_sha(tmp_path) == sha
    (tmp_path / "interpbench/core.py").write_text("v2\n")
    assert git_sha(tmp_path) == sha + "-dirty"
    assert git_sha(tmp_path / "nowhere") is None
