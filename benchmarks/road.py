"""Speed of the ROAD metric against pytorch-grad-cam's ROAD and against the raw forward throughput.

ROAD needs ``images * fractions`` imputations and as many forward passes. Three timings on the same images, maps
and fractions (MoRF, ROAD's noise):

- ours: :func:`interpbench.metrics.road.road_curves` (all image-fraction pairs imputed by one batched conjugate
  gradient per ``solve_chunk``, then forward passes in chunks);
- pytorch-grad-cam: ``ROADMostRelevantFirst(percentile)`` per fraction (one scipy ``spsolve`` per image and
  fraction, then one forward pass of the batch), as ``ROADMostRelevantFirstAverage`` runs it;
- raw: ``images * fractions`` forward passes of the same chunks, softmax included (the limit, efficiency 1.0).

    PYTHONPATH=. python benchmarks/road.py                                    # Lite0, 2 images of 224 px
    PYTHONPATH=. python benchmarks/road.py --model shapes:cnn --images 32     # the shapes world, 64 px
    PYTHONPATH=. python benchmarks/road.py --device cuda --images 32          # GPU: solve all pairs together

Printed: speed-up over pytorch-grad-cam, efficiency (raw time / our time), the share of our time in the
imputation, and the largest curve difference between the two (different noise draws; within 0.01 expected).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from interpbench.metrics.road import (
    GPU_CHUNK,
    GPU_SOLVE_CHUNK,
    PAPER_FRACTIONS,
    removal_masks,
    road_curves,
)
from interpbench.ops import batching
from interpbench.ops.imputation import noisy_linear_imputation


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def smooth_maps(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Blob-shaped maps without ties (an upsampled 7 x 7 field plus jitter), like a CAM's."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 7, 7, generator=gen)
    up = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return up + 1e-6 * torch.rand(n, h, w, generator=gen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="timm:tf_efficientnet_lite0")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: steadier on shared cores; 0: torch's default)")
    ap.add_argument("--skip-reference", action="store_true", help="do not time pytorch-grad-cam (e.g. large runs)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import interpbench

    device = torch.device(args.device)
    model = interpbench.load_model(args.model).to(device).eval()
    h, w = model.input_size
    images = torch.rand(args.images, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    maps = smooth_maps(args.images, h, w, 1).to(device)
    with torch.no_grad():
        targets = model(images).argmax(1)
    fractions = PAPER_FRACTIONS
    noise = 0.01 * model.std
    chunk = batching.resolve_chunk(None, images, gpu=GPU_CHUNK)
    solve_chunk = batching.resolve_chunk(None, images, gpu=GPU_SOLVE_CHUNK)
    pairs = args.images * len(fractions)
    print(f"model {args.model} on {device}, {args.images} images of {h}x{w} px, {len(fractions)} fractions "
          f"({pairs} image-fraction pairs), chunk {chunk}, solve_chunk {solve_chunk}, threads "
          f"{torch.get_num_threads()}")

    def ours() -> torch.Tensor:
        return road_curves(model, images, targets, maps, fractions, most_relevant_first=True, noise=noise, seed=0,
                           chunk=chunk, solve_chunk=solve_chunk)[0]

    def imputation_only() -> None:
        removed = removal_masks(maps, fractions, True).flatten(0, 1)
        index = torch.arange(args.images, device=device).repeat_interleave(len(fractions))
        for lo in range(0, pairs, solve_chunk):
            hi = min(lo + solve_chunk, pairs)
            noisy_linear_imputation(images[index[lo:hi]], removed[lo:hi], noise, list(range(lo, hi)))

    def raw() -> None:
        x = images[torch.arange(args.images, device=device).repeat_interleave(len(fractions))]
        with torch.no_grad():
            for lo in range(0, pairs, chunk):
                model(x[lo : lo + chunk]).softmax(dim=1)

    def timed(fn) -> tuple[float, object]:
        best, out = float("inf"), None
        for _ in range(args.repeats):
            sync(device)
            t0 = time.perf_counter()
            out = fn()
            sync(device)
            best = min(best, time.perf_counter() - t0)
        return best, out

    t_raw, _ = timed(raw)
    t_ours, curves = timed(ours)
    t_imp, _ = timed(imputation_only)
    print(f"raw forward: {pairs / t_raw:.2f} images/s")
    print(f"ours: {t_ours:.2f} s, efficiency (raw / ours) {t_raw / t_ours:.3f}, imputation share "
          f"{t_imp / t_ours:.2f}")
    if args.skip_reference:
        return
    from pytorch_grad_cam.metrics.road import ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    class Normalised(torch.nn.Module):
        def forward(self, z):  # pytorch-grad-cam takes normalised tensors
            return model.net(z)

    z = (images - model.mean) / model.std
    cams = maps.cpu().numpy()
    cam_targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]

    def reference() -> np.ndarray:
        return np.stack([ROADMostRelevantFirst(percentile=100 * (1 - f))(z, cams, cam_targets, Normalised(),
                                                                        return_diff=False)
                         for f in fractions], 1)

    t_ref, ref = timed(reference)
    print(f"pytorch-grad-cam: {t_ref:.2f} s; ours is {t_ref / t_ours:.2f}x faster; raw / pytorch-grad-cam "
          f"{t_raw / t_ref:.3f}")
    print(f"largest curve difference (different noise draws): {np.abs(curves.cpu().numpy() - ref).max():.4f}")


if __name__ == "__main__":
    main()
