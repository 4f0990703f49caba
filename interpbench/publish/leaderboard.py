"""Store -> tables: ``methods.md``, ``methods.csv``, ``results.json``, ``manifest.json`` (and the model-scope
``representations.md`` / ``.csv`` when a run has model-scope metrics).

Each per-sample number is the mean over samples with a 95% percentile-bootstrap confidence interval over samples
and its n; an arrow says which direction is better.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from interpbench.core.registry import get_registry
from interpbench.core.tabular import to_markdown, wide_table
from interpbench.engine.store import Store
from interpbench.publish.headline import _value_order, headline_mask
from interpbench.publish.results import results_table
from interpbench.publish.tables import PaperTables


def headline_table(table: pd.DataFrame, scope: str = "explanation") -> pd.DataFrame:
    """Like ``wide_table``, with only each metric's headline values (:func:`headline_mask`; the metric class's
    ``headline_values``): the summary a terminal or the top of a leaderboard can show."""
    if table.empty:
        return pd.DataFrame()
    keep = headline_mask(table)
    part = table[keep]
    metrics = list(dict.fromkeys(part["metric"]))
    order = {m: _value_order(str(m), list(part.loc[part["metric"] == m, "value_name"].astype(str))) for m in metrics}
    rank = [(metrics.index(m), order[m].index(str(v))) for m, v in zip(part["metric"], part["value_name"])]
    part = part.iloc[sorted(range(len(part)), key=lambda i: rank[i])]
    return wide_table(part, scope, directed=keep[part.index])


def metric_sections(table: pd.DataFrame, scope: str = "explanation") -> str:
    """One Markdown section per metric: the metric class's own ``leaderboard_markdown(rows)`` when it has one
    (a metric with many values, e.g. unit drift or adversarial detection, lays them out itself), else a table of
    all its values. What the headline shows is the metric's ``headline_values``, not a filter on names here."""
    part = table[table["scope"] == scope]
    drop = ["method"] if scope == "model" else []
    out = []
    for metric in dict.fromkeys(part["metric"]):
        rows = part[part["metric"] == metric]
        custom, text = _metric_class(metric), None
        if custom is not None:
            try:
                text = custom.leaderboard_markdown(table[table["metric"] == metric])
            except Exception as exc:  # noqa: BLE001 - a plugin's layout never loses the table: the generic one
                warnings.warn(f"{metric}.leaderboard_markdown failed ({type(exc).__name__}: {exc}); "
                              "the generic table is used", stacklevel=2)
        if text is None:
            text = to_markdown(wide_table(rows, scope).drop(columns=drop))
        out.append(f"\n## {metric}\n\n" + text)
    return "".join(out)


def _metric_class(name: str) -> Any:
    """The registered metric class if it lays out its own leaderboard section, else None (also when the plugin
    that made the run is not installed: the generic table is then used)."""
    try:
        cls = get_registry().get("metrics", name)
    except Exception:  # noqa: BLE001 - tables must regenerate without the plugin
        return None
    return cls if callable(getattr(cls, "leaderboard_markdown", None)) else None


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
    note = ("Below the headline table: mean over samples, 95% bootstrap confidence interval in brackets; ↑ higher is "
            "better, ↓ lower is better. "
            f"n per cell in methods.csv. Command: `{manifest.get('command') or 'interpbench.run(...)'}`\n\n")
    summary = headline_table(table, "explanation")
    expl = table[(table["scope"] == "explanation") & (table["status"] == "done")]
    details = metric_sections(table, "explanation") if (expl["value_name"] != expl["metric"]).any() else ""
    if summary.empty and details:  # no metric with a headline value (e.g. shortcut_localization): sections only
        summary_md = ""
    else:
        summary_md = _headline_markdown(store, run_id, str(manifest.get("experiment") or out.name), table)
        summary_md = summary_md or to_markdown(summary)
    (out / "methods.md").write_text(title + note + summary_md + details + _failures_md(table))
    table[table["scope"] == "explanation"].drop(columns=["scope"]).to_csv(out / "methods.csv", index=False)
    reps = wide_table(table, "model")
    if not reps.empty:
        (out / "representations.md").write_text(title + metric_sections(table, "model").lstrip("\n"))
        table[table["scope"] == "model"].drop(columns=["scope", "method"]).to_csv(out / "representations.csv", index=False)
    records = json.loads(table.to_json(orient="records"))
    (out / "results.json").write_text(json.dumps({"experiment": manifest.get("experiment"), "results": records}, indent=1))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    return table


def _headline_markdown(store: Store, run_id: int, experiment: str, table: pd.DataFrame) -> str | None:
    """The headline table of ``interpbench table`` (methods as rows, per model and dataset each metric's headline
    values, mean ± CI half-width, best in bold, ties by the paired test in italics), for the top of methods.md;
    None when the run has no explanation-scope value or the table cannot be built (the plain summary then)."""
    if not (table["scope"] == "explanation").any():
        return None
    try:
        scores = {}
        for cell in store.run_cells(run_id):
            rows = store.scores(cell["key"])
            if rows:
                scores[cell["key"]] = pd.Series(dict(rows), dtype=np.float64)
        grid = PaperTables.build(experiment, table, scores).main_grid(display=False)
    except Exception as exc:  # noqa: BLE001 - the leaderboard is written whatever a plugin's values look like
        warnings.warn(f"methods.md: the headline table failed ({type(exc).__name__}: {exc}); the plain summary is "
                      "used", stacklevel=2)
        return None
    if not grid.columns:
        return None
    grid.title = "Headline results"
    return grid.markdown(level=2)


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
