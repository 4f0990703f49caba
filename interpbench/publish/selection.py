"""What a paper table shows (:class:`Selection`): the metrics, models, datasets and methods kept, and which values
(the headline, all, or names with ``*`` patterns), as ``interpbench table``'s options choose them.

Part of the publishing layer (docs/design.md); used by :mod:`interpbench.publish.tables`.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from interpbench.core.base import ComponentError
from interpbench.publish.headline import _pattern, headline_mask

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
                raise ComponentError(f"{flag} {','.join(unknown)}: not in this experiment; it has {have}")
            keep &= table[column].isin(names) | ((column == "method") & (table[column] == "-"))
        return table[keep]

    def value_mask(self, table: pd.DataFrame) -> pd.Series:
        if self.values == "all":
            return pd.Series(True, index=table.index)
        if self.values == "headline":
            return headline_mask(table)
        patterns = [_pattern(v) for v in self.values]
        names = table["value_name"].astype(str)
        full = table["metric"].astype(str) + "." + names
        own = names == table["metric"]
        mask = pd.Series([any(p.match(n) or p.match(f) or (o and p.match(m)) for p in patterns)
                          for n, f, o, m in zip(names, full, own, table["metric"].astype(str))], index=table.index)
        if not mask.any():
            have = sorted(set(full))
            raise ComponentError(f"--values {','.join(self.values)}: no value of this experiment has that name; "
                                 f"use headline, all, or names such as {have[:12]}")
        return mask | ((table["status"] != "done") & own)
