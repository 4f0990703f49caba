"""Which values of a long results table are a metric's headline: the ``headline_values`` name patterns a metric
class declares (:func:`declared_headline`, :func:`_pattern`), the rows they select (:func:`headline_mask`) and the
order a metric's values are shown in (:func:`_value_order`).

Part of the publishing layer (docs/design.md); the leaderboard, the paper tables and the terminal summary all
read the headline from here.
"""

from __future__ import annotations

import re
import warnings

import pandas as pd

from interpbench.core.registry import get_registry


def _pattern(pattern: str) -> re.Pattern:
    """A headline pattern as a regular expression: ``*`` one dot-free part of a name, ``**`` one or more parts."""
    parts = [".+" if p == "**" else "[^.]+" if p == "*" else re.escape(p).replace(r"\*", "[^.]*")
             for p in pattern.split(".")]
    return re.compile("^" + r"\.".join(parts) + "$")


def declared_headline(metric: str) -> tuple[str, ...] | None:
    """The ``headline_values`` the registered metric class declares, or None (not declared, or the plugin that made
    the run is not installed)."""
    try:
        cls = get_registry().get("metrics", metric)
    except Exception:  # noqa: BLE001 - tables must regenerate without the plugin
        return None
    declared = getattr(cls, "headline_values", None)
    if declared is None:
        return None
    if isinstance(declared, str) or not all(isinstance(p, str) for p in declared):
        warnings.warn(f"metric {metric!r}: headline_values must be a tuple of name patterns, e.g. ('{metric}',), "
                      f"got {declared!r}; its headline falls back to the default", stacklevel=2)
        return None
    return tuple(declared)


def headline_mask(table: pd.DataFrame) -> pd.Series:
    """Which rows of a long results table hold a headline value: the names the metric's ``headline_values``
    patterns match; for a metric that declares none, the value named after the metric, else (a metric with only
    named values) every value with a confidence interval somewhere in the table. A cell that did not run keeps
    its one row (it shows as failed / n/a in the headline). A metric whose values have no interval at all shows
    every value but ``n``."""
    mask = pd.Series(False, index=table.index)
    for metric, rows in table.groupby("metric", sort=False):
        names = rows["value_name"].astype(str)
        declared = declared_headline(str(metric))
        if declared is not None:
            patterns = [_pattern(p) for p in declared]
            keep = names.map(lambda n: any(p.match(n) for p in patterns))
        elif (names == metric).any():
            keep = names == metric
        else:
            with_ci = set(names[rows["ci_low"].notna()])
            keep = names.isin(with_ci) if with_ci else names != "n"
        mask[rows.index] = keep.to_numpy(bool)
    return mask | ((table["status"] != "done") & (table["value_name"] == table["metric"]))


def _value_order(metric: str, names: list[str]) -> list[str]:
    """A metric's value names in table order: its own value, then its headline patterns' order, then the rest."""
    patterns = [_pattern(p) for p in (declared_headline(metric) or ())]

    def key(name: str) -> tuple[int, int]:
        if name == metric:
            return (0, 0)
        hits = [i for i, p in enumerate(patterns) if p.match(name)]
        return (1, hits[0]) if hits else (2, 0)

    return sorted(dict.fromkeys(names), key=key)
