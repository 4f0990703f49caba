"""`interpbench table`: the LaTeX table matches its golden file; the paired significance test finds no difference
between two identical methods and finds a clearly better one; Holm's correction and Kendall's tau by hand."""

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from interpbench.commands import table as table_cmd
from interpbench.engine.store import Store
from interpbench.publish import ranking
from interpbench.publish import tables as tb

GOLDEN = Path(__file__).parent / "golden"
N = 20
BASE = [0.30 + 0.02 * i for i in range(N)]  # per-sample scores of the reference method


def scores_of(values):
    return pd.Series(values, index=[f"img/{i:03d}" for i in range(len(values))], dtype=np.float64)


# per-sample deletion scores (lower is better) and insertion scores (higher is better) of four methods
DELETION = {
    "grad_cam": scores_of(BASE),                                                   # the best
    "twin": scores_of(BASE),                                                       # identical to grad_cam
    "close": scores_of([b + (0.005 if i % 2 else -0.003) for i, b in enumerate(BASE)]),  # small, both signs
    "worse": scores_of([b + 0.1 + 0.002 * i for i, b in enumerate(BASE)]),        # clearly worse on every sample
}
INSERTION = {
    "grad_cam": scores_of([0.8 - 0.01 * i for i in range(N)]),
    "twin": scores_of([0.8 - 0.01 * i for i in range(N)]),
    "close": scores_of([0.85 - 0.01 * i for i in range(N)]),                       # clearly the best
    "worse": scores_of([0.5 - 0.01 * i for i in range(N)]),
}


def long_table():
    """A results table (leaderboard.results_table's shape) of the scores above, CIs given by hand, plus a
    dataset-level metric without CI and a failed method."""
    rows = []
    for metric, table, hib in (("deletion", DELETION, False), ("insertion", INSERTION, True)):
        for method, s in table.items():
            rows.append({"model": "timm:net_a", "dataset": "shapes", "method": method, "metric": metric,
                         "value_name": metric, "mean": s.mean(), "ci_low": s.mean() - 0.0125,
                         "ci_high": s.mean() + 0.0175, "n": N, "higher_is_better": hib, "status": "done",
                         "error": None, "scope": "explanation", "wall_time": 1.0, "key": f"{method}-{metric}"})
        rows.append({"model": "timm:net_a", "dataset": "shapes", "method": "broken", "metric": metric,
                     "value_name": metric, "mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0,
                     "higher_is_better": hib, "status": "failed", "error": "boom", "scope": "explanation",
                     "wall_time": 0.0, "key": f"broken-{metric}"})
    for method, value in (("grad_cam", 0.91), ("twin", 0.91), ("close", 0.5), ("worse", 0.25)):
        rows.append({"model": "timm:net_a", "dataset": "shapes", "method": method, "metric": "detect_100%",
                     "value_name": "auroc", "mean": value, "ci_low": math.nan, "ci_high": math.nan, "n": 0,
                     "higher_is_better": True, "status": "done", "error": None, "scope": "explanation",
                     "wall_time": 1.0, "key": f"{method}-detect"})
    scores = {f"{m}-deletion": s for m, s in DELETION.items()} | {f"{m}-insertion": s for m, s in INSERTION.items()}
    return pd.DataFrame(rows), scores


