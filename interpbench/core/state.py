"""The distributed contract components use: the communication context and the declared state of dataset-level
metrics (core layer: the metrics import it; :mod:`interpbench.engine.distributed` starts the processes, shards the
batches and calls :func:`merge_metric`).

- :class:`Dist`: who this process is in a run of ``world`` processes and the collectives a model-scope metric with
  ``distributed = True`` may use (``ctx.dist``); :data:`SINGLE` is the one-process context, where every collective
  answers at once.
- Declared state: a :class:`~interpbench.core.base.DatasetMetric` declares each state attribute with ``add_state(name,
  default, reduce=...)`` (a legacy metric with a ``dist_state`` dict); :func:`declared_state` lists them,
  :func:`state_of` packs a rank's state for the trip to rank 0 (tensors on the CPU), and :func:`merge_metric` merges
  the ranks' states into rank 0's, in rank order, by :func:`merge_values`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import socket
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from interpbench.core.base import REDUCTIONS, ComponentError, DatasetMetric

# --------------------------------------------------------------------------------------------- Dist


@dataclasses.dataclass
class Dist:
    """Who this process is in a distributed run, and the few collectives the runner and the metrics need.

    ``world == 1`` (the single-process :data:`SINGLE`) makes every collective a local no-op. Collectives must be
    called by every rank in the same order; ``gather_objects`` / ``broadcast`` / ``agree`` carry Python objects
    (pickled, over gloo), ``all_reduce_sum`` / ``all_gather_tensor`` carry tensors on ``device``.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    object_group: Any = None  # the gloo group for Python objects (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ sharding

    def shard(self, n: int, rank: int | None = None) -> range:
        """The contiguous block of ``range(n)`` that ``rank`` (default: this one) handles: the first ``n % world``
        ranks take one item more. The blocks in rank order are ``range(n)``."""
        rank = self.rank if rank is None else rank
        base, extra = divmod(n, self.world)
        start = rank * base + min(rank, extra)
        return range(start, start + base + (1 if rank < extra else 0))

    def owner(self, i: int, n: int) -> int:
        """The rank whose :meth:`shard` of ``range(n)`` holds item ``i``."""
        base, extra = divmod(n, self.world)
        if i < extra * (base + 1):
            return i // (base + 1)
        return extra + (i - extra * (base + 1)) // base

    # ------------------------------------------------------------------ collectives

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier(group=self.object_group)

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None on the others)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0, group=self.object_group)
        return out

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=self.object_group)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, group=self.object_group)
        return box[0]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (on ``device``; exact for integer tensors)."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def all_gather_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """``world x *tensor.shape``: every rank's tensor (all the same shape and dtype), in rank order."""
        if self.world == 1:
            return tensor.unsqueeze(0)
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    def agree(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on every rank, then a check that every rank succeeded: when one failed, every rank raises the
        error of the first failing rank (in rank order). Call it around local work that precedes a collective, so
        that an error on one rank never leaves the others waiting."""
        try:
            result, error = fn(), None
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            result, error = None, exc
        if self.world == 1:
            if error is not None:
                raise error
            return result
        errors = self.all_gather_objects(None if error is None else portable_error(error, self.rank))
        for rank, remote in enumerate(errors):
            if remote is not None:
                if rank == self.rank and error is not None:
                    raise error
                raise remote
        return result

    def from_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0 alone, its result (or its error) on every rank; the other ranks wait meanwhile."""
        if self.world == 1:
            return fn()
        outcome: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                outcome = (True, fn())
            except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
                local = exc
                outcome = (False, portable_error(exc, 0))
        ok, value = self.broadcast(outcome)
        if not ok:
            raise local if self.is_main else value
        return value

    def describe(self) -> dict[str, Any]:
        """For the manifest: world size, backend, nodes and each rank's host and device."""
        info: dict[str, Any] = {"world_size": self.world, "backend": self.backend}
        if self.world > 1:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
            info["nodes"] = max(1, self.world // max(1, local_world))
            info["ranks"] = self.all_gather_objects({"rank": self.rank, "host": socket.gethostname(),
                                                     "device": _device_name(self.device)})
        return info


SINGLE = Dist()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def portable_error(error: BaseException, rank: int) -> Exception:
    """An exception that survives pickling: a :class:`ComponentError` (and so ``NotApplicable``) as it is, any
    other as a ComponentError that names the rank, the type and where it was raised."""
    if isinstance(error, ComponentError):
        try:
            pickle.loads(pickle.dumps(error))
            return error
        except Exception:  # noqa: BLE001 - fall through to the text form
            pass
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return ComponentError(f"rank {rank}: {type(error).__name__}: {error}{where}")


# --------------------------------------------------------------------------------------------- declared state


def declared_state(metric: Any) -> dict[str, Any]:
    """The states a dataset-level metric declares and how each combines over the ranks (name -> one of
    :data:`REDUCTIONS`, a function of the list of the ranks' values, or None: kept by each rank), in declaration order:
    ``DatasetMetric.add_state``, or a legacy ``dist_state`` dict (its functions bound to the metric). ``{}`` when it
    declares none (or is not dataset-level)."""
    if isinstance(metric, DatasetMetric):
        return metric.states()
    legacy = dict(getattr(type(metric), "dist_state", None) or {})
    return {name: (lambda values, how=how: how(metric, values)) if callable(how) else how
            for name, how in legacy.items()}


def first_filled(values: list[Any]) -> Any:
    """A reduction for ``add_state``: the first of the ranks' values that is not empty (e.g. a description every rank
    that saw a batch holds alike), ``{}`` when all are."""
    return next((v for v in values if v), {})


def merged_state(metric: Any) -> dict[str, Any]:
    """The declared states that the ranks merge (those with a reduction): name -> reduction."""
    return {name: how for name, how in declared_state(metric).items() if how is not None}


def merge_values(values: Sequence[Any], how: str | Callable[..., Any], metric: Any = None) -> Any:
    """Combine the ranks' values of one state attribute, given in rank order.

    ``how``: ``"cat"`` (lists, tuples, tensors along dim 0, arrays; dicts key by key, keys in order of first
    appearance, a key held by several ranks combined again with ``"cat"``; other objects attribute by attribute),
    ``"sum"`` (numbers, tensors; dicts key by key), ``"max"`` / ``"min"``, ``"first"`` (the first value that is not
    None), or a function ``f(metric, values) -> value`` (the legacy ``dist_state`` form; a reduction declared with
    ``add_state`` is a function of the values alone, which :func:`merge_metric` calls itself). With the ranks'
    blocks of batches in rank order, ``"cat"`` gives the one-process order.
    """
    if callable(how):
        return how(metric, list(values))
    if how not in REDUCTIONS:
        raise ComponentError(f"dist_state: unknown reduction {how!r}; use one of {list(REDUCTIONS)} or a function")
    values = list(values)
    if how == "first":
        return next((v for v in values if v is not None), None)
    if how == "cat":
        return _cat(values)
    if isinstance(values[0], dict):
        return _by_key(values, lambda parts: merge_values(parts, how))
    if how == "sum":
        total = values[0]
        for v in values[1:]:
            total = total + v
        return total
    if isinstance(values[0], torch.Tensor):
        out = values[0]
        for v in values[1:]:
            out = torch.maximum(out, v) if how == "max" else torch.minimum(out, v)
        return out
    return max(values) if how == "max" else min(values)


def _by_key(values: list[dict], combine: Callable[[list[Any]], Any]) -> dict:
    out = copy.copy(values[0])  # keeps the type (a defaultdict keeps its factory)
    out.clear()
    for part in values:
        for key in part:
            if key not in out:
                held = [v[key] for v in values if key in v]
                out[key] = held[0] if len(held) == 1 else combine(held)
    return out


def _cat(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, dict):
        return _by_key(values, _cat)
    if isinstance(first, list):
        return type(first)(x for v in values for x in v) if type(first) is not list else [x for v in values for x in v]
    if isinstance(first, tuple):
        return tuple(x for v in values for x in v)
    if isinstance(first, torch.Tensor):
        return torch.cat(values)
    if isinstance(first, np.ndarray):
        return np.concatenate(values)
    if hasattr(first, "__dict__") and not isinstance(first, type):
        out = copy.copy(first)
        for name in vars(first):
            setattr(out, name, _cat([getattr(v, name) for v in values]))
        return out
    raise ComponentError(f"dist_state: cannot concatenate values of type {type(first).__name__}; declare 'sum', "
                         "'max', 'min' or 'first' for it, or a function (metric, values) -> value")

def state_of(metric: Any) -> dict[str, Any]:
    """The declared state of ``metric`` in a form that travels: tensors on the CPU, tagged with their device type."""
    return {name: to_transport(getattr(metric, name)) for name in merged_state(metric)}


def merge_metric(metric: Any, others: Sequence[dict[str, Any]], device: torch.device) -> None:
    """Merge the states of the other ranks (``state_of``, in rank order) into ``metric`` (rank 0's), in place."""
    for name, how in merged_state(metric).items():
        values = [getattr(metric, name)] + [from_transport(state[name], device) for state in others]
        setattr(metric, name, how(values) if callable(how) else merge_values(values, how))


@dataclasses.dataclass
class _Moved:
    tensor: torch.Tensor
    device_type: str


def to_transport(obj: Any) -> Any:
    """``obj`` with every tensor moved to the CPU (containers and plain objects are copied, never changed)."""
    if isinstance(obj, torch.Tensor):
        return _Moved(obj.detach().cpu(), obj.device.type)
    if isinstance(obj, dict):
        out = copy.copy(obj)
        for key, value in obj.items():
            out[key] = to_transport(value)
        return out
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return type(obj)(to_transport(v) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(obj):
        out = copy.copy(obj)
        for name, value in vars(obj).items():
            setattr(out, name, to_transport(value))
        return out
    return obj


def from_transport(obj: Any, device: torch.device) -> Any:
    """The inverse of :func:`to_transport`: tensors that lived on an accelerator go to ``device``."""
    if isinstance(obj, _Moved):
        return obj.tensor if obj.device_type == "cpu" else obj.tensor.to(device)
    if isinstance(obj, dict):
        out = copy.copy(obj)
        for key, value in obj.items():
            out[key] = from_transport(value, device)
        return out
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return type(obj)(from_transport(v, device) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(obj):
        for name, value in vars(obj).items():
            setattr(obj, name, from_transport(value, device))
        return obj
    return obj


__all__ = [
    "Dist",
    "REDUCTIONS",
    "SINGLE",
    "declared_state",
    "first_filled",
    "from_transport",
    "merge_metric",
    "merge_values",
    "merged_state",
    "portable_error",
    "state_of",
    "to_transport",
]
