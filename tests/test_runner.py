"""The experiment grid: failing cells become rows, seeds come from cell identity, resume after a kill."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

import interpbench as ib
from interpbench.commands.cli import main
from interpbench.publish.leaderboard import regenerate


def scores_by_cell(out):
    db = sqlite3.connect(str(out / "store.sqlite"))
    rows = db.execute(
        "SELECT c.method, c.metric, s.sample, s.value FROM scores s JOIN cells c ON c.key = s.cell "
        "ORDER BY c.method, c.metric, s.sample"
    ).fetchall()
    db.close()
    return {(m, k, s): v for m, k, s, v in rows}


def test_failing_cells_are_rows_with_errors_and_the_others_finish(toy, tmp_path):
    out = tmp_path / "exp"
    table = ib.run(
        methods=["toy_noise", "toy_nan", "toy_wrong_shape", "toy_raises", "toy_na"],
        models=["toy:net", "toy:missing"],
        metrics=["deletion", "toy_brightness"],
        out=out, batch_size=8, progress=False,
    )
    assert table.attrs["ok"] is False
    by = {(r.model, r.method, r.metric): r for r in table.itertuples()}
    good = by[("toy:net", "toy_noise", "deletion")]
    assert good.status == "done" and good.n == 24 and 0 <= good.mean <= 1
    assert by[("toy:net", "toy_noise", "toy_brightness")].n == 24
    assert "non-finite" in by[("toy:net", "toy_nan", "deletion")].error
    assert "shape (8, 4, 4)" in by[("toy:net", "toy_wrong_shape", "deletion")].error
    assert "toy method exploded" in by[("toy:net", "toy_raises", "toy_brightness")].error
    assert by[("toy:net", "toy_na", "deletion")].status == "not_applicable"
    assert "has no model 'missing'" in by[("toy:missing", "toy_noise", "deletion")].error
    md = (out / "methods.md").read_text()
    assert "Cells that did not run" in md and "toy method exploded" in md
    assert "deletion ↓" in md and "toy_brightness ↑" in md


def test_dataset_level_metric_and_manifest(toy, tmp_path):
    out = tmp_path / "exp"
    table = ib.run(methods=["toy_noise"], models=["toy:net"], metrics=["toy_mean_map"], out=out, progress=False)
    row = table[table.value_name == "mean_map"].iloc[0]
    assert row.status == "done" and abs(row["mean"] - 0.5) < 0.02  # uniform noise
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["toy:net"]["weights"]["tag"] == "seed0"
    assert manifest["datasets"]["toy"]["toy:net"]["n"] == 24
    assert manifest["methods"]["toy_noise"]["deterministic"] is False
    assert {"torch", "numpy", "python"} <= set(manifest["environment"]["libraries"])
    plugins = {p["distribution"]: p["version"] for p in manifest["environment"]["plugins"]}
    assert plugins["interpbench-toy"] == "1.2.3"
    assert manifest["cells"][0]["wall_time"] > 0


def test_adding_a_method_never_changes_another_cells_numbers(toy, tmp_path):
    a = ib.run(methods=["toy_noise"], models=["toy:net"], metrics=["deletion"], out=tmp_path / "a", batch_size=8,
               progress=False)
    b = ib.run(methods=["toy_nan", "toy_noise"], models=["toy:net"], metrics=["toy_brightness", "deletion"],
               out=tmp_path / "b", batch_size=8, progress=False)
    sa = {k[2]: v for k, v in scores_by_cell(tmp_path / "a").items()}
    sb = {k[2]: v for k, v in scores_by_cell(tmp_path / "b").items() if k[:2] == ("toy_noise", "deletion")}
    assert len(sa) == 24 and sa == sb
    assert a.iloc[0]["mean"] == b[(b.method == "toy_noise") & (b.metric == "deletion")].iloc[0]["mean"]


def test_rerun_resumes_without_recomputing_and_tables_regenerate(toy, tmp_path):
    out = tmp_path / "exp"
    kwargs = dict(methods=["toy_noise"], models=["toy:net"], metrics=["deletion"], out=out, progress=False)
    first = ib.run(limit=8, **kwargs)
    assert first.iloc[0]["n"] == 8
    second = ib.run(limit=24, **kwargs)  # extends the same cell
    assert second.iloc[0]["n"] == 24
    full = ib.run(**kwargs)
    pd.testing.assert_frame_equal(second.drop(columns=["wall_time"]), full.drop(columns=["wall_time"]))
    (out / "methods.md").unlink()
    regenerated = regenerate(out)
    assert (out / "methods.md").exists()
    assert regenerated.iloc[0]["mean"] == full.iloc[0]["mean"]


def test_resume_after_kill_gives_the_numbers_of_an_uninterrupted_run(toy, tmp_path):
    args = ["-m", "interpbench", "run", "--methods", "toy_noise", "--models", "toy:net", "--metrics",
            "deletion,toy_brightness", "--batch-size", "4", "--no-progress"]
    env = {**os.environ, "INTERPBENCH_TOY_SLEEP": "0.3"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    stored = 0
    while time.time() < deadline and stored < 8:
        time.sleep(0.1)
        try:
            db = sqlite3.connect(str(killed / "store.sqlite"))
            stored = db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
            db.close()
        except sqlite3.Error:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = scores_by_cell(killed)
    assert 0 < len(partial) < 48, "the run should have been killed mid-way"
    env["INTERPBENCH_TOY_SLEEP"] = "0"
    resumed = subprocess.run([sys.executable, *args, "--out", str(killed)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    clean = tmp_path / "clean"
    subprocess.run([sys.executable, *args, "--out", str(clean)], env=env, check=True, capture_output=True)
    a, b = scores_by_cell(killed), scores_by_cell(clean)
    assert len(a) == 48 and a == b
    assert {k: partial[k] for k in partial} == {k: a[k] for k in partial}  # stored batches were not recomputed
    assert (killed / "methods.csv").read_text() .splitlines()[1:] != []


def test_cli_exit_codes_and_errors(toy, tmp_path, capsys):
    out = str(tmp_path / "x")
    assert main(["run", "--methods", "toy_noise", "--models", "toy:net", "--out", out, "--no-progress"]) == 0
    assert main(["run", "--methods", "toy_nan", "--models", "toy:net", "--out", out, "--no-progress"]) == 1
    assert main(["run", "--methods", "toy_noyse", "--models", "toy:net", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'toy_noyse'" in err and "toy_noise" in err
    assert main(["run", "--methods", "toy_noise", "--models", "toy:net", "--dataset", "nope", "--out", out]) == 2
    assert main(["run", "--methods", "toy_noise", "--models", "toy:net", "--target", "label", "--out", out,
                 "--metric-param", "deletion.stepp=3"]) == 2
    assert "unknown parameter" in capsys.readouterr().err
    assert main(["leaderboard", str(tmp_path / "nothing")]) == 2


def test_imagefolder_path_missing_is_a_failed_row_naming_the_path(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGENET_VAL", str(tmp_path / "no-such-dir"))
    table = ib.run(methods=["toy_noise"], models=["toy:net"], metrics=["deletion"], datasets=["imagenet-val"],
                   out=tmp_path / "e", progress=False)
    assert table.attrs["ok"] is False
    assert str(tmp_path / "no-such-dir") in table.iloc[0]["error"]


def test_multilabel_datasets_explain_each_present_class(toy, tmp_path):
    ib.run(methods=["toy_noise"], models=["toy:net"], metrics=["toy_brightness"], datasets=["toy-multi"],
           target="label", out=tmp_path / "m", batch_size=5, progress=False)
    ids = sorted(k[2] for k in scores_by_cell(tmp_path / "m"))
    expected = sorted(f"toy/{i:04d}#{c}" for i in range(24) for c in [i % 3] + ([(i + 1) % 3] if i % 2 == 0 else []))
    assert ids == expected  # 36 trials from 24 images


def test_method_limits_run_a_costly_method_on_fewer_samples(toy, tmp_path):
    table = ib.run(methods=["toy_noise", "toy_wrong_shape"], models=["toy:net"], metrics=["toy_brightness"],
                   out=tmp_path / "l", batch_size=8, method_limits={"toy_noise": 11, "toy_wrong_shape": 0},
                   progress=False)
    noise = table[table.method == "toy_noise"].iloc[0]
    assert noise["n"] == 11 and noise["status"] == "done"
    snap = torch.load(tmp_path / "l" / "artifacts" / "maps" / "toy_net__toy__toy_noise.pt")
    assert snap["maps"].shape == (8, 16, 16) and snap["ids"][0] == "toy/0000"


def test_out_of_memory_halves_the_chunk_and_gives_the_same_numbers(toy, tmp_path, monkeypatch):
    kwargs = dict(methods=["toy_brightest"], models=["toy:net"], metrics=["deletion", "toy_brightness"],
                  batch_size=8, progress=False)
    ib.run(out=tmp_path / "plain", **kwargs)
    monkeypatch.setenv("INTERPBENCH_TOY_OOM", "1")
    table = ib.run(out=tmp_path / "oom", **kwargs)
    assert table.attrs["ok"] and set(table["status"]) == {"done"}
    assert scores_by_cell(tmp_path / "oom") == scores_by_cell(tmp_path / "plain")
    events = json.loads((tmp_path / "oom" / "manifest.json").read_text())["out_of_memory"]
    assert events[:2] == [{"model": "toy:net", "component": "toy_brightest", "chunk": 4},
                          {"model": "toy:net", "component": "toy_brightest", "chunk": 2}]
    assert len(events) == 2  # later batches start with the smaller chunk


def test_bf16_precision_is_recorded_and_close_to_fp32(toy, tmp_path):
    kwargs = dict(methods=["toy_brightest"], models=["toy:net"], metrics=["deletion"], progress=False)
    a = ib.run(out=tmp_path / "fp32", **kwargs)
    b = ib.run(out=tmp_path / "bf16", precision="bf16", **kwargs)
    manifest = json.loads((tmp_path / "bf16" / "manifest.json").read_text())
    assert manifest["precision"]["requested"] == "bf16"
    assert abs(a.iloc[0]["mean"] - b.iloc[0]["mean"]) < 0.02
    assert a.iloc[0]["mean"] != b.iloc[0]["mean"]  # autocast really ran the model in bf16
    with pytest.raises(ib.ComponentError, match="--precision 'fp8'"):
        ib.run(out=tmp_path / "x", precision="fp8", **kwargs)


def test_a_run_at_another_precision_never_resumes_or_mixes_in_fp32_cells(toy, tmp_path):
    out = tmp_path / "exp"
    kwargs = dict(methods=["toy_brightest"], models=["toy:net"], metrics=["deletion", "dissection"], out=out,
                  progress=False)
    fp32 = ib.run(**kwargs)
    bf16 = ib.run(precision="bf16", **kwargs)  # same folder: its cells are new, computed in bf16
    deletion = lambda table: table[table.metric == "deletion"].iloc[0]["mean"]  # noqa: E731
    assert deletion(bf16) != deletion(fp32)
    assert deletion(bf16) == deletion(ib.run(precision="bf16", **{**kwargs, "out": tmp_path / "fresh"}))
    db = sqlite3.connect(str(out / "store.sqlite"))
    configs = [json.loads(c) for (c,) in db.execute("SELECT config FROM cells")]
    db.close()
    assert len(configs) == 4  # two metrics (explanation and model scope) x two precisions
    assert sorted(c.get("precision", "fp32") for c in configs) == ["bf16", "bf16", "fp32", "fp32"]
    assert deletion(ib.run(**kwargs)) == deletion(fp32)  # fp32 again resumes its own cells


def test_the_manifest_records_the_settings_that_change_float_rounding(toy, tmp_path):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 / bf16 passes allowed in float32 matrix products
    try:
        ib.run(methods=["toy_brightest"], models=["toy:net"], metrics=["deletion"], out=tmp_path, progress=False)
    finally:
        torch.set_float32_matmul_precision(previous)
    device = json.loads((tmp_path / "manifest.json").read_text())["environment"]["device"]
    assert device["float32_matmul_precision"] == "high" and device["deterministic_algorithms"] is False


def test_keys_and_seeds_do_not_depend_on_where_the_weights_lie(toy, tmp_path, monkeypatch):
    # the same weights found at another path (another install, another cache): the same cells, seeds and numbers
    kwargs = dict(methods=["toy_noise"], models=["toy:net"], metrics=["deletion"], batch_size=8, progress=False)
    monkeypatch.setenv("INTERPBENCH_TOY_WEIGHTS_PATH", "/home/a/.cache/interpbench/weights/net.pt")
    ib.run(out=tmp_path / "a", **kwargs)
    monkeypatch.setenv("INTERPBENCH_TOY_WEIGHTS_PATH", "/scratch/b/cache/weights/net.pt")
    ib.run(out=tmp_path / "b", **kwargs)
    keys = [sorted(k for (k,) in sqlite3.connect(str(tmp_path / d / "store.sqlite")).execute("SELECT key FROM cells"))
            for d in ("a", "b")]
    assert keys[0] == keys[1]
    assert scores_by_cell(tmp_path / "a") == scores_by_cell(tmp_path / "b")  # toy_noise draws from the cell's seed
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["models"]["toy:net"]["weights"]["path"] == "/scratch/b/cache/weights/net.pt"  # still on record


def test_a_dataset_identified_by_its_path_alone_is_warned_about():
    import warnings

    from interpbench.engine.guards import warn_if_identified_by_path_alone

    with pytest.warns(RuntimeWarning, match=r"dataset 'mine': its identity\(\) names a path but no digest"):
        warn_if_identified_by_path_alone("mine", {"loader": "mine", "path": "/data/mine", "n": 10})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_identified_by_path_alone("mine", {"loader": "mine", "path": "/data/mine", "files_sha256": "ab"})
        warn_if_identified_by_path_alone("shapes", {"loader": "shapes", "n": 10, "seed": 0})


def test_a_loader_name_works_as_a_dataset_without_an_entry(toy, tmp_path):
    table = ib.run(methods=["toy_brightest"], models=["toy:net"], metrics=["toy_brightness"], datasets=["toy"],
                   out=tmp_path / "d", progress=False)
    assert table.iloc[0]["n"] == 24
    ds = ib.load_dataset("toy", size=(8, 8))
    assert ds[0]["image"].shape == (3, 8, 8)


def test_an_experiment_of_several_grids_runs_each_part_alone(toy, tmp_path):
    parts = [{"models": ["toy:net"], "methods": ["toy_noise"], "metrics": ["deletion"], "limit": 8},
             {"models": ["toy:net"], "methods": ["toy_brightest", "toy_noise"], "metrics": ["toy_brightness"],
              "limit": 16, "method_limits": {"toy_noise": 4}}]
    table = ib.run(methods=[], models=[], metrics=[], parts=parts, out=tmp_path / "p", batch_size=8,
                   progress=False)
    cells = {(r.method, r.metric): r.n for r in table.itertuples()}
    # only the parts' cells, each with its part's limits: no toy_brightest x deletion cell
    assert cells == {("toy_noise", "deletion"): 8, ("toy_brightest", "toy_brightness"): 16,
                     ("toy_noise", "toy_brightness"): 4}
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["config"]["methods"] == ["toy_noise", "toy_brightest"] and manifest["config"]["parts"] == parts
    # a part's cell has the numbers of the same grid run alone
    alone = ib.run(methods=["toy_noise"], models=["toy:net"], metrics=["deletion"], limit=8, out=tmp_path / "a",
                   batch_size=8, progress=False)
    assert scores_by_cell(tmp_path / "a") == {k: v for k, v in scores_by_cell(tmp_path / "p").items()
                                              if k[1] == "deletion"}
    assert alone.iloc[0]["mean"] == table[table.metric == "deletion"].iloc[0]["mean"]
    with pytest.raises(ib.ComponentError, match=r"unknown keys \['model'\]"):
        ib.run(methods=[], models=[], metrics=[], parts=[{"model": ["toy:net"]}], out=tmp_path / "x")