def test_latex_matches_the_golden_file():
    table, scores = long_table()
    paper = tb.PaperTables.build("ablation #1", table, scores)
    latex = paper.latex()
    assert latex == (GOLDEN / "methods.tex").read_text()
    assert paper.agreement_latex() == (GOLDEN / "agreement.tex").read_text()
    # what the golden file must show, checked independently of it
    rows = {line.split(" & ")[0]: line.split(" & ")[1:] for line in latex.splitlines() if " & " in line}
    deletion, insertion, auroc = (0, 1, 2)
    assert rows["grad\\_cam"][deletion] == r"\textbf{0.490}\textsubscript{$\pm$0.015}"  # best, tie on the exact mean
    assert rows["twin"][deletion].startswith(r"\textbf{0.490}")
    assert rows["close"][deletion].startswith(r"\underline{0.491}")  # not separated from the best
    assert rows["worse"][deletion].startswith("0.609\\textsubscript{$\\pm$")
    assert rows["close"][insertion].startswith(r"\textbf{0.755}") and "underline" not in "".join(rows["worse"])
    assert rows["grad\\_cam"][auroc] == r"\textbf{0.910} \\"  # a value without a CI shows no ±
    assert rows["broken"][:2] == ["failed", "failed"] and rows["broken"][2].startswith("--")
    assert rows["n"] == ["20", "20", r" \\"]  # per column, the samples behind the means
    assert r"detect 100\% $\uparrow$" in latex and r"Deletion $\downarrow$" in latex
    assert latex.count(r"\toprule") == latex.count(r"\bottomrule") == 1


def test_identical_methods_are_tied_and_a_clearly_better_one_wins():
    table, scores = long_table()
    ranking, pairwise = tb.ranking_tables(table, scores)
    pairs = {(r.column, frozenset((r.method_a, r.method_b))): r for r in pairwise.itertuples()}
    same = pairs[("deletion ↓", frozenset(("grad_cam", "twin")))]
    assert same.p == 1.0 and same.n_nonzero == 0 and not same.significant
    better = pairs[("deletion ↓", frozenset(("grad_cam", "worse")))]
    # all 20 differences of one sign: exact two-sided p = 2 / 2^20; Holm multiplies the smallest of 6 by 6
    assert better.p == pytest.approx(2 / 2**20) and better.significant and better.better == "grad_cam"
    assert better.p_holm == pytest.approx(6 * 2 / 2**20)  # three pairs share that p: the running max keeps 6p
    close = pairs[("deletion ↓", frozenset(("grad_cam", "close")))]
    assert close.p > 0.05 and not close.significant  # 10 up by 0.005, 10 down by 0.003
    by = {(r.column, r.method): r for r in ranking.itertuples()}
    assert by[("deletion ↓", "grad_cam")].rank == by[("deletion ↓", "twin")].rank == 1
    assert "worse" in by[("deletion ↓", "grad_cam")].better_than.split(", ")
    assert "twin" in by[("deletion ↓", "grad_cam")].tied_with.split(", ")
    assert by[("insertion ↑", "close")].rank == 1
    assert set(by[("insertion ↑", "close")].better_than.split(", ")) == {"grad_cam", "twin", "worse"}
    assert by[("deletion ↓", "worse")].better_than == "" and by[("deletion ↓", "worse")].rank == 4


def test_wilcoxon_pairs_only_the_same_samples():
    a = scores_of([0.1, 0.2, 0.3, 0.4])
    b = pd.Series([0.3, 0.5, 9.0], index=["img/001", "img/002", "img/999"])  # img/999 is not in a
    t = ranking.wilcoxon_paired(a, b)
    assert t["n"] == 2 and t["mean_diff"] == pytest.approx(-0.15) and t["direction"] == -1


def test_holm_by_hand():
    adjusted = ranking.holm_adjust([0.01, 0.04, 0.03, 0.005, math.nan])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running maximum 0.02, 0.03, 0.06, 0.06
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(adjusted[4])
    assert ranking.holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_rank_agreement_orients_each_metric_by_its_direction():
    rows = []
    for i, method in enumerate("abcd"):
        for metric, hib, value in (("deletion", False, 0.1 * (i + 1)), ("insertion", True, 0.9 - 0.1 * i),
                                   ("reversed", True, 0.1 * (i + 1)), ("flat", True, 0.5)):
            rows.append({"model": "m", "dataset": "d", "method": method, "metric": metric, "value_name": metric,
                         "mean": value, "ci_low": math.nan, "ci_high": math.nan, "n": 5, "higher_is_better": hib,
                         "status": "done", "error": None, "scope": "explanation", "key": f"{method}{metric}"})
    agreement = tb.rank_agreement(pd.DataFrame(rows))
    tau = {(r.column_a, r.column_b): r.tau for r in agreement.itertuples()}
    assert tau[("deletion ↓", "insertion ↑")] == pytest.approx(1.0)  # both say a > b > c > d
    assert tau[("deletion ↓", "reversed ↑")] == pytest.approx(-1.0)
    assert tau[("insertion ↑", "reversed ↑")] == pytest.approx(-1.0)
    assert math.isnan(tau[("deletion ↓", "flat ↑")])  # a constant ranking has no tau
    assert ranking.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)  # 5 concordant, 1 discordant pair


