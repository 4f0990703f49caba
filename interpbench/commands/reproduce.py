"""``interpbench reproduce DIR``: the command line of :mod:`interpbench.publish.reproduce` (its arguments, the table
of verdicts it prints, its exit code: 0 identical or equal within numerical tolerance, 1 different, 2 usage).

Part of the command layer; the re-running and the verdicts live in :mod:`interpbench.publish.reproduce` and
:mod:`interpbench.publish.compare`.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from interpbench.core.base import ComponentError
from interpbench.ops import rounding as rnd
from interpbench.publish.compare import ATOL, DIFFERENT, IDENTICAL, RTOL, WITHIN
from interpbench.publish.reproduce import ROUNDING_RUNS, Reproduction, reproduce

HELP = "re-run an experiment directory's recorded configuration and compare every number with the committed one"


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
