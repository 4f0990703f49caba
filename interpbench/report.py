"""``interpbench report DIR``: one self-contained HTML file per experiment (``DIR/report.html``).

It holds the leaderboards (best per column in bold), the ranking with paired significance tests and the rank
agreement between metrics (from :mod:`interpbench.tables`), the mean deletion / insertion curve of every method
(any per-sample metric that stores ``{"curve": [...]}`` in its extras) as inline SVG, a gallery of the maps of
every method on the same images (the runner's ``artifacts/maps/*.pt`` snapshots) and every PNG other metrics
leave under ``artifacts/`` (dissection unit images, drift heatmaps), embedded as base64. No script, font,
stylesheet or image is fetched from anywhere: the file opens in a browser with no network.
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

from .tables import ALPHA, GROUP, Experiment, PaperTables, _isnan, half_width, load_experiment
from .runner import snapshot_path

HELP = "write DIR/report.html: leaderboards, curves, map gallery and artifact images in one self-contained file"

# matplotlib's "inferno" at 9 evenly spaced points (Smith & van der Walt's perceptually uniform colour maps)
INFERNO = np.array([[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85], [227, 89, 51],
                    [249, 140, 10], [249, 201, 50], [252, 255, 164]], dtype=np.float64)
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]  # Tableau 10
MAX_ARTIFACT_IMAGES = 200
GALLERY_IMAGES = 4  # rows (images) per model and dataset in the map gallery
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
nav ul { columns: 2; } .chart text { font-size: 11px; fill: #333; }
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
              width: int = 520, height: int = 320) -> str:
    """A line chart as inline SVG: ``series`` of (label, colour, x in [0,1], y in [0,1])."""
    left, right, top, bottom = 48, 170, 28, 42
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + x * pw

    def sy(y: float) -> float:
        return top + (1 - y) * ph

    e = html.escape
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{e(title)}">',
             f'<text x="{left}" y="16" style="font-weight:600">{e(title)}</text>']
    for t in np.linspace(0, 1, 5):
        parts.append(f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + ph}" stroke="#eee"/>')
        parts.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + pw}" y2="{sy(t):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{sx(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{t:.2f}</text>')
        parts.append(f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:.2f}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">{e(xlabel)}</text>')
    parts.append(f'<text transform="translate(12 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">{e(ylabel)}</text>')
    for i, (label, colour, x, y) in enumerate(series):
        points = " ".join(f"{sx(a):.1f},{sy(min(max(b, 0.0), 1.0)):.1f}" for a, b in zip(x, y))
        parts.append(f'<polyline class="curve" data-label="{e(label)}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.8" points="{points}"/>')
        ly = top + 8 + 16 * i
        parts.append(f'<line x1="{left + pw + 10}" y1="{ly}" x2="{left + pw + 28}" y2="{ly}" stroke="{colour}" '
                     'stroke-width="2.5"/>')
        parts.append(f'<text x="{left + pw + 32}" y="{ly + 4}">{e(label)}</text>')
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
        body = []
        for sample in ids:
            k = first["ids"].index(sample)
            image = first["images"][k].numpy()
            target = int(first["targets"][k])
            up = ' class="up"' if image.shape[-1] < THUMBNAIL else ""  # small images scale up without blurring
            picture = png_data_uri(image.transpose(1, 2, 0), THUMBNAIL)
            line = [f'<img{up} alt="{html.escape(sample)}" src="{picture}">'
                    f'<span class=muted>{html.escape(sample)}<br>target {target}</span>']
            for method, snap in snaps.items():
                j = snap["ids"].index(sample)
                rgb = overlay(snap["images"][j].numpy(), snap["maps"][j].float().numpy())
                picture = png_data_uri(rgb, THUMBNAIL)
                line.append(f'<img{up} alt="{html.escape(method)} on {html.escape(sample)}" src="{picture}">')
            body.append(line)
        caption = f"Maps: {html.escape(model)} on {html.escape(dataset)}"
        out.append(_table(caption, ["image"] + [html.escape(m) for m in snaps], body, "gallery"))
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
        if rel.parts[0] == "maps":
            continue
        groups.setdefault(str(rel.parent), []).append(path)
    if not groups:
        return ""
    out = ["<h2 id=artifacts>Artifacts</h2>",
           "<p class=muted>Images the model-scope metrics wrote under <code>artifacts/</code> (dissection units, "
           "drift heatmaps, ...).</p>"]
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
    tables = PaperTables.from_experiment(exp, alpha=alpha, digits=digits)
    name = html.escape(exp.name)
    command = html.escape(str(exp.manifest.get("command") or "interpbench.run(...)"))
    made = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        ("leaderboard", "Leaderboard", leaderboard_section(tables)),
        ("ranking", "Ranking and paired significance", ranking_section(tables)),
        ("agreement", "Agreement between metrics", agreement_section(tables)),
        ("curves", "Deletion and insertion curves", curves_section(exp)),
        ("maps", "Maps of every method on the same images", gallery_section(exp)),
    ]
    extra = [s for s in (representations_section(exp.table, digits), artifacts_section(exp.directory, max_images),
                         failures_section(exp.table)) if s]
    nav = "".join(f'<li><a href="#{anchor}">{title}</a></li>' for anchor, title, _ in sections)
    nav += "".join(f'<li><a href="#{a}">{t}</a></li>' for a, t in
                   (("representations", "Representations"), ("artifacts", "Artifacts"), ("failures", "Failures"))
                   if any(f"id={a}>" in s for s in extra))
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
<p class=muted>Command: <code>{command}</code><br>Report written {made} by <code>interpbench report</code> from
the experiment's store; every number is regenerated from it.</p>
<nav><ul>{nav}</ul></nav>
{body}
{chr(10).join(extra)}
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


# --------------------------------------------------------------------------------------------- CLI


def configure(parser) -> None:
    parser.add_argument("directory", help="an experiment directory (holding store.sqlite)")
    parser.add_argument("--out", help="the HTML file to write (default: DIR/report.html)")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="significance level after Holm's correction")
    parser.add_argument("--digits", type=int, default=3, help="decimals shown")
    parser.add_argument("--max-images", type=int, default=MAX_ARTIFACT_IMAGES,
                        help=f"most artifact PNGs embedded ({MAX_ARTIFACT_IMAGES})")


def main(args, console) -> int:
    from .base import ComponentError

    if not 0 < args.alpha < 1 or args.digits < 0 or args.max_images < 0:
        console.print("[red]error:[/red] --alpha must lie in (0, 1), --digits and --max-images be >= 0")
        return 2
    try:
        path = write_report(args.directory, args.out, alpha=args.alpha, digits=args.digits, max_images=args.max_images)
    except (FileNotFoundError, ComponentError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    console.print(f"report written to {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0
