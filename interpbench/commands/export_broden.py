"""``interpbench export-broden``: write a probe dataset (by default the shapes world) in the Broden layout.

The directory can then be dissected through the ``broden`` loader (a ``datasets.yaml`` entry with
``loader: broden`` and its ``path``) or by NetDissect itself. Images are written as 8-bit PNG (lossless) unless
``--image-format jpg``.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from interpbench import api
from interpbench.core.base import ComponentError
from interpbench.datasets.broden import write_broden
from interpbench.engine.runner import LimitedDataset

HELP = "write a probe with concept labels (default: the shapes world) in the Broden layout (index.csv, label PNGs)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the directory to write (created; files in it are replaced)")
    parser.add_argument("--dataset", default="shapes", help="a dataset of datasets.yaml whose samples carry concepts "
                        "(default: shapes)")
    parser.add_argument("--split", default="test", help="the split to export (default: test)")
    parser.add_argument("--limit", type=int, help="export the first N samples (default: all)")
    parser.add_argument("--size", type=int, help="image size in pixels (default: the dataset's)")
    parser.add_argument("--image-format", default="png", choices=["png", "jpg"],
                        help="png (lossless, default) or jpg (quality 95, as Broden's own images)")
    parser.add_argument("--name", default="probe", help="subdirectory of images/ that holds the files (default: probe)")
    parser.add_argument("--datasets-config", help="a datasets.yaml overriding the packaged and ./datasets.yaml entries")


def main(args: argparse.Namespace, console: Console) -> int:
    try:
        if args.limit is not None and args.limit < 1:
            raise ComponentError(f"--limit {args.limit}: must be a positive integer")
        dataset = api.load_dataset(args.dataset, split=args.split, size=args.size, config=args.datasets_config)
        if "concepts" not in getattr(dataset, "provides", ()):
            raise ComponentError(f"dataset {args.dataset!r} has no concept labels ('concepts'); export a probe such "
                                 "as 'shapes'")
        if args.limit is not None and args.limit < len(dataset):
            dataset = LimitedDataset(dataset, args.limit)
    except ComponentError as exc:
        console.print(f"[red]export-broden: {exc}[/red]")
        return 2
    try:
        out = write_broden(dataset, args.out, name=args.name, image_format=args.image_format)
    except (ComponentError, OSError) as exc:
        console.print(f"[red]export-broden: {exc}[/red]")
        return 1
    names = dataset.concept_names()
    console.print(f"wrote {len(dataset)} images of {args.dataset!r} ({', '.join(f'{c}: {len(v) - 1}' for c, v in names.items())} "
                  f"concepts) to {out}")
    console.print("dissect it with a datasets.yaml entry:\n"
                  f"  {args.dataset}-broden:\n    loader: broden\n    path: {out.resolve()}")
    return 0
