"""The end-of-run summary: plain text laid out for a terminal of ``width`` columns (80 and up), and the same
summary as HTML at the top of ``report.html``.

Per model and dataset, one row per method and one column per headline value of each metric
(:func:`interpbench.publish.headline.headline_mask`), means only (the confidence intervals stay in the files), the best
value of each column marked ``*``, ``–`` where a cell does not apply. Columns are headed by the value's full name
when the table fits the width, else by a short code explained in a legend below it, and a table still too wide is
split into column blocks: no name or number is ever cut. Explanation drift takes one line per method, and the
model-randomisation sanity check (Adebayo et al., NeurIPS 2018) one line per method with the rank correlation at
every depth and the verdict at full randomisation. Model-scope values (dissection, unit drift, adversarial
consistency) are listed by name. Cells that did not run are grouped by cause, each cause said once.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from interpbench.core.tabular import ARROW
from interpbench.publish.headline import headline_mask

GROUP = ["model", "dataset"]
BEST = "*"
NA = "–"
FAILED = "fail"
SHORT_METRICS = {"deletion": "del", "insertion": "ins", "pointing_game": "PG", "energy_pointing_game": "EPG",
                 "grid_pointing_game": "GPG", "adversarial_detection": "AD", "explanation_drift": "drift",
                 "shortcut_localization": "SL"}
SANITY_KEY = "randomized_stages"  # explanation_drift's value on a sanity pair A=>A~cascade:K (K)


def is_sanity(model: str) -> bool:
    return "~cascade:" in str(model)


def fmt(value: float, integers: bool = False) -> str:
    """A mean for the terminal: three decimals (one from 100 on), or an integer where the values are counts."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if integers and float(value).is_integer():
        return str(int(value))
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"


def are_counts(values: Iterable[float]) -> bool:
    """Whether a column or list of values are counts (integers, one of them at least 2)."""
    values = [float(v) for v in values if not math.isnan(float(v))]
    return bool(values) and all(v.is_integer() for v in values) and max(abs(v) for v in values) >= 2


def short_code(metric: str, value_name: str, leaf_shared: bool) -> str:
    """A column's short code: the metric's abbreviation (initials of its words), then the value's own name
    without the leaf all the metric's headline values share (``adversarial_detection.fgsm8.auroc`` -> ``AD.fgsm8``)."""
    abbr = SHORT_METRICS.get(metric) or ("".join(w[0] for w in metric.split("_")).upper() if "_" in metric
                                         else metric[:4])
    if value_name == metric:
        return abbr
    parts = value_name.split(".")
    if leaf_shared and len(parts) > 1:
        parts = parts[:-1]
    return abbr + "." + ".".join(parts)


@dataclass
class Column:
    metric: str
    value_name: str
    higher_is_better: bool | None
    short: str = ""

    @property
    def full(self) -> str:
        name = self.value_name if self.value_name == self.metric else f"{self.metric}.{self.value_name}"
        return name + (f" {ARROW[self.higher_is_better]}" if self.higher_is_better is not None else "")

    @property
    def code(self) -> str:
        return self.short + (ARROW[self.higher_is_better] if self.higher_is_better is not None else "")


@dataclass
class Block:
    """One model and dataset: methods x headline columns, with the cells as display strings."""
    model: str
    dataset: str
    methods: list[str]
    columns: list[Column]
    cells: dict[tuple[str, int], str] = field(default_factory=dict)  # (method, column index) -> text
    best: set[tuple[str, int]] = field(default_factory=set)
    n: tuple[int, int] = (0, 0)


# --------------------------------------------------------------------------------------------- data


