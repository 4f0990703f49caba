"""Guards of the batch loop (engine layer, used by :mod:`interpbench.engine.runner`): the checks of what methods and
metrics return (:func:`check_maps`, :func:`check_scores`), how an error is recorded (:func:`describe_error`), the
out-of-memory retry that splits a batch into smaller calls (:func:`call_in_chunks`), and the warning for a dataset
identified by its path alone.
"""

from __future__ import annotations

import dataclasses
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

from interpbench.core.base import Batch, ComponentError


def warn_if_identified_by_path_alone(name: str, identity: dict[str, Any]) -> None:
    """Warn when a dataset's identity has a ``path`` but no digest (``*sha256``) of what lies there: cell keys leave
    the path out (:func:`~interpbench.core.identity.portable`), so another folder with the same description would share
    this one's cells."""
    if "path" in identity and not any(str(k).endswith("sha256") for k in identity):
        warnings.warn(f"dataset {name!r}: its identity() names a path but no digest of its files, and cell keys leave "
                      "the path out; add one (interpbench.core.identity.lines_sha256 of the file list, or file_sha256 of "
                      "an index file) so that another folder is another dataset", RuntimeWarning, stacklevel=2)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def call_in_chunks(fn, batch: Batch, maps: torch.Tensor | None, chunk: int, on_oom) -> Any:
    """``fn(batch, maps)`` on consecutive chunks of at most ``chunk`` samples, halving the chunk on an
    out-of-memory error (``on_oom(new_chunk)`` records it); the results are concatenated in order. The batch, and
    so its seeds and its place in the store, stays the same: only how it is executed changes."""
    while True:
        try:
            if chunk >= len(batch):
                return fn(batch, maps)
            parts = [fn(slice_batch(batch, i, i + chunk), None if maps is None else maps[i:i + chunk])
                     for i in range(0, len(batch), chunk)]
            return _concat(parts)
        except Exception as exc:  # noqa: BLE001
            if not is_out_of_memory(exc) or min(chunk, len(batch)) <= 1:
                raise
            chunk = max(1, min(chunk, len(batch)) // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            on_oom(chunk)


def _concat(parts: list[Any]) -> Any:
    if parts[0] is None:
        return None
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def check_maps(maps: Any, images: torch.Tensor, method: str) -> torch.Tensor:
    """Maps must be a finite float tensor B x H x W at the input resolution."""
    b, _, h, w = images.shape
    if not isinstance(maps, torch.Tensor):
        raise ComponentError(f"method {method!r} returned {type(maps).__name__}, expected a tensor of shape {b}x{h}x{w}")
    if tuple(maps.shape) != (b, h, w):
        raise ComponentError(
            f"method {method!r} returned maps of shape {tuple(maps.shape)}, expected (B, H, W) = {(b, h, w)}: "
            "one map per image at the input resolution (upsample low-resolution maps bilinearly)"
        )
    maps = maps.detach().float().contiguous()  # e.g. the maps of a channels-last batch: metrics may view() them
    bad = (~torch.isfinite(maps)).sum().item()
    if bad:
        raise ComponentError(f"method {method!r} returned {bad} non-finite values (NaN or inf) in its maps")
    return maps


def check_scores(scores: Any, n: int, metric: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    extra: dict[str, torch.Tensor] = {}
    if isinstance(scores, dict):
        if "score" not in scores:
            raise ComponentError(f"metric {metric!r} returned a dict without a 'score' entry: {sorted(scores)}")
        extra = {k: v for k, v in scores.items() if k != "score"}
        scores = scores["score"]
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (n,):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ComponentError(f"metric {metric!r} returned scores of shape {shape}, expected ({n},): one per sample")
    scores = scores.detach().double().cpu()
    bad = (~torch.isfinite(scores)).sum().item()
    if bad:
        raise ComponentError(f"metric {metric!r} returned {bad} non-finite scores (NaN or inf)")
    return scores, {k: v.detach().cpu() for k, v in extra.items()}


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ComponentError):
        return str(exc)
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    return dataclasses.replace(batch, ids=batch.ids[start:stop], images=batch.images[start:stop],
                               targets=batch.targets[start:stop], samples=batch.samples[start:stop],
                               labels=None if batch.labels is None else batch.labels[start:stop])
