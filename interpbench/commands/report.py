"""``interpbench report DIR``: the command line of :mod:`interpbench.publish.report` (its arguments, messages and
exit code: 0 written, 2 usage or a missing store).

Part of the command layer; the report itself is built in :mod:`interpbench.publish.report`.
"""

from __future__ import annotations

from interpbench.core.base import ComponentError
from interpbench.publish.ranking import ALPHA
from interpbench.publish.report import MAX_ARTIFACT_IMAGES, write_report

HELP = "write DIR/report.html: leaderboards, curves, map gallery and artifact images in one self-contained file"


def configure(parser) -> None:
    parser.add_argument("directory", help="an experiment directory (holding store.sqlite)")
    parser.add_argument("--out", help="the HTML file to write (default: DIR/report.html)")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="significance level after Holm's correction")
    parser.add_argument("--digits", type=int, default=3, help="decimals shown")
    parser.add_argument("--max-images", type=int, default=MAX_ARTIFACT_IMAGES,
                        help=f"most artifact PNGs embedded ({MAX_ARTIFACT_IMAGES})")


def main(args, console) -> int:
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
