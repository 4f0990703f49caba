"""``interpbench table DIR``: paper tables from an experiment's store.

- the leaderboard as LaTeX (booktabs; best per column in bold; ``mean ± half-width of the 95% bootstrap CI``;
  an arrow for the better direction; methods that no paired test separates from the best are underlined),
  Markdown and CSV;
- a ranking of the methods per (model, dataset, metric) with paired significance tests over samples: the
  Wilcoxon signed-rank test on the per-sample scores of the samples both methods scored, Holm's correction over
  all pairs of methods of that (model, dataset, metric), so a paper can say which differences are real;
- a rank-agreement table between metrics: Kendall's tau-b between the method rankings two metrics give on the
  same (model, dataset) (metrics are known to disagree; this shows how much).

Everything is computed from ``store.sqlite`` (the source of truth), read from a private copy so the experiment
directory is never touched except for the files written under ``tables/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from scipy import stats

from .leaderboard import ARROW, results_table
from .store import Store

HELP = "paper tables of an experiment: LaTeX, Markdown, CSV, significance ranking, rank agreement between metrics"

ALPHA = 0.05
GROUP = ["model", "dataset"]
STATUS_TEXT = {"failed": "failed", "not_applicable": "n/a", "skipped": "skipped", "pending": "pending"}


# --------------------------------------------------------------------------------------------- reading


@contextmanager
def read_store(path: str | Path) -> Iterator[Store]:
    """A :class:`Store` opened on a private copy of ``path`` (and its ``-wal`` file): the original is never
    written to, not even SQLite's ``-shm``/``-wal`` side files (a committed experiment stays clean)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give the directory of an experiment (the --out of a run)")
    with tempfile.TemporaryDirectory(prefix="interpbench-store-") as tmp:
        copy = Path(tmp) / "store.sqlite"
        shutil.copyfile(path, copy)
        wal = path.with_name(path.name + "-wal")
        if wal.is_file():
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        store = Store(copy)
        try:
            yield store
        finally:
            store.close()


@dataclasses.dataclass
class Experiment:
    """An experiment directory read into memory: the manifest, the long results table of its latest run and the
    per-sample scores (and their extras, e.g. deletion curves) of every cell."""

    directory: Path
    manifest: dict[str, Any]
    table: pd.DataFrame  # leaderboard.results_table: one row per (cell, value name)
    scores: dict[str, pd.Series]  # cell key -> per-sample scores indexed by sample id
    extras: dict[str, dict[str, dict[str, Any]]]  # cell key -> sample id -> extra JSON
    configs: dict[str, dict[str, Any]]  # cell key -> the cell's full configuration

    @property
    def name(self) -> str:
        return str(self.manifest.get("experiment") or self.directory.name)


def load_experiment(directory: str | Path, *, with_extras: bool = False) -> Experiment:
    """Read ``DIR/store.sqlite``: the latest run's manifest, results table and per-sample scores."""
    directory = Path(directory)
    with read_store(directory / "store.sqlite") as store:
        latest = store.latest_run()
        if latest is None:
            raise FileNotFoundError(f"{directory / 'store.sqlite'} holds no run yet; run `interpbench run --out {directory}`")
        run_id, manifest = latest
        table = results_table(store, run_id)
        scores: dict[str, pd.Series] = {}
        extras: dict[str, dict[str, dict[str, Any]]] = {}
        configs: dict[str, dict[str, Any]] = {}
        for cell in store.run_cells(run_id):
            rows = store.scores(cell["key"])
            if rows:
                scores[cell["key"]] = pd.Series({s: v for s, v in rows}, dtype=np.float64)
            if with_extras:
                extras[cell["key"]] = store.extras(cell["key"])
            configs[cell["key"]] = json.loads(cell["config"] or "{}")
    return Experiment(directory, manifest, table, scores, extras, configs)


# --------------------------------------------------------------------------------------------- statistics


def holm_adjust(pvalues: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979): ``max_{j<=i} min(1, (m - j + 1) p_(j))`` in sorted order.

    NaN p-values (pairs that could not be tested) stay NaN and do not count in ``m``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


