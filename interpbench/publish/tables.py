"""``interpbench table DIR``: paper tables from an experiment's store.

- the headline table (``methods.*``) as LaTeX (booktabs; methods as rows; per model and dataset each metric's
  declared ``headline_values``; the mean with the half-width of its 95% bootstrap CI as a subscript; an arrow for
  the better direction; best per column in bold; methods that no paired test separates from the best underlined;
  split into several tables where it would be wider than ``\textwidth``), Markdown and CSV, with
  ``--metrics/--models/--datasets/--methods/--values/--transpose`` choosing what it shows;
- the family tables in the layouts of the papers that defined them (:meth:`PaperTables.families`): the pointing
  games as TorchRay's, deletion and insertion as RISE's, adversarial detection per attack against the logit
  baseline, dissection counts as NetDissect's, the model-randomisation test per depth (Adebayo et al.), unit
  drift per layer;
- a ranking of the methods per (model, dataset, metric) with paired significance tests over samples: the
  Wilcoxon signed-rank test on the per-sample scores of the samples both methods scored, Holm's correction over
  all pairs of methods of that (model, dataset, metric), so a paper can say which differences are real;
- a rank-agreement table between metrics: Kendall's tau-b between the method rankings two metrics give on the
  same (model, dataset) (metrics are known to disagree; this shows how much).

Everything is computed from ``store.sqlite`` (the source of truth), read from a private copy so the experiment
directory is never touched except for the files written under ``tables/``.

Part of the publishing layer (docs/design.md). This module lays the tables out (:class:`PaperTables`); the store
is read by :mod:`interpbench.publish.results`, the ranking and its tests are :mod:`interpbench.publish.ranking`,
the cells and their LaTeX / Markdown / CSV rendering :mod:`interpbench.publish.grid`, what a table shows
:mod:`interpbench.publish.selection`, and the command line (arguments, printing, exit codes)
:mod:`interpbench.commands.table`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from interpbench.core.config import parse_cascade
from interpbench.core.tabular import ARROW
from interpbench.publish.grid import (
    Cell,
    Grid,
    _display,
    _label,
    _latex_header,
    _n_text,
    half_width,
    latex_escape,
)
from interpbench.publish.headline import _value_order
from interpbench.publish.ranking import (
    ALPHA,
    GROUP,
    _direction,
    _isnan,
    best_methods,
    explanation_rows,
    rank_agreement,
    ranking_tables,
    tied_with_best,
)
from interpbench.publish.results import Experiment, load_experiment
from interpbench.publish.selection import Selection

# --------------------------------------------------------------------------------------------- layouts


def _group_header(model: str, dataset: str) -> str:
    """A (model, dataset) column group's header: a pair ``A=>B`` on two lines, the dataset on the last."""
    return str(model).replace("=>", " ⇒\n") + f"\non {dataset}"


def _sanity_pair(model: str) -> bool:
    """A pair ``A=>A~cascade:K`` of the model-randomisation test (its numbers go to the sanity table)."""
    _, arrow, b = str(model).partition("=>")
    return bool(arrow) and parse_cascade(b) is not None


# --------------------------------------------------------------------------------------------- the tables


def _value_labels(metric: str, names: list[str], display: bool = True) -> tuple[str, dict[str, str]]:
    """(metric header, value name -> sub-header) for the values of one metric shown side by side:
    ``pointing_game`` and ``difficult`` -> ("Pointing", All, Diff.); ``pgd8.auroc``, ``fgsm8.auroc`` ->
    ("Adv. detection AUROC", pgd8, fgsm8); with ``display=False`` the names as recorded (``pointing_game``,
    ``difficult``)."""
    show = _display if display else str
    header = show(metric)
    others = [n for n in names if n != metric]
    suffix = ""
    if others and metric not in names:
        last = {n.rsplit(".", 1)[-1] for n in others}
        if len(last) == 1 and all("." in n for n in others):
            suffix = last.pop()
            header += " " + show(suffix)
    subs = {}
    for n in names:
        if n == metric:
            subs[n] = ("All" if display else "all") if others else ""
        else:
            subs[n] = show(n[: -len(suffix) - 1] if suffix else n)
    return header, subs


