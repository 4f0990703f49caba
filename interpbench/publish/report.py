"""``interpbench report DIR``: one self-contained HTML file per experiment (``DIR/report.html``).

It holds the leaderboards (best per column in bold), the ranking with paired significance tests and the rank
agreement between metrics (from :mod:`interpbench.publish.tables`), the mean deletion / insertion curve of every method
(any per-sample metric that stores ``{"curve": [...]}`` in its extras) as inline SVG, a gallery of the maps of
every method on the same images (the runner's ``artifacts/maps/*.pt`` snapshots) and every PNG other metrics
leave under ``artifacts/`` (dissection unit images, drift heatmaps), embedded as base64. No script, font,
stylesheet or image is fetched from anywhere: the file opens in a browser with no network.

Part of the publishing layer (docs/design.md); the command line (arguments, messages, exit codes) is in
:mod:`interpbench.commands.report`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch

from interpbench.core.tabular import slug
from interpbench.engine.runner import snapshot_path
from interpbench.publish.grid import half_width
from interpbench.publish.ranking import ALPHA, GROUP, _isnan
from interpbench.publish.results import Experiment, load_experiment
from interpbench.publish.summary import render_html as summary_html
from interpbench.publish.summary import sanity_checks
from interpbench.publish.tables import PaperTables

# matplotlib's "inferno" at 9 evenly spaced points (Smith & van der Walt's perceptually uniform colour maps)
INFERNO = np.array([[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85], [227, 89, 51],
                    [249, 140, 10], [249, 201, 50], [252, 255, 164]], dtype=np.float64)
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]  # Tableau 10
MAX_ARTIFACT_IMAGES = 200
GALLERY_IMAGES = 4  # rows (images) per model and dataset in the map gallery
GALLERY_METHODS = 8  # method columns per gallery table (9 columns of 112 px fit a 1280 px window)
THUMBNAIL = 112  # px: the gallery's display size; larger images are stored at this size
OVERLAY_ALPHA = 0.6

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 80em;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0 1.5em; font-size: 0.92em; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3em; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #e2e2e2; text-align: right; vertical-align: top; }
th { border-bottom: 2px solid #999; } .text { text-align: left; } .best { font-weight: 700; } .tied { font-style: italic; }
.status { color: #a33; } .muted { color: #777; font-size: 0.9em; } code { font-size: 0.95em; }
figure { display: inline-block; margin: 0 1.5em 1.5em 0; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; max-width: 40em; }
table.gallery td, table.gallery th { text-align: center; border: none; padding: 0.2em; }
table.gallery img { width: 112px; height: 112px; display: block; } table.gallery img.up { image-rendering: pixelated; }
img.artifact { max-width: 100%; border: 1px solid #ddd; }
nav ul { columns: 3; margin: 0.5em 0; } .chart text { font-size: 11px; fill: #333; }
table.summary th { max-width: 9em; overflow-wrap: anywhere; font-weight: 600; } table.summary caption { font-size: 1.05em; }
.wide { overflow-x: auto; max-width: 100%; } details > summary { cursor: pointer; color: #345; }
ul.values li, ul.causes li { margin-bottom: 0.3em; } code { overflow-wrap: anywhere; }
svg.chart { max-width: 100%; height: auto; }
"""


# --------------------------------------------------------------------------------------------- images


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (shape + (3,)) by linear interpolation of :data:`INFERNO`."""
    x = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(INFERNO) - 1)
    low = np.floor(x).astype(int).clip(0, len(INFERNO) - 2)
    frac = (x - low)[..., None]
    return np.round(INFERNO[low] * (1 - frac) + INFERNO[low + 1] * frac).astype(np.uint8)


def normalize_map(saliency: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] per map (a constant map becomes zeros): only the order of the values is shown."""
    saliency = np.asarray(saliency, dtype=np.float64)
    low, high = np.nanmin(saliency), np.nanmax(saliency)
    return np.zeros_like(saliency) if not high > low else (saliency - low) / (high - low)


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``image`` uint8 3 x H x W, ``saliency`` H x W -> uint8 H x W x 3: the coloured map over the image."""
    heat = colormap(normalize_map(saliency)).astype(np.float64)
    rgb = np.asarray(image, dtype=np.float64).transpose(1, 2, 0)
    return np.round((1 - alpha) * rgb + alpha * heat).astype(np.uint8)


def png_data_uri(rgb: np.ndarray, max_side: int | None = None) -> str:
    """``rgb`` (uint8 H x W x 3, or float in [0, 1]) as an inline PNG, shrunk to ``max_side`` if it is larger."""
    from PIL import Image

    buffer = io.BytesIO()
    if rgb.dtype != np.uint8:
        rgb = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    picture = Image.fromarray(np.ascontiguousarray(rgb))
    if max_side is not None and max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# --------------------------------------------------------------------------------------------- curves


def mean_curve(curves: Iterable[Iterable[float]], points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The mean of per-sample curves on a [0, 1] x-axis (fraction of the pixels changed). Curves of one length
    are averaged point by point (RISE's mean curve); curves of different lengths are first interpolated
    linearly onto the longest one's grid."""
    curves = [np.asarray(c, dtype=np.float64) for c in curves]
    if not curves:
        return np.zeros(0), np.zeros(0)
    lengths = {len(c) for c in curves}
    n = points or max(lengths)
    x = np.linspace(0.0, 1.0, n)
    if lengths == {n}:
        return x, np.mean(np.stack(curves), axis=0)
    return x, np.mean(np.stack([np.interp(x, np.linspace(0.0, 1.0, len(c)), c) for c in curves]), axis=0)


