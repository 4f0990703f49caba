"""``interpbench reproduce DIR``: re-run the configuration an experiment directory records and compare every
number with the committed one.

What is re-run: ``manifest["config"]`` (the runner's :class:`~interpbench.engine.config.RunConfig`), with every method's
and metric's *full* recorded parameters pinned (so a default that changed in the code since does not silently
change the protocol), into a temporary directory (or ``--out``).

What is compared, per (model, dataset, method, metric, value):

- the status (a cell that ran must run again; a failed one must fail again), the number of samples ``n`` and,
  when both stores are at hand, the set of sample ids;
- the value, in three levels (docs/reproduce.md): *identical* (bit for bit, per-sample scores included);
  *equal within numerical tolerance* (it moved, but no more than rounding moves it); *different*. The tolerance
  is measured per number: the cells whose numbers are not identical are re-run ``--rounding-runs`` times (2)
  under rounding noise (:func:`~interpbench.ops.rounding.rounding_noise`) and each number may move by what
  those runs show (:func:`judge_measured`). ``--exact`` (or ``--rounding-runs 0``) judges instead by the
  explicit ``|new - old| <= atol + rtol |old|``, ``--exact`` also on the CI bounds and every per-sample score
  (a same-machine check). The committed 95% CI is shown beside each change, never used as the tolerance (it
  measures sampling, not rounding; one of width zero says "n too small to judge");
- the cell's configuration in the committed store against the re-run's (parameters, seeds, targets, limits):
  a difference fails the cell and names the field; component versions that changed are warnings;
- the identity of the models' weights (sha256) and of the datasets: a difference fails the reproduction
  (``--allow-different-weights`` turns the weights check into a warning);
- the committed ``results.json`` against the committed store: a number edited in one and not the other fails.

Environment differences (library versions, interpbench version and git sha, plugins, device) are warnings.
Exit code 0: identical or equal within numerical tolerance; 1: different (the differing numbers and identities
are named); 2: usage.

Part of the publishing layer (docs/design.md): the re-running lives here, the number-by-number verdicts in
:mod:`interpbench.publish.compare`, the command line (arguments, the printed table, exit codes) in
:mod:`interpbench.commands.reproduce`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from interpbench.core.base import ComponentError
from interpbench.engine.config import PART_KEYS, RunConfig, grids
from interpbench.engine.runner import Runner
from interpbench.ops import rounding as rnd
from interpbench.publish.compare import (
    ATOL,
    DIFFERENT,
    IDENTICAL,
    LEVELS,
    NUMERIC_STATUSES,
    ROW_KEY,
    RTOL,
    WITHIN,
    Comparison,
    _compare_cell_configs,
    _float,
    _keyed_scores,
    _same,
    compare_samples,
    compare_tables,
    environment_differences,
    identity_differences,
    judge_explicit,
    judge_measured,
)
from interpbench.publish.leaderboard import write_leaderboard
from interpbench.publish.results import load_experiment

JSON_DECIMALS = 10  # results.json's numbers (pandas' to_json default double_precision)

#: Re-runs, under rounding noise, of the cells whose numbers are not identical: what their tolerances are
#: measured on (docs/reproduce.md).
ROUNDING_RUNS = 2


# --------------------------------------------------------------------------------------------- committed data


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    if path.is_file():
        return json.loads(path.read_text())
    if (directory / "store.sqlite").is_file():
        return load_experiment(directory).manifest
    raise FileNotFoundError(f"{directory} holds neither manifest.json nor store.sqlite: give the directory of an "
                            "experiment (the --out of `interpbench run`)")


def committed_table(directory: Path) -> pd.DataFrame | None:
    """The published numbers: ``results.json`` (what methods.md / methods.csv show), or None when absent."""
    path = directory / "results.json"
    if not path.is_file():
        return None
    records = json.loads(path.read_text()).get("results") or []
    table = pd.DataFrame.from_records(records)
    for col in ("mean", "ci_low", "ci_high"):
        table[col] = pd.to_numeric(table[col], errors="coerce") if col in table else math.nan
    return table


def integrity_problems(published: pd.DataFrame, store_table: pd.DataFrame) -> list[tuple[tuple, str]]:
    """Numbers of ``results.json`` that its own store does not give (exactly, up to JSON's float printing:
    pandas writes 10 decimals): ``(row key, message)`` pairs."""
    problems = []
    for c in compare_tables(store_table, published, atol=1e-9, rtol=1e-9, exact=True,
                            sides=("store", "results.json")):
        if not c.ok:
            problems.append(((c.model, c.dataset, c.method, c.metric, c.value_name),
                             f"{c.cell}: results.json disagrees with store.sqlite ({'; '.join(c.problems)}); "
                             "regenerate the tables with `interpbench leaderboard DIR` or restore the edited file"))
    return problems


def run_config(manifest: dict[str, Any], out: Path, *, device: str | None, datasets_config: str | None,
               progress: bool) -> tuple[Any, list[str]]:
    """The RunConfig to re-run: the recorded one, out elsewhere, every component's full parameters pinned.

    Returns ``(config, problems)``: problems are inconsistencies of the manifest itself.
    """
    recorded = dict(manifest.get("config") or {})
    if not recorded:
        raise ComponentError("the manifest has no 'config' (written by an older interpbench?); it cannot be re-run")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(recorded) - fields)
    if unknown:
        raise ComponentError(f"the recorded config has field(s) {unknown} that this interpbench's RunConfig does not "
                             "know; reproduce with the interpbench version recorded in the manifest")
    problems = []
    pinned: dict[str, dict[str, dict[str, Any]]] = {}
    for kind, key in (("methods", "method_params"), ("metrics", "metric_params")):
        overrides = recorded.get(key) or {}
        pinned[key] = {}
        for name in recorded.get(kind) or []:
            full = ((manifest.get(kind) or {}).get(name) or {}).get("params")
            if full is None:  # never built (e.g. its model failed): the overrides are all there is
                full = {}
            for param, value in (overrides.get(name) or {}).items():
                if param in full and not _same(full[param], value):
                    problems.append(f"the manifest contradicts itself: config.{key}.{name}.{param} = {value!r} but "
                                    f"{kind}.{name}.params.{param} = {full[param]!r}")
            pinned[key][name] = {**full, **(overrides.get(name) or {})}
    recorded.update(pinned)
    recorded["out"] = str(out)
    recorded["progress"] = progress
    if device is not None:
        recorded["device"] = device
    if datasets_config is not None:
        recorded["datasets_config"] = datasets_config
    if recorded.get("datasets_config") and not Path(recorded["datasets_config"]).expanduser().is_file():
        raise ComponentError(f"the recorded datasets config {recorded['datasets_config']!r} does not exist here; "
                             "pass --datasets-config FILE with the same dataset entries")
    return RunConfig(**recorded), problems


# --------------------------------------------------------------------------------------------- rounding runs


def rounding_config(config: Any, cells: set[tuple[str, str, str, str]], out: Path) -> Any:
    """``config`` cut down to ``cells`` ((model, dataset, method, metric); method ``-`` for a model-scope
    metric), into ``out``: one part per (grid, model, dataset, metric) with the methods of its cells, every
    other setting (limits, per-method limits, target, batch size, seeds, parameters) the grid's own, so each
    cell gets the key, the samples and the seeds it has in the full run."""
    parts: dict[tuple, dict[str, Any]] = {}
    for g, grid in enumerate(grids(config)):
        for model, dataset, method, metric in sorted(cells):
            if model not in grid.models or metric not in grid.metrics:
                continue
            if grid.datasets and dataset not in grid.datasets:
                continue
            if method != "-" and method not in grid.methods:
                continue
            part = parts.setdefault((g, model, dataset, metric), {
                **{k: getattr(grid, k) for k in PART_KEYS}, "models": [model], "methods": [], "metrics": [metric],
                "datasets": [dataset] if grid.datasets else None})
            if method != "-" and method not in part["methods"]:
                part["methods"].append(method)
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    fields.update(parts=list(parts.values()), out=str(out), progress=False)
    return RunConfig(**fields)


def rounding_runs(config: Any, cells: set[tuple[str, str, str, str]], out: Path, runs: int,
                  console: Console | None = None) -> list[Any]:
    """Re-run ``cells`` of ``config`` ``runs`` times under :func:`~interpbench.ops.rounding.rounding_noise`
    (seeds 1 .. runs) into ``out/1 ..``; returns the :class:`~interpbench.publish.results.Experiment` of each run."""
    results = []
    for r in range(1, runs + 1):
        sub = rounding_config(config, cells, out / str(r))
        if console is not None:
            console.print(f"rounding run {r} of {runs}: {len(cells)} cell(s) whose numbers are not identical, "
                          f"re-run with {rnd.NOISE_ULPS:g} ulps of noise on every layer's output")
        with rnd.rounding_noise(seed=r):
            Runner(sub, console).run(publish=write_leaderboard)
        results.append(load_experiment(out / str(r)))
    return results


def judge_with_rounding_runs(comparisons: list[Comparison], runs: list[Any]) -> None:
    """:func:`judge_measured` every judged comparison with the values of the rounding ``runs``; a value that a
    run lacks (its cell failed there) is judged without that run, and with none, is different."""
    tables = [{tuple(r[k] for k in ROW_KEY): r for _, r in run.table.iterrows()} for run in runs]
    scores = [_keyed_scores(run) for run in runs]
    for c in comparisons:
        if not c.judged:
            continue
        key = (c.model, c.dataset, c.method, c.metric, c.value_name)
        values, samples = [], []
        for table, keyed in zip(tables, scores):
            row = table.get(key)
            if row is None or str(row["status"]) not in NUMERIC_STATUSES:
                continue
            values.append(_float(row["mean"]))
            samples.append(keyed.get(c.ident))
        if not values and not c.identical:
            c.problems.append(f"{c.committed:.6g} -> {c.reproduced:.6g}, and no rounding run gave this number to "
                              "measure its tolerance (see the cell's status in a run with --keep)")
            continue
        judge_measured(c, values, samples)


def judge_numbers(comparisons: list[Comparison], config: Any, out: Path, *, rounding: int = ROUNDING_RUNS,
                  exact: bool = False, atol: float = ATOL, rtol: float = RTOL, console: Console | None = None
                  ) -> tuple[int, int]:
    """Give every comparison its verdict. Identical numbers need nothing more; the cells of the others are re-run
    ``rounding`` times under rounding noise with ``config`` (the reproduction's) into ``out`` and judged by
    :func:`judge_measured`; ``exact`` or ``rounding == 0`` judge by the explicit tolerance. Returns
    ``(rounding runs made, cells they re-ran)``."""
    moved = {c.ident for c in comparisons if c.judged and not c.identical}
    if exact or rounding == 0 or not moved:
        for c in comparisons:
            judge_explicit(c, atol, rtol, exact)
        return 0, 0
    judge_with_rounding_runs(comparisons, rounding_runs(config, moved, out, rounding, console))
    return rounding, len(moved)


# --------------------------------------------------------------------------------------------- reproduce


@dataclasses.dataclass
class Reproduction:
    directory: Path
    out: Path
    comparisons: list[Comparison]
    failures: list[str]  # identity, configuration and integrity failures not tied to one number
    warnings: list[str]
    run_ok: bool = True
    rounding_runs: int = 0  # re-runs under rounding noise that measured the tolerances
    rounding_cells: int = 0  # cells they re-ran

    @property
    def failing_cells(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.ok]

    @property
    def counts(self) -> dict[str, int]:
        return {level: sum(c.level == level for c in self.comparisons) for level in LEVELS}

    @property
    def level(self) -> str:
        """The experiment's verdict: different when a number or an identity differs, else the weakest level of
        its numbers."""
        if self.failures or self.failing_cells:
            return DIFFERENT
        return WITHIN if any(c.level == WITHIN for c in self.comparisons) else IDENTICAL

    @property
    def ok(self) -> bool:
        return self.level != DIFFERENT


def reproduce(directory: str | Path, out: str | Path | None = None, *, device: str | None = None,
              datasets_config: str | None = None, atol: float = ATOL, rtol: float = RTOL, exact: bool = False,
              rounding: int = ROUNDING_RUNS, allow_different_weights: bool = False, progress: bool = False,
              console: Console | None = None, keep: bool | None = None) -> Reproduction:
    """Re-run ``directory``'s recorded configuration into ``out`` (a temporary directory when None, removed
    afterwards unless ``keep``) and compare (module docstring). Numbers that are not identical are judged
    against the spread of ``rounding`` re-runs of their cells under rounding noise; with ``exact`` or
    ``rounding=0``, against the explicit ``atol`` / ``rtol``."""
    if rounding < 0:
        raise ComponentError(f"--rounding-runs {rounding}: must be 0 (explicit tolerance) or more")
    directory = Path(directory)
    manifest = read_manifest(directory)
    has_store = (directory / "store.sqlite").is_file()
    committed = load_experiment(directory) if has_store else None
    published = committed_table(directory)
    if published is None and committed is None:
        raise FileNotFoundError(f"{directory} holds neither results.json nor store.sqlite: no numbers to compare")
    failures: list[str] = []
    edited = integrity_problems(published, committed.table) if published is not None and committed is not None else []
    failures += [message for _, message in edited]
    # the store's numbers at full precision (results.json prints 10 decimals; the integrity check ties the two)
    reference = committed.table if committed is not None else published

    temporary = out is None
    if not temporary and Path(out).resolve() == directory.resolve():
        raise ComponentError(f"--out {out}: that is the experiment being reproduced; re-run into another directory")
    out = Path(tempfile.mkdtemp(prefix="interpbench-reproduce-")) if temporary else Path(out)
    try:
        config, problems = run_config(manifest, out, device=device, datasets_config=datasets_config, progress=progress)
        failures += problems
        runner = Runner(config, console)
        runner.run(publish=write_leaderboard)
        new = load_experiment(out)
        comparisons = compare_tables(reference, new.table, atol=atol, rtol=rtol, exact=exact, judge=False,
                                     decimals=None if committed is not None else JSON_DECIMALS)
        warnings: list[str] = []
        if committed is not None:
            compare_samples(comparisons, committed, new, atol=atol, rtol=rtol, exact=exact)
            _compare_cell_configs(comparisons, committed, new, warnings)
        for c in comparisons:  # the published number is not the store's: this number fails, whatever the re-run
            if (c.model, c.dataset, c.method, c.metric, c.value_name) in dict(edited):
                c.problems.append("the published results.json gives another number than store.sqlite (edited)")
        runs, cells = judge_numbers(comparisons, config, out / "rounding" if temporary else
                                    out.parent / f"{out.name}-rounding", rounding=rounding, exact=exact, atol=atol,
                                    rtol=rtol, console=console)
        id_fail, id_warn = identity_differences(manifest, new.manifest, allow_different_weights=allow_different_weights)
        failures += id_fail
        warnings += id_warn
        warnings += environment_differences(manifest.get("environment") or {}, new.manifest.get("environment") or {})
        return Reproduction(directory, out, comparisons, failures, list(dict.fromkeys(warnings)), runner.ok,
                            rounding_runs=runs, rounding_cells=cells)
    finally:
        if temporary and not keep:
            shutil.rmtree(out, ignore_errors=True)