@dataclasses.dataclass
class PaperTables:
    """Everything ``interpbench table`` writes, computed once."""

    experiment: str
    table: pd.DataFrame  # the long results table (of the selection's models, datasets, methods and metrics)
    ranking: pd.DataFrame
    pairwise: pd.DataFrame
    agreement: pd.DataFrame
    alpha: float = ALPHA
    digits: int = 3
    selection: Selection = dataclasses.field(default_factory=Selection)

    @classmethod
    def build(cls, experiment: str, table: pd.DataFrame, scores: dict[str, pd.Series], *, alpha: float = ALPHA,
              digits: int = 3, selection: Selection | None = None) -> "PaperTables":
        """The tables of ``table``, restricted to ``selection``'s metrics, models, datasets and methods (the
        paired tests and Holm's correction run over the methods kept)."""
        selection = selection or Selection()
        table = selection.rows(table).reset_index(drop=True)
        part = explanation_rows(table)
        ranking, pairwise = ranking_tables(table, scores, alpha, part=part)
        paper = cls(experiment, table, ranking, pairwise, rank_agreement(table, part=part), alpha, digits, selection)
        paper.__dict__["part"] = part  # the cached_property's value, computed once
        return paper

    @classmethod
    def from_experiment(cls, exp: Experiment, *, alpha: float = ALPHA, digits: int = 3,
                        selection: Selection | None = None) -> "PaperTables":
        return cls.build(exp.name, exp.table, exp.scores, alpha=alpha, digits=digits, selection=selection)

    # ------------------------------------------------------------------ marks

    @functools.cached_property
    def part(self) -> pd.DataFrame:
        return explanation_rows(self.table)

    def marks(self) -> tuple[set[tuple], set[tuple]]:
        if "_marks" not in self.__dict__:
            best = best_methods(self.part)
            self.__dict__["_marks"] = (best, tied_with_best(self.ranking, best))
        return self.__dict__["_marks"]

    def _mark(self, row: Any, best: set[tuple], tied: set[tuple]) -> str:
        ident = (row["model"], row["dataset"], row["column"], row["method"])
        return "best" if ident in best else "tied" if ident in tied else ""

    def _number(self, x: float) -> str:
        return f"{x:.{self.digits}f}"

    def _note(self) -> str:
        return ("Mean over samples with the half-width of its 95\\% bootstrap confidence interval as a subscript; "
                "$\\uparrow$ higher is better, $\\downarrow$ lower is better. Bold: best per column; underlined: "
                "not separated from the best by a two-sided Wilcoxon signed-rank test on the same samples, "
                f"Holm-corrected over the pairs of methods, $\\alpha = {self.alpha:g}$")

    # ------------------------------------------------------------------ the main table

    def view(self) -> pd.DataFrame:
        """The explanation-scope rows of the main table: the selection's values (default: the headline)."""
        part = self.part
        if part.empty:
            return part
        keep = np.array(self.selection.value_mask(part), dtype=bool)
        if self.selection.values == "headline":  # the randomisation test has its own table (sanity_grids)
            keep &= ~np.array(part["model"].map(_sanity_pair), dtype=bool)
        return part[keep]

    def main_grid(self, display: bool = True) -> Grid:
        """Methods as rows; per model and dataset, each metric's selected values (with ``transpose``: methods as
        columns, one row per value). ``display``: paper-style metric names (LaTeX), else the recorded names
        (Markdown, which people grep)."""
        view = self.view()
        best, tied = self.marks()
        title = f"{self.experiment}: " + ("headline results" if self.selection.values == "headline" else "results")
        label = "tab:" + _label(self.experiment)
        keys: list[tuple] = []  # (model, dataset, metric, value, column label)
        heads: list[tuple[str, ...]] = []
        for (model, dataset), rows in view.groupby(GROUP, sort=False):
            for metric, mrows in rows.groupby("metric", sort=False):
                names = _value_order(str(metric), list(mrows["value_name"].astype(str)))
                header, subs = _value_labels(str(metric), names, display)
                directions = {n: _direction(mrows.loc[mrows["value_name"] == n, "direction"].iloc[0]) for n in names}
                shared = set(directions.values())
                for n in names:
                    column = mrows.loc[mrows["value_name"] == n, "column"].iloc[0]
                    d = directions[n]
                    top = header + (f" {ARROW[d]}" if len(shared) == 1 and d is not None else "")
                    sub = subs[n] + (f" {ARROW[d]}" if len(shared) > 1 and d is not None else "")
                    keys.append((model, dataset, metric, n, column))
                    heads.append((_group_header(model, dataset), top, sub.strip()))
        cells = {(r["model"], r["dataset"], r["method"], r["column"]): r for _, r in view.iterrows()}
        methods = [m for m in dict.fromkeys(view["method"]) if m != "-"]

        def cell(key: tuple, method: str) -> Cell:
            row = cells.get((key[0], key[1], method, key[4]))
            return Cell.of(row, mark="" if row is None else self._mark(row, best, tied), digits=self.digits)

        n_row = [_n_text(view[(view["model"] == k[0]) & (view["dataset"] == k[1]) & (view["column"] == k[4])])
                 for k in keys]
        if self.selection.transpose:
            sections = []
            for (model, dataset) in dict.fromkeys((k[0], k[1]) for k in keys):
                rows = [(" ".join(x for x in h[1:] if x) + (f" (n = {n})" if n else ""),
                         [cell(k, m) for m in methods])
                        for k, h, n in zip(keys, heads, n_row) if (k[0], k[1]) == (model, dataset)]
                sections.append((f"{model} on {dataset}", rows))
            return Grid(title, label, "Value", [(m,) for m in methods], sections, self._note())
        body = [(m, [cell(k, m) for k in keys]) for m in methods]
        return Grid(title, label, "Method", heads, [("", body)], self._note(), footer=[("n", n_row)],
                    split_markdown=True)

    def latex(self, label: str | None = None) -> str:
        """The main table as booktabs LaTeX (needs ``\\usepackage{booktabs}``), split into several tables where it
        is wider than ``\\textwidth``."""
        grid = self.main_grid()
        if not grid.columns:
            return f"% {self.experiment}: no method-scored value in this selection (see the family tables)\n"
        if label:
            grid.label = label
        return grid.latex(self.experiment)

    def markdown(self) -> str:
        """The main table in Markdown: one table per model; best in bold, tied-with-best in italics."""
        grid = self.main_grid(display=False)
        if not grid.columns:
            return f"# {self.experiment}\n\n_No method-scored value in this selection (see the family tables)._\n"
        return f"# {self.experiment}\n\n" + grid.markdown()

    def csv(self) -> str:
        """Long format: one row per (model, dataset, method, value) of the selection, with mean, CI, half-width,
        n, rank and marks; ``--values all`` also gives the model-scope values (scope ``model``, method ``-``)."""
        part = self.view()
        best, tied = self.marks()
        ranks = {(r["model"], r["dataset"], r["column"], r["method"]): r["rank"] for _, r in self.ranking.iterrows()}
        rows = []
        for _, r in part.iterrows():
            ident = (r["model"], r["dataset"], r["column"], r["method"])
            rows.append({"scope": "explanation", "model": r["model"], "dataset": r["dataset"], "method": r["method"],
                         "metric": r["metric"], "value": r["value_name"], "column": r["column"],
                         "better": {None: "", True: "higher", False: "lower"}[_direction(r["direction"])],
                         "mean": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                         "ci_half_width": half_width(r), "n": r["n"], "status": r["status"],
                         "rank": ranks.get(ident, ""), "best": ident in best, "tied_with_best": ident in tied})
        if self.selection.values != "headline":
            model = self.table[self.table["scope"] == "model"]
            model = model[self.selection.value_mask(model).to_numpy(bool)] if not model.empty else model
            for _, r in model.iterrows():
                label = r["metric"] if r["value_name"] == r["metric"] else f"{r['metric']}.{r['value_name']}"
                rows.append({"scope": "model", "model": r["model"], "dataset": r["dataset"], "method": r["method"],
                             "metric": r["metric"], "value": r["value_name"], "column": label, "better": "",
                             "mean": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                             "ci_half_width": half_width(r), "n": r["n"], "status": r["status"], "rank": "",
                             "best": False, "tied_with_best": False})
        columns = ["scope", "model", "dataset", "method", "metric", "value", "column", "better", "mean", "ci_low",
                   "ci_high", "ci_half_width", "n", "status", "rank", "best", "tied_with_best"]
        return pd.DataFrame(rows, columns=columns).to_csv(index=False, float_format="%.10g")

    # ------------------------------------------------------------------ the families, as their papers lay them out

    def _method_grid(self, metrics: dict[str, dict[str, str]], title: str, label: str, note: str, *,
                     scale: float = 1.0, digits: int | None = None) -> Grid | None:
        """Methods as rows; columns per architecture, then dataset, then the given values (metric -> value name
        -> sub-header), as TorchRay's and RISE's tables nest them."""
        part = self.part
        part = part[part["metric"].isin(list(metrics))]
        if part.empty:
            return None
        best, tied = self.marks()
        cells = {(r["model"], r["dataset"], r["method"], r["metric"], r["value_name"]): r for _, r in part.iterrows()}
        keys, heads, n_row = [], [], []
        for (model, dataset), rows in part.groupby(GROUP, sort=False):
            for metric, values in metrics.items():
                for value, sub in values.items():
                    here = rows[(rows["metric"] == metric) & (rows["value_name"] == value)]
                    if here.empty:
                        continue
                    keys.append((model, dataset, metric, value))
                    heads.append((str(model).replace("=>", " ⇒\n"), str(dataset), sub))  # TorchRay's nesting
                    n_row.append(_n_text(here))
        if not keys:
            return None
        methods = [m for m in dict.fromkeys(part["method"]) if m != "-"]
        body = []
        for method in methods:
            row_cells = []
            for k in keys:
                row = cells.get((k[0], k[1], method, k[2], k[3]))
                mark = "" if row is None else self._mark(row, best, tied)
                row_cells.append(Cell.of(row, mark=mark, digits=self.digits if digits is None else digits, scale=scale))
            body.append((method, row_cells))
        for j, k in enumerate(keys):  # a value the ranking has no direction for: best in the metric's direction
            column = [c[j] for _, c in body if c[j].text is None]
            here = part[(part["metric"] == k[2]) & (part["value_name"] == k[3])]
            if len(column) > 1 and not any(c.mark for c in column) and not here.empty:
                target = (max if bool(here["higher_is_better"].iloc[0]) else min)(c.mean for c in column)
                for c in column:
                    c.mark = "best" if c.mean == target else ""
        return Grid(f"{self.experiment}: {title}", f"tab:{_label(self.experiment)}-{label}", "Method", heads,
                    [("", body)], note, footer=[("n", n_row)], split_markdown=True)

    def pointing_grids(self) -> list[Grid]:
        """The pointing game as TorchRay's table (Fong et al., ICCV 2019, Table 2; Zhang et al., ECCV 2016):
        methods as rows; per architecture and dataset, accuracy in % on all images and on the difficult subset."""
        out = []
        for metric, name in (("pointing_game", "Pointing game"), ("energy_pointing_game", "Energy-based pointing game")):
            grid = self._method_grid({metric: {metric: "All", "difficult": "Diff."}}, f"{name} accuracy (%)",
                                     metric.replace("_", "-"), self._note().replace("Mean over samples", "Accuracy in \\%"),
                                     scale=100.0, digits=1)
            out += [grid] if grid else []
        return out

    def causal_grids(self) -> list[Grid]:
        """Deletion and insertion as RISE's table (Petsiuk et al., BMVC 2018, Table 2): methods as rows; per
        model, the area under the deletion curve (lower is better) and the insertion curve (higher is better)."""
        grid = self._method_grid({"deletion": {"deletion": "Deletion ↓"}, "insertion": {"insertion": "Insertion ↑"}},
                                 "area under the deletion and insertion curves", "causal", self._note())
        return [grid] if grid else []

    def adversarial_grids(self) -> list[Grid]:
        """Adversarial detection per attack: AUROC and TPR at 5% FPR of the detector on the method's maps, the
        same detector on softmax/logit features (the method-free baseline), and the AUROC gain over it with its
        paired bootstrap CI. One section per model, dataset and attack; methods as rows."""
        part = self.part
        part = part[(part["metric"] == "adversarial_detection") & (part["status"] == "done")]
        if part.empty:
            return []
        values = {(r["model"], r["dataset"], r["method"], r["value_name"]): r for _, r in part.iterrows()}
        # (header, value, with its CI): the intervals of the maps' AUROC and of the gain; TPR and the baseline bare
        columns = [(("Maps", "AUROC ↑"), "{a}.auroc", True), (("Maps", "TPR ↑"), "{a}.tpr5", False),
                   (("Logits", "AUROC"), "baseline.{a}.auroc", False), (("Logits", "TPR"), "baseline.{a}.tpr5", False),
                   (("Gain", "AUROC ↑"), "{a}.auroc_gain", True)]
        directed = {0, 1, 4}
        sections = []
        for (model, dataset), rows in part.groupby(GROUP, sort=False):
            names = list(dict.fromkeys(rows["value_name"].astype(str)))
            attacks = [n[: -len(".auroc")] for n in names if n.endswith(".auroc") and n.count(".") == 1]
            attacks += [n[: -len(".n")] for n in names if n.endswith(".n") and n.count(".") == 1
                        and n[: -len(".n")] not in attacks]
            methods = [m for m in dict.fromkeys(rows["method"]) if m != "-"]
            for attack in attacks:
                pairs = rows[rows["value_name"] == f"{attack}.n"]
                success = rows[rows["value_name"] == f"{attack}.success"]["mean"]
                title = f"{attack} on {model}, {dataset}: {_n_range(pairs['mean'])} pairs"
                if len(success):
                    title += f", success {100 * success.min():.0f}" + (
                        f"–{100 * success.max():.0f}%" if success.max() != success.min() else "%")
                body = []
                for method in methods:
                    cells = []
                    for _, pattern, with_ci in columns:
                        row = values.get((model, dataset, method, pattern.format(a=attack)))
                        cell = Cell.of(row, digits=self.digits)
                        if row is None and (model, dataset, method, f"{attack}.n") in values:
                            cell = Cell(text="–")  # too few successful pairs to cross-validate
                        if not with_ci:
                            cell.ci_low = cell.ci_high = math.nan
                        cells.append(cell)
                    body.append((method, cells))
                for j in directed:
                    means = [c[j].mean for _, c in body if c[j].text is None]
                    if len(means) > 1:
                        for _, c in body:
                            if c[j].text is None and c[j].mean == max(means):
                                c[j].mark = "best"
                sections.append((title, body))
        note = ("AUROC and true-positive rate at 5\\% false-positive rate (TPR) of a detector of adversarial "
                "images. Maps: logistic regression on the map's mass over a 4$\\times$4 grid, cross-validated over "
                "images; logits (the method-free baseline): the same detector on the softmax/logit features of the same "
                "pairs; gain: maps minus logits, with the half-width of its paired 95\\% bootstrap interval as a "
                "subscript; --: too few successful pairs to cross-validate. Bold: best per column and attack")
        return [Grid(f"{self.experiment}: adversarial detection from the maps", f"tab:{_label(self.experiment)}-adversarial",
                     "Method", [c[0] for c in columns], sections, note)]

    SANITY_MEASURES = (("rank_correlation", "Spearman rank correlation"),
                       ("rank_correlation_abs", "Spearman rank correlation of the absolute maps"), ("ssim", "SSIM"))

    def sanity_grids(self) -> list[Grid]:
        """The model-randomisation test (Adebayo et al., NeurIPS 2018, Fig. 2 and 4): the similarity of each
        method's maps on the model with its top K stages re-initialised to the trained model's maps, per K (methods
        as rows), one section per measure the run recorded (Spearman rank correlation, of the absolute maps, SSIM),
        and the verdict on the fully randomised model."""
        part = self.part
        part = part[(part["metric"] == "explanation_drift") & (part["status"] == "done")]
        stages = part[part["value_name"] == "randomized_stages"]
        if stages.empty:
            return []
        depth = {r["key"]: (int(r["mean"]), r["model"]) for _, r in stages.iterrows()}
        total = {r["key"]: int(r["mean"]) for _, r in part[part["value_name"] == "stages"].iterrows()}
        part = part[part["key"].isin(depth)]
        part = part.assign(_depth=part["key"].map(lambda key: depth[key][0]))
        grids = []
        base_of = {k: str(m).partition("=>")[0] for k, (_, m) in depth.items()}
        for (base, dataset), rows in part.groupby([part["key"].map(base_of), part["dataset"]], sort=False):
            ks = sorted(set(rows["_depth"]))
            n_stages = max((total.get(k, 0) for k in rows["key"]), default=0)
            heads = [("Stages re-initialised from the top", f"{k}/{n_stages}" if n_stages else str(k)) for k in ks]
            heads.append(("", "Pass"))
            methods = [m for m in dict.fromkeys(rows["method"]) if m != "-"]
            cells_of = {(r["method"], r["_depth"], r["value_name"]): r for _, r in rows.iterrows()}
            sections, n_row = [], ["" for _ in heads]
            for s_index, (value, title) in enumerate(m for m in self.SANITY_MEASURES if (rows["value_name"] == m[0]).any()):
                body = []
                for method in methods:
                    cells = [Cell.of(cells_of.get((method, k, value)), digits=2) for k in ks]
                    verdict = cells_of.get((method, ks[-1], "sanity_pass")) if value == "rank_correlation" else None
                    cells.append(Cell(text="" if value != "rank_correlation" else "–" if verdict is None
                                      else "yes" if verdict["mean"] >= 0.5 else "no"))
                    body.append((method, cells))
                sections.append((title, body))
                if s_index == 0:
                    n_row = [_n_text(rows[(rows["_depth"] == k) & (rows["value_name"] == value)]) for k in ks] + [""]
            note = ("Similarity between the maps of the trained model and of the model with its top $K$ stages "
                    "re-initialised (a map that depends on the weights decorrelates as $K$ grows), mean over images "
                    "with the half-width of its 95\\% bootstrap interval as a subscript. Pass: the rank correlation on "
                    "the fully randomised model is below the threshold the run recorded")
            grids.append(Grid(f"{self.experiment}: model-randomisation test of {base} on {dataset}",
                              f"tab:{_label(self.experiment)}-sanity-{_label(base)}", "Method", heads, sections,
                              note, footer=[("n", n_row)]))
        return grids

    def _model_scope(self, metric: str) -> pd.DataFrame:
        part = self.table[(self.table["scope"] == "model") & (self.table["metric"] == metric)
                          & (self.table["status"] == "done")]
        return part

    def dissection_grids(self) -> list[Grid]:
        """Network dissection as NetDissect reports it (Bau et al., CVPR 2017, Fig. 5 and Table 2): per layer,
        the detectors (units whose best concept has IoU above the threshold) and the unique concepts they detect,
        per category and in all; one section per model."""
        part = self._model_scope("dissection")
        if part.empty:
            return []
        sections, categories = [], []
        tallies: dict[tuple[str, str, str], dict[str, float]] = {}
        for model, rows in part.groupby("model", sort=False):
            names = dict(zip(rows["value_name"].astype(str), rows["mean"]))
            layers = [n[: -len(".units")] for n in names if n.endswith(".units")]
            for layer in layers:
                for name, value in names.items():
                    if not name.startswith(layer + ".") or name.endswith("_multi"):
                        continue
                    rest = name[len(layer) + 1:]
                    category, _, what = rest.rpartition(".")
                    if what in ("detectors", "unique", "units") and "." not in category:
                        if category and category not in categories:
                            categories.append(category)
                        tallies.setdefault((model, layer, category), {})[what] = value
            sections.append((model, layers, rows))
        heads = [(c, w) for c in categories for w in ("Det.", "Uniq.")] + [("All", "Det."), ("All", "Uniq."), ("", "Units")]
        grid_sections = []
        for model, layers, rows in sections:
            body = []
            for layer in layers:
                cells = []
                for category in categories + [""]:
                    t = tallies.get((model, layer, category), {})
                    for what in ("detectors", "unique"):
                        cells.append(Cell(mean=t[what], digits=0) if what in t else Cell(text="–"))
                units = tallies.get((model, layer, ""), {}).get("units")
                cells.append(Cell(mean=units, digits=0) if units is not None else Cell(text="–"))
                body.append((layer, cells))
            n = _n_range(rows.loc[rows["value_name"] == "n", "mean"])
            grid_sections.append((f"{model} ({n} probe images)" if n else str(model), body))
        note = ("Det.: units that detect a concept (IoU of the unit's top-quantile mask with the concept above the "
                "threshold the run recorded), counted under the category of their best concept; Uniq.: distinct "
                "concepts detected")
        return [Grid(f"{self.experiment}: network dissection", f"tab:{_label(self.experiment)}-dissection", "Layer",
                     heads, grid_sections, note)]

    def drift_grids(self) -> list[Grid]:
        """Unit drift of a model pair A => B per layer: concepts retained (share of A's detectors whose unit in B,
        under each matching, detects the same concept), CKA between the layers' representations (every CKA
        variant the run recorded), detector counts in A and B; n probe images per pair."""
        part = self._model_scope("unit_drift")
        if part.empty:
            return []
        measures: list[tuple[tuple[str, str], str]] = []  # (header, suffix after the layer)
        per_pair = []
        for (model, dataset), rows in part.groupby(GROUP, sort=False):
            names = dict(zip(rows["value_name"].astype(str), rows["mean"]))
            cis = {r["value_name"]: r for _, r in rows.iterrows()}
            layers = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names
                                        if n.rsplit(".", 1)[-1] in ("cka", "detectors_a") and "." in n))
            layers = [layer for layer in layers if not any(layer.startswith(o + ".") for o in layers if o != layer)]
            for layer in layers:
                for name in names:
                    if not name.startswith(layer + "."):
                        continue
                    rest = name[len(layer) + 1:]
                    if rest.startswith("cka"):
                        head = ("CKA", "n" if rest.endswith("_n") else rest[4:].replace("_", " ") or "linear")
                    elif rest.endswith(".concept_retention"):
                        head = ("Retained concepts", rest.split(".")[0])
                    elif rest in ("detectors_a", "detectors_b"):
                        head = ("Detectors", rest[-1].upper())
                    else:
                        continue
                    if (head, rest) not in measures:
                        measures.append((head, rest))
            per_pair.append((model, dataset, layers, names, cis))
        order = {"CKA": 0, "Retained concepts": 1, "Detectors": 2}
        measures.sort(key=lambda m: order[m[0][0]])
        sections = []
        for model, dataset, layers, names, cis in per_pair:
            body = []
            for layer in layers:
                cells = []
                for (head, rest) in measures:
                    row = cis.get(f"{layer}.{rest}")
                    integer = head[0] == "Detectors" or head[1] == "n"
                    cells.append(Cell.of(row, digits=0 if integer else self.digits, integer=integer))
                body.append((layer, cells))
            n = names.get("n")
            cka_n = names.get("cka_n")
            title = f"{model.replace('=>', ' ⇒ ')} on {dataset}"
            extra = [f"n = {int(n)}" if n is not None else "", f"CKA n = {int(cka_n)}" if cka_n is not None else ""]
            extra = [e for e in extra if e]
            sections.append((title + (f" ({'; '.join(extra)})" if extra else ""), body))
        note = ("Retained concepts: share of A's detectors whose matched unit in B detects the same concept (aligned: "
                "the same unit; hungarian: one-to-one by activation correlation; best: the most correlated unit); "
                "CKA: centred kernel alignment of the layers' activations on the same images")
        return [Grid(f"{self.experiment}: unit drift per layer", f"tab:{_label(self.experiment)}-drift", "Layer",
                     [m[0] for m in measures], sections, note)]

    FAMILIES = ("pointing", "causal", "adversarial", "dissection", "sanity", "drift")

    def families(self) -> dict[str, list[Grid]]:
        """Every family table the experiment has data for, by file stem."""
        out = {name: getattr(self, f"{name}_grids")() for name in self.FAMILIES}
        return {name: grids for name, grids in out.items() if grids}

    def agreement_latex(self, label: str | None = None) -> str:
        """Kendall's tau between metrics' method rankings, one block per (model, dataset)."""
        agr = self.agreement
        lines = [f"% {self.experiment}: rank agreement between metrics, generated by `interpbench table`",
                 r"\begin{table}[t]", r"\centering", r"\small",
                 rf"\caption{{{latex_escape(self.experiment)}: Kendall's $\tau_b$ between the rankings of the "
                 r"methods by two metrics (1: same order, $-1$: reversed).}",
                 rf"\label{{{label or 'tab:' + _label(self.experiment) + '-agreement'}}}",
                 r"\begin{tabular}{llcc}", r"\toprule", r"Metric A & Metric B & $\tau_b$ & methods \\"]
        for (model, dataset), rows in agr.groupby(GROUP, sort=False):
            lines += [r"\midrule", rf"\multicolumn{{4}}{{l}}{{\textit{{{latex_escape(model)} on {latex_escape(dataset)}}}}} \\"]
            for _, r in rows.iterrows():
                tau = "--" if math.isnan(r["tau"]) else f"{r['tau']:.2f}"
                lines.append(f"{_latex_header(r['column_a'])} & {_latex_header(r['column_b'])} & {tau} & "
                             f"{int(r['n_methods'])} \\\\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"
    def ranking_markdown(self) -> str:
        out = [f"# {self.experiment}: ranking and paired significance\n",
               "Methods ranked by mean in the better direction (1 = best). A method is *better than* another when "
               "the two-sided Wilcoxon signed-rank test on their per-sample scores of the same samples rejects "
               f"equality at α = {self.alpha:g} after Holm's correction over all pairs of that table; *tied with* "
               "lists the methods no test separates it from.\n"]
        for (model, dataset, column), rows in self.ranking.groupby(GROUP + ["column"], sort=False):
            out += [f"## {model} on {dataset}: {column}\n",
                    "| rank | method | mean [95% CI] | n | better than | tied with |", "|---:|---|---|---:|---|---|"]
            for _, r in rows.iterrows():
                ci = "" if _isnan(r["ci_low"]) else f" [{self._number(r['ci_low'])}, {self._number(r['ci_high'])}]"
                out.append(f"| {r['rank']} | {r['method']} | {self._number(r['mean'])}{ci} | {r['n'] or '–'} | "
                           f"{r['better_than'] or '–'} | {r['tied_with'] or '–'} |")
            out.append("")
        return "\n".join(out)

    def agreement_markdown(self) -> str:
        out = [f"# {self.experiment}: rank agreement between metrics\n",
               "Kendall's τ_b between the rankings of the methods by two metrics (both oriented so that better is "
               "larger): 1 same order, −1 reversed, 0 unrelated.\n"]
        for (model, dataset), rows in self.agreement.groupby(GROUP, sort=False):
            columns = list(dict.fromkeys(list(rows["column_a"]) + list(rows["column_b"])))
            tau = {(r["column_a"], r["column_b"]): r["tau"] for _, r in rows.iterrows()}
            n = int(rows["n_methods"].max()) if len(rows) else 0
            out += [f"## {model} on {dataset} ({n} methods)\n", "| | " + " | ".join(columns) + " |",
                    "|---|" + "|".join("---:" for _ in columns) + "|"]
            for a in columns:
                vals = []
                for b in columns:
                    t = 1.0 if a == b else tau.get((a, b), tau.get((b, a), math.nan))
                    vals.append("–" if math.isnan(t) else f"{t:.2f}")
                out.append(f"| {a} | " + " | ".join(vals) + " |")
            out.append("")
        return "\n".join(out)

    # ------------------------------------------------------------------ files

    def write(self, out: str | Path) -> list[Path]:
        """The main table (``methods.*``), the family tables (``pointing.*``, ``causal.*``, ``adversarial.*``,
        ``dissection.*``, ``sanity.*``, ``drift.*``, where the experiment has their metrics), the ranking and the
        rank agreement, as LaTeX, Markdown and CSV."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        files = {
            "methods.tex": self.latex(), "methods.md": self.markdown(), "methods.csv": self.csv(),
            "ranking.md": self.ranking_markdown(), "ranking.csv": self.ranking.to_csv(index=False, float_format="%.10g"),
            "pairwise.csv": self.pairwise.to_csv(index=False, float_format="%.6g"),
            "agreement.md": self.agreement_markdown(), "agreement.tex": self.agreement_latex(),
            "agreement.csv": self.agreement.to_csv(index=False, float_format="%.6g"),
        }
        for name, grids in self.families().items():
            files[f"{name}.tex"] = "\n".join(g.latex(self.experiment) for g in grids)
            files[f"{name}.md"] = f"# {self.experiment}\n\n" + "\n".join(g.markdown() for g in grids)
            files[f"{name}.csv"] = pd.DataFrame([{"table": g.label, **r} for g in grids for r in g.records()]
                                                ).to_csv(index=False, float_format="%.10g")
        written = []
        for name, text in files.items():
            (out / name).write_text(text)
            written.append(out / name)
        return written


def _n_range(values: Any) -> str:
    ns = sorted({int(v) for v in values if not _isnan(v)})
    return "" if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"


def paper_tables(directory: str | Path, *, alpha: float = ALPHA, digits: int = 3,
                 selection: Selection | None = None) -> PaperTables:
    return PaperTables.from_experiment(load_experiment(directory), alpha=alpha, digits=digits, selection=selection)