UNTESTED = {"n": 0, "n_nonzero": 0, "statistic": math.nan, "p": math.nan, "mean_diff": math.nan, "direction": 0}


def wilcoxon_paired(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank test (Wilcoxon 1945) of ``a - b`` on the samples both series hold.

    Zero differences are dropped (Wilcoxon's convention, scipy's ``zero_method="wilcox"``); with no non-zero
    difference the two methods are indistinguishable: statistic 0, p = 1. ``direction`` is +1 when ``a`` tends
    to exceed ``b`` (R+ > R-), -1 the other way, 0 when balanced.
    """
    common = a.index.intersection(b.index)
    x = a.loc[common].to_numpy(np.float64)
    y = b.loc[common].to_numpy(np.float64)
    n = len(common)
    if n == 0:
        return dict(UNTESTED)
    diff = x - y
    nonzero = diff[diff != 0]
    if len(nonzero) == 0:
        return {"n": n, "n_nonzero": 0, "statistic": 0.0, "p": 1.0, "mean_diff": 0.0, "direction": 0}
    result = stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    # the side the test leans to: the sign of R+ - R-, the signed-rank sum of the non-zero differences
    signed_rank_sum = float(np.sum(np.sign(nonzero) * stats.rankdata(np.abs(nonzero))))
    return {"n": n, "n_nonzero": len(nonzero), "statistic": float(result.statistic), "p": float(result.pvalue),
            "mean_diff": float(diff.mean()), "direction": int(np.sign(signed_rank_sum))}


def kendall_tau(x: Any, y: Any) -> float:
    """Kendall's tau-b (Kendall 1945, ties adjusted) between two score vectors; NaN when undefined."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = ~(np.isnan(x) | np.isnan(y))
    if keep.sum() < 2 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return math.nan
    return float(stats.kendalltau(x[keep], y[keep]).statistic)


# --------------------------------------------------------------------------------------------- tables


def explanation_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The explanation-scope rows, with ``column`` (header label) and ``direction`` (True: higher is better,
    False: lower, None: unknown) per value. A metric's own value carries its direction; a dataset-level metric
    with a single value (besides ``n``) too; other named values have no known direction."""
    part = table[table["scope"] == "explanation"].copy()
    if part.empty:
        return part.assign(column=[], direction=[])
    # a dataset-level metric's cell that did not run has one row named after the metric: spread it over the
    # values the metric gives elsewhere, so that it shows in the same columns
    done = part[part["status"] == "done"]
    values = done.groupby("metric", sort=False)["value_name"].agg(lambda v: list(dict.fromkeys(v)))
    rows = []
    for _, row in part.iterrows():
        if row["value_name"] == row["metric"] and row["status"] != "done" and row["metric"] in values.index:
            rows += [{**row.to_dict(), "value_name": v} for v in values[row["metric"]]]
        else:
            rows.append(row.to_dict())
    part = pd.DataFrame(rows, columns=part.columns)
    names = part[part["value_name"] != "n"].groupby("metric")["value_name"].agg(lambda v: sorted(set(v)))
    directions, columns = [], []
    for _, row in part.iterrows():
        metric, value = row["metric"], row["value_name"]
        main = value == metric or (value != "n" and len(names.get(metric, [])) == 1)
        direction = bool(row["higher_is_better"]) if main else None
        directions.append(direction)
        label = metric if value == metric else f"{metric}.{value}"
        columns.append(label if direction is None else f"{label} {ARROW[direction]}")
    part["column"] = columns
    part["direction"] = directions
    return part


def _direction(value: Any) -> bool | None:
    """A column's direction as stored in a frame (pandas may turn None into NaN)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else bool(value)


def _done(row: Any) -> bool:
    return row["status"] == "done" and not _isnan(row["mean"])


def _isnan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def best_methods(part: pd.DataFrame) -> set[tuple]:
    """(model, dataset, column, method) of the best mean per (model, dataset, column), in the better direction;
    ties on the exact mean are all best. Columns without a known direction have no best."""
    best: set[tuple] = set()
    for (model, dataset, column), rows in part.groupby(GROUP + ["column"], sort=False):
        direction = _direction(rows["direction"].iloc[0])
        rows = rows[[_done(r) for _, r in rows.iterrows()]]
        if direction is None or len(rows) < 2:
            continue
        target = rows["mean"].max() if direction else rows["mean"].min()
        best |= {(model, dataset, column, m) for m in rows.loc[rows["mean"] == target, "method"]}
    return best


def ranking_tables(exp_table: pd.DataFrame, scores: dict[str, pd.Series], alpha: float = ALPHA
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (model, dataset, column) with a known direction: the methods ranked by mean (1 = best; equal means
    share the best rank) and every pair tested with :func:`wilcoxon_paired` on per-sample scores, Holm-corrected
    over the pairs of that (model, dataset, column).

    Returns ``(ranking, pairwise)``. ``ranking`` has, per method, ``better_than`` and ``tied_with`` (methods it
    is significantly better than / not separated from at ``alpha``); ``pairwise`` one row per pair.
    """
    part = explanation_rows(exp_table)
    rank_rows: list[dict[str, Any]] = []
    pair_rows: list[dict[str, Any]] = []
    for (model, dataset, column), rows in part.groupby(GROUP + ["column"], sort=False):
        direction = _direction(rows["direction"].iloc[0])
        rows = rows[[_done(r) for _, r in rows.iterrows()]]
        if direction is None or rows.empty:
            continue
        sign = 1.0 if direction else -1.0
        rows = rows.assign(_oriented=sign * rows["mean"]).sort_values("_oriented", ascending=False, kind="stable")
        methods = list(rows["method"])
        per_sample = {r["method"]: scores.get(r["key"]) for _, r in rows.iterrows()
                      if r["value_name"] == r["metric"]}  # only a metric's own value has per-sample scores
        tests = [(a, b, wilcoxon_paired(per_sample[a], per_sample[b]))  # pairs with per-sample scores only
                 for i, a in enumerate(methods) for b in methods[i + 1:]
                 if per_sample.get(a) is not None and per_sample.get(b) is not None]
        adjusted = holm_adjust([t[2]["p"] for t in tests])
        better: dict[str, list[str]] = {m: [] for m in methods}
        tied: dict[str, list[str]] = {m: [] for m in methods}
        for (a, b, t), p_holm in zip(tests, adjusted):
            significant = bool(not math.isnan(p_holm) and p_holm < alpha and t["direction"] != 0)
            winner = ""
            if significant:
                winner = a if sign * t["direction"] > 0 else b
                better[winner].append(b if winner == a else a)
            elif not math.isnan(p_holm):
                tied[a].append(b)
                tied[b].append(a)
            pair_rows.append({"model": model, "dataset": dataset, "column": column, "method_a": a, "method_b": b,
                              "n": t["n"], "n_nonzero": t["n_nonzero"], "mean_diff": t["mean_diff"],
                              "statistic": t["statistic"], "p": t["p"], "p_holm": float(p_holm),
                              "significant": significant, "better": winner})
        oriented = rows["_oriented"].to_numpy()
        ranks = stats.rankdata(-oriented, method="min").astype(int)
        for rank, (_, r) in zip(ranks, rows.iterrows()):
            rank_rows.append({"model": model, "dataset": dataset, "column": column, "rank": int(rank),
                              "method": r["method"], "mean": r["mean"], "ci_low": r["ci_low"],
                              "ci_high": r["ci_high"], "n": int(r["n"]),
                              "better_than": ", ".join(better[r["method"]]),
                              "tied_with": ", ".join(tied[r["method"]])})
    ranking = pd.DataFrame(rank_rows, columns=["model", "dataset", "column", "rank", "method", "mean", "ci_low",
                                               "ci_high", "n", "better_than", "tied_with"])
    pairwise = pd.DataFrame(pair_rows, columns=["model", "dataset", "column", "method_a", "method_b", "n",
                                                "n_nonzero", "mean_diff", "statistic", "p", "p_holm",
                                                "significant", "better"])
    return ranking, pairwise


def tied_with_best(ranking: pd.DataFrame, best: set[tuple]) -> set[tuple]:
    """(model, dataset, column, method) of the methods that no corrected test separates from a best one."""
    out: set[tuple] = set()
    for _, r in ranking.iterrows():
        for other in filter(None, (s.strip() for s in r["tied_with"].split(","))):
            if (r["model"], r["dataset"], r["column"], other) in best:
                out.add((r["model"], r["dataset"], r["column"], r["method"]))
    return out - best


def rank_agreement(exp_table: pd.DataFrame) -> pd.DataFrame:
    """Kendall's tau-b between the method rankings of every pair of columns with a known direction, per
    (model, dataset); both scores oriented so that larger is better, so tau = 1 means the two metrics order the
    methods identically and tau = -1 in reverse. Rows: model, dataset, column_a, column_b, tau, n_methods."""
    part = explanation_rows(exp_table)
    part = part[part["direction"].notna()]
    rows: list[dict[str, Any]] = []
    for (model, dataset), group in part.groupby(GROUP, sort=False):
        group = group[[_done(r) for _, r in group.iterrows()]]
        oriented = group.assign(score=np.where(group["direction"].astype(bool), 1.0, -1.0) * group["mean"])
        wide = oriented.pivot_table(index="method", columns="column", values="score", aggfunc="first", sort=False)
        columns = list(dict.fromkeys(group["column"]))
        for i, a in enumerate(columns):
            for b in columns[i + 1:]:
                both = wide[[a, b]].dropna()
                rows.append({"model": model, "dataset": dataset, "column_a": a, "column_b": b,
                             "tau": kendall_tau(both[a], both[b]), "n_methods": len(both)})
    return pd.DataFrame(rows, columns=["model", "dataset", "column_a", "column_b", "tau", "n_methods"])


# --------------------------------------------------------------------------------------------- formatting


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: Any) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def half_width(row: Any) -> float:
    """Half the width of the confidence interval (the ``±`` of a table), NaN when the value has no CI."""
    if _isnan(row["ci_low"]) or _isnan(row["ci_high"]):
        return math.nan
    return (float(row["ci_high"]) - float(row["ci_low"])) / 2


def _columns(part: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(part["column"]))


def _n_text(rows: pd.DataFrame) -> str:
    ns = sorted({int(n) for n, s in zip(rows["n"], rows["status"]) if s == "done" and n})
    if not ns:
        return ""
    return f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"


def _cells(part: pd.DataFrame) -> dict[tuple, Any]:
    return {(r["model"], r["dataset"], r["method"], r["column"]): r for _, r in part.iterrows()}


@dataclasses.dataclass
class PaperTables:
    """Everything ``interpbench table`` writes, computed once."""

    experiment: str
    table: pd.DataFrame  # the long results table
    ranking: pd.DataFrame
    pairwise: pd.DataFrame
    agreement: pd.DataFrame
    alpha: float = ALPHA
    digits: int = 3

    @classmethod
    def build(cls, experiment: str, table: pd.DataFrame, scores: dict[str, pd.Series], *, alpha: float = ALPHA,
              digits: int = 3) -> "PaperTables":
        ranking, pairwise = ranking_tables(table, scores, alpha)
        return cls(experiment, table, ranking, pairwise, rank_agreement(table), alpha, digits)

    @classmethod
    def from_experiment(cls, exp: Experiment, *, alpha: float = ALPHA, digits: int = 3) -> "PaperTables":
        return cls.build(exp.name, exp.table, exp.scores, alpha=alpha, digits=digits)

    # ------------------------------------------------------------------ marks

    @property
    def part(self) -> pd.DataFrame:
        return explanation_rows(self.table)

    def marks(self) -> tuple[set[tuple], set[tuple]]:
        best = best_methods(self.part)
        return best, tied_with_best(self.ranking, best)

    def _number(self, x: float) -> str:
        return f"{x:.{self.digits}f}"

    # ------------------------------------------------------------------ LaTeX

    def latex(self, label: str | None = None) -> str:
        """The leaderboard as a booktabs table (needs ``\\usepackage{booktabs}``)."""
        part = self.part
        best, tied = self.marks()
        columns = _columns(part)
        cells = _cells(part)
        lines = [f"% {self.experiment}: generated by `interpbench table` from the experiment's store; do not edit",
                 r"\begin{table}[t]", r"\centering"]
        caption = (f"{latex_escape(self.experiment)}: mean over samples $\\pm$ half-width of the 95\\% bootstrap "
                   "confidence interval. $\\uparrow$: higher is better, $\\downarrow$: lower is better. "
                   "Bold: best per column; underlined: not separated from the best by a two-sided Wilcoxon "
                   f"signed-rank test on the same samples, Holm-corrected, $\\alpha = {self.alpha:g}$.")
        lines += [rf"\caption{{{caption}}}", rf"\label{{{label or 'tab:' + _label(self.experiment)}}}",
                  r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule",
                  "Method & " + " & ".join(_latex_header(c) for c in columns) + r" \\"]
        for (model, dataset), rows in part.groupby(GROUP, sort=False):
            n = _n_text(rows)
            title = f"{latex_escape(model)} on {latex_escape(dataset)}" + (f" ({n})" if n else "")
            lines += [r"\midrule", rf"\multicolumn{{{len(columns) + 1}}}{{l}}{{\textit{{{title}}}}} \\"]
            for method in dict.fromkeys(rows["method"]):
                out = [latex_escape(method)]
                for column in columns:
                    row = cells.get((model, dataset, method, column))
                    ident = (model, dataset, column, method)
                    out.append(self._latex_cell(row, ident in best, ident in tied))
                lines.append(" & ".join(out) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def _latex_cell(self, row: Any, is_best: bool, is_tied: bool) -> str:
        if row is None:
            return "--"
        if not _done(row):
            return STATUS_TEXT.get(row["status"], "--") if row["status"] != "done" else "--"
        mean = self._number(row["mean"])
        if is_best:
            mean = rf"\textbf{{{mean}}}"
        elif is_tied:
            mean = rf"\underline{{{mean}}}"
        hw = half_width(row)
        return mean if math.isnan(hw) else rf"{mean} $\pm$ {self._number(hw)}"

    def agreement_latex(self, label: str | None = None) -> str:
        """Kendall's tau between metrics' method rankings, one block per (model, dataset)."""
        agr = self.agreement
        lines = [f"% {self.experiment}: rank agreement between metrics, generated by `interpbench table`",
                 r"\begin{table}[t]", r"\centering",
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

    # ------------------------------------------------------------------ Markdown and CSV

    def markdown(self) -> str:
        """The leaderboard in Markdown: one table per (model, dataset); best in bold, tied-with-best in italics."""
        part = self.part
        best, tied = self.marks()
        columns = _columns(part)
        cells = _cells(part)
        out = [f"# {self.experiment}\n",
               "Mean over samples ± half-width of the 95% bootstrap confidence interval; ↑ higher is better, "
               "↓ lower is better. **Bold**: best per column; _italics_: not separated from the best by a "
               f"Wilcoxon signed-rank test on the same samples (Holm-corrected, α = {self.alpha:g}).\n"]
        for (model, dataset), rows in part.groupby(GROUP, sort=False):
            n = _n_text(rows)
            out.append(f"## {model} on {dataset}" + (f" ({n})" if n else "") + "\n")
            out.append("| method | " + " | ".join(columns) + " |")
            out.append("|---|" + "|".join("---:" for _ in columns) + "|")
            for method in dict.fromkeys(rows["method"]):
                values = []
                for column in columns:
                    row = cells.get((model, dataset, method, column))
                    ident = (model, dataset, column, method)
                    values.append(self._markdown_cell(row, ident in best, ident in tied))
                out.append(f"| {method} | " + " | ".join(values) + " |")
            out.append("")
        return "\n".join(out)

    def _markdown_cell(self, row: Any, is_best: bool, is_tied: bool) -> str:
        if row is None:
            return "–"
        if not _done(row):
            return STATUS_TEXT.get(row["status"], "–")
        hw = half_width(row)
        text = self._number(row["mean"]) + ("" if math.isnan(hw) else f" ± {self._number(hw)}")
        return f"**{text}**" if is_best else f"_{text}_" if is_tied else text

    def csv(self) -> str:
        """Long format: one row per (model, dataset, method, value) with mean, CI, half-width, n, rank, best."""
        part = self.part
        best, tied = self.marks()
        ranks = {(r["model"], r["dataset"], r["column"], r["method"]): r["rank"] for _, r in self.ranking.iterrows()}
        rows = []
        for _, r in part.iterrows():
            ident = (r["model"], r["dataset"], r["column"], r["method"])
            rows.append({"model": r["model"], "dataset": r["dataset"], "method": r["method"], "metric": r["metric"],
                         "value": r["value_name"], "column": r["column"],
                         "better": {None: "", True: "higher", False: "lower"}[_direction(r["direction"])],
                         "mean": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                         "ci_half_width": half_width(r), "n": r["n"], "status": r["status"],
                         "rank": ranks.get(ident, ""), "best": ident in best, "tied_with_best": ident in tied})
        return pd.DataFrame(rows).to_csv(index=False, float_format="%.10g")

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
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        files = {
            "methods.tex": self.latex(), "methods.md": self.markdown(), "methods.csv": self.csv(),
            "ranking.md": self.ranking_markdown(), "ranking.csv": self.ranking.to_csv(index=False, float_format="%.10g"),
            "pairwise.csv": self.pairwise.to_csv(index=False, float_format="%.6g"),
            "agreement.md": self.agreement_markdown(), "agreement.tex": self.agreement_latex(),
            "agreement.csv": self.agreement.to_csv(index=False, float_format="%.6g"),
        }
        written = []
        for name, text in files.items():
            (out / name).write_text(text)
            written.append(out / name)
        return written


def _latex_header(column: str) -> str:
    text = latex_escape(column)
    return text.replace(" ↑", r" $\uparrow$").replace(" ↓", r" $\downarrow$")


def _label(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-:" else "-" for ch in text)


def paper_tables(directory: str | Path, *, alpha: float = ALPHA, digits: int = 3) -> PaperTables:
    return PaperTables.from_experiment(load_experiment(directory), alpha=alpha, digits=digits)


# --------------------------------------------------------------------------------------------- CLI


FORMATS = ("markdown", "latex", "csv", "ranking", "agreement", "none")


def configure(parser) -> None:
    parser.add_argument("directory", help="an experiment directory (holding store.sqlite)")
    parser.add_argument("--out", help="where to write the tables (default: DIR/tables)")
    parser.add_argument("--print", dest="show", default="markdown", choices=FORMATS,
                        help="what to print on stdout (default: markdown)")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="significance level after Holm's correction")
    parser.add_argument("--digits", type=int, default=3, help="decimals shown")


def main(args, console) -> int:
    from .base import ComponentError

    if not 0 < args.alpha < 1:
        console.print(f"[red]error:[/red] --alpha {args.alpha}: must lie between 0 and 1, e.g. 0.05")
        return 2
    if args.digits < 0:
        console.print(f"[red]error:[/red] --digits {args.digits}: must be 0 or more")
        return 2
    try:
        tables = paper_tables(args.directory, alpha=args.alpha, digits=args.digits)
    except (FileNotFoundError, ComponentError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    out = Path(args.out) if args.out else Path(args.directory) / "tables"
    written = tables.write(out)
    text = {"markdown": tables.markdown, "latex": tables.latex, "csv": tables.csv, "ranking": tables.ranking_markdown,
            "agreement": tables.agreement_markdown, "none": lambda: ""}[args.show]()
    if text:
        print(text, end="" if text.endswith("\n") else "\n")
    console.print(f"tables written to {out}: " + ", ".join(p.name for p in written))
    return 0
