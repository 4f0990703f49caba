"""The ranking of the methods and its statistics: per (model, dataset, column) the methods ranked by mean with
every pair tested by the Wilcoxon signed-rank test on the per-sample scores of the samples both scored, Holm's
correction over the pairs (:func:`ranking_tables`), the best methods and those no test separates from them, and
Kendall's tau-b between the rankings two metrics give (:func:`rank_agreement`).

Part of the publishing layer (docs/design.md): the paper tables and the report mark and rank with these.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from interpbench.core.tabular import ARROW
from interpbench.publish.headline import headline_mask

ALPHA = 0.05


GROUP = ["model", "dataset"]


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
