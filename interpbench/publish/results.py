"""A run's numbers read from an experiment's ``store.sqlite``: the long results table (:func:`results_table`: one
row per cell and value, the mean over samples with its 95% bootstrap CI and n) and the whole experiment in
memory (:func:`load_experiment`: manifest, results table, per-sample scores, extras), read from a private copy
of the store.

Part of the publishing layer (docs/design.md), on top of the engine's store; the leaderboard, the paper tables,
the report and ``reproduce`` start from here.
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

from interpbench.core.identity import stable_hash
from interpbench.engine.store import Store
from interpbench.ops.stats import bootstrap_ci


def results_table(store: Store, run_id: int) -> pd.DataFrame:
    """One row per cell (per-sample metrics) or per cell and result name (dataset-level and model-scope)."""
    rows: list[dict[str, Any]] = []
    for cell in store.run_cells(run_id):
        base = {k: cell[k] for k in ("model", "dataset", "method", "metric", "scope", "status", "error", "key")}
        base["higher_is_better"] = bool(cell["higher_is_better"])
        base["wall_time"] = cell["wall_time"]
        scores = store.scores(cell["key"])
        results = store.results(cell["key"])
        if scores:
            values = np.array([v for _, v in scores])
            lo, hi = bootstrap_ci(values, stable_hash(cell["key"]))
            rows.append({**base, "value_name": cell["metric"], "mean": float(values.mean()), "ci_low": lo,
                         "ci_high": hi, "n": len(values)})
        for name, value in results.items():
            if name.endswith(("_ci_low", "_ci_high")):
                continue
            rows.append({**base, "value_name": name, "mean": value, "ci_low": results.get(f"{name}_ci_low", math.nan),
                         "ci_high": results.get(f"{name}_ci_high", math.nan), "n": int(results.get("n", 0) or 0)})
        if not scores and not results:
            rows.append({**base, "value_name": cell["metric"], "mean": math.nan, "ci_low": math.nan,
                         "ci_high": math.nan, "n": 0})
    columns = ["model", "dataset", "method", "metric", "value_name", "mean", "ci_low", "ci_high", "n",
               "higher_is_better", "status", "error", "scope", "wall_time", "key"]
    return pd.DataFrame(rows, columns=columns)


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
    table: pd.DataFrame  # results_table: one row per (cell, value name)
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
