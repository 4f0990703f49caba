"""``interpbench table DIR``: the command line of :mod:`interpbench.publish.tables` (its arguments, what it prints
on stdout, its exit code: 0 written, 2 usage, an unknown name or a missing store).

Part of the command layer; the tables are laid out in :mod:`interpbench.publish.tables`.
"""

from __future__ import annotations

from pathlib import Path

from interpbench.core.base import ComponentError
from interpbench.publish.ranking import ALPHA
from interpbench.publish.selection import VALUE_CHOICES, Selection
from interpbench.publish.tables import paper_tables

HELP = "paper tables of an experiment: LaTeX, Markdown, CSV, significance ranking, rank agreement between metrics"

FORMATS = ("markdown", "latex", "csv", "ranking", "agreement", "none")


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def configure(parser) -> None:
    parser.add_argument("directory", help="an experiment directory (holding store.sqlite)")
    parser.add_argument("--out", help="where to write the tables (default: DIR/tables)")
    parser.add_argument("--print", dest="show", default="markdown", choices=FORMATS,
                        help="what to print on stdout (default: markdown)")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="significance level after Holm's correction")
    parser.add_argument("--digits", type=int, default=3, help="decimals shown")
    parser.add_argument("--metrics", help="comma-separated metrics to show (default: all the experiment has)")
    parser.add_argument("--models", help="comma-separated model specs to show")
    parser.add_argument("--datasets", help="comma-separated datasets to show")
    parser.add_argument("--methods", help="comma-separated methods to show (the paired tests run over these)")
    parser.add_argument("--values", default="headline", help="headline (default: each metric's headline values), "
                        "all (every value the store holds), or comma-separated names: VALUE or METRIC.VALUE, '*' for "
                        "one part of a name, e.g. pointing_game.difficult,adversarial_detection.*.tpr5")
    parser.add_argument("--transpose", action="store_true", help="methods as columns, values as rows")


def main(args, console) -> int:
    if not 0 < args.alpha < 1:
        console.print(f"[red]error:[/red] --alpha {args.alpha}: must lie between 0 and 1, e.g. 0.05")
        return 2
    if args.digits < 0:
        console.print(f"[red]error:[/red] --digits {args.digits}: must be 0 or more")
        return 2
    values = getattr(args, "values", "headline")
    selection = Selection(metrics=_names(getattr(args, "metrics", None)), models=_names(getattr(args, "models", None)),
                          datasets=_names(getattr(args, "datasets", None)),
                          methods=_names(getattr(args, "methods", None)),
                          values=values if values in VALUE_CHOICES else _names(values) or "headline",
                          transpose=bool(getattr(args, "transpose", False)))
    try:
        tables = paper_tables(args.directory, alpha=args.alpha, digits=args.digits, selection=selection)
        out = Path(args.out) if args.out else Path(args.directory) / "tables"
        written = tables.write(out)
    except (FileNotFoundError, ComponentError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    text = {"markdown": tables.markdown, "latex": tables.latex, "csv": tables.csv, "ranking": tables.ranking_markdown,
            "agreement": tables.agreement_markdown, "none": lambda: ""}[args.show]()
    if text:
        print(text, end="" if text.endswith("\n") else "\n")
    console.print(f"tables written to {out}: " + ", ".join(p.name for p in written))
    return 0
