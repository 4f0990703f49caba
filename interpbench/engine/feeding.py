"""Data feeding that keeps the device busy: samples decoded in worker processes, stacked and pinned off the main
thread, loaded a few batches ahead.

:class:`Feed` loads given batches of a dataset (lists of sample indices), in order, with ``workers`` processes
(``0``: in the main process, as a plain loop would). Each batch comes back as a :class:`SampleList`: the samples
(dicts) in order, whose images are views of one stacked ``B x 3 x H x W`` tensor (``.images``), in pinned memory
when ``pin_memory`` (CUDA), so that ``images.to(device, non_blocking=True)`` overlaps the copy with compute.
:func:`collate` turns it into the runner's batch dict without stacking again. ``Feed.stats()`` reports how long
the consumer waited for data (the profile in ``benchmarks/data_feeding.py`` and the run manifest).
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

import torch

from interpbench.core.base import ComponentError
from interpbench.core.base import collate as collate_samples


class SampleList(list):
    """A batch of samples (dicts, in order) with their images stacked in ``images`` (or None)."""

    images: torch.Tensor | None = None

    def __init__(self, samples: Sequence[dict] = (), images: torch.Tensor | None = None) -> None:
        super().__init__(samples)
        self.images = images


class _Loaded:
    """What the loader returns for a batch: the samples without their images (``rest``) and the stacked images, or,
    when the images cannot be stacked, the whole samples (``images`` None). Pinning (in the loader's pinning
    thread) moves the stacked images to page-locked memory."""

    def __init__(self, rest: Any, images: torch.Tensor | None) -> None:
        self.rest, self.images = rest, images

    def pin_memory(self) -> "_Loaded":
        return self if self.images is None else _Loaded(self.rest, self.images.pin_memory())

    def samples(self) -> SampleList:
        rest = unpack(self.rest)
        if self.images is None:
            return SampleList(rest, None)
        return SampleList([{**s, "image": self.images[i]} for i, s in enumerate(rest)], self.images)


class _Array:
    """A CPU tensor travelling from a worker as a numpy array: pickled as one buffer, where torch would open a
    shared-memory segment per tensor (slow for the many small tensors of a sample's ground truth)."""

    __slots__ = ("array",)

    def __init__(self, array: Any) -> None:
        self.array = array


def pack(obj: Any) -> Any:
    """``obj`` with its CPU tensors (in dicts, lists and tuples) replaced by :class:`_Array` (see :func:`unpack`)."""
    if isinstance(obj, torch.Tensor):
        if obj.device.type == "cpu" and not obj.requires_grad and obj.dtype not in (torch.bfloat16,):
            return _Array(obj.numpy())
        return obj
    if isinstance(obj, dict):
        return type(obj)((k, pack(v)) for k, v in obj.items()) if type(obj) is dict else obj
    if type(obj) is list:
        return [pack(v) for v in obj]
    if type(obj) is tuple:
        return tuple(pack(v) for v in obj)
    return obj


def unpack(obj: Any) -> Any:
    """The inverse of :func:`pack` (``torch.from_numpy``: no copy)."""
    if isinstance(obj, _Array):
        return torch.from_numpy(obj.array)
    if type(obj) is dict:
        return {k: unpack(v) for k, v in obj.items()}
    if type(obj) is list:
        return [unpack(v) for v in obj]
    if type(obj) is tuple:
        return tuple(unpack(v) for v in obj)
    return obj


def stack_samples(samples: list[dict]) -> _Loaded:
    """The loader's collate (in a worker when there are workers): stack the images once when they share a shape;
    in a worker, pack the rest of the samples (:func:`pack`) so that a batch travels as one shared-memory block
    (the images) and one pickled buffer."""
    images = [s.get("image") for s in samples]
    stackable = bool(images) and all(isinstance(i, torch.Tensor) for i in images) and len(
        {(tuple(i.shape), i.dtype) for i in images}) == 1
    in_worker = torch.utils.data.get_worker_info() is not None
    if not stackable:
        return _Loaded(pack(list(samples)) if in_worker else list(samples), None)
    rest = [{k: v for k, v in s.items() if k != "image"} for s in samples]
    return _Loaded(pack(rest) if in_worker else rest, torch.stack(images))


def collate(samples: Sequence[dict]) -> dict:
    """:func:`interpbench.core.base.collate`, reusing the stacked (pinned) images of a :class:`SampleList`."""
    images = getattr(samples, "images", None)
    if images is None or len(images) != len(samples):
        return collate_samples(list(samples))
    rest = [{k: v for k, v in s.items() if k != "image"} for s in samples]
    out = {"ids": [str(s["id"]) for s in samples], "images": images, "samples": rest}
    if all("label" in s for s in samples):
        out["labels"] = torch.as_tensor([int(s["label"]) for s in samples], dtype=torch.long)
    return out


def same_size_runs(samples: Sequence[dict], field: str = "image") -> list[tuple[int, SampleList]]:
    """``samples`` cut into runs of consecutive samples whose ``field`` images share a shape, as ``(offset of the
    run in samples, run)``; each run a :class:`SampleList` whose images (``field``, renamed ``image``) are stacked.

    Images of different sizes (a dataset that keeps each image's aspect ratio, ``variable_size``) cannot share
    one batch tensor; the runner explains each run as a batch, in dataset order. ``field`` names another view of
    the image that a method is fed (e.g. ``image_square`` for RISE under TorchRay's protocol). A batch whose images
    were stacked by the feed is returned whole.
    """
    images = getattr(samples, "images", None)
    if field == "image" and images is not None and len(images) == len(samples):
        return [(0, samples)] if len(samples) else []
    runs: list[tuple[int, SampleList]] = []
    start = 0
    for stop in range(1, len(samples) + 1):
        if stop < len(samples) and _shape(samples[stop], field) == _shape(samples[start], field):
            continue
        run = [{**{k: v for k, v in s.items() if k != field}, "image": s[field]} for s in samples[start:stop]]
        runs.append((start, SampleList(run, torch.stack([s["image"] for s in run]))))
        start = stop
    return runs


def _shape(sample: dict, field: str) -> tuple[int, ...]:
    if field not in sample:
        raise ComponentError(f"sample {sample.get('id')!r} has no {field!r} image; the dataset names it as a method's "
                             "input (method_inputs), so its samples must carry it")
    return tuple(sample[field].shape)


class Feed:
    """Batches of ``dataset`` (each a sequence of indices), loaded in order by ``workers`` processes.

    ``workers=0`` loads in the calling thread (no processes, no prefetch). ``prefetch`` batches per worker are
    loaded ahead. The loader's own RNG is seeded (``seed``), so that iterating never consumes torch's global RNG.
    """

    def __init__(self, dataset: Any, batches: Sequence[Sequence[int]], workers: int = 0, pin_memory: bool = False,
                 prefetch: int = 2, seed: int = 0) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ComponentError(f"Feed: workers {workers!r} must be 0 (load in the calling thread) or a positive int")
        self.dataset, self.batches = dataset, [list(b) for b in batches]
        self.workers, self.pin_memory, self.prefetch, self.seed = workers, pin_memory, prefetch, seed
        self.waited = 0.0  # seconds the consumer spent waiting for a batch
        self.elapsed = 0.0  # seconds from the first request to the end of the iteration
        self.count = 0

    def __len__(self) -> int:
        return len(self.batches)

    def _loader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.batches, num_workers=self.workers, collate_fn=stack_samples,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            prefetch_factor=self.prefetch if self.workers > 0 else None,
            generator=torch.Generator().manual_seed(self.seed))

    def __iter__(self) -> Iterator[SampleList]:
        if not self.batches:
            return
        started = time.perf_counter()
        iterator = iter(self._loader())
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    loaded = next(iterator)
                except StopIteration:
                    break
                samples = loaded.samples()
                self.waited += time.perf_counter() - t0
                self.count += 1
                yield samples
        finally:
            self.elapsed += time.perf_counter() - started
            del iterator  # shuts the workers down

    def stats(self) -> dict[str, Any]:
        """``{"batches", "workers", "wait_s", "total_s", "wait_share"}``: time spent waiting for data."""
        return {"batches": self.count, "workers": self.workers, "wait_s": round(self.waited, 4),
                "total_s": round(self.elapsed, 4),
                "wait_share": round(self.waited / self.elapsed, 4) if self.elapsed > 0 else 0.0}


__all__ = ["Feed", "SampleList", "collate", "pack", "same_size_runs", "stack_samples", "unpack"]
