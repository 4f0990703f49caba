"""The number-by-number verdicts of ``interpbench reproduce`` (docs/reproduce.md): two long results tables, and
their per-sample scores, compared value by value into *identical*, *equal within numerical tolerance* or
*different* (:class:`Comparison`, :func:`compare_tables`, :func:`compare_samples`, :func:`judge_explicit`,
:func:`judge_measured`), and the differences between two manifests' identities, environments and cell
configurations.

Part of the publishing layer (docs/design.md); :mod:`interpbench.publish.reproduce` re-runs an experiment and
judges its numbers with these.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pandas as pd

from interpbench.core.identity import portable
from interpbench.ops import rounding as rnd

ATOL = 1e-6
RTOL = 1e-5
ROW_KEY = ["model", "dataset", "method", "metric", "value_name"]
NUMERIC_STATUSES = ("done",)


# --------------------------------------------------------------------------------------------- comparisons

IDENTICAL = "identical"
WITHIN = "equal within numerical tolerance"
DIFFERENT = "different"
LEVELS = (IDENTICAL, WITHIN, DIFFERENT)


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
    """Compare two long results tables (``results.results_table`` shape) row by row: presence, status,
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
    """(model, dataset, method, metric) -> per-sample scores of an :class:`~interpbench.publish.results.Experiment`."""
    cells = exp.table.drop_duplicates(["model", "dataset", "method", "metric"])
    return {(r["model"], r["dataset"], r["method"], r["metric"]): exp.scores[r["key"]]
            for _, r in cells.iterrows() if r["key"] in exp.scores}


def compare_samples(comparisons: list[Comparison], committed: Any, reproduced: Any, *, atol: float = ATOL,
                    rtol: float = RTOL, exact: bool = False) -> None:
    """Per-sample checks for cells both stores hold (:class:`~interpbench.publish.results.Experiment`): the same sample
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
