"""Efficiency of the deletion and insertion metrics against the raw forward throughput of the same model.

The metric needs ``images * (n_steps + 1)`` forward passes. Efficiency = time of that many raw batched forward
passes (same chunks, same precision, ``no_grad``) / time of the metric; 1.0 is the limit (docs/scale.md).

    PYTHONPATH=. python benchmarks/deletion_insertion.py                     # 4 images, step 1792 (28 steps + 1)
    PYTHONPATH=. python benchmarks/deletion_insertion.py --step 224          # RISE's demo setting (224 steps + 1)
    PYTHONPATH=. python benchmarks/deletion_insertion.py --device cuda --images 32 --chunk 256
    PYTHONPATH=. python benchmarks/deletion_insertion.py --device cuda --model timm:resnet50 --images 32 --chunk 256 \
        --precision bf16 --channels-last                                  # issue 8's target: efficiency >= 0.9

``--precision``, ``--channels-last`` and ``--compile`` apply to the raw passes and the metric alike, as
``interpbench run`` applies them (autocast; the model's weights and the images in channels-last; the model's
forward through ``torch.compile``).

Random or pretrained weights do not change the speed: the model comes from ``interpbench.load_model`` when it
can load without downloading anything, else from timm with random weights.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from interpbench.core.base import Batch, Model
from interpbench.engine.compile import compile_model
from interpbench.engine.config import PRECISIONS
from interpbench.metrics.causal import Deletion, Insertion, auto_chunk, num_causal_steps


def load_model(spec: str) -> Model:
    """``interpbench.load_model(spec)``, then ``spec@random``, then timm directly (random weights)."""
    errors = []
    try:
        import interpbench

        for attempt in (spec, spec.split("@")[0] + "@random"):
            try:
                model = interpbench.load_model(attempt)
                print(f"model: interpbench.load_model({attempt!r})")
                return model
            except Exception as exc:  # noqa: BLE001 - report and fall back
                errors.append(f"load_model({attempt!r}): {type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001
        errors.append(f"import interpbench: {type(exc).__name__}: {exc}")
    import timm

    source, _, name = spec.partition(":")
    if source != "timm":
        raise SystemExit(f"cannot load {spec!r}: " + "; ".join(errors))
    net = timm.create_model(name.split("@")[0], pretrained=False)
    cfg = net.pretrained_cfg
    print(f"model: timm.create_model({name.split('@')[0]!r}, pretrained=False) (interpbench: {'; '.join(errors)})")
    return Model(
        net,
        spec=f"timm:{name.split('@')[0]}@random",
        mean=cfg["mean"],
        std=cfg["std"],
        input_size=cfg["input_size"][1:],
        class_names=[str(i) for i in range(net.num_classes)],
        cam_layer=net.feature_info[-1]["module"],
        label_space="imagenet-1k",
        default_dataset="none",
        weights={"tag": "random"},
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_raw(model: Model, x: torch.Tensor, sizes: list[int]) -> float:
    """Seconds for raw forward passes of the given chunk sizes (softmax included, as the metric reads it)."""
    sync(x.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for n in sizes:
            model(x[:n]).float().softmax(dim=1)
    sync(x.device)
    return time.perf_counter() - t0


class ForwardClock:
    """Adds up the time spent inside ``model.forward`` (hooks), to split a metric's time into forwards + rest."""

    def __init__(self, model: Model) -> None:
        self.total, self._t0, self.device = 0.0, 0.0, model.device
        model.register_forward_pre_hook(self._start)
        model.register_forward_hook(self._stop)

    def _start(self, module, args) -> None:
        sync(self.device)
        self._t0 = time.perf_counter()

    def _stop(self, module, args, output) -> None:
        sync(self.device)
        self.total += time.perf_counter() - self._t0


