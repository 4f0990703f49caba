"""The results store (SQLite): the source of truth from which every table is generated.

One experiment directory holds one ``store.sqlite``. A *cell* is one (model, dataset, method, metric)
combination with its full configuration; its key is a hash of that configuration, so a changed parameter makes a
new cell and an unchanged one resumes. Per-sample scores are written one transaction per batch.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL, dataset TEXT NOT NULL, method TEXT NOT NULL, metric TEXT NOT NULL,
    scope TEXT NOT NULL, higher_is_better INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',      -- pending | done | failed | not_applicable | skipped
    error TEXT, n INTEGER NOT NULL DEFAULT 0, wall_time REAL NOT NULL DEFAULT 0, updated REAL
);
CREATE TABLE IF NOT EXISTS scores (
    cell TEXT NOT NULL, sample TEXT NOT NULL, value REAL NOT NULL, extra TEXT,
    PRIMARY KEY (cell, sample)
);
CREATE TABLE IF NOT EXISTS results (
    cell TEXT NOT NULL, name TEXT NOT NULL, value REAL, PRIMARY KEY (cell, name)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL NOT NULL, finished REAL, manifest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_cells (
    run INTEGER NOT NULL, cell TEXT NOT NULL, position INTEGER NOT NULL, PRIMARY KEY (run, cell)
);
"""


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ runs and cells

    def start_run(self, manifest: dict[str, Any]) -> int:
        with self.db:
            cur = self.db.execute("INSERT INTO runs (started, manifest) VALUES (?, ?)", (time.time(), json.dumps(manifest)))
        return int(cur.lastrowid)

    def finish_run(self, run: int, manifest: dict[str, Any]) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET finished = ?, manifest = ? WHERE id = ?", (time.time(), json.dumps(manifest), run))

    def latest_run(self) -> tuple[int, dict[str, Any]] | None:
        row = self.db.execute("SELECT id, manifest FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def add_cell(self, run: int, position: int, key: str, *, model: str, dataset: str, method: str, metric: str,
                 scope: str, higher_is_better: bool, config: dict[str, Any]) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO cells (key, model, dataset, method, metric, scope, higher_is_better, config) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, model, dataset, method, metric, scope, int(higher_is_better), json.dumps(config, sort_keys=True)),
            )
            self.db.execute("INSERT OR REPLACE INTO run_cells (run, cell, position) VALUES (?, ?, ?)", (run, key, position))

    def cell(self, key: str) -> dict[str, Any]:
        cur = self.db.execute("SELECT * FROM cells WHERE key = ?", (key,))
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row)) if row else {}

    def set_status(self, key: str, status: str, error: str | None = None, wall_time: float = 0.0) -> None:
        with self.db:
            self.db.execute(
                "UPDATE cells SET status = ?, error = ?, wall_time = wall_time + ?, updated = ?, "
                "n = (SELECT COUNT(*) FROM scores WHERE cell = ?) WHERE key = ?",
                (status, error, wall_time, time.time(), key, key),
            )

    def reset_failed(self, key: str) -> None:
        """A failed cell is retried from scratch on the next run (its partial scores are dropped)."""
        with self.db:
            self.db.execute("DELETE FROM scores WHERE cell = ?", (key,))
            self.db.execute("DELETE FROM results WHERE cell = ?", (key,))
            self.db.execute("UPDATE cells SET status = 'pending', error = NULL, wall_time = 0 WHERE key = ?", (key,))

    def run_cells(self, run: int) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT c.* FROM run_cells r JOIN cells c ON c.key = r.cell WHERE r.run = ? ORDER BY r.position", (run,)
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    # ------------------------------------------------------------------ scores

    def done_samples(self, key: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT sample FROM scores WHERE cell = ?", (key,))}

    def write_batch(self, rows: Iterable[tuple[str, str, float, str | None]], wall: dict[str, float]) -> None:
        """One transaction: per-sample rows (cell, sample, value, extra JSON) and wall time per cell."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO scores (cell, sample, value, extra) VALUES (?, ?, ?, ?)", rows)
            for key, seconds in wall.items():
                self.db.execute("UPDATE cells SET wall_time = wall_time + ?, updated = ? WHERE key = ?", (seconds, time.time(), key))

    def write_results(self, key: str, values: dict[str, float]) -> None:
        with self.db:
            self.db.execute("DELETE FROM results WHERE cell = ?", (key,))
            self.db.executemany(
                "INSERT INTO results (cell, name, value) VALUES (?, ?, ?)",
                [(key, name, None if value is None else float(value)) for name, value in values.items()],
            )

    def scores(self, key: str) -> list[tuple[str, float]]:
        return list(self.db.execute("SELECT sample, value FROM scores WHERE cell = ? ORDER BY sample", (key,)))

    def extras(self, key: str) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT sample, extra FROM scores WHERE cell = ? AND extra IS NOT NULL ORDER BY sample", (key,))
        return {sample: json.loads(extra) for sample, extra in rows}

    def results(self, key: str) -> dict[str, float]:
        return {name: value for name, value in self.db.execute("SELECT name, value FROM results WHERE cell = ?", (key,))}
