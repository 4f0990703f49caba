"""``interpbench reproduce DIR``: re-run the configuration an experiment directory records and compare every
number with the committed one.

What is re-run: ``manifest["config"]`` (the runner's :class:`~interpbench.engine.runner.RunConfig`), with every method's
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
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from interpbench.core.base import ComponentError
from interpbench.core.identity import portable
from interpbench.ops import rounding as rnd
from interpbench.publish.leaderboard import write_leaderboard
from interpbench.publish.tables import load_experiment

HELP = "re-run an experiment directory's recorded configuration and compare every number with the committed one"

ATOL = 1e-6
RTOL = 1e-5
ROW_KEY = ["model", "dataset", "method", "metric", "value_name"]
NUMERIC_STATUSES = ("done",)
JSON_DECIMALS = 10  # results.json's numbers (pandas' to_json default double_precision)


# --------------------------------------------------------------------------------------------- comparisons

IDENTICAL = "identical"
WITHIN = "equal within numerical tolerance"
DIFFERENT = "different"
LEVELS = (IDENTICAL, WITHIN, DIFFERENT)
#: Re-runs, under rounding noise, of the cells whose numbers are not identical: what their tolerances are
#: measured on (docs/reproduce.md).
ROUNDING_RUNS = 2


@dataclasses.dataclass
class Comparison:
    """One number of the committed table against its reproduction, and its verdict (:data:`LEVELS`)."""

    model: str
    dataset: str
    method: str
    metric: str
    value_name: str
    committed: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    committed_n: int = 0
    committed_status: str = "missing"
    reproduced: float = math.nan
    reproduced_ci_low: float = math.nan
    reproduced_ci_high: float = math.nan
    reproduced_n: int = 0
    reproduced_status: str = "missing"
    tolerance: str = ""  # how the value was judged, in words
    problems: list[str] = dataclasses.field(default_factory=list)  # why it is different (empty: it is not)
    max_sample_diff: float = math.nan  # largest per-sample |difference|, when both stores hold the samples
    value_level: str = IDENTICAL  # the value's verdict when nothing else (status, n, samples, config) differs
    tolerance_value: float = math.nan  # the |Δ| allowed (explicit or measured)
    rounding_scale: float = math.nan  # measured: how much rounding alone moves this number
    note: str = ""
    identical_value: bool = False  # mean (and with --exact the CI bounds) bit for bit
    samples_identical: bool | None = None  # every per-sample score bit for bit (None: not both stores)
    sample_diffs: pd.Series | None = dataclasses.field(default=None, repr=False)  # reproduced - committed
    reproduced_samples: pd.Series | None = dataclasses.field(default=None, repr=False)

    @property
    def level(self) -> str:
        return DIFFERENT if self.problems else self.value_level

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def cell(self) -> str:
        value = self.metric if self.value_name == self.metric else f"{self.metric}.{self.value_name}"
        return f"{self.model} / {self.dataset} / {self.method} / {value}"

    @property
    def ident(self) -> tuple[str, str, str, str]:
        return (self.model, self.dataset, self.method, self.metric)

    @property
    def delta(self) -> float:
        return self.reproduced - self.committed

    @property
    def judged(self) -> bool:
        """Both sides have a number to compare (the cell ran both times, with the same samples)."""
        return (self.committed_status in NUMERIC_STATUSES and self.reproduced_status in NUMERIC_STATUSES
                and not self.problems)

    @property
    def identical(self) -> bool:
        return self.identical_value and self.samples_identical is not False

    @property
    def ci_note(self) -> str:
        """The change against the committed 95% CI, for the reader (never the tolerance: a CI measures sampling,
        not rounding); a CI of width zero (one value, a single grid) says nothing: 'n too small to judge'."""
        if math.isnan(self.ci_low) or math.isnan(self.ci_high) or math.isnan(self.delta):
            return ""
        half = (self.ci_high - self.ci_low) / 2
        if half <= 0:
            return "n too small to judge"
        return f"{abs(self.delta) / half:.2g} × CI half-width"


def within(new: float, old: float, atol: float, rtol: float) -> bool:
    """``|new - old| <= atol + rtol |old|`` (numpy.isclose's rule); two NaNs agree."""
    if math.isnan(new) or math.isnan(old):
        return math.isnan(new) and math.isnan(old)
    return abs(new - old) <= atol + rtol * abs(old)


def _equal(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _float(x: Any) -> float:
    return math.nan if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _int(x: Any) -> int:
    x = _float(x)
    return 0 if math.isnan(x) else int(x)


def compare_tables(committed: pd.DataFrame, reproduced: pd.DataFrame, *, atol: float = ATOL, rtol: float = RTOL,
                   exact: bool = False, sides: tuple[str, str] = ("committed table", "reproduction"),
                   judge: bool = True, decimals: int | None = None) -> list[Comparison]:
    """Compare two long results tables (``leaderboard.results_table`` shape) row by row: presence, status,
    ``n``, and (``judge``) the value against the explicit tolerance (:func:`judge_explicit`); ``sides`` names
    the two tables in the messages. :func:`reproduce` judges with ``judge=False`` after the per-sample checks.
    ``decimals``: the committed numbers were printed with that many decimals (results.json: 10), and a number
    equal to them at that precision is identical."""
    new = {tuple(r[k] for k in ROW_KEY): r for _, r in reproduced.iterrows()}
    seen: set[tuple] = set()
    out: list[Comparison] = []
    for _, old in committed.iterrows():
        ident = tuple(old[k] for k in ROW_KEY)
        seen.add(ident)
        c = Comparison(*ident, committed=_float(old["mean"]), ci_low=_float(old["ci_low"]), ci_high=_float(old["ci_high"]),
                       committed_n=_int(old["n"]), committed_status=str(old["status"]))
        row = new.get(ident)
        if row is None:
            c.problems.append(f"missing from the {sides[1]}")
            out.append(c)
            continue
        c.reproduced, c.reproduced_n, c.reproduced_status = _float(row["mean"]), _int(row["n"]), str(row["status"])
        c.reproduced_ci_low, c.reproduced_ci_high = _float(row["ci_low"]), _float(row["ci_high"])
        if c.committed_status != c.reproduced_status:
            c.problems.append(f"status {c.committed_status} -> {c.reproduced_status}"
                              + (f" ({row['error']})" if isinstance(row.get("error"), str) and row["error"] else ""))
        if c.committed_status not in NUMERIC_STATUSES or c.reproduced_status not in NUMERIC_STATUSES:
            c.tolerance = "status"
            out.append(c)
            continue
        if c.committed_n != c.reproduced_n:
            c.problems.append(f"n {c.committed_n} -> {c.reproduced_n}")
        same = _equal if decimals is None else (
            lambda a, b: _equal(a, b) or abs(a - b) <= 0.5 * 10.0 ** -decimals * (1 + 1e-6))
        c.identical_value = same(c.committed, c.reproduced) and (
            not exact or (same(c.ci_low, c.reproduced_ci_low) and same(c.ci_high, c.reproduced_ci_high)))
        if judge:
            judge_explicit(c, atol, rtol, exact)
        out.append(c)
    for ident, row in new.items():
        if ident not in seen:
            c = Comparison(*ident, reproduced=_float(row["mean"]), reproduced_n=_int(row["n"]),
                           reproduced_status=str(row["status"]))
            c.problems.append(f"not in the {sides[0]}")
            out.append(c)
    return out


def judge_explicit(c: Comparison, atol: float, rtol: float, exact: bool) -> None:
    """The value against ``|Δ| <= atol + rtol |x|`` (``exact``: the CI bounds too; the per-sample scores are
    checked by :func:`compare_samples`): identical, within that tolerance, or different."""
    if not c.judged:
        return
    c.tolerance_value = atol + rtol * abs(c.committed)
    if c.identical:
        c.value_level, c.tolerance = IDENTICAL, "bit for bit"
        return
    c.tolerance = f"|Δ| ≤ {atol:g} + {rtol:g}·|x|"
    pairs = [("mean", c.committed, c.reproduced)]
    if exact and not (math.isnan(c.ci_low) or math.isnan(c.ci_high)):
        pairs += [("ci_low", c.ci_low, c.reproduced_ci_low), ("ci_high", c.ci_high, c.reproduced_ci_high)]
    for what, a, b in pairs:
        if not within(b, a, atol, rtol):
            c.problems.append(f"{what} {a:.6g} -> {b:.6g} (Δ {b - a:+.3g}, tolerance {atol:g} + {rtol:g}·|x|)")
    c.value_level = WITHIN


def judge_measured(c: Comparison, values: list[float], samples: list[pd.Series | None]) -> None:
    """The value against the tolerance measured by the rounding runs (``values``: the number in each run;
    ``samples``: its per-sample scores there, or None). docs/reproduce.md gives the rule:

    - a mean over samples (both stores hold the scores): different when ``|Δ|`` exceeds
      :func:`~interpbench.ops.rounding.sample_mean_tolerance` *and* the per-sample changes are larger than the
      rounding runs' (:func:`~interpbench.ops.rounding.moved_beyond_rounding`, one-sided, p < ALPHA);
    - any other value, and a mean over too few samples for that test ever to reach ALPHA: different when
      ``|Δ|`` exceeds :func:`~interpbench.ops.rounding.scalar_tolerance`.
    """
    if not c.judged or c.identical:
        if c.judged:
            c.value_level, c.tolerance = IDENTICAL, "bit for bit"
        return
    runs = len(values)
    if math.isnan(c.committed) != math.isnan(c.reproduced):
        c.problems.append(f"{c.committed:.6g} -> {c.reproduced:.6g}")
        return
    per_sample = (c.value_name == c.metric and c.sample_diffs is not None and c.reproduced_samples is not None
                  and len(c.sample_diffs) > 0 and all(s is not None for s in samples))
    if per_sample:
        base = c.reproduced_samples.loc[c.sample_diffs.index]
        diffs = [(s.reindex(base.index) - base).dropna().to_numpy() for s in samples]
        pooled = np.concatenate(diffs) if diffs else np.zeros(0)
        per_sample = rnd.min_rank_test_p(len(base), len(pooled)) < rnd.ALPHA
        if not per_sample:
            c.note = f"{len(base)} sample(s): too few for the per-sample test, judged as a single value"
    if per_sample:
        magnitude = max(abs(c.committed), abs(c.reproduced), float(base.abs().mean()))
        tol, scale = rnd.sample_mean_tolerance(diffs, len(base), magnitude)
        p = rnd.moved_beyond_rounding(c.sample_diffs.to_numpy(), pooled)
        c.tolerance_value, c.rounding_scale = tol, scale
        c.tolerance = f"±{tol:.2g} ({rnd.K_MEAN:g} × rounding s.e. {scale:.2g}, {runs} runs)"
        if abs(c.delta) <= tol:
            c.value_level = WITHIN
        elif p >= rnd.ALPHA:
            c.value_level = WITHIN
            c.note = (f"the mean moved by more than rounding's standard error, but the per-sample changes are no "
                      f"larger than rounding's (one-sided rank test p = {p:.2g})")
        else:
            c.problems.append(f"Δ {c.delta:+.3g} beyond the rounding tolerance ±{tol:.2g}, and the per-sample scores "
                              f"moved more than rounding moves them (one-sided rank test p = {p:.2g})")
        return
    tol, scale = rnd.scalar_tolerance(values, c.reproduced, c.committed)
    c.tolerance_value, c.rounding_scale = tol, scale
    c.tolerance = f"±{tol:.2g} ({rnd.K_SCALAR:g} × rounding spread {scale:.2g}, {runs} runs)"
    if abs(c.delta) <= tol:
        c.value_level = WITHIN
    else:
        c.problems.append(f"Δ {c.delta:+.3g} beyond the rounding tolerance ±{tol:.2g} (rounding moves it by at most "
                          f"{scale:.2g} in {runs} runs)")


def _keyed_scores(exp: Any) -> dict[tuple, pd.Series]:
    """(model, dataset, method, metric) -> per-sample scores of an :class:`~interpbench.publish.tables.Experiment`."""
    cells = exp.table.drop_duplicates(["model", "dataset", "method", "metric"])
    return {(r["model"], r["dataset"], r["method"], r["metric"]): exp.scores[r["key"]]
            for _, r in cells.iterrows() if r["key"] in exp.scores}


def compare_samples(comparisons: list[Comparison], committed: Any, reproduced: Any, *, atol: float = ATOL,
                    rtol: float = RTOL, exact: bool = False) -> None:
    """Per-sample checks for cells both stores hold (:class:`~interpbench.publish.tables.Experiment`): the same sample
    ids, whether every score is identical, and (``exact``) every per-sample score within the explicit
    tolerance. Fills ``max_sample_diff``, ``samples_identical`` and the per-sample differences."""
    old, new = _keyed_scores(committed), _keyed_scores(reproduced)
    for c in comparisons:
        if c.value_name != c.metric:
            continue
        a, b = old.get(c.ident), new.get(c.ident)
        if a is None or b is None:
            continue
        missing, extra = a.index.difference(b.index), b.index.difference(a.index)
        if len(missing) or len(extra):
            c.problems.append(f"samples differ: {len(missing)} committed sample(s) not reproduced"
                              + (f" (e.g. {missing[0]})" if len(missing) else "")
                              + f", {len(extra)} new" + (f" (e.g. {extra[0]})" if len(extra) else ""))
        common = a.index.intersection(b.index)
        if len(common):
            signed = b.loc[common] - a.loc[common]
            diff = signed.abs()
            c.max_sample_diff = float(diff.max())
            c.samples_identical = bool((b.loc[common].to_numpy() == a.loc[common].to_numpy()).all())
            c.sample_diffs, c.reproduced_samples = signed, b
            if exact:
                bad = diff > atol + rtol * a.loc[common].abs()
                if bad.any():
                    first = diff[bad].idxmax()
                    c.problems.append(f"{int(bad.sum())} per-sample score(s) differ beyond the tolerance "
                                      f"(largest at {first}: {a[first]:.6g} -> {b[first]:.6g})")


# --------------------------------------------------------------------------------------------- identities


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": [1, 2]}`` (lists are leaves)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: obj} if prefix else {"": obj}


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def dict_differences(old: dict[str, Any], new: dict[str, Any], local: bool = True) -> list[tuple[str, Any, Any]]:
    """``(field, old, new)`` for every flattened field that differs, skipping (``local``) where files lie on a
    machine (:func:`~interpbench.core.identity.portable`); a field present on one side only shows ``<absent>`` on the
    other."""
    a, b = (flatten(portable(old)), flatten(portable(new))) if local else (flatten(old), flatten(new))
    out = []
    for field in sorted(set(a) | set(b)):
        x, y = a.get(field, "<absent>"), b.get(field, "<absent>")
        if not _same(x, y):
            out.append((field, x, y))
    return out


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


def cell_config_differences(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Differences between a committed cell's configuration and its reproduction's: ``(failures, warnings)``.

    Component versions (``*.version``) that changed are warnings (the numbers decide); the weights are checked
    once per model (:func:`identity_differences`, which ``--allow-different-weights`` relaxes); everything else
    (the dataset's identity, parameters, seeds, targets, limits) changes the protocol and fails the cell.
    """
    failures, warnings = [], []
    for field, x, y in dict_differences(old, new):
        text = f"{field}: {_short(x)} -> {_short(y)}"
        if field.endswith(".version") or field == "version":
            warnings.append(text)
        elif field.startswith("model.weights"):
            continue
        else:
            failures.append(text)
    return failures, warnings


def identity_differences(old: dict[str, Any], new: dict[str, Any], *, allow_different_weights: bool = False
                         ) -> tuple[list[str], list[str]]:
    """Models' weights and descriptions, datasets' identity, components' versions and parameters: recorded
    manifest ``old`` against the reproduction's ``new``. Returns ``(failures, warnings)``."""
    failures, warnings = [], []
    for spec, model in (old.get("models") or {}).items():
        other = (new.get("models") or {}).get(spec)
        if other is None:
            failures.append(f"model {spec!r} did not load in the reproduction (see its failed cells)")
            continue
        sha_old, sha_new = (model.get("weights") or {}).get("sha256"), (other.get("weights") or {}).get("sha256")
        if sha_old is None:
            warnings.append(f"model {spec!r}: the manifest records no sha256 of its weights, so their identity is "
                            "not verified")
        elif sha_old != sha_new:
            what = (model.get("weights") or {}).get("sha256_of", "file")
            text = (f"model {spec!r}: weights differ: sha256 ({what}) {sha_old} committed, {sha_new} here "
                    f"(loaded from {(other.get('weights') or {}).get('path')}); the numbers come from other "
                    "weights. Put the committed weights where the spec finds them, or pass "
                    "--allow-different-weights to compare anyway")
            (warnings if allow_different_weights else failures).append(text)
        for field, x, y in dict_differences(model, other):
            if field.startswith("weights."):
                if field not in ("weights.sha256",) and sha_old is None:
                    failures.append(f"model {spec!r}: {field} {_short(x)} -> {_short(y)}")
                continue
            failures.append(f"model {spec!r}: {field} {_short(x)} -> {_short(y)}")
    for name, ident in (old.get("datasets") or {}).items():
        other = (new.get("datasets") or {}).get(name)
        if other is None:
            failures.append(f"dataset {name!r} did not load in the reproduction (see its failed cells)")
            continue
        for field, x, y in dict_differences(ident, other):
            failures.append(f"dataset {name!r}: identity field {field} {_short(x)} -> {_short(y)}")
    for kind in ("methods", "metrics"):
        for name, desc in (old.get(kind) or {}).items():
            other = (new.get(kind) or {}).get(name)
            if other is None:
                continue  # its cells are reported missing
            if str(desc.get("version")) != str(other.get("version")):
                warnings.append(f"{kind[:-1]} {name!r}: version {desc.get('version')} committed, "
                                f"{other.get('version')} here (its implementation changed)")
            for field, x, y in dict_differences(desc.get("params") or {}, other.get("params") or {}, local=False):
                failures.append(f"{kind[:-1]} {name!r}: parameter {field} {_short(x)} -> {_short(y)}")
    return failures, warnings


def environment_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Library versions, interpbench version and git sha, plugins and device: differences are warnings."""
    out = []
    libs_old, libs_new = old.get("libraries") or {}, new.get("libraries") or {}
    for lib in sorted(set(libs_old) | set(libs_new)):
        a, b = libs_old.get(lib), libs_new.get(lib)
        if a != b:
            out.append(f"{lib} {a} committed, {b} here")
    for field in ("version", "git_sha"):
        a, b = (old.get("interpbench") or {}).get(field), (new.get("interpbench") or {}).get(field)
        if a != b:
            out.append(f"interpbench {field} {a} committed, {b} here")
    plugins_old = {p.get("distribution"): p.get("version") for p in old.get("plugins") or []}
    plugins_new = {p.get("distribution"): p.get("version") for p in new.get("plugins") or []}
    for dist in sorted(set(plugins_old) | set(plugins_new), key=str):
        a, b = plugins_old.get(dist, "absent"), plugins_new.get(dist, "absent")
        if a != b:
            out.append(f"plugin distribution {dist} {a} committed, {b} here")
    dev_old, dev_new = old.get("device") or {}, new.get("device") or {}
    for field in ("device", "gpu", "cuda", "cudnn", "platform"):
        if dev_old.get(field) != dev_new.get(field):
            out.append(f"{field} {dev_old.get(field)} committed, {dev_new.get(field)} here")
    return out


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
    from interpbench.engine.runner import RunConfig

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
    from interpbench.engine.runner import PART_KEYS, RunConfig, grids

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
    (seeds 1 .. runs) into ``out/1 ..``; returns the :class:`~interpbench.publish.tables.Experiment` of each run."""
    from interpbench.engine.runner import Runner

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
    from interpbench.engine.runner import Runner

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


def _compare_cell_configs(comparisons: list[Comparison], committed: Any, new: Any, warnings: list[str]) -> None:
    def configs(exp) -> dict[tuple, dict]:
        cells = exp.table.drop_duplicates(["model", "dataset", "method", "metric"])
        return {(r["model"], r["dataset"], r["method"], r["metric"]): exp.configs.get(r["key"], {})
                for _, r in cells.iterrows()}

    old, fresh = configs(committed), configs(new)
    for c in comparisons:
        ident = (c.model, c.dataset, c.method, c.metric)
        if ident not in old or ident not in fresh or not old[ident] or not fresh[ident]:
            continue
        fail, warn = cell_config_differences(old[ident], fresh[ident])
        if fail:
            c.problems.append("configuration differs from the committed cell's: " + "; ".join(fail))
        warnings += [f"{c.model} / {c.dataset} / {c.method} / {c.metric}: {w}" for w in warn]


# --------------------------------------------------------------------------------------------- output


def _fmt(x: float, digits: int = 4) -> str:
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


VERDICT_TEXT = {IDENTICAL: "[green]identical[/green]", WITHIN: "[green]within tolerance[/green]"}
CONCLUSION = {
    IDENTICAL: "[green]reproduced: identical[/green] (every number bit for bit)",
    WITHIN: "[green]reproduced: equal within numerical tolerance[/green] (no number moved more than rounding "
            "moves it)",
    DIFFERENT: "[red]NOT reproduced: different[/red]",
}


def render(result: Reproduction, console: Console) -> None:
    table = Table(title=f"reproduce {result.directory}", show_lines=False)
    for col in ("cell", "committed", "reproduced", "Δ", "max |Δ| per sample", "tolerance", "Δ vs 95% CI", "verdict"):
        table.add_column(col, overflow="fold")
    for c in result.comparisons:
        if c.committed_status == "done":
            ci = "" if math.isnan(c.ci_low) else f" [{_fmt(c.ci_low)}, {_fmt(c.ci_high)}]"
            old = f"{_fmt(c.committed)}{ci}" + (f" n={c.committed_n}" if c.committed_n else "")
        else:
            old = c.committed_status
        if c.reproduced_status == "done":
            new = _fmt(c.reproduced) + (f" n={c.reproduced_n}" if c.reproduced_n else "")
        else:
            new = c.reproduced_status
        delta = "" if math.isnan(c.delta) else f"{c.delta:+.2e}"
        sample = "" if math.isnan(c.max_sample_diff) else f"{c.max_sample_diff:.2e}"
        if c.ok:
            verdict = VERDICT_TEXT[c.level] + (f" ({c.note})" if c.note else "")
        else:
            verdict = "[red]DIFFERENT: " + "; ".join(c.problems) + "[/red]"
        table.add_row(c.cell, old, new, delta, sample, c.tolerance, c.ci_note, verdict)
    console.print(table)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    for f in result.failures:
        console.print(f"[red]failure:[/red] {f}")
    counts = result.counts
    console.print(f"{len(result.comparisons)} numbers of {result.directory}: {counts[IDENTICAL]} identical, "
                  f"{counts[WITHIN]} equal within numerical tolerance, {counts[DIFFERENT]} different", soft_wrap=True)
    if result.rounding_runs:
        console.print(f"tolerances measured by {result.rounding_runs} re-run(s) of {result.rounding_cells} cell(s) "
                      f"under rounding noise ({rnd.NOISE_ULPS:g} ulps on every layer's output; docs/reproduce.md)",
                      soft_wrap=True)
    bad = result.failing_cells
    if bad:
        console.print("[red]numbers that differ:[/red]")
        for c in bad:
            within_ci = " (inside the committed 95% CI)" if c.ci_note.endswith("half-width") and \
                abs(c.delta) <= (c.ci_high - c.ci_low) / 2 else ""
            console.print(f"  [red]{c.cell}[/red]: {'; '.join(c.problems)}{within_ci}", soft_wrap=True)
    console.print(CONCLUSION[result.level], soft_wrap=True)


# --------------------------------------------------------------------------------------------- CLI


def configure(parser) -> None:
    parser.add_argument("directory", help="the experiment directory to reproduce (with manifest.json)")
    parser.add_argument("--out", help="re-run into this directory and keep it (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and print its path")
    parser.add_argument("--device", help="override the recorded device (auto, cpu, cuda:0, ...)")
    parser.add_argument("--datasets-config", help="a datasets.yaml to use instead of the recorded one")
    parser.add_argument("--rounding-runs", type=int, default=ROUNDING_RUNS,
                        help="re-runs under rounding noise of the cells whose numbers are not identical, which measure "
                             f"each number's tolerance ({ROUNDING_RUNS}; 0: judge by --atol / --rtol instead)")
    parser.add_argument("--atol", type=float, default=ATOL,
                        help=f"absolute tolerance of --exact and of --rounding-runs 0 ({ATOL:g})")
    parser.add_argument("--rtol", type=float, default=RTOL,
                        help=f"relative tolerance of --exact and of --rounding-runs 0 ({RTOL:g})")
    parser.add_argument("--exact", action="store_true",
                        help="demand every number (CI bounds and per-sample scores included) within --atol / --rtol "
                             "of the committed one, without rounding runs (a same-machine check)")
    parser.add_argument("--allow-different-weights", action="store_true",
                        help="compare even when a model's weights sha256 differs (a warning instead of a failure)")
    parser.add_argument("--no-progress", action="store_true")


def main(args, console: Console) -> int:
    if args.atol < 0 or args.rtol < 0:
        console.print(f"[red]error:[/red] --atol {args.atol} / --rtol {args.rtol}: tolerances must be >= 0")
        return 2
    try:
        result = reproduce(args.directory, args.out, device=args.device, datasets_config=args.datasets_config,
                           atol=args.atol, rtol=args.rtol, exact=args.exact, rounding=args.rounding_runs,
                           allow_different_weights=args.allow_different_weights, progress=not args.no_progress,
                           console=console, keep=args.keep)
    except (FileNotFoundError, ComponentError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    render(result, Console())
    if args.keep or args.out:
        console.print(f"the reproduction is in {result.out}")
    return 0 if result.ok else 1
