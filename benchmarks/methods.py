"""Speed of every explanation method: images per second at batch 1 and batch 32, against the raw model.

For each model (``timm:tf_efficientnet_lite0`` at 224 px and ``shapes:cnn`` at 64 px by default) and each method
(every installed one by default), the table gives images per second at each batch size, the batch-32 / batch-1
speed-up, and the cost per image in raw forward passes of the same model (``fwd eq``: the best raw forward
throughput, over the batch sizes and a batch of 256, / the method's throughput at the largest batch measured).
Times are the fastest of several calls (the least disturbed on a shared machine).

Methods whose cost grows with a work parameter (``mask`` and ``extremal``: iterations; ``rise``: masks;
``integrated_gradients``: steps; ``smoothgrad``: samples) run with their published values on a GPU. On a CPU
(``--work reduced``, the default there) they run at two small values of that parameter and the time at the
published value is extrapolated from the straight line through the two (``t = fixed + n * per_unit``); the table
marks those rows ``~``. For ``mask`` and ``extremal`` it also gives the cost of one iteration against one raw
forward + backward pass of the same images (``B`` for ``mask``, ``B x areas`` for ``extremal``).

    PYTHONPATH=. python benchmarks/methods.py                               # all methods, both models, CPU
    PYTHONPATH=. python benchmarks/methods.py --methods mask,extremal --models shapes:cnn
    PYTHONPATH=. python benchmarks/methods.py --device cuda                 # published iteration counts
    PYTHONPATH=. python benchmarks/methods.py --device cuda --precision bf16 --channels-last   # a fast GPU run
    PYTHONPATH=. python benchmarks/methods.py --quick                       # 1 repeat, batch 32 capped harder

Random or pretrained weights do not change the speed: a model that cannot load offline falls back to ``@random``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import time
from typing import Any

import torch

import interpbench as ib
from interpbench.core.base import NotApplicable
from interpbench.engine.config import PRECISIONS

DEFAULT_MODELS = ("timm:tf_efficientnet_lite0", "shapes:cnn")
# method -> the parameter its cost is proportional to (the default value is read from the method's class)
WORK_PARAMS = {
    "mask": "iterations",
    "extremal": "iterations",
    "rise": "num_masks",
    "integrated_gradients": "steps",
    "smoothgrad": "samples",
}
REFERENCE_BATCH = 256  # the chunk size of the sampling methods: raw throughput at it is the fwd-eq reference
REDUCED_LEVELS = {"iterations": (3, 12), "num_masks": (64, 256), "steps": (4, 16), "samples": (4, 16)}


def load_model(spec: str, device: torch.device):
    for attempt in (spec, spec.split("@")[0] + "@random"):
        try:
            model = ib.load_model(attempt, device=str(device))
            return model.eval(), attempt
        except Exception as exc:  # noqa: BLE001 - report and fall back to random weights (same speed)
            print(f"  load_model({attempt!r}) failed: {type(exc).__name__}: {exc}")
    raise SystemExit(f"cannot load {spec!r}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter  # --clock process: time.process_time (CPU seconds of this process, all threads)
AUTOCAST = contextlib.nullcontext  # --precision bf16|fp16: torch.autocast around every timed call, raw or method


def timed(fn, device: torch.device, repeats: int, min_total: float = 0.5, max_calls: int = 50) -> float:
    """Fastest of at least ``repeats`` calls (after one warm-up call), repeating short calls until ``min_total``
    seconds have passed: the minimum is the least disturbed by other processes on a shared machine."""
    with AUTOCAST():
        fn()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_total and len(times) < max_calls):
        sync(device)
        t0 = CLOCK()
        with AUTOCAST():
            fn()
        sync(device)
        times.append(CLOCK() - t0)
    return min(times)


def raw_forward(model, images: torch.Tensor):
    def run():
        with torch.no_grad():
            model(images).float().softmax(dim=1)
    return run


def raw_forward_backward(model, images: torch.Tensor, targets: torch.Tensor):
    def run():
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), x)
    return run


def explain_call(method, model, images: torch.Tensor, targets: torch.Tensor):
    def run():
        torch.manual_seed(0)
        method.explain(model, images, targets)
    return run


def method_time(name: str, model, images, targets, device, repeats: int, reduced: bool) -> dict[str, Any]:
    """Seconds per call of ``name`` at its published work (measured, or extrapolated from two reduced runs)."""
    cls = type(ib.load_method(name))
    param = WORK_PARAMS.get(name)
    if param is None or param not in cls.default_params() or not reduced:
        seconds = timed(explain_call(ib.load_method(name), model, images, targets), device, repeats)
        return {"seconds": seconds, "extrapolated": False, "calls": [seconds]}
    full = cls.default_params()[param]
    lo, hi = REDUCED_LEVELS[param]
    t_lo = timed(explain_call(ib.load_method(name, **{param: lo}), model, images, targets), device, repeats)
    t_hi = timed(explain_call(ib.load_method(name, **{param: hi}), model, images, targets), device, repeats)
    per_unit = max(t_hi - t_lo, 1e-9) / (hi - lo)
    fixed = max(t_lo - lo * per_unit, 0.0)
    return {"seconds": fixed + full * per_unit, "extrapolated": True, "per_unit": per_unit, "fixed": fixed,
            "param": param, "levels": (lo, hi), "full": full, "calls": [t_lo, t_hi]}


def iteration_ratio(name: str, model, images, targets, device, repeats: int, result: dict) -> str:
    """For mask / extremal: one iteration's time / one raw forward+backward of the images it perturbs."""
    method = ib.load_method(name)
    copies = len(method.params["areas"]) if name == "extremal" else 1
    x = images.repeat_interleave(copies, dim=0)
    t = targets.repeat_interleave(copies)
    fb = timed(raw_forward_backward(model, x, t), device, repeats)
    if result.get("extrapolated"):
        per_iteration = result["per_unit"]
    else:
        per_iteration = result["seconds"] / method.params["iterations"]
    return f"iteration = {per_iteration / fb:.2f} x raw fwd+bwd of {len(x)} images ({per_iteration * 1e3:.1f} ms)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=None, help="comma-separated names (default: every installed method)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,32", help="batch sizes (default 1,32)")
    parser.add_argument("--work", choices=("auto", "full", "reduced"), default="auto",
                        help="published work parameters (full), or extrapolated from two small values (reduced); "
                             "auto: full on cuda, reduced on cpu")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="skip a larger batch when the batch-1 time predicts more than this per call "
                             "(default: none on cuda, 300 on cpu, 120 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="1 repeat and a tighter --max-seconds")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 gives stable figures on a shared machine")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                        help="autocast dtype for the raw passes and the methods alike (the runner's --precision)")
    parser.add_argument("--channels-last", action="store_true",
                        help="model and inputs in the channels-last memory format (the runner's --channels-last)")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="wall time, or this process's CPU time (with --threads 1: the compute time of one "
                             "core, unaffected by other processes on a shared machine; CPU only)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK, AUTOCAST
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    device = torch.device(args.device)
    if PRECISIONS[args.precision] is not None:
        AUTOCAST = functools.partial(torch.autocast, device_type=device.type, dtype=PRECISIONS[args.precision])
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    reduced = args.work == "reduced" or (args.work == "auto" and device.type != "cuda")
    repeats = args.repeats or (1 if args.quick else 3)
    max_seconds = args.max_seconds
    if max_seconds is None and device.type != "cuda":
        max_seconds = 120.0 if args.quick else 300.0
    methods = args.methods.split(",") if args.methods else ib.list_methods()
    batches = [int(b) for b in args.batches.split(",")]
    work = "reduced+extrapolated" if reduced else "published"
    print(f"device {device} ({torch.get_num_threads()} threads), work {work}, {repeats} repeat(s), "
          f"{args.clock} clock, precision {args.precision}, {'channels-last' if args.channels_last else 'contiguous'}, "
          f"torch {torch.__version__}")

    for spec in args.models.split(","):
        model, loaded = load_model(spec, device)
        model.to(memory_format=layout)
        h, w = model.input_size
        print(f"\n## {loaded} at {h}x{w} px")
        generator = torch.Generator().manual_seed(0)
        inputs = torch.rand(max(batches), 3, h, w, generator=generator).to(device).contiguous(memory_format=layout)
        with torch.no_grad():
            all_targets = model(inputs).argmax(dim=1)
        raw = {b: b / timed(raw_forward(model, inputs[:b]), device, repeats) for b in batches}
        chunk = inputs.repeat(math.ceil(REFERENCE_BATCH / len(inputs)), 1, 1, 1)[:REFERENCE_BATCH].contiguous(
            memory_format=layout)
        best = max(REFERENCE_BATCH / timed(raw_forward(model, chunk), device, repeats), *raw.values())
        del chunk
        print("raw forward images/s: " + ", ".join(f"batch {b}: {v:.1f}" for b, v in raw.items())
              + f"; best (incl. batch {REFERENCE_BATCH}): {best:.1f}")
        header = f"{'method':22s}" + "".join(f"{f'b{b} img/s':>12s}" for b in batches)
        header += f"{f'b{batches[-1]}/b{batches[0]}':>9s}{'fwd eq':>10s}  notes"
        print(header)
        for name in methods:
            row, notes, speeds, walls, results = f"{name:22s}", [], {}, {}, {}
            for b in batches:
                images, targets = inputs[:b], all_targets[:b]
                if b != batches[0] and max_seconds is not None and batches[0] in walls:
                    # the measuring calls (warm-up + repeats per level) at this batch, if time grew with the batch
                    predicted = walls[batches[0]] * b / batches[0] * (repeats + 1)
                    if predicted > max_seconds:
                        row += f"{'skipped':>12s}"
                        notes.append(f"b{b} skipped (batch {batches[0]} predicts {predicted:.0f} s > --max-seconds)")
                        continue
                try:
                    result = method_time(name, model, images, targets, device, repeats, reduced)
                except Exception as exc:  # noqa: BLE001 - one failing method (e.g. a plugin's) never stops the table
                    row += f"{'n/a' if isinstance(exc, NotApplicable) else 'failed':>12s}"
                    notes.append(f"b{b}: {type(exc).__name__}: {str(exc)[:90]}")
                    break
                speeds[b], walls[b] = b / result["seconds"], sum(result["calls"])
                row += f"{('~' if result['extrapolated'] else '') + f'{speeds[b]:.3g}':>12s}"
                if result["extrapolated"] and b == batches[-1]:
                    notes.append(f"{result['param']}={result['full']} extrapolated from {result['levels']}")
                results[b] = result
            if name in ("mask", "extremal") and results:
                b = max(results)  # one iteration against raw forward + backward, at the largest batch measured
                notes.append(iteration_ratio(name, model, inputs[:b], all_targets[:b], device, repeats, results[b]))
            last, first = batches[-1], batches[0]
            ratio = f"{speeds[last] / speeds[first]:.2f}" if last in speeds and first in speeds else "-"
            key = last if last in speeds else (first if first in speeds else None)
            fwd_eq = f"{best / speeds[key]:.4g}" if key is not None else "-"
            print(f"{row}{ratio:>9s}{fwd_eq:>10s}  {'; '.join(notes)}", flush=True)
    print("\nimg/s: images explained per second (~: extrapolated to the published work parameter); "
          "fwd eq: best raw forward images/s / method images/s at the largest measured batch (cost per image in "
          "raw forward passes at their best batching)")


if __name__ == "__main__":
    main()
