"""``interpbench pointing-center DATASET``: the pointing game of the ``center`` baseline from the annotations alone.

No model and no image decoding: one trial per (image, class present), TorchRay's centre point (W/2, H/2), the
same :class:`interpbench.metrics.localization.PointingGame` the runner uses. On VOC 2007 test and COCO 2014 val
it reproduces TorchRay's published centre numbers (``docs/pointing.csv``, %, all / difficult: VOC07 69.6 / 42.4,
COCO14 27.8 / 19.5); the difficult subset as published needs TorchRay's list file (``difficult_file:`` in the
dataset's ``options``), otherwise it is computed from the boxes.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from rich.console import Console

from interpbench import api
from interpbench.core.base import Batch, ComponentError
from interpbench.methods.baselines import CenterMap
from interpbench.metrics.localization import PointingGame

HELP = "pointing game of the center baseline on a localisation dataset's annotations (checks TorchRay's numbers)"
PUBLISHED = {"voc07-test": (69.6, 42.4), "coco14-val": (27.8, 19.5)}  # TorchRay docs/pointing.csv, center row


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="a datasets.yaml name, e.g. voc07-test or coco14-val")
    parser.add_argument("--limit", type=int, help="the first N images only (default: all)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="hit distance in original pixels (default: the dataset's, 15 on VOC and COCO)")
    parser.add_argument("--datasets-config", help="a datasets.yaml overriding the packaged and ./datasets.yaml entries")


def main(args: argparse.Namespace, console: Console) -> int:
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


def centre_baseline(dataset: Any, tolerance: float | str = "auto", limit: int | None = None,
                    batch_size: int = 64) -> dict[str, float]:
    """The pointing game of the ``center`` baseline on a dataset's annotations alone (no image is decoded).

    Runs :class:`PointingGame` exactly as the runner would with ``--methods center --target label``: one trial per
    (image, class present), TorchRay's centre point, the dataset's tolerance (``"auto"``: 15 px on VOC and COCO) or
    ``tolerance`` pixels. On VOC 2007 test and COCO 2014 val this gives TorchRay's
    published centre numbers (``docs/pointing.csv``: VOC07 69.6 / 42.4, COCO14 27.8 / 19.5 %, all / difficult)
    by construction. The dataset must offer ``annotation(index)`` (the loaders in ``interpbench.datasets``).
    """
    if not hasattr(dataset, "annotation"):
        raise ComponentError(f"centre_baseline: dataset {getattr(dataset, 'name', dataset)!r} has no annotation(index) "
                             "method; use a localisation loader (voc, coco, imagenet_loc)")
    metric = PointingGame(tolerance=tolerance)
    method = CenterMap()
    n = len(dataset) if limit is None else min(limit, len(dataset))

    def flush(trials: list[dict]) -> None:
        if trials:
            batch = Batch(ids=[t["id"] for t in trials], images=torch.zeros(len(trials), 3, 1, 1),
                          targets=torch.tensor([t["label"] for t in trials]), samples=trials, method=method)
            metric.update(None, batch, torch.zeros(len(trials), 2, 2))  # the centre point ignores the map

    trials: list[dict] = []
    for index in range(n):
        sample = dataset.annotation(index)
        classes = sample.get("labels", [sample["label"]] if "label" in sample else [])
        for c in classes:
            trials.append({**sample, "id": f"{sample['id']}#{c}", "label": int(c), "image_id": sample["id"]})
        if len(trials) >= batch_size:
            flush(trials)
            trials = []
    flush(trials)
    return metric.compute()