def headline_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the long results table that are headline values (or cells that did not run)."""
    if table.empty:
        return table
    return table[headline_mask(table)]


def method_blocks(table: pd.DataFrame) -> list[Block]:
    """The method tables: every (model, dataset) of explanation-scope cells except drift pairs."""
    rows = headline_rows(table)
    rows = rows[(rows["scope"] == "explanation") & (rows["metric"] != "explanation_drift")]
    blocks = []
    for (model, dataset), part in rows.groupby(GROUP, sort=False):
        done = part[part["status"] == "done"]
        names = list(dict.fromkeys(zip(done["metric"], done["value_name"])))
        order = list(dict.fromkeys(m for m, _ in names))  # metrics in run order, each one's own value first
        names.sort(key=lambda mv: (order.index(mv[0]), mv[1] != mv[0]))
        if not names:  # nothing ran: the section on cells that did not run says why
            continue
        leaves: dict[str, set[str]] = {}
        for metric, value in names:
            leaves.setdefault(metric, set()).add(value.split(".")[-1] if value != metric else "")
        columns = []
        for metric, value in names:
            hib = part[(part["metric"] == metric)]["higher_is_better"]
            columns.append(Column(metric, value, bool(hib.iloc[0]) if len(hib) else None))
            columns[-1].short = short_code(metric, value, len(leaves[metric]) == 1 and "" not in leaves[metric])
        methods = list(dict.fromkeys(part["method"]))
        block = Block(str(model), str(dataset), methods, columns)
        for j, col in enumerate(columns):
            means = {}
            column = part[(part["metric"] == col.metric) & (part["value_name"] == col.value_name)
                          & (part["status"] == "done")]
            counts = are_counts(column["mean"])
            for method in methods:
                cell = part[(part["method"] == method) & (part["metric"] == col.metric)]
                value = cell[cell["value_name"] == col.value_name]
                if len(cell) and (cell["status"] == "failed").any():
                    block.cells[(method, j)] = FAILED
                elif len(value) and value["status"].iloc[0] == "done" and not math.isnan(value["mean"].iloc[0]):
                    means[method] = float(value["mean"].iloc[0])
                    block.cells[(method, j)] = fmt(means[method], counts)
                else:
                    block.cells[(method, j)] = NA
            if means and col.higher_is_better is not None and len(means) > 1:
                target = max(means.values()) if col.higher_is_better else min(means.values())
                shown = fmt(target, counts)
                block.best |= {(m, j) for m, v in means.items() if fmt(v, counts) == shown}
        first = columns[0].metric  # its n: samples per method (other metrics may count other things, e.g. grids)
        ns = done.loc[(done["metric"] == first) & (done["value_name"] == first), "n"]
        ns = ns[ns > 0]
        block.n = (int(ns.min()), int(ns.max())) if len(ns) else (0, 0)
        blocks.append(block)
    return blocks


@dataclass
class Sanity:
    """The sanity check of one (model, dataset): rank correlation per method and randomised depth."""
    original: str
    dataset: str
    depths: list[int]
    stages: int | None
    rho: dict[str, dict[int, float]]
    verdict: dict[str, float]  # method -> sanity_pass (1 pass, 0 fail) on the full-randomisation row
    failed: set[str]


def sanity_checks(table: pd.DataFrame) -> list[Sanity]:
    part = table[(table["metric"] == "explanation_drift") & table["model"].map(is_sanity)]
    out = []
    for (original, dataset), rows in part.assign(original=part["model"].str.split("=>").str[0]).groupby(
            ["original", "dataset"], sort=False):
        rho: dict[str, dict[int, float]] = {}
        verdict, failed, stages = {}, set(), None
        for (model, method), cell in rows.groupby(["model", "method"], sort=False):
            if (cell["status"] != "done").any():
                failed.add(method) if (cell["status"] == "failed").any() else None
                continue
            values = dict(zip(cell["value_name"], cell["mean"]))
            k = values.get(SANITY_KEY)
            if k is None:
                k = float(re.search(r"~cascade:(\d+)", str(model)).group(1))
            stages = int(values["stages"]) if "stages" in values else stages
            if "rank_correlation" in values:
                rho.setdefault(method, {})[int(k)] = float(values["rank_correlation"])
            if "sanity_pass" in values:
                verdict[method] = float(values["sanity_pass"])
        depths = sorted({k for d in rho.values() for k in d})
        methods = list(dict.fromkeys(rows["method"]))
        out.append(Sanity(str(original), str(dataset), depths, stages,
                          {m: rho.get(m, {}) for m in methods}, verdict, failed))
    return out


def drift_rows(table: pd.DataFrame) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """Explanation drift of the pairs that are not sanity cascades: (pair, dataset, [(method, value text)])."""
    rows = headline_rows(table)
    rows = rows[(rows["metric"] == "explanation_drift") & ~rows["model"].map(is_sanity)]
    out = []
    for (model, dataset), part in rows.groupby(GROUP, sort=False):
        lines = []
        for method, cell in part.groupby("method", sort=False):
            value = cell[cell["value_name"] == "explanation_drift"]
            status = cell["status"].iloc[0]
            lines.append((str(method), FAILED if status == "failed" else
                          fmt(float(value["mean"].iloc[0])) if status == "done" and len(value) else NA))
        out.append((str(model), str(dataset), lines))
    return out


def model_values(table: pd.DataFrame) -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    """Model-scope headline values: (model, dataset, metric, [(value name, text)])."""
    rows = headline_rows(table)
    rows = rows[rows["scope"] == "model"]
    out = []
    for (model, dataset, metric), part in rows.groupby(GROUP + ["metric"], sort=False):
        counts = are_counts(part.loc[part["status"] == "done", "mean"])
        values = [(str(r["value_name"]), fmt(r["mean"], counts) if r["status"] == "done" else
                   (FAILED if r["status"] == "failed" else NA)) for _, r in part.iterrows()]
        out.append((str(model), str(dataset), str(metric), values))
    return out


def failure_causes(table: pd.DataFrame) -> list[dict]:
    """Cells that did not run, grouped by status and error: one entry per cause with the cells it covers."""
    bad = table[table["status"].isin(["failed", "not_applicable", "skipped"])]
    bad = bad.drop_duplicates(["model", "dataset", "method", "metric"])
    out = []
    for (status, error), part in bad.groupby(["status", bad["error"].fillna("")], sort=False):
        out.append({"status": str(status), "error": str(error), "cells": len(part),
                    "models": list(dict.fromkeys(part["model"])), "methods": [m for m in dict.fromkeys(part["method"])
                                                                            if m != "-"],
                    "metrics": list(dict.fromkeys(part["metric"]))})
    order = {"failed": 0, "skipped": 1, "not_applicable": 2}
    return sorted(out, key=lambda c: order.get(c["status"], 3))


# --------------------------------------------------------------------------------------------- text


def _wrap(text: str, width: int, indent: str = "  ") -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_long_words=False, break_on_hyphens=False) or [indent]


def _pack(head: str, items: list[str], width: int, indent: str = "  ") -> list[str]:
    """``head`` then ``items`` separated by ", ", wrapped between items only (an item is never split)."""
    lines, line = [], head
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if len(line) + 1 + len(piece) > width and line.strip():
            lines.append(line)
            line = indent + piece
        else:
            line = f"{line} {piece}" if line else piece
    return lines + [line]


def _block_lines(block: Block, width: int) -> list[str]:
    mw = max(len("method"), *(len(m) for m in block.methods))
    values = {j: max(len(block.cells[(m, j)]) for m in block.methods) for j in range(len(block.columns))}

    def layout(headers: list[str]) -> list[list[int]]:
        """Column indices in blocks that fit ``width`` (each block repeats the method column)."""
        chunks: list[list[int]] = [[]]
        used = mw
        for j, head in enumerate(headers):
            w = 2 + max(len(head), values[j] + len(BEST))
            if chunks[-1] and used + w > width:
                chunks.append([])
                used = mw
            chunks[-1].append(j)
            used += w
        return chunks

    full = [c.full for c in block.columns]
    chunks = layout(full)
    legend = len(chunks) > 1
    headers = [c.code for c in block.columns] if legend else full
    if legend:
        chunks = layout(headers)
    n = block.n
    count = f"n = {n[0]}" if n[0] == n[1] else f"n = {n[0]}–{n[1]} by method"
    lines = [f"{block.model} on {block.dataset}" + (f" ({count})" if n[1] else "")]
    for chunk in chunks:
        widths = {j: max(len(headers[j]), values[j] + len(BEST)) for j in chunk}
        lines.append("  ".join(["method".ljust(mw)] + [headers[j].rjust(widths[j]) for j in chunk]).rstrip())
        for m in block.methods:
            cells = []
            for j in chunk:
                text = block.cells[(m, j)] + (BEST if (m, j) in block.best else " " * len(BEST))
                cells.append(text.rjust(widths[j]))
            lines.append("  ".join([m.ljust(mw)] + cells).rstrip())
    if legend:
        lines += _pack("", [f"{c.code} = {c.full}" for c in block.columns], width)
    return lines


def _sanity_lines(check: Sanity, width: int) -> list[str]:
    stages = check.stages or (max(check.depths) if check.depths else 0)
    lines = [f"sanity check: {check.original} on {check.dataset}, rank correlation with the original maps as the top "
             f"k of {stages} stages are re-initialised; pass: below the threshold at k = {stages}"]
    lines = _wrap(lines[0], width, "")
    mw = max(len("method"), *(len(m) for m in check.rho))
    head = "  ".join(["method".ljust(mw)] + [f"k={k}".rjust(6) for k in check.depths] + ["verdict"])
    if len(head) > width:  # narrow: the full-randomisation value alone
        shown = [k for k in check.depths if k == stages] or check.depths[-1:]
        head = "  ".join(["method".ljust(mw)] + [f"k={k}".rjust(6) for k in shown] + ["verdict"])
    else:
        shown = check.depths
    lines.append(head)
    for method, by_depth in check.rho.items():
        verdict = ("failed to run" if method in check.failed else
                   "pass" if check.verdict.get(method) == 1 else "FAIL" if check.verdict.get(method) == 0 else NA)
        cells = [fmt(by_depth[k]).rjust(6) if k in by_depth else NA.rjust(6) for k in shown]
        lines.append("  ".join([method.ljust(mw)] + cells + [verdict]))
    return lines


def render_text(table: pd.DataFrame, width: int = 80, title: str | None = None,
                files: Iterable[str | Path] = ()) -> str:
    """The summary as plain text, no line longer than ``width`` (at least 60) unless a single name is."""
    width = max(60, int(width))
    out: list[str] = []
    if title:
        out += [title, ""]
    blocks = method_blocks(table)
    for block in blocks:
        out += _block_lines(block, width) + [""]
    if blocks:
        out += _wrap(f"Means over samples ({BEST} best per column, {NA} does not apply); confidence intervals and "
                     "every other value are in the files below.", width, "") + [""]
    for model, dataset, lines in drift_rows(table):
        out += _wrap(f"explanation drift ↑ (1 − rank correlation of the maps): {model} on {dataset}", width, "")
        mw = max(len(m) for m, _ in lines)
        out += [f"{m.ljust(mw)}  {v}" for m, v in lines] + [""]
    for check in sanity_checks(table):
        out += _sanity_lines(check, width) + [""]
    for model, dataset, metric, values in model_values(table):
        out += _pack(f"{metric}: {model} on {dataset}:", [f"{k} {v}" for k, v in values], width)
    if model_values(table):
        out.append("")
    causes = failure_causes(table)
    for cause in causes:
        what = {"failed": "failed", "skipped": "skipped", "not_applicable": "not applicable"}.get(cause["status"],
                                                                                                cause["status"])
        scope = "; ".join(f"{k} {', '.join(v)}" for k, v in (("models", cause["models"]),
                                                                 ("methods", cause["methods"]),
                                                                 ("metrics", cause["metrics"])) if v)
        cells = "1 cell" if cause["cells"] == 1 else f"{cause['cells']} cells"
        out += _wrap(f"{cells} {what} ({scope}):", width, "")
        out += _wrap(cause["error"] or "(no reason recorded)", width, "    ")
    if causes:
        out.append("")
    files = [str(f) for f in files]
    if files:
        out.append("Files written:")
        out += [f"  {f}" for f in files]
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


WRITTEN = ("methods.md", "methods.csv", "representations.md", "representations.csv", "results.json", "manifest.json",
           "report.html", "store.sqlite")


def written_files(out: str | Path) -> list[str]:
    """The files of an experiment directory a reader opens, those that exist, in reading order."""
    return [str(Path(out) / name) for name in WRITTEN if (Path(out) / name).is_file()]


# --------------------------------------------------------------------------------------------- HTML


def render_html(table: pd.DataFrame) -> str:
    """The same summary as HTML (the top of ``report.html``): the method tables with full column names, best in
    bold, then drift, the sanity check, model-scope values and the causes of cells that did not run."""
    from html import escape as e

    def head(name: str) -> str:  # long value names may break after a dot or an underscore
        return e(name).replace(".", ".<wbr>").replace("_", "_<wbr>")

    out = []
    for block in method_blocks(table):
        n = block.n
        count = "" if not n[1] else f" (n = {n[0]})" if n[0] == n[1] else f" (n = {n[0]}–{n[1]} by method)"
        rows = []
        for m in block.methods:
            cells = [f"<td class=text>{e(m)}</td>"]
            for j in range(len(block.columns)):
                text = e(block.cells[(m, j)])
                cells.append(f"<td><b>{text}</b></td>" if (m, j) in block.best else f"<td>{text}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        header = "<th class=text>method</th>" + "".join(f"<th>{head(c.full)}</th>" for c in block.columns)
        out.append(f'<table class="summary"><caption>{e(block.model)} on {e(block.dataset)}{count}</caption>'
                   f"<thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    if out:
        out.append(f"<p class=muted>Means over samples; <b>bold</b>: best per column; {NA}: does not apply. "
                   "Confidence intervals and every other value are in the tables below and in the files.</p>")
    for model, dataset, lines in drift_rows(table):
        rows = "".join(f"<tr><td class=text>{e(m)}</td><td>{e(v)}</td></tr>" for m, v in lines)
        out.append(f'<table class="summary drift"><caption>Explanation drift ↑ (1 − rank correlation of the maps): '
                   f"{e(model)} on {e(dataset)}</caption><thead><tr><th class=text>method</th>"
                   f"<th>explanation_drift ↑</th></tr></thead><tbody>{rows}</tbody></table>")
    for check in sanity_checks(table):
        stages = check.stages or (max(check.depths) if check.depths else 0)
        rows = []
        for method, by_depth in check.rho.items():
            verdict = ("failed to run" if method in check.failed else "pass" if check.verdict.get(method) == 1
                       else "<b>FAIL</b>" if check.verdict.get(method) == 0 else NA)
            full = fmt(by_depth[stages]) if stages in by_depth else NA
            rows.append(f"<tr><td class=text>{e(method)}</td><td>{full}</td><td class=text>{verdict}</td></tr>")
        out.append(f'<table class="summary sanity"><caption>Sanity check (model randomisation): {e(check.original)} '
                   f"on {e(check.dataset)}</caption><thead><tr><th class=text>method</th><th>rank correlation, all "
                   f"{stages} stages re-initialised</th><th class=text>verdict</th></tr></thead>"
                   f"<tbody>{''.join(rows)}</tbody></table>")
    values = model_values(table)
    if values:
        items = "".join(f"<li><b>{e(metric)}</b>: {e(model)} on {e(dataset)}: "
                        + ", ".join(f"{e(k)}&nbsp;{e(v)}" for k, v in vals) + "</li>"
                        for model, dataset, metric, vals in values)
        out.append(f"<ul class=values>{items}</ul>")
    causes = failure_causes(table)
    if causes:
        items = []
        for cause in causes:
            scope = "; ".join(f"{k} {', '.join(v)}" for k, v in (("models", cause["models"]),
                                                                     ("methods", cause["methods"]),
                                                                     ("metrics", cause["metrics"])) if v)
            items.append(f"<li>{cause['cells']} cell(s) {e(cause['status'].replace('_', ' '))} ({e(scope)}): "
                         f"{e(cause['error'] or '(no reason recorded)')}</li>")
        out.append("<p>Cells that did not run, by cause:</p><ul class=causes>" + "".join(items) + "</ul>")
    return "\n".join(out)
