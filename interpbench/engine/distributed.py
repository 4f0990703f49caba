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
(``DatasetMetric.add_state``: attribute -> how the ranks' parts combine, see
:func:`interpbench.core.state.merge_values`); rank 0 merges the ranks' states in rank order and calls
``compute()``. A dataset-level metric that declares no merged state runs on rank 0 alone, over every batch.
Model-scope metrics that declare ``distributed = True`` receive the :class:`Dist` in ``RunContext.dist`` and shard
their own work (dissection: :func:`interpbench.metrics.dissection.dissect`); the
others run on rank 0 alone with the whole dataset while the other ranks wait.

The communication context (:class:`~interpbench.core.state.Dist`, :data:`~interpbench.core.state.SINGLE`) and the
merging of declared states live in :mod:`interpbench.core.state`, where the metrics find them; this module starts
the processes and runs the batch loop over them.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``) everything here is a no-op:
:data:`SINGLE` answers every collective at once. The process group uses NCCL on CUDA devices (one GPU per rank,
``cuda:LOCAL_RANK``) and gloo on the CPU; Python objects always travel over a gloo group. A waiting rank times out
after ``INTERPBENCH_DIST_TIMEOUT`` seconds (default 12 hours: rank 0 may run a model-scope metric alone for long).
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from interpbench.core.base import ComponentError
from interpbench.core.identity import portable
from interpbench.core.state import (
    REDUCTIONS,
    SINGLE,
    Dist,
    declared_state,
    from_transport,
    merge_metric,
    merge_values,
    merged_state,
    portable_error,
    state_of,
    to_transport,
)
from interpbench.engine.feeding import Feed
from interpbench.engine.store import Store

DEFAULT_TIMEOUT_S = 12 * 3600

# --------------------------------------------------------------------------------------------- setup


_CURRENT: Dist | None = None


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


def dist_state(metric: Any) -> dict[str, Any]:
    """The states of a dataset-level metric that the ranks merge (:func:`interpbench.core.state.merged_state`)."""
    return merged_state(metric)


def rank0_only(metric: Any) -> bool:
    """A dataset-level metric without declared (merged) state runs on rank 0 alone, over every batch."""
    return metric.kind != "per_sample" and not merged_state(metric)


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
                 if p.failed is None and c.status == "pending" and c.metric.kind != "per_sample"
                 and merged_state(c.metric)}
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
    if metric.distributed:
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
    "REDUCTIONS",
    "Dist",
    "DistStore",
    "SINGLE",
    "ShardedBatches",
    "declared_state",
    "from_transport",
    "evaluate_model_scope",
    "gather_stats",
    "merge_metric",
    "merge_values",
    "open_store",
    "portable_error",
    "rank0_only",
    "runs_here",
    "same_on_every_rank",
    "setup",
    "state_of",
    "sync_cells",
    "to_transport",
]
