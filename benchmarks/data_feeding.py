"""Share of a run's time spent waiting for data, with samples decoded in the main process and in worker processes.

Runs the same small experiment (``interpbench.run``, fresh output directories, nothing resumed) once per
``--workers`` value and reads what the run measured itself (``manifest.json`` -> ``data_feeding``): the time the
batch loop waited for the next batch, over the loop's whole time (maps, metrics, store writes included). Also
prints the loading alone (every batch, no compute) in the main process, the ceiling of what workers can hide.
With ``--workers 0`` every sample is decoded (here: rendered) in the main thread between two batches; with N
workers the next batches are decoded ahead, in other processes, stacked there, and pinned on CUDA.

    PYTHONPATH=. python benchmarks/data_feeding.py              # shapes:cnn, 512 shapes images, 0, 1 and 2 workers
    PYTHONPATH=. python benchmarks/data_feeding.py --workers 0,4,8 --device cuda --images 4096 --batch-size 128
    PYTHONPATH=. python benchmarks/data_feeding.py --model timm:resnet50 --dataset imagenet-val --device cuda \
        --methods gradcam --metrics deletion --images 2048 --batch-size 64 --workers 0,8  # JPEG decoding

On a CPU the workers and the computation share the same cores, so the time saved is at most the decoding time;
on a GPU the decoding overlaps with device work entirely when there are enough workers.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import yaml

import interpbench as ib
from interpbench.engine.feeding import Feed


def load_only(spec: str, dataset: str, images: int, batch_size: int) -> tuple[float, int]:
    """Seconds to load every batch in the main process (no model work), and the number of images."""
    model = ib.load_model(spec, device="cpu")
    data = ib.load_dataset(dataset, split="test", size=model.input_size)
    n = min(images, len(data))
    batches = [range(lo, min(n, lo + batch_size)) for lo in range(0, n, batch_size)]
    t0 = time.perf_counter()
    for _ in Feed(data, batches, workers=0):
        pass
    return time.perf_counter() - t0, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes:cnn")
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--methods", default="gradcam")
    parser.add_argument("--metrics", default="energy_pointing_game", help="a light metric by default, so that "
                        "the data is a visible share of the work on a CPU")
    parser.add_argument("--metric-param", action="append", default=[], metavar="METRIC.PARAM=VALUE",
                        help="as `interpbench run`")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts to compare")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    metric_params: dict[str, dict] = {}
    for item in args.metric_param:
        name, _, rest = item.partition(".")
        key, _, value = rest.partition("=")
        metric_params.setdefault(name, {})[key] = yaml.safe_load(value)
    counts = [int(w) for w in args.workers.split(",")]

    load_s, n = load_only(args.model, args.dataset, args.images, args.batch_size)
    print(f"{args.model} on {args.dataset}: {n} images in {math.ceil(n / args.batch_size)} batches of "
          f"{args.batch_size}, methods {args.methods}, metrics {args.metrics} {metric_params}, device {args.device}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"loading alone, main process: {load_s:.2f} s ({1000 * load_s / n:.1f} ms per image)")
    print(f"{'workers':>7s} {'loop s':>8s} {'waiting s':>10s} {'waiting':>8s} {'images/s':>9s}")
    for workers in counts:
        with tempfile.TemporaryDirectory() as out:
            ib.run(methods=args.methods.split(","), models=[args.model], metrics=args.metrics.split(","),
                   datasets=[args.dataset], out=out, limit=n, batch_size=args.batch_size, device=args.device,
                   metric_params=metric_params, workers=workers, progress=False)
            feeding = json.loads((Path(out) / "manifest.json").read_text())["data_feeding"]
        stats = next(iter(feeding.values()))
        print(f"{workers:7d} {stats['total_s']:8.2f} {stats['wait_s']:10.2f} {100 * stats['wait_share']:7.1f}% "
              f"{n / stats['total_s']:9.1f}")
    print("waiting: share of the batch loop's time spent waiting for the next batch (decoding, collation, pinning)")


if __name__ == "__main__":
    main()