def make_store(directory):
    """An experiment directory written through the store's own API: the four methods above, per sample."""
    store = Store(directory / "store.sqlite")
    manifest = {"experiment": "synthetic", "command": "made by test_tables.py"}
    run = store.start_run(manifest)
    position = 0
    for metric, table, hib in (("deletion", DELETION, False), ("insertion", INSERTION, True)):
        for method, s in table.items():
            key = f"{method}-{metric}"
            store.add_cell(run, position, key, model="timm:net_a", dataset="shapes", method=method, metric=metric,
                           scope="explanation", higher_is_better=hib, config={"method": method, "metric": metric})
            store.write_batch([(key, sid, float(v), None) for sid, v in s.items()], {key: 0.5})
            store.set_status(key, "done")
            position += 1
    store.finish_run(run, manifest)
    store.close()
    return directory


def test_the_command_writes_every_table_from_a_store(tmp_path, capsys):
    directory = make_store(tmp_path / "exp")
    parser = argparse.ArgumentParser()
    table_cmd.configure(parser)
    assert table_cmd.main(parser.parse_args([str(directory), "--print", "ranking"]), Console(stderr=True)) == 0
    out = capsys.readouterr().out
    assert "| 1 | close | 0.755" in out and "grad_cam, twin, worse" in out
    written = sorted(p.name for p in (directory / "tables").iterdir())
    assert written == ["agreement.csv", "agreement.md", "agreement.tex", "causal.csv", "causal.md", "causal.tex",
                       "methods.csv", "methods.md", "methods.tex", "pairwise.csv", "ranking.csv", "ranking.md"]
    csv = pd.read_csv(directory / "tables" / "methods.csv")
    best = csv[csv["best"]]
    assert sorted(zip(best["column"], best["method"])) == [("deletion ↓", "grad_cam"), ("deletion ↓", "twin"),
                                                           ("insertion ↑", "close")]
    row = csv[(csv.method == "worse") & (csv.metric == "deletion")].iloc[0]
    assert row["mean"] == pytest.approx(DELETION["worse"].mean()) and row["n"] == N and row["rank"] == 4
    assert row["ci_low"] < row["mean"] < row["ci_high"]  # the leaderboard's bootstrap CI, recomputed from the store
    md = (directory / "tables" / "methods.md").read_text()
    assert "| grad_cam | **0.490 ±" in md and "| close | _0.491 ±" in md
    assert table_cmd.main(parser.parse_args([str(tmp_path / "missing")]), Console(stderr=True)) == 2


def test_the_three_commands_wire_into_the_cli(tmp_path, monkeypatch, capsys):
    from interpbench.commands import cli

    for name, module in (("table", "interpbench.commands.table"), ("report", "interpbench.commands.report"),
                         ("reproduce", "interpbench.commands.reproduce")):
        monkeypatch.setitem(cli.EXTRA_COMMANDS, name, module)
    args = cli.build_parser().parse_args(["reproduce", "leaderboards/default", "--exact", "--atol", "1e-4"])
    assert (args.directory, args.exact, args.atol, args.strict) == ("leaderboards/default", True, 1e-4, False)
    directory = make_store(tmp_path / "exp")
    assert cli.main(["table", str(directory), "--print", "latex"]) == 0
    assert capsys.readouterr().out.startswith("% synthetic: generated by `interpbench table`")
    assert cli.main(["table", str(tmp_path / "none")]) == 2
