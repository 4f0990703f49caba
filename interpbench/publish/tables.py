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
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from scipy import stats

from interpbench.core.tabular import ARROW
from interpbench.engine.store import Store
from interpbench.publish.leaderboard import headline_mask, results_table

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
    False: lower, None: unknown) per value. A metric's own value carries its direction; so do its headline values
    (the metric class's ``headline_values``) and the one value of a dataset-level metric with a single value
    (besides ``n``); other named values (counts, baselines, success rates) have no known direction."""
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
    part = pd.DataFrame(rows, columns=part.columns).reset_index(drop=True)
    names = part[part["value_name"] != "n"].groupby("metric")["value_name"].agg(lambda v: sorted(set(v)))
    headline = headline_mask(part)
    directions, columns = [], []
    for index, row in part.iterrows():
        metric, value = row["metric"], row["value_name"]
        # a metric's headline values (its headline_values) are compared in its direction
        main = (value == metric or (value != "n" and len(names.get(metric, [])) == 1)
                or (bool(headline[index]) and row["status"] == "done"))
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


def ranking_tables(exp_table: pd.DataFrame, scores: dict[str, pd.Series], alpha: float = ALPHA, *,
                   part: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (model, dataset, column) with a known direction: the methods ranked by mean (1 = best; equal means
    share the best rank) and every pair tested with :func:`wilcoxon_paired` on per-sample scores, Holm-corrected
    over the pairs of that (model, dataset, column).

    Returns ``(ranking, pairwise)``. ``ranking`` has, per method, ``better_than`` and ``tied_with`` (methods it
    is significantly better than / not separated from at ``alpha``); ``pairwise`` one row per pair.
    """
    part = explanation_rows(exp_table) if part is None else part
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


def rank_agreement(exp_table: pd.DataFrame, *, part: pd.DataFrame | None = None) -> pd.DataFrame:
    """Kendall's tau-b between the method rankings of every pair of columns with a known direction, per
    (model, dataset); both scores oriented so that larger is better, so tau = 1 means the two metrics order the
    methods identically and tau = -1 in reverse. Rows: model, dataset, column_a, column_b, tau, n_methods."""
    part = explanation_rows(exp_table) if part is None else part
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


# --------------------------------------------------------------------------------------------- selection


VALUE_CHOICES = ("headline", "all")


@dataclasses.dataclass
class Selection:
    """What a table shows: ``metrics`` / ``models`` / ``datasets`` / ``methods`` (None: all) and ``values``:
    ``"headline"`` (each metric's headline values, its ``headline_values``), ``"all"`` (every value the store
    holds) or names (``"difficult"``, ``"pointing_game.difficult"``, ``"adversarial_detection.*.tpr5"``: a value
    name, or METRIC.VALUE, with ``*`` patterns as in ``headline_values``); ``transpose``: methods as columns."""

    metrics: list[str] | None = None
    models: list[str] | None = None
    datasets: list[str] | None = None
    methods: list[str] | None = None
    values: str | list[str] = "headline"
    transpose: bool = False

    def rows(self, table: pd.DataFrame) -> pd.DataFrame:
        """The rows of a long results table this selection keeps (every value of them; ``values`` is applied
        by :meth:`value_mask`). Unknown names are an error that lists the names the experiment has."""
        keep = pd.Series(True, index=table.index)
        for flag, column, names in (("--metrics", "metric", self.metrics), ("--models", "model", self.models),
                                    ("--datasets", "dataset", self.datasets), ("--methods", "method", self.methods)):
            if names is None:
                continue
            have = list(dict.fromkeys(table[column].astype(str)))
            if column == "method":
                have = [h for h in have if h != "-"]
            unknown = [n for n in names if n not in have]
            if unknown:
                from interpbench.core.base import ComponentError

                raise ComponentError(f"{flag} {','.join(unknown)}: not in this experiment; it has {have}")
            keep &= table[column].isin(names) | ((column == "method") & (table[column] == "-"))
        return table[keep]

    def value_mask(self, table: pd.DataFrame) -> pd.Series:
        if self.values == "all":
            return pd.Series(True, index=table.index)
        if self.values == "headline":
            return headline_mask(table)
        from interpbench.publish.leaderboard import _pattern

        patterns = [_pattern(v) for v in self.values]
        names = table["value_name"].astype(str)
        full = table["metric"].astype(str) + "." + names
        own = names == table["metric"]
        mask = pd.Series([any(p.match(n) or p.match(f) or (o and p.match(m)) for p in patterns)
                          for n, f, o, m in zip(names, full, own, table["metric"].astype(str))], index=table.index)
        if not mask.any():
            from interpbench.core.base import ComponentError

            have = sorted(set(full))
            raise ComponentError(f"--values {','.join(self.values)}: no value of this experiment has that name; "
                                 f"use headline, all, or names such as {have[:12]}")
        return mask | ((table["status"] != "done") & own)


# --------------------------------------------------------------------------------------------- formatting


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
# Paper-style names of the built-in metrics and values in table headers (others show their own names).
DISPLAY = {"deletion": "Deletion", "insertion": "Insertion", "pointing_game": "Pointing",
           "energy_pointing_game": "Energy", "grid_pointing_game": "Grid", "adversarial_detection": "Adv. detection",
           "explanation_drift": "Drift", "shortcut_localization": "Shortcut", "difficult": "Diff.", "auroc": "AUROC",
           "tpr5": "TPR@5%", "auroc_gain": "gain"}
TEXTWIDTH_PT = 345.0  # \textwidth of the standard one-column article class at 10 pt (US letter and A4)
TABCOLSEP_PT = 3.0  # \tabcolsep inside our tables (the article default is 6 pt)


LATEX_UNICODE = {"|": r"$|$", "–": "--", "⇒": r"$\Rightarrow$", "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
                 "×": r"$\times$", "α": r"$\alpha$", "τ": r"$\tau$"}


def latex_escape(text: Any) -> str:
    """``text`` set literally by LaTeX: its special characters escaped, the few non-ASCII signs our tables use
    (en dash, arrows, ±) as LaTeX commands, so the file compiles under any input encoding."""
    return "".join(LATEX_SPECIAL.get(ch) or LATEX_UNICODE.get(ch, ch) for ch in str(text))


def half_width(row: Any) -> float:
    """Half the width of the confidence interval (the ``±`` of a table), NaN when the value has no CI."""
    if _isnan(row["ci_low"]) or _isnan(row["ci_high"]):
        return math.nan
    return (float(row["ci_high"]) - float(row["ci_low"])) / 2


def _n_text(rows: pd.DataFrame) -> str:
    ns = sorted({int(n) for n, s in zip(rows["n"], rows["status"]) if s == "done" and n})
    if not ns:
        return ""
    return f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"


def _display(name: str) -> str:
    return DISPLAY.get(name, name.replace("_", " "))


@dataclasses.dataclass
class Cell:
    """One number of a table: mean with its CI (``scale`` multiplies both, e.g. 100 for percent), a mark
    (``"best"``, ``"tied"``) or a fixed ``text`` (a status, a count)."""

    mean: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    n: int = 0
    mark: str = ""
    text: str | None = None
    digits: int = 3
    scale: float = 1.0

    @classmethod
    def of(cls, row: Any, *, mark: str = "", digits: int = 3, scale: float = 1.0, integer: bool = False) -> "Cell":
        if row is None:
            return cls(text="–")
        if not _done(row):
            return cls(text=STATUS_TEXT.get(row["status"], "–") if row["status"] != "done" else "–")
        if integer:
            return cls(mean=float(row["mean"]), n=int(row["n"] or 0), digits=0)
        return cls(mean=float(row["mean"]), ci_low=float(row["ci_low"]), ci_high=float(row["ci_high"]),
                   n=int(row["n"] or 0), mark=mark, digits=digits, scale=scale)

    @property
    def half(self) -> float:
        return math.nan if _isnan(self.ci_low) or _isnan(self.ci_high) else (self.ci_high - self.ci_low) / 2

    def parts(self) -> tuple[str, str]:
        """(mean, half-width) as text; the half-width is '' without a CI."""
        if self.text is not None:
            return self.text, ""
        hw = self.half
        return (f"{self.mean * self.scale:.{self.digits}f}",
                "" if math.isnan(hw) or self.digits == 0 else f"{hw * self.scale:.{self.digits}f}")

    def latex(self) -> str:
        mean, hw = self.parts()
        if self.text is not None:
            return latex_escape(mean)
        mean = rf"\textbf{{{mean}}}" if self.mark == "best" else rf"\underline{{{mean}}}" if self.mark == "tied" else mean
        return mean + (rf"\textsubscript{{$\pm${hw}}}" if hw else "")

    def markdown(self) -> str:
        mean, hw = self.parts()
        text = mean + (f" ± {hw}" if hw else "")
        return f"**{text}**" if self.mark == "best" else f"_{text}_" if self.mark == "tied" else text

    def width(self) -> float:
        mean, hw = self.parts()
        return _text_pt(mean, bold=self.mark == "best") + (0.8 * _text_pt("±" + hw) if hw else 0.0)


def _text_pt(text: str, bold: bool = False) -> float:
    """A slightly generous estimate of the width of ``text`` in points at \\small (9 pt Computer Modern), checked
    against pdflatex's boxes (``integrated_gradients``: 87 pt estimated, 81 pt set): narrow letters 2.8 pt, m and
    w 7.5, other letters and digits 4.8, capitals 7, punctuation 2.6, spaces 3.4, arrows and ± 7.5."""
    width = 0.0
    for ch in str(text):
        width += (2.6 if ch in ".,:;'|!()[]" else 3.4 if ch == " " else 7.5 if ch in "↑↓±⇒mw" else
                  2.8 if ch in "ijlrtf" else 7.0 if ch.isupper() or ch in "%@&" else 4.8)
    return width * (1.12 if bold else 1.0)


@dataclasses.dataclass
class Grid:
    """A table of cells with multi-level column headers (top level first; equal neighbours merge) and row
    sections; rendered as LaTeX (split into several tables to fit ``\\textwidth``), Markdown and CSV."""

    title: str  # caption
    label: str
    corner: str  # header of the row-label column
    columns: list[tuple[str, ...]]
    sections: list[tuple[str, list[tuple[str, list[Cell]]]]]  # (title or '', [(row label, cells)])
    note: str = ""  # a sentence for the caption (what bold and underline mean, the units)
    # Markdown: one table per top-level header (a model's columns) or one table with the levels joined
    split_markdown: bool = False
    footer: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)  # e.g. ("n", per column)

    def __post_init__(self) -> None:
        # a header whose lower levels are empty sits on the lowest level (beside the other columns' sub-headers)
        levels = self._levels()
        columns = []
        for col in self.columns:
            col = tuple(col) + ("",) * (levels - len(col))
            filled = [i for i, x in enumerate(col) if x]
            if filled and filled[-1] < levels - 1 and (len(filled) == 1 or filled[-1] > 0):
                col = col[: filled[-1]] + ("",) * (levels - 1 - filled[-1]) + (col[filled[-1]],)
            columns.append(col)
        self.columns = columns

    # ------------------------------------------------------------------ widths and splitting

    def _levels(self) -> int:
        return max((len(c) for c in self.columns), default=0)

    def _column_pt(self, j: int) -> float:
        widths = [cell[j].width() for _, rows in self.sections for _, cell in rows] + [
            _text_pt(f[1][j]) for f in self.footer]
        widths.append(_header_pt(self.columns[j][-1]) if self.columns[j] else 0.0)
        return max(widths) + 2 * TABCOLSEP_PT

    def _label_pt(self) -> float:
        labels = [_text_pt(label) for _, rows in self.sections for label, _ in rows]
        labels += [_text_pt(self.corner)] + [_text_pt(f[0]) for f in self.footer]
        return max(labels) + 2 * TABCOLSEP_PT

    def width_pt(self, columns: list[int]) -> float:
        """Estimated width of the table of the given columns: each spanning header at least as wide as its text."""
        own = {j: self._column_pt(j) for j in columns}
        for level in range(self._levels() - 1):
            for start, stop in _spans(self.columns, columns, level):
                span = columns[start:stop]
                need = _header_pt(self.columns[span[0]][level]) + 2 * TABCOLSEP_PT
                have = sum(own[j] for j in span)
                if need > have:
                    own[span[-1]] += need - have
        return self._label_pt() + sum(own.values())

    def title_pt(self) -> float:
        """The widest section title (set across the whole table: a table at least that wide)."""
        return max([_text_pt(t) + 2 * TABCOLSEP_PT for t, _ in self.sections if t], default=0.0)

    def chunks(self, budget: float = TEXTWIDTH_PT) -> list[list[int]]:
        """The columns split into tables that fit ``budget`` points: whole top-level groups where they fit,
        else the next level's groups, else single columns; a column too wide on its own gets a table of its own
        (and a warning)."""
        out: list[list[int]] = [[]]

        def place(unit: list[int], level: int) -> None:
            if self.width_pt(out[-1] + unit) <= budget:
                out[-1] += unit
                return
            if out[-1] and self.width_pt(unit) <= budget:
                out.append(list(unit))
                return
            if len(unit) > 1 and level < self._levels():
                for start, stop in _spans(self.columns, unit, level):
                    place(unit[start:stop], level + 1)
                return
            if out[-1]:
                out.append([])
            out[-1] += unit
            warnings.warn(f"table {self.label}: a column is wider than \\textwidth on its own "
                          f"({self.width_pt(unit):.0f} pt > {budget:.0f} pt); shorten its header or its names",
                          stacklevel=3)

        place(list(range(len(self.columns))), 0)
        if self.title_pt() > budget:
            warnings.warn(f"table {self.label}: a section title is wider than \\textwidth ({self.title_pt():.0f} pt > "
                          f"{budget:.0f} pt); shorten the model or dataset names", stacklevel=2)
        return [c for c in out if c] or [[]]

    # ------------------------------------------------------------------ LaTeX

    def latex(self, experiment: str, budget: float = TEXTWIDTH_PT) -> str:
        chunks = self.chunks(budget)
        parts = [f"% {experiment}: generated by `interpbench table` from the experiment's store; do not edit. "
                 "Needs \\usepackage{booktabs}."]
        for i, columns in enumerate(chunks):
            part = f" (part {i + 1} of {len(chunks)})" if len(chunks) > 1 else ""
            label = self.label + (f"-{i + 1}" if len(chunks) > 1 else "")
            caption = latex_escape(self.title) + part + (". " + self.note.rstrip(".") + "." if self.note and i == 0
                                                         else ". Continued." if i else ".")
            width = max(self.width_pt(columns), self.title_pt())
            parts += ["", r"\begin{table}[t]", r"\centering", r"\small", rf"\setlength{{\tabcolsep}}{{{TABCOLSEP_PT:g}pt}}",
                      rf"\caption{{{caption}}}", rf"\label{{{label}}}",
                      f"% estimated width {width:.0f} pt of {budget:.0f} pt",
                      r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule"]
            parts += self._latex_header(columns)
            for title, rows in self.sections:
                parts.append(r"\midrule")
                if title:
                    parts.append(rf"\multicolumn{{{len(columns) + 1}}}{{l}}{{\textit{{{latex_escape(title)}}}}} \\")
                for label_text, cells in _filled(rows, columns):
                    parts.append(" & ".join([latex_escape(label_text)] + [cells[j].latex() for j in columns]) + r" \\")
            if self.footer:
                parts.append(r"\midrule")
                for name, texts in self.footer:
                    parts.append(" & ".join([latex_escape(name)] + [latex_escape(texts[j]) for j in columns]) + r" \\")
            parts += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(parts) + "\n"

    def _latex_header(self, columns: list[int]) -> list[str]:
        """One header row per level that has text in these columns; spanning headers ruled below; the corner
        (e.g. Method) on the last row."""
        levels = [lv for lv in range(self._levels()) if any(self.columns[j][lv] for j in columns
                                                                 if lv < len(self.columns[j]))]
        lines = []
        for i, level in enumerate(levels):
            last = i == len(levels) - 1
            cells = [latex_escape(self.corner) if last else ""]
            rules = []
            for start, stop in _spans(self.columns, columns, level):
                text = _latex_header(self.columns[columns[start]][level])
                cells.append(text if stop - start == 1 else rf"\multicolumn{{{stop - start}}}{{c}}{{{text}}}")
                if not last and text:
                    rules.append(rf"\cmidrule(lr){{{start + 2}-{stop + 1}}}")
            lines.append(" & ".join(cells) + r" \\" + (" " + " ".join(rules) if rules else ""))
        return lines or [latex_escape(self.corner) + " & " * len(columns) + r" \\"]

    # ------------------------------------------------------------------ Markdown and CSV

    def markdown(self, level: int = 3) -> str:
        """One pipe table per top-level header (Markdown has no spanning cells); sections as bold rows; the title
        a heading of ``level``."""
        out = [f"{'#' * level} {self.title}\n"] + ([_plain(self.note) + "\n"] if self.note else [])
        top = [c[0].replace("\n", " ") if c else "" for c in self.columns]
        everything = [(0, len(self.columns))] if self.columns else []
        for start, stop in _spans(self.columns, list(range(len(self.columns))), 0) if self.split_markdown else everything:
            columns = list(range(start, stop))
            first = 1 if self.split_markdown else 0
            heads = [" ".join(x.replace("\n", " ") for x in self.columns[j][first:] if x) or top[j] for j in columns]
            if self.split_markdown and top[start]:
                out.append(f"{'#' * (level + 1)} {top[start]}\n")
            out.append(f"| {self.corner} | " + " | ".join(heads) + " |")
            out.append("|---|" + "|".join("---:" for _ in columns) + "|")
            for title, rows in self.sections:
                if title:
                    out.append(f"| **{title}** |" + " |" * len(columns))
                for label, cells in _filled(rows, columns):
                    out.append(f"| {label} | " + " | ".join(cells[j].markdown() for j in columns) + " |")
            for name, texts in self.footer:
                out.append(f"| {name} | " + " | ".join(texts[j] for j in columns) + " |")
            out.append("")
        return "\n".join(out) + "\n"

    def records(self) -> list[dict[str, Any]]:
        rows = []
        for title, body in self.sections:
            for label, cells in body:
                for j, cell in enumerate(cells):
                    if cell.text is not None and cell.text in ("–", ""):
                        continue
                    rows.append({"section": title, self.corner.lower() or "row": label,
                                 **{f"level{k + 1}": x.replace("\n", " ") for k, x in enumerate(self.columns[j])},
                                 "mean": cell.mean * cell.scale if cell.text is None else math.nan,
                                 "ci_low": cell.ci_low * cell.scale, "ci_high": cell.ci_high * cell.scale,
                                 "n": cell.n, "status": cell.text or "done", "best": cell.mark == "best",
                                 "tied_with_best": cell.mark == "tied"})
        return rows

    def csv(self) -> str:
        return pd.DataFrame(self.records()).to_csv(index=False, float_format="%.10g")


def _filled(rows: list[tuple[str, list[Cell]]], columns: list[int]) -> list[tuple[str, list[Cell]]]:
    """The rows with something in these columns (a method a model was not run with shows no row of dashes)."""
    return [(label, cells) for label, cells in rows if any(cells[j].text != "–" for j in columns)]


def _spans(columns: list[tuple[str, ...]], indices: list[int], level: int) -> list[tuple[int, int]]:
    """Runs of ``indices`` (positions start:stop in ``indices``) whose headers agree on levels 0..level."""
    spans: list[tuple[int, int]] = []
    for pos, j in enumerate(indices):
        key = columns[j][: level + 1]
        if spans and columns[indices[spans[-1][0]]][: level + 1] == key:
            spans[-1] = (spans[-1][0], pos + 1)
        else:
            spans.append((pos, pos + 1))
    return spans


def _header_pt(text: str) -> float:
    return max((_text_pt(line) for line in str(text).split("\n")), default=0.0)


def _latex_header(column: str) -> str:
    lines = [latex_escape(line) for line in str(column).split("\n")]
    return lines[0] if len(lines) == 1 else r"\shortstack{" + r"\\".join(lines) + "}"


def _plain(latex: str) -> str:
    return (latex.replace(r"$\pm$", "±").replace(r"$\uparrow$", "↑").replace(r"$\downarrow$", "↓")
            .replace(r"\%", "%").replace(r"\times", "×").replace("$", "").replace(r"\alpha", "α").replace("--", "–")
            .replace("as a subscript", "after ±").replace("underlined", "italics"))


def _group_header(model: str, dataset: str) -> str:
    """A (model, dataset) column group's header: a pair ``A=>B`` on two lines, the dataset on the last."""
    return str(model).replace("=>", " ⇒\n") + f"\non {dataset}"


def _sanity_pair(model: str) -> bool:
    """A pair ``A=>A~cascade:K`` of the model-randomisation test (its numbers go to the sanity table)."""
    from interpbench.core.config import parse_cascade

    _, arrow, b = str(model).partition("=>")
    return bool(arrow) and parse_cascade(b) is not None


def _label(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-:" else "-" for ch in text)


# --------------------------------------------------------------------------------------------- the tables


def _value_order(metric: str, names: list[str]) -> list[str]:
    """A metric's value names in table order: its own value, then its headline patterns' order, then the rest."""
    from interpbench.publish.leaderboard import _pattern, declared_headline

    patterns = [_pattern(p) for p in (declared_headline(metric) or ())]

    def key(name: str) -> tuple[int, int]:
        if name == metric:
            return (0, 0)
        hits = [i for i, p in enumerate(patterns) if p.match(name)]
        return (1, hits[0]) if hits else (2, 0)

    return sorted(dict.fromkeys(names), key=key)


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


# --------------------------------------------------------------------------------------------- CLI


FORMATS = ("markdown", "latex", "csv", "ranking", "agreement", "none")


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def configure(parser) -> None:
    parser.add_argument("directory", help="an experiment directory (holding store.sqlite)")
    parser.add_argument("--out", help="where to write the tables (default: DIR/tables)")
    parser.add_argument("--print", dest="show", default="markdown", choices=FORMATS,
                        help="what to print on stdout (default: markdown)")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="significance level after Holm's correction")
    parser.add_argument("--digits", type=int, default=3, help="decimals shown")
    parser.add_argument("--metrics", help="comma-separated metrics to show (default: all the experiment has)")
    parser.add_argument("--models", help="comma-separated model specs to show")
    parser.add_argument("--datasets", help="comma-separated datasets to show")
    parser.add_argument("--methods", help="comma-separated methods to show (the paired tests run over these)")
    parser.add_argument("--values", default="headline", help="headline (default: each metric's headline values), "
                        "all (every value the store holds), or comma-separated names: VALUE or METRIC.VALUE, '*' for "
                        "one part of a name, e.g. pointing_game.difficult,adversarial_detection.*.tpr5")
    parser.add_argument("--transpose", action="store_true", help="methods as columns, values as rows")


def main(args, console) -> int:
    from interpbench.core.base import ComponentError

    if not 0 < args.alpha < 1:
        console.print(f"[red]error:[/red] --alpha {args.alpha}: must lie between 0 and 1, e.g. 0.05")
        return 2
    if args.digits < 0:
        console.print(f"[red]error:[/red] --digits {args.digits}: must be 0 or more")
        return 2
    values = getattr(args, "values", "headline")
    selection = Selection(metrics=_names(getattr(args, "metrics", None)), models=_names(getattr(args, "models", None)),
                          datasets=_names(getattr(args, "datasets", None)),
                          methods=_names(getattr(args, "methods", None)),
                          values=values if values in VALUE_CHOICES else _names(values) or "headline",
                          transpose=bool(getattr(args, "transpose", False)))
    try:
        tables = paper_tables(args.directory, alpha=args.alpha, digits=args.digits, selection=selection)
        out = Path(args.out) if args.out else Path(args.directory) / "tables"
        written = tables.write(out)
    except (FileNotFoundError, ComponentError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    text = {"markdown": tables.markdown, "latex": tables.latex, "csv": tables.csv, "ranking": tables.ranking_markdown,
            "agreement": tables.agreement_markdown, "none": lambda: ""}[args.show]()
    if text:
        print(text, end="" if text.endswith("\n") else "\n")
    console.print(f"tables written to {out}: " + ", ".join(p.name for p in written))
    return 0
