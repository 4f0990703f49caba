"""Speed of unit ablation: the tail pass on cached activations against whole-network passes, and the whole metric
against one raw forward pass over the probe.

On the same in-memory probe (data generation is not timed):

- raw forward: the model over the probe images in batches (``no_grad``), the reference point;
- single-unit removals, ``--units`` of them (the first units of the layer), each over every probe image, run two
  ways with the same keep-masks: the tail pass (the layer's activations computed once, only the network after the
  layer re-run, many masks per batch: :class:`interpbench.ops.ablation.TailRunner` in ``"tail"`` mode) and
  whole-network passes with a hook that substitutes the ablated activations (``"hook"`` mode, what a plain
  implementation costs); the logits of the two must agree;
- unit_ablation(): the whole study of the layer (every unit alone, per class top-k / random / other classes' units,
  the whole-layer curve) in raw-forward equivalents.

    PYTHONPATH=. python benchmarks/ablation.py                             # shapes:cnn layer3, 256 shapes images
    PYTHONPATH=. python benchmarks/ablation.py --images 64 --units 8 --repeats 1
    PYTHONPATH=. python benchmarks/ablation.py --device cuda --model timm:resnet18 --layer layer4 --size 224 \\
        --images 512 --batch-size 128 --units 64                           # the GPU figure (random weights offline)

Timings are interleaved medians over ``--repeats``; on a shared CPU report the ratios, not the times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


class MemoryProbe(torch.utils.data.Dataset):
    def __init__(self, samples: list[dict]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]


def load_model(spec: str, device: str):
    from interpbench.api import load_model as load

    try:
        return load(spec, device=device)
    except Exception:  # noqa: BLE001 - no pretrained weights offline: the same architecture, random weights
        return load(spec + "@random", device=device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes:cnn")
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=None, help="image size (default: the model's input size)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--units", type=int, default=32, help="single-unit removals timed both ways")
    parser.add_argument("--max-rows", type=int, default=4096, help="rows per tail pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-metric", action="store_true", help="time the tail against the hook passes only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from interpbench.api import load_dataset
    from interpbench.metrics.ablation import unit_ablation
    from interpbench.ops.ablation import TailRunner, ablate, removal_masks
    from interpbench.ops.hooks import capture_outputs

    model = load_model(args.model, args.device).eval()
    size = args.size or model.input_size[0]
    source = load_dataset("shapes", "test", size=size)
    samples = [source[i] for i in range(args.images)]
    probe = MemoryProbe(samples)
    images = torch.stack([s["image"] for s in samples]).to(args.device)
    module = dict(model.net.named_modules())[args.layer]
    tail = TailRunner(model, model.net, args.layer, mode="tail")
    hook = TailRunner(model, model.net, args.layer, mode="hook")
    batches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]

    @torch.no_grad()
    def raw() -> None:
        for batch in batches:
            model(batch)

    @torch.no_grad()
    def activations() -> list[torch.Tensor]:
        out = []
        for batch in batches:
            with capture_outputs({args.layer: module}, detach=True) as capture:
                model(batch)
            out.append(capture[args.layer].float())
        return out

    cached = activations()
    units = cached[0].shape[1]
    keep = removal_masks(units, [[u] for u in range(min(args.units, units))], args.device)

    def by_tail() -> list[torch.Tensor]:
        out = []
        step = max(1, args.max_rows // args.batch_size)
        for acts in activations():  # the cache is part of the cost
            for s in range(0, len(keep), step):
                out.append(tail(ablate(acts, keep[s:s + step]), None))
        return out

    def by_hook() -> list[torch.Tensor]:
        out = []
        for acts, batch in zip(cached, batches):
            for m in range(len(keep)):  # one whole-network pass per removal and batch
                out.append(hook(ablate(acts, keep[m:m + 1]), batch))
        return out

    # both in the order batch, mask, image: the logits of the same removals
    a, b = torch.cat(by_tail()), torch.cat(by_hook())
    agree = a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-4)

    times: dict[str, list[float]] = {"raw": [], "tail": [], "hook": [], "metric": []}
    for _ in range(args.repeats):
        for name, fn in (("raw", raw), ("tail", by_tail), ("hook", by_hook),
                         ("metric", None if args.skip_metric else
                          lambda: unit_ablation(model, probe, args.layer, batch_size=args.batch_size,
                                                device=args.device, max_rows=args.max_rows))):
            if fn is None:
                continue
            sync(args.device)
            start = time.perf_counter()
            fn()
            sync(args.device)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    print(f"model {args.model} layer {args.layer}: {units} units, activations {tuple(cached[0].shape[1:])}, "
          f"{len(images)} images of {size} px, batch {args.batch_size}, {args.repeats} repeats, device {args.device}, "
          f"tail mode available: {tail.mode == 'tail'}")
    print(f"raw forward over the probe: {med['raw']:.3f} s")
    print(f"{len(keep)} single-unit removals over the probe: tail pass {med['tail']:.3f} s "
          f"({med['tail'] / med['raw']:.2f} raw forwards, {med['tail'] / med['raw'] / len(keep):.3f} per removal); "
          f"whole-network passes {med['hook']:.3f} s ({med['hook'] / med['raw']:.2f} raw forwards); "
          f"tail {med['hook'] / med['tail']:.1f}x faster; logits agree: {agree}")
    if "metric" in med:
        print(f"unit_ablation() end to end: {med['metric']:.3f} s = {med['metric'] / med['raw']:.1f} raw forwards")


if __name__ == "__main__":
    main()
