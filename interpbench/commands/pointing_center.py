"""``interpbench pointing-center DATASET``: the pointing game of the ``center`` baseline from the annotations alone.

No model and no image decoding: one trial per (image, class present), TorchRay's centre point (W/2, H/2), the
same :class:`interpbench.metrics.localization.PointingGame` the runner uses. On VOC 2007 test and COCO 2014 val
it reproduces TorchRay's published centre numbers (``docs/pointing.csv``, %, all / difficult: VOC07 69.6 / 42.4,
COCO14 27.8 / 19.5); the difficult subset as published needs TorchRay's list file (``difficult_file:`` in the
dataset's ``options``), otherwise it is computed from the boxes.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from interpbench.base import ComponentError

HELP = "pointing game of the center baseline on a localisation dataset's annotations (checks TorchRay's numbers)"
PUBLISHED = {"voc07-test": (69.6, 42.4), "coco14-val": (27.8, 19.5)}  # TorchRay docs/pointing.csv, center row


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="a datasets.yaml name, e.g. voc07-test or coco14-val")
    parser.add_argument("--limit", type=int, help="the first N images only (default: all)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="hit distance in original pixels (default: the dataset's, 15 on VOC and COCO)")
    parser.add_argument("--datasets-config", help="a datasets.yaml overriding the packaged and ./datasets.yaml entries")


def main(args: argparse.Namespace, console: Console) -> int:
    from interpbench import api
    from interpbench.metrics.localization import centre_baseline

    try:
        if args.limit is not None and args.limit < 1:
            raise ComponentError(f"--limit {args.limit}: must be a positive integer")
        dataset = api.load_dataset(args.dataset, split="test", config=args.datasets_config)
        result = centre_baseline(dataset, tolerance="auto" if args.tolerance is None else args.tolerance,
                                 limit=args.limit)
    except ComponentError as exc:
        console.print(f"[red]pointing-center: {exc}[/red]")
        return 2
    pct = {k.replace("pointing_game", "all"): 100 * v for k, v in result.items()
           if not k.startswith(("n", "no_", "skipped", "tolerance", "smooth", "torchray"))}
    for key in ("difficult", "difficult_ci_low", "difficult_ci_high"):  # absent when no pair is difficult
        pct.setdefault(key, float("nan"))
    console.print(f"center baseline on {args.dataset}: all {pct['all']:.1f}% [{pct['all_ci_low']:.1f}, "
                  f"{pct['all_ci_high']:.1f}], difficult {pct['difficult']:.1f}% [{pct['difficult_ci_low']:.1f}, "
                  f"{pct['difficult_ci_high']:.1f}]; {int(result['n'])} trials ({int(result['n_difficult'])} "
                  f"difficult), {int(result['skipped_difficult'])} all-difficult "
                  "pairs skipped")
    if args.dataset in PUBLISHED and args.limit is None:
        all_, difficult = PUBLISHED[args.dataset]
        console.print(f"TorchRay (docs/pointing.csv): all {all_}%, difficult {difficult}%")
    return 0
