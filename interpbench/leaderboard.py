"""Store -> tables: ``methods.md``, ``methods.csv``, ``results.json``, ``manifest.json`` (and the model-scope
``representations.md`` / ``.csv`` when a run has model-scope metrics).

Each per-sample number is the mean over samples with a 95% percentile-bootstrap confidence interval over samples
and its n; an arrow says which direction is better.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .manifest import stable_hash
from .store import Store

ARROW = {True: "↑", False: "↓"}
N_BOOTSTRAP = 2000


def bootstrap_ci(values: np.ndarray, seed: int, n_boot: int = N_BOOTSTRAP, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (Efron & Tibshirani 1993, ch. 13), resampling samples."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (math.nan, math.nan)
    if len(values) == 1:
        return (float(values[0]), float(values[0]))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


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


def format_value(row: pd.Series) -> str:
    if row["status"] != "done":
        return {"failed": "failed", "not_applicable": "n/a", "skipped": "skipped"}.get(row["status"], row["status"])
    if math.isnan(row["mean"]):
        return "–"
    if math.isnan(row["ci_low"]):
        return f"{row['mean']:.4g}"
    return f"{row['mean']:.4f} [{row['ci_low']:.4f}, {row['ci_high']:.4f}]"


def wide_table(table: pd.DataFrame, scope: str = "explanation") -> pd.DataFrame:
    """Rows (model, dataset, method), one column per metric value with its arrow."""
    part = table[table["scope"] == scope]
    if part.empty:
        return pd.DataFrame()
    part = part.assign(
        column=[f"{v} {ARROW[h]}" if v == m else f"{m}.{v}" for v, m, h in
                zip(part["value_name"], part["metric"], part["higher_is_better"])],
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


def write_leaderboard(store: Store, out: str | Path, run_id: int | None = None) -> pd.DataFrame:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    latest = store.latest_run()
    if latest is None:
        raise FileNotFoundError(f"{store.path}: the store holds no run yet")
    if run_id is None:
        run_id = latest[0]
    manifest = json.loads(store.db.execute("SELECT manifest FROM runs WHERE id = ?", (run_id,)).fetchone()[0])
    table = results_table(store, run_id)
    title = f"# {manifest.get('experiment', out.name)}\n\n"
    note = ("Mean over samples, 95% bootstrap confidence interval in brackets; ↑ higher is better, ↓ lower is better. "
            f"n per cell in methods.csv. Command: `{manifest.get('command') or 'interpbench.run(...)'}`\n\n")
    wide = wide_table(table, "explanation")
    (out / "methods.md").write_text(title + note + to_markdown(wide) + _failures_md(table))
    table[table["scope"] == "explanation"].drop(columns=["scope"]).to_csv(out / "methods.csv", index=False)
    reps = wide_table(table, "model")
    if not reps.empty:
        (out / "representations.md").write_text(title + to_markdown(reps.drop(columns=["method"])))
        table[table["scope"] == "model"].drop(columns=["scope", "method"]).to_csv(out / "representations.csv", index=False)
    records = json.loads(table.to_json(orient="records"))
    (out / "results.json").write_text(json.dumps({"experiment": manifest.get("experiment"), "results": records}, indent=1))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    return table


def _failures_md(table: pd.DataFrame) -> str:
    bad = table[table["status"].isin(["failed", "not_applicable", "skipped"])]
    if bad.empty:
        return ""
    lines = ["\n## Cells that did not run\n"]
    for _, row in bad.drop_duplicates(["model", "dataset", "method", "metric"]).iterrows():
        lines.append(f"- {row['model']} / {row['dataset']} / {row['method']} / {row['metric']}: "
                     f"**{row['status']}**: {row['error']}")
    return "\n".join(lines) + "\n"


def regenerate(directory: str | Path) -> pd.DataFrame:
    """`interpbench leaderboard DIR`: rebuild the tables of the latest run from the store."""
    path = Path(directory) / "store.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give the directory of an experiment (the --out of a run)")
    store = Store(path)
    try:
        return write_leaderboard(store, directory)
    finally:
        store.close()
