"""Plain-text tables and names: the cells of a results table (``format_value``), the wide table (one column per
metric value, ``wide_table``), Markdown (``to_markdown``) and file-name-safe names (``slug``).

Shared by the metrics that write their own tables, the run engine and the publishing layer.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

#: The direction arrows of table headers: ``ARROW[higher_is_better]``.
ARROW = {True: "↑", False: "↓"}


def slug(text: str) -> str:
    """A file-name-safe form of a model spec or name (letters, digits and ``-_.`` kept, anything else ``_``)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def format_value(row: pd.Series) -> str:
    if row["status"] != "done":
        return {"failed": "failed", "not_applicable": "n/a", "skipped": "skipped"}.get(row["status"], row["status"])
    if math.isnan(row["mean"]):
        return "–"
    if math.isnan(row["ci_low"]):
        return f"{row['mean']:.4g}"
    return f"{row['mean']:.4f} [{row['ci_low']:.4f}, {row['ci_high']:.4f}]"


def wide_table(table: pd.DataFrame, scope: str = "explanation", directed: Any = None) -> pd.DataFrame:
    """Rows (model, dataset, method), one column per metric value with its arrow (the metric's own value, and the
    values of the boolean Series ``directed`` aligned with ``table``, e.g. a metric's headline values)."""
    part = table[table["scope"] == scope]
    if part.empty:
        return pd.DataFrame()
    arrow = (part["value_name"] == part["metric"]) if directed is None else directed.reindex(part.index).fillna(False)
    part = part.assign(
        column=[f"{v if v == m else f'{m}.{v}'}" + (f" {ARROW[bool(h)]}" if a else "") for v, m, h, a in
                zip(part["value_name"], part["metric"], part["higher_is_better"], arrow | (part["value_name"] == part["metric"]))],
        cell=part.apply(format_value, axis=1),
    )
    wide = part.pivot_table(index=["model", "dataset", "method"], columns="column", values="cell", aggfunc="first", sort=False)
    wide = wide.reset_index()
    wide.columns.name = None
    return wide


def to_markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "_no results_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(row[c]) else str(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"
