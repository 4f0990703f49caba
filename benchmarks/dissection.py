"""Speed of network dissection against the raw forward pass and against the reference code's per-image tally.

On the same probe (held in memory, so data generation is not timed) and the same activations:

- raw forward: the model over the probe images in batches (``no_grad``), the reference point (docs/scale.md);
- our tally: the exact thresholds (running top-k) and the tally (the tiles of the masks that can exceed the
  threshold, counted per label region; :func:`interpbench.ops.dissect.count_mask_pixels`) on the device;
- numpy tally: the straightforward per-image, per-unit loop of NetDissect-Lite's ``tally_job``
  (:func:`interpbench.ops.dissect.tally_reference_numpy`), on the same activations and thresholds;
- dissect(): the whole metric (labels, forward with hooks, thresholds, tally) on the in-memory probe.

    PYTHONPATH=. python benchmarks/dissection.py                          # shapes:cnn layer3 on 512 shapes images
    PYTHONPATH=. python benchmarks/dissection.py --images 128 --repeats 1
    PYTHONPATH=. python benchmarks/dissection.py --device cuda --model timm:resnet18 --layer layer4 --size 224 \\
        --label-size 112 --images 2048 --batch-size 128                   # the GPU figure (random weights if offline)

Targets (issue 5): our tally within 1.5x of the raw forward time, at least 10x faster than the numpy tally. The
counts are compared with both numpy tallies (they must be identical: the masks are decided in float64). On a shared
CPU, ``--threads 1`` gives the steadiest ratios; timings are interleaved medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from interpbench.metrics.dissection import dissect, layer_activations, probe_concepts
from interpbench.ops.dissect import (
    StreamingTopK,
    Tally,
    accumulate_tally,
    concat_labels,
    encode_concepts,
    iou_from_tally,
    quantile_position,
    tally_reference_numpy,
    threshold_from_top,
)


class MemoryProbe(torch.utils.data.Dataset):
    def __init__(self, samples: list[dict], names: dict) -> None:
        self.samples, self.names = samples, names

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]

    def concept_names(self) -> dict:
        return self.names


def load_model(spec: str):
    import interpbench

    try:
        return interpbench.load_model(spec)
    except Exception as exc:  # noqa: BLE001 - offline: the same architecture with random weights has the same speed
        fallback = spec.split("@")[0] + "@random"
        print(f"load_model({spec!r}) failed ({type(exc).__name__}: {exc}); timing {fallback!r} instead")
        return interpbench.load_model(fallback)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes:cnn")
    parser.add_argument("--layer", help="default: the model's cam_layer")
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, help="image size (default: the model's input size)")
    parser.add_argument("--label-size", type=int, help="label resolution (default: the probe's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quantile", type=float, default=0.005)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); numpy's loop uses one")
    parser.add_argument("--numpy-images", type=int, help="images for the numpy tally (default: all; its time is "
                        "scaled to the whole probe)")
    args = parser.parse_args()

    import interpbench

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_model(args.model).to(device).eval()
    layer = args.layer or model.cam_layer
    size = args.size or model.input_size[0]
    dataset = interpbench.load_dataset(args.dataset, size=size)
    t0 = time.perf_counter()
    probe = MemoryProbe([dataset[i] for i in range(min(args.images, len(dataset)))], dataset.concept_names())
    load_s = time.perf_counter() - t0
    concepts = probe_concepts(probe)
    n, bs = len(probe), args.batch_size
    label_size = (args.label_size,) * 2 if args.label_size else tuple(probe[0]["concepts"]["color"].shape[-2:])
    images = torch.stack([s["image"] for s in probe.samples]).to(device)
    batches = [images[lo:lo + bs] for lo in range(0, n, bs)]
    labels = [encode_concepts([s["concepts"] for s in probe.samples[lo:lo + bs]], concepts, label_size, device)
              for lo in range(0, n, bs)]
    with torch.no_grad():
        acts = [layer_activations(model, x, [layer])[layer] for x in batches]
    units, h, w = acts[0].shape[1:]
    print(f"{model.spec} {layer} ({units} units, {h}x{w}) on {n} {args.dataset} images of {size} px, labels "
          f"{label_size[0]}x{label_size[1]}, {concepts.num_concepts} concepts, batch {bs}, {device} "
          f"({torch.get_num_threads()} threads); probe generation {load_s:.1f} s (not timed below)")

    def raw_forward():
        with torch.no_grad():
            for x in batches:
                model(x)

    def thresholds():
        k = quantile_position(n * h * w, args.quantile)[0]
        top = StreamingTopK(k, units, device)
        for a in acts:
            top.update(a.transpose(0, 1).reshape(units, -1))
        return threshold_from_top(top.result()[0], n * h * w, args.quantile)

    t_thr_once = thresholds()

    def tally():
        t = Tally.zeros(units, concepts, device)
        for a, lab in zip(acts, labels):
            accumulate_tally(t, a, t_thr_once, lab)
        return t

    def ours():
        thr = thresholds()
        t = Tally.zeros(units, concepts, device)
        for a, lab in zip(acts, labels):
            accumulate_tally(t, a, thr, lab)
        return t

    def full():
        return dissect(model, probe, [layer], quantile=args.quantile, batch_size=bs, device=device,
                       label_size=args.label_size)

    m = args.numpy_images or n
    np_acts = torch.cat(acts)[:m].double().cpu().numpy()
    merged = concat_labels([lab.to("cpu") for lab in labels]).select(torch.arange(m))
    pixels = merged.pixel_concepts().long().numpy().reshape(m, -1, *label_size)
    img = merged.images.long().numpy()

    def numpy_tally(upsample: str):
        return lambda: tally_reference_numpy(np_acts, t_thr_once.cpu().numpy(), pixels, img, label_size,
                                             concepts.category_of().numpy(), concepts.num_categories, upsample=upsample)

    runs = {"raw": raw_forward, "thresholds": thresholds, "tally": tally, "full": full,
            "numpy_pil": numpy_tally("pil"), "numpy_matrix": numpy_tally("matrix")}
    raw_forward(), ours(), full()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, object] = {}
    for _ in range(args.repeats):  # interleaved, so that noise from other processes hits all alike
        for name, fn in runs.items():
            sync(device)
            t0 = time.perf_counter()
            outputs[name] = fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(values) for name, values in times.items()}
    t_raw, t_thr, t_tally, t_full = median["raw"], median["thresholds"], median["tally"], median["full"]
    t_ours = t_thr + t_tally
    numpy_times = {"pil": median["numpy_pil"] * n / m, "matrix": median["numpy_matrix"] * n / m}
    ours_tally = outputs["tally"]
    agreement = []
    for upsample in ("pil", "matrix"):
        ref = outputs[f"numpy_{upsample}"]
        if m == n:
            same = all(np.array_equal(getattr(ours_tally, key).cpu().numpy(), ref[key]) for key in ref)
            diff = int(np.abs(ours_tally.intersection.cpu().numpy() - ref["intersection"]).sum())
            total = int(ref["intersection"].sum())
            mine = iou_from_tally(ours_tally.to("cpu"), concepts)
            theirs = iou_from_tally(Tally(*(torch.from_numpy(ref[key]) for key in
                                            ("intersection", "activation", "unit_pixels", "ground_truth"))), concepts)
            agreement.append(f"numpy ({upsample} upsampling) vs ours: counts identical {same}; intersections differ "
                             f"by {diff} of {total} pixels; max |IoU difference| {float((mine - theirs).abs().max()):.2e}")
    if m != n:
        agreement.append(f"numpy tallies on the first {m} images, times scaled to {n}")
    t_numpy = numpy_times["pil"]

    print(f"{'':28s} {'seconds':>9s} {'x raw forward':>14s}")
    print(f"{'raw forward':28s} {t_raw:9.3f} {1.0:14.2f}")
    print(f"{'our thresholds (top-k)':28s} {t_thr:9.3f} {t_thr / t_raw:14.2f}")
    print(f"{'our tally':28s} {t_tally:9.3f} {t_tally / t_raw:14.2f}")
    print(f"{'our thresholds + tally':28s} {t_ours:9.3f} {t_ours / t_raw:14.2f}")
    print(f"{'numpy tally (PIL, as Lite)':28s} {t_numpy:9.3f} {t_numpy / t_raw:14.2f}")
    print(f"{'numpy tally (matrix upsample)':28s} {numpy_times['matrix']:9.3f} {numpy_times['matrix'] / t_raw:14.2f}")
    print(f"{'dissect() end to end':28s} {t_full:9.3f} {t_full / t_raw:14.2f}")
    print(f"tally speed-up over the numpy tally as in NetDissect-Lite: {t_numpy / t_tally:.1f}x (thresholds + tally: "
          f"{t_numpy / t_ours:.1f}x; over the matrix-upsampling numpy loop: {numpy_times['matrix'] / t_tally:.1f}x); "
          "targets: tally <= 1.5x raw forward, >= 10x faster than numpy")
    print("\n".join(agreement))


if __name__ == "__main__":
    main()
