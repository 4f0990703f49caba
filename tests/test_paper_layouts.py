"""Paper tables: the headline table keeps each metric's declared headline values and leaves bookkeeping out; every
family table has its paper's layout (golden files, and the numbers checked independently of them); the default
experiment's headline and family tables compile with pdflatex without an overfull box; a wider experiment splits
into several tables that each fit; ``--values all`` gives back every number the store holds; the selection options.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from interpbench.commands import table as table_cmd
from interpbench.core.base import ComponentError
from interpbench.publish import tables as tb
from interpbench.publish.grid import TEXTWIDTH_PT
from interpbench.publish.headline import _pattern, headline_mask
from interpbench.publish.leaderboard import headline_table

GOLDEN = Path(__file__).parent / "golden" / "layouts"
DEFAULT = Path(__file__).parents[1] / "leaderboards" / "default" / "store.sqlite"
NAN = math.nan
METHODS = ("gradcam", "occlusion", "random")


def row(model, metric, value, mean, lo=NAN, hi=NAN, *, method="-", n=16, hib=True, dataset="shapes",
        scope="explanation", status="done"):
    return {"model": model, "dataset": dataset, "method": method, "metric": metric, "value_name": value,
            "mean": mean, "ci_low": lo, "ci_high": hi, "n": n, "higher_is_better": hib, "status": status,
            "error": None, "scope": scope, "wall_time": 1.0, "key": f"{model}|{dataset}|{method}|{metric}"}


def synthetic() -> pd.DataFrame:
    """One small experiment with every family, bookkeeping values beside the headline ones, and a metric no
    installed plugin knows (``mystery``: its own value with a CI and a count)."""
    rows = []
    for i, method in enumerate(METHODS):
        for model, dataset in (("net_a", "shapes"), ("net_b", "photos")):
            d, ins = 0.2 + 0.1 * i, 0.9 - 0.1 * i
            rows += [row(model, "deletion", "deletion", d, d - 0.01, d + 0.03, method=method, hib=False,
                         dataset=dataset),
                     row(model, "insertion", "insertion", ins, ins - 0.02, ins + 0.02, method=method, dataset=dataset)]
        hit = [0.875, 1.0, 0.125][i]
        rows += [row("net_a", "pointing_game", "pointing_game", hit, hit - 0.05, hit + 0.05, method=method),
                 row("net_a", "pointing_game", "difficult", hit - 0.125, hit - 0.2, hit - 0.05, method=method),
                 row("net_a", "pointing_game", "n", 16, method=method),
                 row("net_a", "pointing_game", "no_region", 0, method=method)]
        auroc = [0.95, 0.99, 0.5][i]
        rows += [row("net_a", "adversarial_detection", name, value, lo, hi, method=method) for name, value, lo, hi in (
            ("pgd8.auroc", auroc, auroc - 0.02, min(1.0, auroc + 0.02)), ("pgd8.tpr5", auroc - 0.1, NAN, NAN),
            ("baseline.pgd8.auroc", 0.9, 0.88, 0.92), ("baseline.pgd8.tpr5", 0.7, 0.6, 0.8),
            ("pgd8.auroc_gain", auroc - 0.9, auroc - 0.93, auroc - 0.87), ("pgd8.n", 12, NAN, NAN),
            ("pgd8.success", 0.75, NAN, NAN), ("cross.pgd8.fgsm8.auroc", 0.8, NAN, NAN), ("n", 16, NAN, NAN))]
        rows += [row("net_a", "mystery", "mystery", 0.5 + 0.1 * i, 0.4, 0.7, method=method),
                 row("net_a", "mystery", "count", 3, method=method)]
        for depth in (1, 2):
            rho = [(0.6, 0.2), (0.9, 0.8), (1.0, 1.0)][i][depth - 1]
            pair = f"net_a=>net_a~cascade:{depth}"
            rows += [row(pair, "explanation_drift", "explanation_drift", 1 - rho, 0.0, 1.0, method=method),
                     row(pair, "explanation_drift", "rank_correlation", rho, rho - 0.05, rho + 0.05, method=method),
                     row(pair, "explanation_drift", "ssim", rho / 2, rho / 2 - 0.1, rho / 2 + 0.1, method=method),
                     row(pair, "explanation_drift", "randomized_stages", depth, method=method),
                     row(pair, "explanation_drift", "stages", 2, method=method)]
            if depth == 2:
                rows.append(row(pair, "explanation_drift", "sanity_pass", float(rho < 0.5), method=method))
    for model, counts in (("net_a", (12, 5, 3, 2, 9, 3, 16)), ("net_a@random", (1, 1, 0, 0, 1, 1, 16))):
        color_d, color_u, shape_d, shape_u, det, uniq, units = counts
        rows += [row(model, "dissection", name, value, scope="model") for name, value in (
            ("layer3.color.detectors", color_d), ("layer3.color.unique", color_u),
            ("layer3.color.detectors_multi", color_d + 1), ("layer3.shape.detectors", shape_d),
            ("layer3.shape.unique", shape_u), ("layer3.detectors", det), ("layer3.unique", uniq),
            ("layer3.units", units), ("n", 64))]
    rows += [row("net_a=>net_a.finetuned", "unit_drift", name, value, scope="model") for name, value in (
        ("layer3.cka", 0.41), ("layer3.cka_floor", 0.02), ("layer3.aligned.concept_retention", 0.5),
        ("layer3.hungarian.concept_retention", 0.625), ("layer3.detectors_a", 12), ("layer3.detectors_b", 9),
        ("layer3.switch.color->shape", 2), ("stem.cka", 0.93), ("n", 64), ("cka_n", 32))]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def paper():
    return tb.PaperTables.build("synthetic", synthetic(), {})


def test_headline_patterns_and_fallback():
    assert _pattern("*.auroc").match("pgd8.auroc") and not _pattern("*.auroc").match("baseline.pgd8.auroc")
    assert _pattern("**.cka").match("layer4.1.conv.cka") and not _pattern("**.cka").match("cka")
    table = synthetic()
    mask = headline_mask(table)
    kept = set(zip(table.loc[mask, "metric"], table.loc[mask, "value_name"]))
    assert {("pointing_game", "pointing_game"), ("pointing_game", "difficult"), ("adversarial_detection", "pgd8.auroc"),
            ("deletion", "deletion"), ("explanation_drift", "explanation_drift"), ("mystery", "mystery")} <= kept
    for bookkeeping in (("pointing_game", "n"), ("pointing_game", "no_region"), ("adversarial_detection", "pgd8.n"),
                        ("adversarial_detection", "pgd8.success"), ("adversarial_detection", "baseline.pgd8.auroc"),
                        ("adversarial_detection", "cross.pgd8.fgsm8.auroc"), ("mystery", "count"),
                        ("explanation_drift", "randomized_stages"), ("explanation_drift", "stages")):
        assert bookkeeping not in kept, bookkeeping
    # the terminal summary (leaderboard.headline_table) shows the same selection, with arrows
    assert list(headline_table(table).columns) == [
        "model", "dataset", "method", "deletion ↓", "insertion ↑", "pointing_game ↑", "pointing_game.difficult ↑",
        "adversarial_detection.pgd8.auroc ↑", "mystery ↑", "explanation_drift ↑"]


def test_headline_table_shows_the_headline_values_and_marks(paper):
    latex = paper.latex()
    assert latex == (GOLDEN / "methods.tex").read_text()
    grid = paper.main_grid()
    # net_a: deletion, insertion, pointing all and difficult, pgd8 AUROC, mystery; net_b: deletion, insertion
    assert [c[1:] for c in grid.columns] == [("", "Deletion ↓"), ("", "Insertion ↑"), ("Pointing ↑", "All"),
                                             ("Pointing ↑", "Diff."), ("Adv. detection AUROC ↑", "pgd8"),
                                             ("", "mystery ↑"), ("", "Deletion ↓"), ("", "Insertion ↑")]
    # eight columns with CIs do not fit 345 pt: two tables, split between whole metrics, each with the header
    assert grid.chunks() == [[0, 1, 2, 3], [4, 5, 6, 7]] and latex.count("(part 2 of 2)") == 1
    assert latex.count(r"\begin{tabular}") == 2 and latex.count("Method &") == 2
    cells = {label: [c.latex() for c in row] for label, row in grid.sections[0][1]}
    assert cells["gradcam"][0] == r"\textbf{0.200}\textsubscript{$\pm$0.020}"  # lower deletion is better
    assert cells["occlusion"][2].startswith(r"\textbf{1.000}") and cells["random"][2].startswith("0.125")
    assert cells["occlusion"][4].startswith(r"\textbf{0.990}")  # pgd8 AUROC: compared in the metric's direction
    for word in ("no\\_region", "success", "baseline", "cross", "cascade", "count"):
        assert word not in latex, word  # bookkeeping and the randomisation test stay out of the headline
    assert grid.footer == [("n", ["16"] * 8)]


def test_family_layouts_match_their_golden_files(paper):
    families = paper.families()
    assert sorted(families) == ["adversarial", "causal", "dissection", "drift", "pointing", "sanity"]
    for name, grids in families.items():
        latex = "\n".join(g.latex("synthetic") for g in grids)
        markdown = "\n".join(g.markdown() for g in grids)
        assert latex == (GOLDEN / f"{name}.tex").read_text(), name
        assert markdown == (GOLDEN / f"{name}.md").read_text(), name
        assert "".join(g.csv() for g in grids) == (GOLDEN / f"{name}.csv").read_text(), name


def _rows(latex: str) -> dict[str, list[str]]:
    return {line.split(" & ")[0]: [c.removesuffix(r" \\") for c in line.split(" & ")[1:]]
            for line in latex.splitlines() if " & " in line}


def test_family_numbers_independently_of_the_golden_files(paper):
    # TorchRay: per architecture and dataset, All and Difficult, in percent with one decimal
    pointing = paper.pointing_grids()[0]
    assert pointing.columns == [("net_a", "shapes", "All"), ("net_a", "shapes", "Diff.")]
    rows = _rows(pointing.latex("x"))
    assert rows["gradcam"] == [r"87.5\textsubscript{$\pm$5.0}", r"75.0\textsubscript{$\pm$7.5}"]
    assert rows["occlusion"][0].startswith(r"\textbf{100.0}")
    # RISE: per model, deletion and insertion side by side
    causal = paper.causal_grids()[0]
    assert [c[2] for c in causal.columns] == ["Deletion ↓", "Insertion ↑"] * 2
    assert [c[:2] for c in causal.columns] == [("net_a", "shapes")] * 2 + [("net_b", "photos")] * 2
    # adversarial detection: per attack, maps and logits AUROC / TPR, gain with its CI
    adv = _rows(paper.adversarial_grids()[0].latex("x"))
    assert adv["occlusion"] == [r"\textbf{0.990}\textsubscript{$\pm$0.015}", r"\textbf{0.890}", "0.900", "0.700",
                                r"\textbf{0.090}\textsubscript{$\pm$0.030}"]
    assert adv["random"][-1] == r"-0.400\textsubscript{$\pm$0.030}" and adv["Method"][2:4] == ["AUROC", "TPR"]
    assert "pgd8 on net\\_a, shapes: 12 pairs, success 75\\%" in paper.adversarial_grids()[0].latex("x")
    # NetDissect: detectors and unique concepts per category and layer, with the units
    dis = paper.dissection_grids()[0]
    assert dis.columns[:4] == [("color", "Det."), ("color", "Uniq."), ("shape", "Det."), ("shape", "Uniq.")]
    assert _rows(dis.latex("x"))["layer3"] == ["1", "1", "0", "0", "1", "1", "16"]  # the last section: net_a@random
    assert [t for t, _ in dis.sections] == ["net_a (64 probe images)", "net_a@random (64 probe images)"]
    # Adebayo et al.: rank correlation per randomised depth, and the verdict
    sanity = paper.sanity_grids()[0]
    assert sanity.columns == [("Stages re-initialised from the top", "1/2"), ("Stages re-initialised from the top", "2/2"),
                              ("", "Pass")]
    assert [title for title, _ in sanity.sections] == ["Spearman rank correlation", "SSIM"]  # the measures recorded
    rho, ssim = ({label: [c.latex() for c in cells] for label, cells in body} for _, body in sanity.sections)
    assert rho["gradcam"] == [r"0.60\textsubscript{$\pm$0.05}", r"0.20\textsubscript{$\pm$0.05}", "yes"]
    assert ssim["gradcam"] == [r"0.30\textsubscript{$\pm$0.10}", r"0.10\textsubscript{$\pm$0.10}", ""]
    assert rho["random"][-1] == "no" and sanity.footer == [("n", ["16", "16", ""])]
    # unit drift: CKA variants, retained concepts per matching, detectors, n
    drift = paper.drift_grids()[0]
    assert drift.columns == [("CKA", "linear"), ("CKA", "floor"), ("Retained concepts", "aligned"),
                             ("Retained concepts", "hungarian"), ("Detectors", "A"), ("Detectors", "B")]
    rows = _rows(drift.latex("x"))
    assert rows["layer3"] == ["0.410", "0.020", "0.500", "0.625", "12", "9"] and rows["stem"][0] == "0.930"
    assert drift.sections[0][0] == "net_a ⇒ net_a.finetuned on shapes (n = 64; CKA n = 32)"


def pdflatex(tmp_path: Path, files: list[Path]) -> str:
    """Compile the files in a plain one-column article with booktabs; the log."""
    exe = shutil.which("pdflatex")
    assert exe, "pdflatex is missing: apt-get install texlive-latex-recommended (the README's test command does)"
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                   + "".join(f"\\input{{{f.as_posix()}}}\n\\clearpage\n" for f in files) + "\\end{document}\n")
    run = subprocess.run([exe, "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert run.returncode == 0, log[-3000:]
    return log


def assert_fits(log: str) -> None:
    assert not re.findall(r"^! .*", log, re.M), re.findall(r"^! .*", log, re.M)
    overfull = re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\)", log)
    assert not overfull, f"overfull boxes: {overfull}"


@pytest.fixture(scope="module")
def default_experiment(tmp_path_factory):
    directory = tmp_path_factory.mktemp("default")
    shutil.copyfile(DEFAULT, directory / "store.sqlite")
    return tb.load_experiment(directory)


def test_the_default_experiment_compiles_and_fits_the_page(default_experiment, tmp_path):
    paper = tb.PaperTables.from_experiment(default_experiment)
    written = {p.name for p in paper.write(tmp_path / "tables")}
    families = ["pointing", "causal", "adversarial", "dissection", "sanity", "drift"]
    assert {f"{name}.{ext}" for name in families + ["methods"] for ext in ("tex", "md", "csv")} <= written
    log = pdflatex(tmp_path, [tmp_path / "tables" / f"{name}.tex" for name in ["methods"] + families])
    assert_fits(log)
    assert log.count("Overfull") == 0 and "Output written on doc.pdf" in log
    headline = (tmp_path / "tables" / "methods.tex").read_text()
    assert "pointing\\_game.n" not in headline and "cross" not in headline and "success" not in headline


def test_a_wide_experiment_splits_into_tables_that_each_fit(tmp_path):
    table = pd.concat([synthetic().assign(model=lambda t, k=k: t["model"].str.replace("net_a", f"resnet{k}"))
                       for k in (18, 34, 50)], ignore_index=True)
    paper = tb.PaperTables.build("wide", table, {})
    latex = paper.latex()
    parts = re.findall(r"part (\d+) of (\d+)", latex)
    assert len(parts) >= 3 and parts[-1][0] == parts[-1][1]
    assert all(float(w) <= TEXTWIDTH_PT for w in re.findall(r"estimated width (\d+) pt", latex))
    (tmp_path / "wide.tex").write_text(latex)
    (tmp_path / "wide-t.tex").write_text(tb.PaperTables.build("wide", table, {}, selection=tb.Selection(
        transpose=True)).latex())
    assert_fits(pdflatex(tmp_path, [tmp_path / "wide.tex", tmp_path / "wide-t.tex"]))


def test_a_column_wider_than_the_page_warns():
    grid = tb.Grid("t", "tab:t", "Method", [("x" * 120,)], [("", [("m", [tb.Cell(mean=1.0)])])])
    with pytest.warns(UserWarning, match="wider than .textwidth on its own"):
        grid.chunks()


def test_values_all_gives_every_number_the_store_holds(default_experiment, tmp_path):
    paper = tb.PaperTables.from_experiment(default_experiment, selection=tb.Selection(values="all"))
    csv = pd.read_csv(pd.io.common.StringIO(paper.csv()), keep_default_na=False, na_values=[""])
    got = {(r.model, r.dataset, r.method, r.metric, str(r.value)): r.mean for r in csv.itertuples()}
    db = sqlite3.connect(str(DEFAULT))
    run = db.execute("SELECT max(id) FROM runs").fetchone()[0]
    cells = db.execute("SELECT c.key, c.model, c.dataset, c.method, c.metric FROM run_cells r JOIN cells c "
                       "ON c.key = r.cell WHERE r.run = ?", (run,)).fetchall()
    expected = {}
    for key, model, dataset, method, metric in cells:
        scores = [v for (v,) in db.execute("SELECT value FROM scores WHERE cell = ?", (key,))]
        if scores:
            expected[(model, dataset, method, metric, metric)] = float(np.mean(scores))
        for name, value in db.execute("SELECT name, value FROM results WHERE cell = ?", (key,)):
            if not name.endswith(("_ci_low", "_ci_high")):
                expected[(model, dataset, method, metric, name)] = value
    db.close()
    assert len(expected) > 900 and set(got) == set(expected)
    for ident, value in expected.items():
        assert got[ident] == pytest.approx(value, rel=1e-9, nan_ok=True), ident


def test_selection_options(tmp_path, default_experiment, capsys):
    directory = default_experiment.directory
    parser = argparse.ArgumentParser()
    table_cmd.configure(parser)
    console = Console(stderr=True)
    args = [str(directory), "--out", str(tmp_path / "a"), "--methods", "gradcam,random", "--metrics",
            "deletion,pointing_game", "--models", "shapes:cnn", "--values", "pointing_game.difficult,deletion",
            "--print", "csv"]
    assert table_cmd.main(parser.parse_args(args), console) == 0
    csv = pd.read_csv(tmp_path / "a" / "methods.csv")
    assert set(csv["method"]) == {"gradcam", "random"} and set(csv["model"]) == {"shapes:cnn"}
    assert sorted(set(zip(csv["metric"], csv["value"]))) == [("deletion", "deletion"), ("pointing_game", "difficult")]
    assert set((tmp_path / "a").glob("adversarial.*")) == set()  # no adversarial metric selected: no such table
    only_units = tb.PaperTables.from_experiment(default_experiment, selection=tb.Selection(metrics=["dissection"]))
    assert "tabular" not in only_units.latex() and list(only_units.families()) == ["dissection"]
    transposed = tb.PaperTables.from_experiment(default_experiment, selection=tb.Selection(
        methods=["gradcam", "rise"], metrics=["deletion"], transpose=True)).latex()
    assert "Value & gradcam & rise" in transposed  # methods as columns, one row per value with its n
    assert re.search(r"Deletion \$\\downarrow\$ \(n = 12--128\) & [^&]+ & ", transposed)
    with pytest.raises(ComponentError, match=r"--values no_such_value: no value of this experiment has that name"):
        tb.PaperTables.from_experiment(default_experiment, selection=tb.Selection(values=["no_such_value"])).csv()
    assert table_cmd.main(parser.parse_args([str(directory), "--methods", "gradcam,nope"]), console) == 2
    assert "--methods nope: not in this experiment" in capsys.readouterr().err


def test_methods_md_leads_with_the_headline_table(tmp_path):
    from test_tables import make_store

    from interpbench.publish.leaderboard import regenerate

    directory = make_store(tmp_path / "exp")
    regenerate(directory)
    md = (directory / "methods.md").read_text()
    first_table = md[md.index("## Headline results"):].split("\n\n")
    rows = [block for block in first_table if block.startswith("| Method |")][0].splitlines()
    assert rows[0] == "| Method | deletion ↓ | insertion ↑ |" and md.index("## Headline results") < md.index("|")
    # the test_tables scores: grad_cam and twin share the best deletion; close is tied with them by the paired test
    assert rows[2].startswith("| grad_cam | **0.490 ± ") and rows[4].startswith("| close | _0.491 ± ")
    assert rows[-1] == "| n | 20 | 20 |"


def test_the_pointing_table_nests_architecture_dataset_and_subset_as_torchray(tmp_path):
    rows = []
    for model in ("vgg16", "resnet50"):
        for dataset in ("voc07-test", "coco14-val"):
            for k, method in enumerate(("center", "gradcam")):
                hit = 0.5 + 0.25 * k
                rows += [row(model, "pointing_game", "pointing_game", hit, hit - 0.01, hit + 0.01, method=method,
                             dataset=dataset),
                         row(model, "pointing_game", "difficult", hit - 0.1, hit - 0.12, hit - 0.08, method=method,
                             dataset=dataset)]
    grid = tb.PaperTables.build("torchray", pd.DataFrame(rows), {}).pointing_grids()[0]
    assert grid.columns == [(m, d, s) for m in ("vgg16", "resnet50") for d in ("voc07-test", "coco14-val")
                            for s in ("All", "Diff.")]
    latex = grid.latex("torchray")
    # one architecture per table where the eight columns do not fit, the datasets spanning All and Diff.
    assert latex.count(r"\begin{tabular}") == 2 and r"\multicolumn{4}{c}{vgg16}" in latex
    assert r"\multicolumn{2}{c}{voc07-test} & \multicolumn{2}{c}{coco14-val}" in latex
    assert _rows(latex)["gradcam"] == [r"\textbf{75.0}\textsubscript{$\pm$1.0}", r"\textbf{65.0}\textsubscript{$\pm$2.0}"] * 2
    (tmp_path / "p.tex").write_text(latex)
    assert_fits(pdflatex(tmp_path, [tmp_path / "p.tex"]))
