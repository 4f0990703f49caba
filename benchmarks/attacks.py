"""Speed of the attacks and of the adversarial-detection metric against the raw forward + backward pass.

On the same model and batch (images held in memory):

- raw forward+backward: the model's logits and the gradient of a loss with respect to the images (``autograd.grad``
  on the images only), the unit of work of a gradient attack (docs/scale.md);
- FGSM (1 forward+backward + 1 forward), PGD-Linf (``steps`` forward+backward + 1 forward), CW-L2 (``cw_steps``
  iterations of forward+backward and an Adam step, one binary-search step, no early abort, + 1 forward):
  each printed as its time per forward+backward it needs, relative to the raw one (1.0 = no overhead);
- the ``adversarial_detection`` update of one batch for ``--method`` (attacks + explanations of the adversarial
  images + features) and its ``compute()`` (cross-validated detectors, bootstrap), in seconds per 100 images.

    PYTHONPATH=. python benchmarks/attacks.py                          # shapes:cnn, batch 16, 1 thread
    PYTHONPATH=. python benchmarks/attacks.py --batch-size 64 --threads 2
    PYTHONPATH=. python benchmarks/attacks.py --device cuda --model timm:resnet50 --size 224 --batch-size 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes:cnn")
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--size", type=int, help="image size (default: the model's input size)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eps", type=float, default=8.0, help="epsilon in 1/255 units")
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--cw-steps", type=int, default=50)
    parser.add_argument("--method", default="gradient", help="method for the metric's update timing")
    parser.add_argument("--images", type=int, default=64, help="images for the metric timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU (default 1)")
    args = parser.parse_args()

    import interpbench
    from interpbench.core.base import Batch
    from interpbench.metrics.adversarial import AdversarialDetection
    from interpbench.ops.attack_specs import ATTACK_CACHE
    from interpbench.ops.attacks import carlini_wagner_l2, fgsm, pgd_linf

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = interpbench.load_model(args.model, device=str(device)).eval()
    size = args.size or model.input_size[0]
    dataset = interpbench.load_dataset(args.dataset, size=size)
    samples = [dataset[i] for i in range(max(args.batch_size, args.images))]
    images = torch.stack([s["image"] for s in samples[: args.batch_size]]).to(device)
    with torch.no_grad():
        labels = model(images).argmax(1)
    eps = args.eps / 255
    print(f"{model.spec} on {args.batch_size} {args.dataset} images of {size} px, {device} "
          f"({torch.get_num_threads()} threads), eps {args.eps:g}/255")

    def raw():
        x = images.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), labels, reduction="sum"), x)
        return grad

    t_raw = timed(raw, device, args.repeats)
    with torch.no_grad():
        t_fwd = timed(lambda: model(images), device, args.repeats)
    print(f"raw forward+backward: {t_raw * 1e3:.1f} ms per batch ({args.batch_size / t_raw:.0f} images/s); "
          f"forward alone {t_fwd * 1e3:.1f} ms")
    rows = [
        ("fgsm", lambda: fgsm(model, images, labels, eps), 1),
        (f"pgd ({args.pgd_steps} steps)", lambda: pgd_linf(model, images, labels, eps, steps=args.pgd_steps),
         args.pgd_steps),
        (f"cw-l2 ({args.cw_steps} steps, 1 search step)",
         lambda: carlini_wagner_l2(model, images, labels, initial_const=1.0, binary_search_steps=1,
                                   steps=args.cw_steps, abort_early=False), args.cw_steps),
    ]
    for name, fn, passes in rows:
        t = timed(fn, device, args.repeats)
        ideal = passes * t_raw + t_fwd
        print(f"{name:32s} {t * 1e3:9.1f} ms  {args.batch_size / t:8.1f} images/s  "
              f"{t / ideal:5.2f}x the raw passes it needs ({passes} forward+backward + 1 forward)")

    # the metric: one update per batch, then compute()
    method = interpbench.load_method(args.method)
    for attacks in (["fgsm8"], ["pgd8"], ["fgsm2", "fgsm4", "fgsm8", "pgd2", "pgd4", "pgd8"]):
        ATTACK_CACHE.clear()
        metric = AdversarialDetection(attacks=attacks)
        t_update = t_maps = 0.0
        for lo in range(0, args.images, args.batch_size):
            part = samples[lo: lo + args.batch_size]
            x = torch.stack([s["image"] for s in part]).to(device)
            y = torch.as_tensor([int(s["label"]) for s in part], device=device)
            with torch.no_grad():
                targets = model(x).argmax(1)
            t0 = time.perf_counter()
            maps = method.explain(model, x, targets)
            sync(device)
            t_maps += time.perf_counter() - t0
            batch = Batch(ids=[str(s["id"]) for s in part], images=x, targets=targets, samples=part, labels=y,
                          method=method)
            t0 = time.perf_counter()
            metric.update(model, batch, maps)
            sync(device)
            t_update += time.perf_counter() - t0
        t0 = time.perf_counter()
        metric.compute()
        t_compute = time.perf_counter() - t0
        scale = 100 / args.images
        print(f"adversarial_detection {','.join(attacks):34s} update {t_update * scale:6.2f} s / 100 images "
              f"(clean maps {t_maps * scale:.2f} s), compute {t_compute:.2f} s ({args.images} images)")


if __name__ == "__main__":
    main()
