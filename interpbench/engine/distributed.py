"""Distributed runs: one process per GPU (or per CPU process), started by ``torchrun``.

    torchrun --nproc-per-node 4 -m interpbench run --methods gradcam,rise --models timm:resnet50 ...

Each process (a *rank*) loads the model and the dataset. The batches of a (model, dataset) are formed from the
dataset order exactly as in one process (seeds come from the identity of the cell and the batch), and each rank
computes a contiguous block of them (:meth:`Dist.shard`): rank 0 the first batches, rank 1 the next, and so on, so
that the ranks' blocks put end to end in rank order are the one-process order. After each *round* (every rank's
next batch) the per-sample scores are gathered and rank 0 writes them in one transaction (:class:`DistStore`);
rank 0 alone opens the results store, reads what is already done (for resume) and broadcasts it, and alone writes
the leaderboards and the artefacts.

Dataset-level metrics (``update`` / ``compute``) run on every rank over its batches when they declare their state
(``Metric.dist_state``: attribute -> how the ranks' parts combine, see :func:`merge_values`); rank 0 merges the
ranks' states in rank order and calls ``compute()``. A dataset-level metric that declares no state runs on rank 0
alone, over every batch. Model-scope metrics that declare ``distributed = True`` receive the :class:`Dist` in
``RunContext.dist`` and shard their own work (dissection: :func:`interpbench.metrics.dissection.dissect`); the
others run on rank 0 alone with the whole dataset while the other ranks wait.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``) everything here is a no-op:
:data:`SINGLE` answers every collective at once. The process group uses NCCL on CUDA devices (one GPU per rank,
``cuda:LOCAL_RANK``) and gloo on the CPU; Python objects always travel over a gloo group. A waiting rank times out
after ``INTERPBENCH_DIST_TIMEOUT`` seconds (default 12 hours: rank 0 may run a model-scope metric alone for long).
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import datetime
import math
import os
import pickle
import socket
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from interpbench.core.base import ComponentError
from interpbench.core.identity import portable

REDUCTIONS = ("cat", "sum", "max", "min", "first")
DEFAULT_TIMEOUT_S = 12 * 3600


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
_CURRENT: Dist | None = None


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


def environment_world() -> tuple[int, int, int]:
    """``(world, rank, local_rank)`` from torchrun's environment (``(1, 0, 0)`` without it)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise ComponentError(f"distributed run: WORLD_SIZE / RANK / LOCAL_RANK must be integers ({exc}); launch "
                             "with `torchrun --nproc-per-node N -m interpbench run ...`") from exc
    if world < 1 or not 0 <= rank < world:
        raise ComponentError(f"distributed run: RANK {rank} is not within WORLD_SIZE {world}; launch with torchrun")
    return world, rank, local_rank


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """The :class:`Dist` of this process and its device; starts the process group on the first call of a
    distributed run (NCCL for CUDA, gloo for the CPU) and keeps it for the life of the process.

    On CUDA, a device without an index becomes ``cuda:LOCAL_RANK`` (one GPU per rank)."""
    global _CURRENT
    world, rank, local_rank = environment_world()
    if world == 1:
        return SINGLE, device
    if device.type == "cuda" and device.index is None:
        if local_rank >= torch.cuda.device_count():
            raise ComponentError(f"distributed run: LOCAL_RANK {local_rank} but this node has "
                                 f"{torch.cuda.device_count()} GPU(s); start at most one process per GPU "
                                 "(torchrun --nproc-per-node <GPUs>)")
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if _CURRENT is not None:
        if _CURRENT.backend != backend:
            raise ComponentError(f"distributed run: the process group already uses {_CURRENT.backend}; a run on "
                                 f"{device} needs {backend}; use the same --device in every run of a process")
        return dataclasses.replace(_CURRENT, device=device), device
    timeout = datetime.timedelta(seconds=float(os.environ.get("INTERPBENCH_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    if not torch.distributed.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
        if backend == "nccl":
            kwargs["device_id"] = device
        torch.distributed.init_process_group(**kwargs)
        atexit.register(_shutdown)
    backend = torch.distributed.get_backend()
    object_group = None if backend == "gloo" else torch.distributed.new_group(backend="gloo", timeout=timeout)
    _CURRENT = Dist(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size(),
                    local_rank=local_rank, device=device, backend=backend, object_group=object_group)
    return _CURRENT, device


def _shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------- merging state


def merge_values(values: Sequence[Any], how: str | Callable[..., Any], metric: Any = None) -> Any:
    """Combine the ranks' values of one state attribute, given in rank order.

    ``how``: ``"cat"`` (lists, tuples, tensors along dim 0, arrays; dicts key by key, keys in order of first
    appearance, a key held by several ranks combined again with ``"cat"``; other objects attribute by attribute),
    ``"sum"`` (numbers, tensors; dicts key by key), ``"max"`` / ``"min"``, ``"first"`` (the first value that is not
    None), or a function ``f(metric, values) -> value``. With the ranks' blocks of batches in rank order, ``"cat"``
    gives the one-process order.
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


def dist_state(metric: Any) -> dict[str, Any]:
    """The declared state of a dataset-level metric (``Metric.dist_state``), ``{}`` when it declares none."""
    return dict(getattr(metric, "dist_state", None) or {})


def rank0_only(metric: Any) -> bool:
    """A dataset-level metric without declared state runs on rank 0 alone, over every batch."""
    return not metric.per_sample and not dist_state(metric)


def state_of(metric: Any) -> dict[str, Any]:
    """The declared state of ``metric`` in a form that travels: tensors on the CPU, tagged with their device type."""
    return {name: to_transport(getattr(metric, name)) for name in dist_state(metric)}


def merge_metric(metric: Any, others: Sequence[dict[str, Any]], device: torch.device) -> None:
    """Merge the states of the other ranks (``state_of``, in rank order) into ``metric`` (rank 0's), in place."""
    for name, how in dist_state(metric).items():
        values = [getattr(metric, name)] + [from_transport(state[name], device) for state in others]
        setattr(metric, name, merge_values(values, how, metric))


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


# --------------------------------------------------------------------------------------------- the store


class DistStore:
    """The results store as every rank sees it. Rank 0 holds the SQLite file; the others never open it.

    Reads the runner makes on every rank alike (``cell``, ``done_samples``, ``start_run``) are answered by rank 0
    and broadcast, so that every rank skips the same stored samples. Writes made on every rank alike (cells,
    statuses, dataset-level results) are done by rank 0 alone. Inside the batch loop (``buffering``) per-sample rows
    and status changes are kept on each rank and written by rank 0 at each :meth:`flush` (a collective), every
    rank's in rank order, in one transaction.
    """

    def __init__(self, dist: Dist, path: str | Path) -> None:
        from interpbench.engine.store import Store

        self.dist = dist
        self.local = Store(path) if dist.is_main else None
        self.buffering = False
        self._rows: list[tuple[str, str, float, str | None]] = []
        self._wall: dict[str, float] = {}
        self._status: list[tuple[str, str, str | None, float]] = []

    def __getattr__(self, name: str) -> Any:
        local = self.__dict__.get("local")
        if local is None:
            raise AttributeError(f"DistStore.{name}: only rank 0 holds the results store")
        return getattr(local, name)

    def start_run(self, manifest: dict[str, Any]) -> int:
        return self.dist.broadcast(self.local.start_run(manifest) if self.local else None)

    def finish_run(self, run: int, manifest: dict[str, Any]) -> None:
        if self.local:
            self.local.finish_run(run, manifest)

    def add_cell(self, *args: Any, **kwargs: Any) -> None:
        if self.local:
            self.local.add_cell(*args, **kwargs)

    def cell(self, key: str) -> dict[str, Any]:
        return self.dist.broadcast(self.local.cell(key) if self.local else None)

    def done_samples(self, key: str) -> set[str]:
        return self.dist.broadcast(self.local.done_samples(key) if self.local else None)

    def set_status(self, key: str, status: str, error: str | None = None, wall_time: float = 0.0) -> None:
        if self.buffering:
            self._status.append((key, status, error, wall_time))
        elif self.local:
            self.local.set_status(key, status, error, wall_time)

    def reset_failed(self, key: str) -> None:
        if self.local:
            self.local.reset_failed(key)

    def write_results(self, key: str, values: dict[str, float]) -> None:
        if self.local:
            self.local.write_results(key, values)

    def write_batch(self, rows: Sequence[tuple[str, str, float, str | None]], wall: dict[str, float]) -> None:
        if not self.buffering:
            if self.local:
                self.local.write_batch(rows, wall)
            return
        self._rows.extend(rows)
        for key, seconds in wall.items():
            self._wall[key] = self._wall.get(key, 0.0) + seconds

    def flush(self) -> None:
        """Collective: every rank's buffered rows, wall times and statuses written by rank 0, in rank order."""
        parts = self.dist.gather_objects((self._rows, self._wall, self._status))
        self._rows, self._wall, self._status = [], {}, []
        if self.local is None:
            return
        rows = [row for part in parts for row in part[0]]
        wall: dict[str, float] = {}
        for part in parts:
            for key, seconds in part[1].items():
                wall[key] = wall.get(key, 0.0) + seconds
        if rows or wall:
            self.local.write_batch(rows, wall)
        for part in parts:
            for key, status, error, seconds in part[2]:
                self.local.set_status(key, status, error, seconds)

    def run_cells(self, run: int) -> list[dict[str, Any]]:
        return self.local.run_cells(run) if self.local else []

    def close(self) -> None:
        if self.local:
            self.local.close()


def open_store(dist: Dist, path: str | Path):
    """The plain :class:`~interpbench.engine.store.Store` in one process, a :class:`DistStore` in a distributed run."""
    from interpbench.engine.store import Store

    return Store(path) if dist.world == 1 else DistStore(dist, path)


def local_store(store: Any) -> Any:
    """The SQLite store behind ``store`` (rank 0), for code that reads it directly (the leaderboards)."""
    return store.local if isinstance(store, DistStore) else store


# --------------------------------------------------------------------------------------------- the batch loop


def runs_here(dist: Dist, metric: Any, batch: int, n_batches: int) -> bool:
    """Does this rank run ``metric`` on batch ``batch``? Its owner does, but rank 0 runs a dataset-level metric
    without declared state (:func:`rank0_only`) on every batch and no other rank runs it."""
    if dist.world == 1:
        return True
    if rank0_only(metric):
        return dist.is_main
    return dist.owner(batch, n_batches) == dist.rank


class ShardedBatches:
    """The batches this rank computes, as ``(batch number, samples)``, loaded ahead by
    :class:`~interpbench.engine.feeding.Feed`.

    Its block of batches (:meth:`Dist.shard`) in rounds, with a :meth:`DistStore.flush` after each round (every rank
    takes part in every round, with or without a batch); then, on rank 0, the other ranks' batches when some cell
    runs on rank 0 alone (:func:`rank0_only`). In one process: every batch in order. ``stats()`` says how long the
    loop waited for data.
    """

    def __init__(self, dist: Dist, store: Any, dataset: Any, batch_size: int, plans: Sequence[Any],
                 workers: int = 0, device: torch.device | None = None) -> None:
        from interpbench.engine.feeding import Feed

        self.dist, self.store = dist, store
        n = len(dataset)
        n_batches = math.ceil(n / batch_size)
        self.block = dist.shard(n_batches)
        self.rounds = math.ceil(n_batches / dist.world)
        extra: list[int] = []
        if dist.world > 1 and dist.is_main and any(
                rank0_only(c.metric) for p in plans if p.failed is None for c in p.cells if c.status == "pending"):
            extra = [b for b in range(n_batches) if b not in self.block]
        self.order = list(self.block) + extra
        ranges = [range(b * batch_size, min(n, (b + 1) * batch_size)) for b in self.order]
        pin = device is not None and device.type == "cuda"
        self.feed = Feed(dataset, ranges, workers=workers, pin_memory=pin)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[int, list[dict]]]:
        distributed = self.dist.world > 1
        loaded = iter(self.feed)
        if distributed:
            self.store.buffering = True
        try:
            for r in range(self.rounds):
                if r < len(self.block):
                    yield self.order[r], next(loaded)
                if distributed:
                    self.store.flush()
            for b in self.order[len(self.block):]:
                yield b, next(loaded)
        finally:
            loaded.close()  # stops the workers and closes the feed's clock
            if distributed:
                self.store.buffering = False

    def stats(self) -> dict[str, Any]:
        return self.feed.stats()


def sync_cells(dist: Dist, store: Any, plans: Sequence[Any], device: torch.device) -> None:
    """Collective, after the batch loop: agree on the plans' and cells' outcomes and merge dataset-level states.

    Rank 0 takes, for each method and each cell, the first failure or non-applicability in rank order (the one a
    single process would have met first), writes it, and merges the other ranks' declared metric states into its
    own (:func:`merge_metric`) before ``compute()``. The other ranks mark their cells as handled elsewhere, so that
    only rank 0 computes and writes the final results.
    """
    if dist.world == 1:
        return
    store.flush()  # wall time of rank 0's extra batches
    mergeable = {(i, j) for i, p in enumerate(plans) for j, c in enumerate(p.cells)
                 if p.failed is None and c.status == "pending" and not c.metric.per_sample and dist_state(c.metric)}
    local = {"plans": [(p.failed, p.status) for p in plans],
             "cells": [[(c.status, c.error) for c in p.cells] for p in plans],
             "states": {ij: state_of(plans[ij[0]].cells[ij[1]].metric) for ij in mergeable} if not dist.is_main else {}}
    parts = dist.gather_objects(local)
    if not dist.is_main:
        for plan in plans:
            for cell in plan.cells:
                if cell.status == "pending":
                    cell.status = "elsewhere"  # rank 0 computes and writes it
        return
    for i, plan in enumerate(plans):
        if plan.failed is None:
            failed = next(((f, s) for f, s in (part["plans"][i] for part in parts[1:]) if f is not None), None)
            if failed is not None:
                plan.failed, plan.status = failed
        for j, cell in enumerate(plan.cells):
            if cell.status != "pending":
                continue
            outcome = next(((s, e) for s, e in (part["cells"][i][j] for part in parts[1:]) if s != "pending"), None)
            if outcome is not None:
                cell.status, cell.error = outcome
                store.set_status(cell.key, cell.status, cell.error)
            elif plan.failed is None and (i, j) in mergeable:
                merge_metric(cell.metric, [part["states"][(i, j)] for part in parts[1:]], device)


def evaluate_model_scope(dist: Dist, metric: Any, model: Any, dataset: Any, ctx: Any) -> dict[str, float]:
    """A model-scope metric's ``evaluate`` in a run of ``dist.world`` ranks.

    Metrics that declare ``distributed = True`` run on every rank with ``ctx.dist`` and shard their own work; the
    others run on rank 0 alone with the whole dataset (``ctx.dist`` None) while the other ranks wait. Every rank
    returns the same values or raises the same error."""
    if dist.world == 1:
        return metric.evaluate(model, dataset, ctx)
    if getattr(metric, "distributed", False):
        ctx = dataclasses.replace(ctx, dist=dist)
        return dist.agree(lambda: metric.evaluate(model, dataset, ctx))
    ctx = dataclasses.replace(ctx, dist=None)
    return dist.from_main(lambda: metric.evaluate(model, dataset, ctx))


def same_on_every_rank(dist: Dist, what: str, identity: Any) -> Any:
    """``identity`` (e.g. a model's weights and a dataset's description), checked to be the same on every rank:
    ranks that loaded different weights or data would compute different cells."""
    if dist.world == 1:
        return identity
    mine = portable(identity)  # what was loaded, not where it lies: nodes may hold copies at other paths
    for rank, other in enumerate(dist.all_gather_objects(mine)):
        if other != mine:
            raise ComponentError(
                f"distributed run: {what} differs between rank {dist.rank} and rank {rank} ({mine!r} vs "
                f"{other!r}); every rank must load the same weights and data: share the cache "
                "($INTERPBENCH_CACHE) and the dataset files between the nodes, or copy them")
    return identity


def finish(dist: Dist, ok: bool, table: Any) -> tuple[bool, Any]:
    """Rank 0's verdict and table on every rank (the others' ``ok`` only knew their own batches)."""
    return dist.broadcast((ok, table))


def gather_stats(dist: Dist, stats: dict[str, Any]) -> dict[str, Any]:
    """Rank 0's ``stats`` (e.g. data feeding), with every rank's under ``"ranks"`` in a distributed run."""
    if dist.world == 1:
        return stats
    parts = dist.gather_objects(stats)
    return {**stats, "ranks": parts} if parts is not None else stats


def gather_events(dist: Dist, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's events (e.g. out-of-memory retries), tagged with the rank, on rank 0 (the others: their own)."""
    if dist.world == 1:
        return events
    parts = dist.gather_objects(events)
    if parts is None:
        return events
    return [{**event, "rank": rank} for rank, part in enumerate(parts) for event in part]


__all__ = [
    "Dist",
    "DistStore",
    "SINGLE",
    "ShardedBatches",
    "evaluate_model_scope",
    "gather_stats",
    "merge_metric",
    "merge_values",
    "open_store",
    "rank0_only",
    "runs_here",
    "same_on_every_rank",
    "setup",
    "sync_cells",
]
