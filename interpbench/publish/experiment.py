"""``interpbench.run``: an experiment end to end, the grid (the engine) and then its leaderboard (publishing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from interpbench.engine.config import RunConfig
from interpbench.engine.runner import Runner
from interpbench.publish.leaderboard import write_leaderboard


def run(
    methods: Iterable[str],
    models: Iterable[str],
    metrics: Iterable[str],
    datasets: Iterable[str] | None = None,
    out: str | Path = "runs/default",
    **options: Any,
) -> pd.DataFrame:
    """Run the grid and write the leaderboard under ``out``; returns the long results table.

    ``options`` are the fields of :class:`interpbench.engine.config.RunConfig` (``batch_size``, ``device``,
    ``limit``, ``method_params``, ...). ``table.attrs["ok"]`` is False when a cell failed.
    """
    config = RunConfig(methods=list(methods), models=list(models), metrics=list(metrics),
                       datasets=None if datasets is None else list(datasets), out=out, **options)
    runner = Runner(config)
    table = runner.run(publish=write_leaderboard)
    table.attrs["ok"] = runner.ok
    return table