def svg_chart(series: list[tuple[str, str, np.ndarray, np.ndarray]], title: str, xlabel: str, ylabel: str,
              width: int = 520, height: int = 320, *, xlim: tuple[float, float] = (0.0, 1.0),
              ylim: tuple[float, float] = (0.0, 1.0), xticks: list[tuple[float, str]] | None = None,
              yticks: Iterable[float] | None = None,
              dashed: Iterable[str] = (), markers: bool = False,
              hlines: Iterable[tuple[float, str]] = (), diagonal: bool = False) -> str:
    """A line chart as inline SVG: ``series`` of (label, colour, x, y) within ``xlim`` x ``ylim`` (y clipped to
    it); ``xticks`` (value, label) replace the five even ticks; series named in ``dashed`` are drawn dashed;
    ``hlines`` (y, label) are dotted reference lines and ``diagonal`` the chance line y = x."""
    left, right, top, bottom = 48, 170, 28, 42
    pw, ph = width - left - right, height - top - bottom
    dashed = set(dashed)

    def sx(x: float) -> float:
        return left + (x - xlim[0]) / (xlim[1] - xlim[0]) * pw

    def sy(y: float) -> float:
        return top + (1 - (min(max(y, ylim[0]), ylim[1]) - ylim[0]) / (ylim[1] - ylim[0])) * ph

    e = html.escape
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{e(title)}">',
             f'<text x="{left}" y="16" style="font-weight:600">{e(title)}</text>']
    ticks = xticks or [(x, f"{x:.2f}") for x in np.linspace(*xlim, 5)]
    for x, label in ticks:
        parts.append(f'<line x1="{sx(x):.1f}" y1="{top}" x2="{sx(x):.1f}" y2="{top + ph}" stroke="#eee"/>')
        parts.append(f'<text x="{sx(x):.1f}" y="{top + ph + 14}" text-anchor="middle">{e(label)}</text>')
    for y in np.linspace(*ylim, 5) if yticks is None else yticks:
        parts.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{left + pw}" y2="{sy(y):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    if diagonal:
        parts.append(f'<line x1="{sx(xlim[0]):.1f}" y1="{sy(ylim[0]):.1f}" x2="{sx(xlim[1]):.1f}" '
                     f'y2="{sy(ylim[1]):.1f}" stroke="#bbb" stroke-dasharray="2 3"/>')
    for y, label in hlines:
        parts.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{left + pw}" y2="{sy(y):.1f}" stroke="#555" '
                     f'stroke-dasharray="2 3"/><text x="{left + 4}" y="{sy(y) - 4:.1f}">{e(label)}</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">{e(xlabel)}</text>')
    parts.append(f'<text transform="translate(12 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">{e(ylabel)}</text>')
    for i, (label, colour, x, y) in enumerate(series):
        points = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(x, y))
        dash = ' stroke-dasharray="6 3"' if label in dashed else ""
        parts.append(f'<polyline class="curve" data-label="{e(label)}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.8"{dash} points="{points}"/>')
        if markers:
            parts += [f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="2.5" fill="{colour}"/>' for a, b in zip(x, y)]
        ly = top + 8 + 16 * i
        parts.append(f'<line x1="{left + pw + 10}" y1="{ly}" x2="{left + pw + 28}" y2="{ly}" stroke="{colour}" '
                     f'stroke-width="2.5"{dash}/>')
        parts.append(f'<text x="{left + pw + 32}" y="{ly + 4}">{e(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def svg_bars(groups: list[str], categories: list[str], values: dict[tuple[str, str], float], title: str,
             ylabel: str, notes: dict[tuple[str, str], str] | None = None, width: int = 520, height: int = 300) -> str:
    """A grouped bar chart as inline SVG: one group per ``groups`` entry (e.g. a layer), one bar per category,
    heights ``values[(group, category)]``, an optional text above each bar (``notes``)."""
    left, right, top, bottom = 48, 130, 28, 42
    pw, ph = width - left - right, height - top - bottom
    peak = max([v for v in values.values() if not math.isnan(v)] + [1.0])
    e = html.escape
    parts = [f'<svg class="chart bars" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{e(title)}">',
             f'<text x="{left}" y="16" style="font-weight:600">{e(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for y in np.linspace(0, peak, 5):
        py = top + ph - y / peak * ph
        parts.append(f'<line x1="{left}" y1="{py:.1f}" x2="{left + pw}" y2="{py:.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">{y:.0f}</text>')
    slot = pw / max(1, len(groups))
    bar = slot * 0.8 / max(1, len(categories))
    for g, group in enumerate(groups):
        x0 = left + g * slot + slot * 0.1
        parts.append(f'<text x="{left + (g + 0.5) * slot:.1f}" y="{top + ph + 14}" text-anchor="middle">{e(group)}</text>')
        for c, category in enumerate(categories):
            v = values.get((group, category), math.nan)
            if math.isnan(v):
                continue
            h = v / peak * ph
            x = x0 + c * bar
            parts.append(f'<rect class="bar" data-label="{e(group)} {e(category)}" x="{x:.1f}" y="{top + ph - h:.1f}" '
                         f'width="{bar * 0.9:.1f}" height="{h:.1f}" fill="{PALETTE[c % len(PALETTE)]}"/>')
            note = (notes or {}).get((group, category))
            if note:
                parts.append(f'<text x="{x + bar * 0.45:.1f}" y="{top + ph - h - 3:.1f}" text-anchor="middle">{e(note)}</text>')
    for c, category in enumerate(categories):
        ly = top + 8 + 16 * c
        parts.append(f'<rect x="{left + pw + 10}" y="{ly - 6}" width="12" height="12" fill="{PALETTE[c % len(PALETTE)]}"/>'
                     f'<text x="{left + pw + 28}" y="{ly + 4}">{e(category)}</text>')
    parts.append(f'<text transform="translate(12 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">{e(ylabel)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------- sections


def _table(caption: str, header: list[str], rows: list[list[str]], cls: str = "", text: Iterable[int] = (0,)) -> str:
    """An HTML table; cells are already-escaped HTML; columns ``text`` are left-aligned (the others, numbers,
    right-aligned)."""
    text = set(text)
    head = "".join(f"<th{' class=text' if i in text else ''}>{h}</th>" for i, h in enumerate(header))
    body = "\n".join("<tr>" + "".join(f"<td{' class=text' if i in text else ''}>{c}</td>" for i, c in enumerate(r))
                     + "</tr>" for r in rows)
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}>\n<caption>{caption}</caption>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _num(x: float, digits: int) -> str:
    return "–" if _isnan(x) else f"{x:.{digits}f}"


def leaderboard_section(tables: PaperTables) -> str:
    part = tables.part
    if part.empty:
        return "<p>No explanation-scope results.</p>"
    best, tied = tables.marks()
    columns = list(dict.fromkeys(part["column"]))
    cells = {(r["model"], r["dataset"], r["method"], r["column"]): r for _, r in part.iterrows()}
    out = []
    for (model, dataset), rows in part.groupby(GROUP, sort=False):
        body = []
        for method in dict.fromkeys(rows["method"]):
            line = [html.escape(method)]
            for column in columns:
                r = cells.get((model, dataset, method, column))
                if r is None:
                    line.append("–")
                elif r["status"] != "done" or _isnan(r["mean"]):
                    line.append(f'<span class="status" title="{html.escape(str(r["error"] or ""))}">'
                                f'{html.escape(str(r["status"]))}</span>')
                else:
                    hw = half_width(r)
                    text = _num(r["mean"], tables.digits) + ("" if math.isnan(hw) else f" ± {_num(hw, tables.digits)}")
                    ident = (model, dataset, column, method)
                    klass = "best" if ident in best else "tied" if ident in tied else ""
                    n = f' title="n = {int(r["n"])}"' if r["n"] else ""
                    line.append(f'<span class="{klass}"{n}>{text}</span>' if klass else f"<span{n}>{text}</span>")
            body.append(line)
        caption = f"Leaderboard: {html.escape(model)} on {html.escape(dataset)}"
        out.append(_table(caption, ["method"] + [html.escape(c) for c in columns], body, "leaderboard"))
    note = ("<p class=muted>Mean over samples ± half-width of the 95% bootstrap confidence interval. "
            "<b>Bold</b>: best per column; <i>italics</i>: not separated from the best by a Wilcoxon signed-rank "
            f"test on the same samples (Holm-corrected, α = {tables.alpha:g}). Hover a number for its n.</p>")
    return note + "\n".join(out)


def representations_section(table: pd.DataFrame, digits: int) -> str:
    part = table[table["scope"] == "model"]
    if part.empty:
        return ""
    out = []
    for (model, dataset), rows in part.groupby(GROUP, sort=False):
        body = []
        for _, r in rows.iterrows():
            if r["status"] != "done":
                value = f'<span class="status">{html.escape(str(r["status"]))}</span>'
            else:
                ci = "" if _isnan(r["ci_low"]) else f" [{_num(r['ci_low'], digits)}, {_num(r['ci_high'], digits)}]"
                value = _num(r["mean"], digits) + ci
            body.append([html.escape(f"{r['metric']}.{r['value_name']}" if r["value_name"] != r["metric"]
                                     else r["metric"]), value])
        out.append(_table(f"Representation: {html.escape(model)} on {html.escape(dataset)}", ["value", "result"], body,
                          "representation"))
    return "<h2 id=representations>Representations</h2>\n" + "\n".join(out)


def ranking_section(tables: PaperTables) -> str:
    if tables.ranking.empty:
        return "<p>No per-sample metric with a known direction to rank by.</p>"
    out = []
    for (model, dataset, column), rows in tables.ranking.groupby(GROUP + ["column"], sort=False):
        body = []
        for _, r in rows.iterrows():
            ci = "" if _isnan(r["ci_low"]) else f" [{_num(r['ci_low'], tables.digits)}, {_num(r['ci_high'], tables.digits)}]"
            body.append([str(r["rank"]), html.escape(r["method"]), _num(r["mean"], tables.digits) + ci,
                         str(r["n"]) if r["n"] else "–", html.escape(r["better_than"] or "–"),
                         html.escape(r["tied_with"] or "–")])
        out.append(_table(f"Ranking: {html.escape(model)} on {html.escape(dataset)}, {html.escape(column)}",
                          ["rank", "method", "mean [95% CI]", "n", "significantly better than", "tied with"], body,
                          "ranking", text=(1, 4, 5)))
    note = ("<p class=muted>Two-sided Wilcoxon signed-rank test on the per-sample scores of the samples both methods "
            f"scored, Holm's correction over all pairs of a table, α = {tables.alpha:g}.</p>")
    return note + "\n".join(out)


def agreement_section(tables: PaperTables) -> str:
    if tables.agreement.empty:
        return "<p>Fewer than two metrics with a known direction: no agreement to show.</p>"
    out = []
    for (model, dataset), rows in tables.agreement.groupby(GROUP, sort=False):
        columns = list(dict.fromkeys(list(rows["column_a"]) + list(rows["column_b"])))
        tau = {(r["column_a"], r["column_b"]): r["tau"] for _, r in rows.iterrows()}
        body = []
        for a in columns:
            line = [html.escape(a)]
            for b in columns:
                t = 1.0 if a == b else tau.get((a, b), tau.get((b, a), math.nan))
                line.append("–" if math.isnan(t) else f"{t:.2f}")
            body.append(line)
        n = int(rows["n_methods"].max())
        out.append(_table(f"Rank agreement (Kendall's τ<sub>b</sub>, {n} methods): {html.escape(model)} on "
                          f"{html.escape(dataset)}", [""] + [html.escape(c) for c in columns], body, "agreement"))
    return ("<p class=muted>Kendall's τ<sub>b</sub> between the rankings of the methods by two metrics (both "
            "oriented so that better is larger): 1 same order, −1 reversed.</p>" + "\n".join(out))


def curves_section(exp: Experiment) -> str:
    cells = exp.table.drop_duplicates(["model", "dataset", "method", "metric"])
    charts = []
    for (model, dataset, metric), rows in cells.groupby(["model", "dataset", "metric"], sort=False):
        series = []
        for i, (_, r) in enumerate(rows.iterrows()):
            extras = exp.extras.get(r["key"]) or {}
            curves = [e["curve"] for e in extras.values() if isinstance(e, dict) and "curve" in e]
            if not curves:
                continue
            x, y = mean_curve(curves)
            auc = "" if _isnan(r["mean"]) else f" ({r['mean']:.3f})"
            series.append((f"{r['method']}{auc}", PALETTE[i % len(PALETTE)], x, y))
        if not series:
            continue
        action = "deleted" if metric == "deletion" else "inserted" if metric == "insertion" else "changed"
        chart = svg_chart(series, f"{metric}: {model} on {dataset}", f"fraction of pixels {action}",
                          "probability of the explained class")
        charts.append(f"<figure>{chart}<figcaption>Mean {html.escape(metric)} curve per method over the samples; "
                      "the number in brackets is the mean per-sample AUC.</figcaption></figure>")
    return "\n".join(charts) if charts else "<p>No metric stored per-sample curves.</p>"


def retrain_section(exp: Experiment) -> str:
    """ROAR / KAR: test accuracy of the retrained network against the fraction of pixels removed or kept, per method
    (the ``acc@PCT`` values; the band: min-max over the seeds)."""
    charts = []
    part = exp.table[exp.table["metric"].isin(["roar", "kar"]) & (exp.table["status"] == "done")]
    for (model, dataset, metric), rows in part.groupby(["model", "dataset", "metric"], sort=False):
        series = []
        for i, (method, r) in enumerate(rows.groupby("method", sort=False)):
            points = sorted((float(str(v)[4:].replace("p", ".")) / 100, m) for v, m in zip(r["value_name"], r["mean"])
                            if str(v).startswith("acc@") and str(v) != "acc@0")
            if points:
                series.append((str(method), PALETTE[i % len(PALETTE)], np.array([p[0] for p in points]),
                               np.array([p[1] for p in points])))
        if series:
            action = "removed (ROAR)" if metric == "roar" else "kept (KAR)"
            chart = svg_chart(series, f"{metric}: {model} on {dataset}", f"fraction of pixels {action}",
                              "test accuracy after retraining", markers=True)
            charts.append(_figure(chart, f"Accuracy of the network retrained from scratch per method, mean over the "
                                         f"seeds ({html.escape(metric)}; random is the reference)."))
    return "\n".join(charts)


def _artifact_dirs(exp: Experiment, metric: str) -> list[tuple[str, str, Path]]:
    """(model, dataset, folder) of each model and dataset of ``metric`` whose artifact folder exists."""
    cells = exp.table[exp.table["metric"] == metric].drop_duplicates(["model", "dataset"])
    out = []
    for model, dataset in zip(cells["model"], cells["dataset"]):
        folder = Path(exp.directory) / "artifacts" / f"{slug(str(model))}__{dataset}__{metric}"
        if folder.is_dir():
            out.append((str(model), str(dataset), folder))
    return out


def _figure(content: str, caption: str) -> str:
    return f"<figure>{content}<figcaption>{caption}</figcaption></figure>"


def _png(path: Path, alt: str) -> str:
    return f'<img class="artifact" alt="{html.escape(alt)}" src="{file_data_uri(path)}">'


def sanity_section(exp: Experiment) -> str:
    """The model-randomisation test as Adebayo et al. (NeurIPS 2018, Fig. 2) draw it: the rank correlation of each
    method's maps with the original model's as the model is re-initialised from the top, one line per method."""
    threshold = float(((exp.manifest.get("metrics") or {}).get("explanation_drift") or {}).get("params", {}).get(
        "sanity_threshold", 0.5))
    charts = []
    for check in sanity_checks(exp.table):
        stages = check.stages or max(check.depths, default=1)
        series, low = [], 0.0
        for i, (method, by_depth) in enumerate(check.rho.items()):
            if not by_depth:
                continue
            depths = [0] + sorted(by_depth)
            rho = [1.0] + [by_depth[k] for k in sorted(by_depth)]  # k = 0: the original model's maps themselves
            low = min(low, *rho)
            series.append((method, PALETTE[i % len(PALETTE)], np.array(depths, float), np.array(rho)))
        if not series:
            continue
        ylim = (math.floor(low * 4) / 4, 1.0)
        chart = svg_chart(series, f"sanity check: {check.original} on {check.dataset}",
                          "stages re-initialised from the top (k)", "rank correlation with the original maps",
                          width=640, height=max(340, 60 + 16 * len(series)), xlim=(0, stages), ylim=ylim,
                          xticks=[(k, str(k)) for k in range(stages + 1)], markers=True,
                          yticks=np.arange(ylim[0], 1.0001, 0.25),
                          hlines=[(threshold, f"pass below {threshold:g} at k = {stages}")])
        charts.append(_figure(chart, "Mean Spearman rank correlation between each method's maps on the original "
                              f"model and on the model with its top k of {stages} stages re-initialised (k = 0: the "
                              "original itself). A method whose maps depend on the weights falls towards 0; one "
                              "that stays high explains the input more than the model (Adebayo et al. 2018)."))
    return "\n".join(charts)


def roc_section(exp: Experiment) -> str:
    """ROC curves of the adversarial detectors, one chart per attack: every method's map features and the
    method-free baseline (dashed), from ``artifacts/<model>__<dataset>__adversarial_detection/*-roc.csv``."""
    charts = []
    for model, dataset, folder in _artifact_dirs(exp, "adversarial_detection"):
        curves: dict[str, pd.DataFrame] = {}
        for path in sorted(folder.glob("*-roc.csv")):
            name = path.name[: -len("-roc.csv")]
            if name.endswith("-baseline"):
                continue
            curves["baseline (no maps)" if name == "baseline" else name] = pd.read_csv(path)
        order = [m for m in dict.fromkeys(exp.table["method"]) if m in curves] + \
            [m for m in curves if m not in set(exp.table["method"])]
        attacks = list(dict.fromkeys(a for df in curves.values() for a in df["attack"]))
        for attack in attacks:
            series = []
            for i, name in enumerate(order):
                part = curves[name][curves[name]["attack"] == attack]
                if len(part) < 2:
                    continue
                colour = "#000" if name.startswith("baseline") else PALETTE[i % len(PALETTE)]
                series.append((name, colour, part["fpr"].to_numpy(float), part["tpr"].to_numpy(float)))
            if not series:
                continue
            chart = svg_chart(series, f"{attack}: {model} on {dataset}", "false positive rate", "true positive rate",
                              height=max(320, 60 + 16 * len(series)), dashed=["baseline (no maps)"], diagonal=True)
            charts.append(_figure(chart, f"ROC of the detector of {html.escape(attack)} examples from each method's "
                                  "maps (cross-validated logistic regression on map features); dashed: the "
                                  "method-free baseline; dotted: chance."))
    return "\n".join(charts)


DISSECTION_CATEGORIES = ("object", "part", "scene", "material", "texture", "color", "shape")  # Broden's and ours


def dissection_section(exp: Experiment) -> str:
    """Network dissection as Bau et al. (CVPR 2017, Fig. 5) show it: detectors per concept category and layer
    (the number of unique concepts above each bar), then each layer's top units."""
    import json

    rows = exp.table[(exp.table["metric"] == "dissection") & (exp.table["status"] == "done")]
    out = []
    for (model, dataset), part in rows.groupby(GROUP, sort=False):
        folder = Path(exp.directory) / "artifacts" / f"{slug(str(model))}__{dataset}__dissection"
        categories = list(DISSECTION_CATEGORIES)
        if (folder / "dissection.json").is_file():
            categories = json.loads((folder / "dissection.json").read_text()).get("categories") or categories
        values = dict(zip(part["value_name"].astype(str), part["mean"]))
        layers: list[str] = []
        counts, notes = {}, {}
        for name, v in values.items():
            for category in categories:
                if name.endswith(f".{category}.detectors"):
                    layer = name[: -len(f".{category}.detectors")]
                    layers.append(layer)
                    counts[(layer, category)] = float(v)
                    unique = values.get(f"{layer}.{category}.unique")
                    if unique is not None and not math.isnan(unique):
                        notes[(layer, category)] = f"{int(unique)}"
        layers = list(dict.fromkeys(layers))
        used = [c for c in categories if any((layer, c) in counts for layer in layers)]
        if layers:
            chart = svg_bars(layers, used, counts, f"dissection: {model} on {dataset}", "detector units", notes)
            out.append(_figure(chart, "Units whose top-quantile activation mask matches a concept of the category "
                               "with IoU above the threshold; above each bar, the number of unique concepts they "
                               "detect (Bau et al. 2017)."))
        for path in sorted(folder.glob("*top-units.png")) if folder.is_dir() else []:
            rel = path.relative_to(Path(exp.directory) / "artifacts").as_posix()
            out.append(_figure(_png(path, rel), f"Top units of {html.escape(path.name.split('-top-units')[0])}: "
                               f"{html.escape(str(model))} ({html.escape(rel)})"))
    return "\n".join(out)


def unit_drift_section(exp: Experiment) -> str:
    """The concept switch matrix of each pair (artifacts/<pair>__<dataset>__unit_drift/*-switch.png)."""
    out = []
    for model, dataset, folder in _artifact_dirs(exp, "unit_drift"):
        for path in sorted(folder.glob("*-switch.png")):
            rel = path.relative_to(Path(exp.directory) / "artifacts").as_posix()
            out.append(_figure(_png(path, rel), f"Concept switch matrix of {html.escape(path.name[:-len('-switch.png')])}"
                               f", {html.escape(model)} on {html.escape(dataset)}: how many units detecting the row's "
                               f"concept category in A detect the column's in B ({html.escape(rel)})."))
    return "\n".join(out)


FAMILY_IMAGES = ("*top-units.png", "*-switch.png")  # the PNGs the family sections show


def gallery_section(exp: Experiment) -> str:
    cells = exp.table[exp.table["scope"] == "explanation"].drop_duplicates(["model", "dataset", "method"])
    out = []
    for (model, dataset), rows in cells.groupby(GROUP, sort=False):
        snaps = {}
        for method in rows["method"]:
            path = snapshot_path(exp.directory, model, dataset, method)
            if path.is_file():
                snaps[method] = torch.load(path, map_location="cpu", weights_only=True)
        if not snaps:
            continue
        first = next(iter(snaps.values()))
        ids = [i for i in first["ids"] if all(i in s["ids"] for s in snaps.values())][:GALLERY_IMAGES]
        methods = list(snaps)
        for c in range(0, len(methods), GALLERY_METHODS):  # at most GALLERY_METHODS columns: no sideways scroll
            chunk = methods[c:c + GALLERY_METHODS]
            body = []
            for sample in ids:
                k = first["ids"].index(sample)
                image = first["images"][k].numpy()
                target = int(first["targets"][k])
                up = ' class="up"' if image.shape[-1] < THUMBNAIL else ""  # small images scale up without blurring
                picture = png_data_uri(image.transpose(1, 2, 0), THUMBNAIL)
                line = [f'<img{up} alt="{html.escape(sample)}" src="{picture}">'
                        f'<span class=muted>{html.escape(sample)}<br>target {target}</span>']
                for method in chunk:
                    snap = snaps[method]
                    j = snap["ids"].index(sample)
                    rgb = overlay(snap["images"][j].numpy(), snap["maps"][j].float().numpy())
                    picture = png_data_uri(rgb, THUMBNAIL)
                    line.append(f'<img{up} alt="{html.escape(method)} on {html.escape(sample)}" src="{picture}">')
                body.append(line)
            caption = f"Maps: {html.escape(model)} on {html.escape(dataset)}"
            if len(methods) > GALLERY_METHODS:
                caption += f" ({c // GALLERY_METHODS + 1} of {math.ceil(len(methods) / GALLERY_METHODS)})"
            out.append(_table(caption, ["image"] + [html.escape(m) for m in chunk], body, "gallery"))
    if not out:
        return "<p>No map snapshots under artifacts/maps.</p>"
    return ("<p class=muted>The first images of the run; each map min-max normalised and drawn over the image "
            "(inferno colour map: bright = most salient).</p>" + "\n".join(out))


def artifacts_section(directory: Path, max_images: int = MAX_ARTIFACT_IMAGES) -> str:
    root = directory / "artifacts"
    if not root.is_dir():
        return ""
    groups: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.png")):
        rel = path.relative_to(root)
        if rel.parts[0] == "maps" or any(path.match(p) for p in FAMILY_IMAGES):
            continue
        groups.setdefault(str(rel.parent), []).append(path)
    if not groups:
        return ""
    out = ["<h2 id=artifacts>Other artifacts</h2>",
           "<p class=muted>Other images the metrics wrote under <code>artifacts/</code>.</p>"]
    shown = 0
    for folder, paths in groups.items():
        out.append(f"<h3>{html.escape(folder)}</h3>")
        for path in paths:
            if shown >= max_images:
                break
            rel = path.relative_to(root).as_posix()
            out.append(f'<figure><img class="artifact" alt="{html.escape(rel)}" src="{file_data_uri(path)}">'
                       f"<figcaption>{html.escape(rel)}</figcaption></figure>")
            shown += 1
    total = sum(len(p) for p in groups.values())
    if total > shown:
        out.append(f"<p class=muted>{total - shown} more image(s) under artifacts/ not embedded (--max-images).</p>")
    return "\n".join(out)


def failures_section(table: pd.DataFrame) -> str:
    bad = table[table["status"].isin(["failed", "not_applicable", "skipped"])]
    if bad.empty:
        return ""
    items = [f"<li>{html.escape(' / '.join([r['model'], r['dataset'], r['method'], r['metric']]))}: "
             f"<b>{html.escape(r['status'])}</b>: {html.escape(str(r['error'] or ''))}</li>"
             for _, r in bad.drop_duplicates(["model", "dataset", "method", "metric"]).iterrows()]
    return "<h2 id=failures>Cells that did not run</h2>\n<ul>" + "\n".join(items) + "</ul>"


def environment_section(manifest: dict[str, Any]) -> str:
    env = manifest.get("environment") or {}
    ib = env.get("interpbench") or {}
    device = env.get("device") or {}
    rows = [["interpbench", html.escape(f"{ib.get('version')} (git {ib.get('git_sha')})")],
            ["device", html.escape(" ".join(str(device.get(k)) for k in ("device", "gpu") if device.get(k)))],
            ["platform", html.escape(str(device.get("platform", "")))],
            ["precision", html.escape(str(manifest.get("precision", "")))],
            ["wall time", html.escape(f"{manifest.get('wall_time', math.nan):.1f} s"
                                      if isinstance(manifest.get("wall_time"), (int, float)) else "")]]
    rows += [[html.escape(lib), html.escape(str(v))] for lib, v in (env.get("libraries") or {}).items()]
    models = [[html.escape(spec), html.escape(str((m.get("weights") or {}).get("tag"))),
               f"<code>{html.escape(str((m.get('weights') or {}).get('sha256')))}</code>"]
              for spec, m in (manifest.get("models") or {}).items()]
    datasets = [[html.escape(name), html.escape(", ".join(f"{k}={v}" for k, v in ident.items()))]
                for name, ident in (manifest.get("datasets") or {}).items()]
    parts = [_table("Environment", ["", ""], rows, "environment", text=(0, 1))]
    if models:
        parts.append(_table("Models", ["model", "weights", "sha256"], models, "models", text=(0, 1, 2)))
    if datasets:
        parts.append(_table("Datasets", ["dataset", "identity"], datasets, "datasets", text=(0, 1)))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------- page


def render_html(exp: Experiment, *, alpha: float = ALPHA, digits: int = 3,
                max_images: int = MAX_ARTIFACT_IMAGES) -> str:
    """The page: the end-of-run summary, one section per metric family with its plots, the map gallery, every
    value (leaderboards with confidence intervals, bookkeeping columns, rankings, agreement) in a collapsed
    block, and the environment."""
    tables = PaperTables.from_experiment(exp, alpha=alpha, digits=digits)
    name = html.escape(exp.name)
    command = html.escape(str(exp.manifest.get("command") or "interpbench.run(...)"))
    made = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    families = [
        ("summary", "Summary", summary_html(exp.table)),
        ("curves", "Deletion and insertion curves", curves_section(exp) if
         exp.table["metric"].isin(["deletion", "insertion"]).any() else ""),
        ("retrain", "Remove and retrain (ROAR, KAR)", retrain_section(exp)),
        ("sanity", "Sanity check: model randomisation", sanity_section(exp)),
        ("adversarial", "Adversarial detection", roc_section(exp)),
        ("dissection", "Network dissection", dissection_section(exp)),
        ("drift", "Unit drift", unit_drift_section(exp)),
        ("maps", "Maps of every method on the same images", gallery_section(exp)),
    ]
    families = [(a, title, body) for a, title, body in families if body and not body.startswith("<p>No ")]
    everything = "\n".join([
        "<h3>Leaderboard</h3>", leaderboard_section(tables),
        "<h3>Ranking and paired significance</h3>", ranking_section(tables),
        "<h3>Agreement between metrics</h3>", agreement_section(tables),
        representations_section(exp.table, digits).replace("<h2 id=representations>", "<h3>").replace(
            "Representations</h2>", "Representations</h3>"),
        failures_section(exp.table).replace("<h2 id=failures>", "<h3>").replace("run</h2>", "run</h3>"),
    ])
    artifacts = artifacts_section(exp.directory, max_images)
    sections = families + [("values", "Every value", "<details><summary>Leaderboards with 95% confidence intervals "
                            "and bookkeeping columns, rankings with paired tests, agreement between metrics, "
                            "representation values, cells that did not run</summary>\n<div class=wide>"
                            f"{everything}</div></details>")]
    nav = "".join(f'<li><a href="#{anchor}">{title}</a></li>' for anchor, title, _ in sections)
    if artifacts:
        nav += '<li><a href="#artifacts">Other artifacts</a></li>'
    nav += '<li><a href="#environment">Environment</a></li>'
    body = "\n".join(f"<h2 id={anchor}>{title}</h2>\n{content}" for anchor, title, content in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>interpbench: {name}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{name}</h1>
<p class=muted>Command: <code>{command}</code><br>Report written {made} from the experiment's store; every number
is regenerated from it.</p>
<nav><ul>{nav}</ul></nav>
{body}
{artifacts}
<h2 id=environment>Environment</h2>
{environment_section(exp.manifest)}
</body>
</html>
"""


def write_report(directory: str | Path, out: str | Path | None = None, *, alpha: float = ALPHA, digits: int = 3,
                 max_images: int = MAX_ARTIFACT_IMAGES) -> Path:
    """Write the report of ``directory`` to ``out`` (default ``DIR/report.html``) and return its path."""
    exp = load_experiment(directory, with_extras=True)
    path = Path(out) if out else Path(directory) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(exp, alpha=alpha, digits=digits, max_images=max_images), encoding="utf-8")
    return path