def time_metric(metric, model: Model, batch: Batch, maps: torch.Tensor, clock: ForwardClock) -> tuple[float, float]:
    """(seconds of the metric, seconds of it spent in the model's forward passes)."""
    sync(batch.images.device)
    inside = clock.total
    t0 = time.perf_counter()
    metric.score(model, batch, maps)
    sync(batch.images.device)
    return time.perf_counter() - t0, clock.total - inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="timm:tf_efficientnet_lite0")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--step", type=int, default=1792, help="pixels per step (RISE: 1792 batched, 224 demo)")
    parser.add_argument("--chunk", type=int, help="images per forward pass (default: the metrics' own choice for the "
                        "device, interpbench.metrics.causal.auto_chunk)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", nargs="?", const="default", metavar="MODE", help="torch.compile the forward")
    parser.add_argument("--compile-backend", default="inductor")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.chunk is None:
        args.chunk = auto_chunk(device, args.size, args.size)
    model = load_model(args.model).to(device).eval()
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast(device.type, dtype=PRECISIONS[args.precision])) if PRECISIONS[args.precision] \
        else nullcontext
    torch.manual_seed(0)
    images = torch.rand(args.images, 3, args.size, args.size, device=device).contiguous(memory_format=layout)
    if args.compile:
        record = compile_model(model, args.compile, args.compile_backend, warmup=images[: args.chunk])
        print(f"compile: {record['status']} {record['error'] or ''}")
    maps = torch.rand(args.images, args.size, args.size, device=device)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    batch = Batch(ids=[str(i) for i in range(args.images)], images=images, targets=targets, samples=[{}] * args.images)

    forwards = args.images * (num_causal_steps(args.size * args.size, args.step) + 1)
    sizes = [min(args.chunk, forwards - lo) for lo in range(0, forwards, args.chunk)]
    raw_input = torch.rand(min(args.chunk, forwards), 3, args.size, args.size, device=device).contiguous(
        memory_format=layout)
    metrics = {
        "deletion": Deletion(step=args.step, chunk=args.chunk),
        "insertion": Insertion(step=args.step, chunk=args.chunk),
    }
    print(
        f"{model.spec} on {device} ({torch.get_num_threads()} threads), {args.images} images of {args.size} px, "
        f"step {args.step}: {forwards} forwards per metric in chunks {sorted(set(sizes), reverse=True)}; "
        f"precision {args.precision}, {'channels-last' if args.channels_last else 'contiguous'}, "
        f"compile {args.compile or 'off'}"
    )

    clock = ForwardClock(model)
    with autocast():
        time_raw(model, raw_input, sizes)  # warm-up
        for metric in metrics.values():
            time_metric(metric, model, batch, maps, clock)
    times: dict[str, list[float]] = {"raw": [], **{name: [] for name in metrics}}
    inside: dict[str, list[float]] = {name: [] for name in metrics}
    for _ in range(args.repeats):  # interleaved, so that noise from other processes hits all alike
        with autocast():
            times["raw"].append(time_raw(model, raw_input, sizes))
        for name, metric in metrics.items():
            with autocast():
                total, forward = time_metric(metric, model, batch, maps, clock)
            times[name].append(total)
            inside[name].append(forward)

    raw = statistics.median(times["raw"])
    print(f"{'':10s} {'median s':>9s} {'min s':>8s} {'forwards/s':>11s} {'efficiency':>11s} {'in forward':>11s}")
    print(f"{'raw':10s} {raw:9.3f} {min(times['raw']):8.3f} {forwards / raw:11.1f} {1:11.3f} {1:11.3f}")
    for name in metrics:
        t = statistics.median(times[name])
        paired = statistics.median(r / m for r, m in zip(times["raw"], times[name]))
        share = statistics.median(f / m for f, m in zip(inside[name], times[name]))
        print(f"{name:10s} {t:9.3f} {min(times[name]):8.3f} {forwards / t:11.1f} {paired:11.3f} {share:11.3f}")
    print("efficiency: median over repeats of raw forward time / metric time, measured in the same round (1.0 is")
    print("the limit); in forward: share of the metric's own time spent in the model's forward passes (the same")
    print("chunked forwards as the raw column, timed inside the run, so it is robust to load from other processes)")


if __name__ == "__main__":
    main()
