"""The experiment grid: models x datasets x methods x metrics.

For each model (loaded once) and each dataset it runs on, the model-scope metrics run once, then every batch is
loaded once, its targets computed once, and each method's maps computed once and fed to every explanation-scope
metric. Per-sample scores go to the store one transaction per batch; batches whose samples are all stored for
every cell are skipped, so a killed run resumes and ends with the numbers of an uninterrupted one. Batches are
formed from the dataset order alone and seeds from the identity of the cell and the batch, never from the order
in which cells run. Under torchrun each rank computes a contiguous block of the batches and rank 0 alone writes
(:mod:`interpbench.engine.distributed`, docs/scale.md); ``--workers`` processes decode the batches ahead
(:mod:`interpbench.engine.feeding`).

Each metric's ``kind`` (interpbench/core/base.py) picks its protocol: per-sample scores, a dataset-level ``update`` /
``compute``, or a model-scope ``evaluate``. What a run is asked to do is :class:`~interpbench.engine.config.RunConfig`
(:mod:`interpbench.engine.config`); ``--compile`` is :mod:`interpbench.engine.compile`; the checks of what methods
and metrics return and the out-of-memory retry are :mod:`interpbench.engine.guards`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from interpbench import api
from interpbench.core.base import (
    Batch,
    ComponentError,
    Method,
    Metric,
    Model,
    NotApplicable,
    RunContext,
)
from interpbench.core.config import resolve_device
from interpbench.core.identity import config_key, environment, portable, stable_hash
from interpbench.core.registry import get_registry
from interpbench.core.tabular import slug
from interpbench.engine import distributed, feeding
from interpbench.engine.compile import COMPILE_SCOPE, compile_model
from interpbench.engine.config import PRECISIONS, RunConfig, grids
from interpbench.engine.guards import (
    call_in_chunks,
    check_maps,
    check_scores,
    describe_error,
    slice_batch,
    warn_if_identified_by_path_alone,
)
from interpbench.engine.store import Store


@dataclasses.dataclass
class Cell:
    key: str
    metric_name: str
    metric: Metric
    done: set[str]
    status: str = "pending"
    error: str | None = None
    wall: float = 0.0
    chunk: int = 1 << 30


@dataclasses.dataclass
class MethodPlan:
    name: str
    method: Method | None
    key: str
    cells: list[Cell]
    failed: str | None = None
    status: str = "ok"
    limit: int | None = None  # only the first `limit` samples (a per-method budget, recorded in the manifest)
    chunk: int = 1 << 30  # samples per call; halved on out-of-memory errors and kept for later batches


class Runner:
    def __init__(self, config: RunConfig, console: Console | None = None) -> None:
        self.config = config
        self.console = console or Console(stderr=True)
        self.registry = get_registry()
        self.dist, self.device = distributed.setup(resolve_device(config.device))  # cuda:LOCAL_RANK under torchrun
        self.out = Path(config.out)
        self.ok = True
        self.oom_events: list[dict[str, Any]] = []
        self.autocast_dtype = PRECISIONS[config.precision]
        # Validate every name up front: a typo fails before an hour of work, not after.
        for name in config.methods:
            self.registry.get("methods", name)
        for name in config.metrics:
            if not getattr(self.registry.get("metrics", name), "kind", ""):
                raise ComponentError(f"metric {name!r} implements no protocol: subclass interpbench.PerSampleMetric "
                                     "(score), DatasetMetric (update / compute) or ModelMetric (evaluate)")
        for name in config.datasets or []:
            api.dataset_entry(name, config.datasets_config)
        for failure in self.registry.failures if self.dist.is_main else []:
            self.console.print(f"[yellow]warning: {failure} (see `interpbench list plugins`)[/yellow]")

    # ------------------------------------------------------------------ building components

    def _method(self, name: str, dataset: Any = None) -> Method:
        return api.load_method(name, **method_params_for(name, dataset, self.config.method_params))

    def _metric(self, name: str) -> Metric:
        return api.load_metric(name, **self.config.metric_params.get(name, {}))

    def run(self, publish: Callable[[Any, Path, int], pd.DataFrame] | None = None) -> pd.DataFrame | None:
        """Run the grid into ``out/store.sqlite``; then, on the main rank, ``publish(store, out, run_id)`` writes
        the tables and its result is returned (``interpbench.publish.leaderboard.write_leaderboard`` is the usual
        one; the engine does not import the publishing layer above it). Without ``publish``: None."""
        cfg = self.config
        store = distributed.open_store(self.dist, self.out / "store.sqlite")  # rank 0 alone opens the file
        manifest: dict[str, Any] = {
            "experiment": cfg.experiment or self.out.name,
            "command": cfg.command,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
            "environment": environment(self.device, self.registry),
            "distributed": {**self.dist.describe(), "workers": cfg.workers},
            "precision": {"requested": cfg.precision,
                          "autocast": "methods and metrics" if cfg.precision != "fp32" else "none",
                          "note": "softmax probabilities of the causal metrics are computed in fp32"},
            "layout": {"memory_format": "channels_last" if cfg.channels_last else "contiguous",
                       "applies_to": "model parameters and buffers, the runner's input batches"},
            "compile": {"mode": cfg.compile, "backend": cfg.compile_backend if cfg.compile else None,
                        "scope": COMPILE_SCOPE if cfg.compile else None, "models": {}},
            "models": {},
            "datasets": {},
            "methods": {},
            "metrics": {},
            "failures": [],
        }
        run_id = store.start_run(manifest)
        self.position = 0
        started = self.started = time.time()
        with self._progress() as progress:
            self.live = progress  # None where no bar is shown: then one log line per finished cell
            steps = [(grid, spec) for grid in grids(cfg) for spec in grid.models]
            overall = progress.add_task(f"experiment {cfg.experiment or self.out.name}: {len(steps)} model runs",
                                        total=len(steps)) if progress is not None else None
            try:
                for grid, spec in steps:
                    self.config = grid
                    self._run_model(spec, store, run_id, manifest, progress)
                    if overall is not None:
                        progress.advance(overall)
            finally:
                self.config = cfg
        manifest["wall_time"] = time.time() - started
        manifest["out_of_memory"] = distributed.gather_events(self.dist, self.oom_events)
        manifest["cells"] = [
            {k: c[k] for k in ("key", "model", "dataset", "method", "metric", "status", "error", "n", "wall_time")}
            for c in store.run_cells(run_id)
        ]
        store.finish_run(run_id, manifest)
        self.ok = self.ok and all(c["status"] in ("done", "skipped", "not_applicable") for c in manifest["cells"])
        table = None
        if publish is not None and self.dist.is_main:
            table = publish(distributed.local_store(store), self.out, run_id)
        self.ok, table = distributed.finish(self.dist, self.ok, table)
        store.close()
        return table

    def _progress(self):
        """Progress bars (what runs, elapsed, time left) on a terminal; nothing in a log or a pipe."""
        if not self.config.progress or not self.dist.is_main or not self.console.is_terminal:
            return nullcontext(None)
        return Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=self.console, transient=False,
        )

    def _log_cell(self, store: Store, key: str, model: str, dataset: str, method: str, metric: str) -> None:
        """Where no progress bar is shown (a log, a pipe, --no-progress): one line per finished cell, with the time
        since the run started, its status and its own time."""
        if getattr(self, "live", None) is not None or not self.dist.is_main:
            return
        row = distributed.local_store(store).cell(key)  # rank 0's own file: DistStore.cell is a collective
        what = metric if method == "-" else f"{method} / {metric}"
        self.console.print(f"[{time.time() - self.started:6.0f} s] {row.get('status', '?'):<8} {model} on {dataset}: "
                           f"{what} ({row.get('wall_time') or 0.0:.1f} s)", markup=False, highlight=False,
                           soft_wrap=True)

    def _register_failed(self, store: Store, run_id: int, model: str, dataset: str, error: str) -> None:
        """A model or dataset that cannot load: one failed row per cell it would have had."""
        for method in self.config.methods or ["-"]:
            for metric in self.config.metrics:
                key = config_key({"failed": [model, dataset, method, metric]})
                self._add_cell(store, run_id, key, model, dataset, method, metric, "explanation", True, {})
                store.set_status(key, "failed", error)
        self.ok = False

    def _add_cell(self, store, run_id, key, model, dataset, method, metric, scope, hib, config) -> None:
        store.add_cell(run_id, self.position, key, model=model, dataset=dataset, method=method, metric=metric,
                       scope=scope, higher_is_better=hib, config=config)
        self.position += 1

    def _run_model(self, spec: str, store: Store, run_id: int, manifest: dict, progress) -> None:
        cfg = self.config
        try:
            model = self.dist.agree(lambda: api.load_model(spec, device=str(self.device)))  # fails on every rank
        except Exception as exc:  # noqa: BLE001 - one failing model never loses the others
            error = describe_error(exc)
            self.console.print(f"[red]model {spec} did not load: its cells failed (why: at the end of the run)[/red]")
            manifest["failures"].append({"model": spec, "error": error})
            self._register_failed(store, run_id, spec, "-", error)
            return
        manifest["models"][spec] = distributed.same_on_every_rank(self.dist, f"model {spec!r}", model.describe())
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)  # 4-D parameters and buffers (a pair's model A too)
        if cfg.compile is not None:
            # Models run one after the other: the earlier ones' compiled graphs are done with, and every Model shares
            # Model.forward's code, whose dynamo cache holds at most recompile_limit (8) graphs before running eager.
            from torch import _dynamo

            _dynamo.reset()
            # the record (status, error, calls) is filled in as the run goes; a failed compile warns and runs eager
            manifest["compile"]["models"][spec] = compile_model(model, cfg.compile, cfg.compile_backend,
                                                                warmup=self._warmup_input(model))
        if not cfg.datasets and not model.default_dataset:
            error = (f"model {spec!r} (label space {model.label_space!r}) has no embedded default dataset; "
                     "name one with --dataset (see `interpbench list datasets`)")
            manifest["failures"].append({"model": spec, "error": error})
            self._register_failed(store, run_id, spec, "-", error)
            return
        for ds_name in cfg.datasets or [model.default_dataset]:
            try:
                dataset = self.dist.agree(lambda: api.load_dataset(ds_name, split="test", size=model.input_size,
                                                                   config=cfg.datasets_config))
                if cfg.limit is not None and cfg.limit < len(dataset):
                    dataset = LimitedDataset(dataset, cfg.limit)
                if cfg.target == "label" and not ({"label", "labels"} & set(dataset.provides)):
                    raise ComponentError(f"--target label: dataset {ds_name!r} has no labels; use --target predicted")
                if cfg.target == "label" and dataset.label_space != model.label_space:
                    raise ComponentError(
                        f"--target label: dataset {ds_name!r} is labelled in {dataset.label_space!r} but model "
                        f"{spec!r} predicts {model.label_space!r}; use --target predicted or a matching dataset"
                    )
            except Exception as exc:  # noqa: BLE001
                error = describe_error(exc)
                self.console.print(f"[red]dataset {ds_name} for {spec} did not load: its cells failed (why: at the end of "
                                   "the run)[/red]")
                manifest["failures"].append({"model": spec, "dataset": ds_name, "error": error})
                self._register_failed(store, run_id, spec, ds_name, error)
                continue
            identity = dataset.identity()
            manifest["datasets"].setdefault(ds_name, {})[spec] = distributed.same_on_every_rank(
                self.dist, f"dataset {ds_name!r}", {**identity, "n": len(dataset)})
            warn_if_identified_by_path_alone(ds_name, identity)
            self._run_model_scope(model, spec, ds_name, dataset, store, run_id, manifest)
            self._run_explanations(model, spec, ds_name, dataset, store, run_id, manifest, progress)

    # ------------------------------------------------------------------ model-scope metrics

    def _run_model_scope(self, model: Model, spec: str, ds_name: str, dataset, store: Store, run_id: int, manifest) -> None:
        cfg = self.config
        for metric_name in cfg.metrics:
            metric = self._metric(metric_name)
            if metric.scope != "model":
                continue
            manifest["metrics"][metric_name] = metric.describe()
            identity = {"model": portable(model.describe()), "dataset": portable(dataset.identity()),
                        "metric": metric.describe(), "limit": cfg.limit, "seed": cfg.seed, **self._numerics_identity()}
            key = config_key(identity)
            self._add_cell(store, run_id, key, spec, ds_name, "-", metric_name, "model", metric.higher_is_better, identity)
            if store.cell(key)["status"] == "done":
                continue
            missing = set(metric.needs) - set(dataset.provides)
            if missing:
                store.set_status(key, "skipped", f"dataset {ds_name!r} lacks {sorted(missing)} needed by {metric_name!r}")
                continue
            t0 = time.time()
            ctx = RunContext(device=self.device, batch_size=cfg.batch_size, seed=stable_hash([cfg.seed, key]),
                             out_dir=self.out / "artifacts" / f"{slug(spec)}__{ds_name}__{metric_name}"
                             if self.dist.is_main else None, limit=cfg.limit, workers=cfg.workers)
            live = getattr(self, "live", None)
            task = live.add_task(f"{metric_name}: {spec} on {ds_name}", total=None) if live is not None else None
            try:
                values = distributed.evaluate_model_scope(self.dist, metric, model, dataset, ctx)
                store.write_results(key, {k: float(v) for k, v in values.items()})
                store.set_status(key, "done", None, time.time() - t0)
            except NotApplicable as exc:
                store.set_status(key, "not_applicable", str(exc), time.time() - t0)
            except Exception as exc:  # noqa: BLE001
                store.set_status(key, "failed", describe_error(exc), time.time() - t0)
                self.ok = False
            if task is not None:
                live.update(task, total=1, completed=1)
            self._log_cell(store, key, spec, ds_name, "-", metric_name)

    # ------------------------------------------------------------------ explanation-scope metrics

    def _numerics_identity(self) -> dict[str, str]:
        """What of the arithmetic goes into a cell's identity: the precision, when it is not fp32 (so fp32 cells keep
        their keys). A bf16 or fp16 number is another number, and a run at one precision must not resume, or mix into
        its tables, the cells of a run at another. The device, ``--channels-last``, ``--compile`` and the batch size
        of a deterministic method change only the float rounding and stay out, so a run with them resumes a plain
        run's cells."""
        return {} if self.config.precision == "fp32" else {"precision": self.config.precision}

    def _plans(self, model: Model, spec: str, ds_name: str, dataset, store: Store, run_id: int, manifest) -> list[MethodPlan]:
        cfg = self.config
        plans = []
        for method_name in cfg.methods:
            method = self._method(method_name, dataset)
            manifest["methods"][method_name] = {**method.describe(), "requires_grad": method.requires_grad,
                                                "deterministic": method.deterministic}
            maps_identity = {"model": portable(model.describe()), "dataset": portable(dataset.identity()),
                             "method": method.describe(), "target": cfg.target, "seed": cfg.seed,
                             **self._numerics_identity()}
            if not method.deterministic:
                maps_identity["batch_size"] = cfg.batch_size  # the batch seeds depend on its composition
            limit = cfg.method_limits.get(method_name)
            if limit is not None:
                maps_identity["method_limit"] = limit
            plan = MethodPlan(method_name, method, config_key(maps_identity), [], limit=limit)
            for metric_name in cfg.metrics:
                metric = self._metric(metric_name)
                if metric.scope != "explanation":
                    continue
                manifest["metrics"][metric_name] = metric.describe()
                identity = {**maps_identity, "metric": metric.describe()}
                if metric.kind == "dataset":
                    identity["limit"] = cfg.limit  # a dataset-level number depends on the whole sample set
                key = config_key(identity)
                self._add_cell(store, run_id, key, spec, ds_name, method_name, metric_name, "explanation",
                               metric.higher_is_better, identity)
                row = store.cell(key)
                if row["status"] == "failed":
                    store.reset_failed(key)
                    row = store.cell(key)
                status = row["status"]
                if metric.kind == "per_sample" and status == "done":
                    status = "pending"  # per batch, stored samples are skipped; a larger --limit extends the cell
                cell = Cell(key, metric_name, metric, store.done_samples(key), status=status)
                missing = set(metric.needs) - set(dataset.provides)
                if missing and cell.status != "done":
                    cell.status = "skipped"
                    store.set_status(key, "skipped", f"dataset {ds_name!r} lacks {sorted(missing)} needed by {metric_name!r}")
                if metric.kind == "dataset":
                    metric.reset()
                    # the run context, as model-scope metrics get it: one artefact folder per (model, dataset,
                    # metric), shared by the methods (a metric names its files after Batch.method)
                    metric.run_context = RunContext(
                        device=self.device, batch_size=cfg.batch_size, seed=stable_hash([cfg.seed, key]),
                        out_dir=self.out / "artifacts" / f"{slug(spec)}__{ds_name}__{metric_name}"
                        if self.dist.is_main else None, limit=cfg.limit, workers=cfg.workers)
                plan.cells.append(cell)
            plans.append(plan)
        return plans

    def _run_explanations(self, model: Model, spec: str, ds_name: str, dataset, store: Store, run_id: int,
                          manifest, progress) -> None:
        cfg = self.config
        plans = self._plans(model, spec, ds_name, dataset, store, run_id, manifest)
        active = [c for p in plans for c in p.cells if c.status in ("pending",)]
        if not active:
            return
        n = len(dataset)
        n_batches = math.ceil(n / cfg.batch_size)
        # this rank's batches (all of them in one process), decoded ahead by --workers processes
        feed = distributed.ShardedBatches(self.dist, store, dataset, cfg.batch_size, plans, cfg.workers, self.device)
        task = progress.add_task(f"{spec} on {ds_name}", total=len(feed)) if progress is not None else None
        multilabel = cfg.target == "label" and getattr(dataset, "multilabel", False)
        for b, samples in feed:
            start = b * cfg.batch_size
            indices = range(start, min(n, start + cfg.batch_size))
            if multilabel:  # one trial per (image, present class)
                samples = [{**s, "id": f"{s['id']}#{c}", "label": int(c), "image_id": s["id"]}
                           for s in samples for c in s.get("labels", [])]
            if not samples:  # a batch of images with no class present
                if task is not None:
                    progress.advance(task)
                continue
            ids = [str(s["id"]) for s in samples]
            todo = []
            for plan in plans:
                if plan.failed is not None:
                    continue
                keep = len(samples) if plan.limit is None else _count_within(samples, indices, plan.limit, multilabel)
                if keep == 0:
                    continue
                cells = [c for c in plan.cells if c.status == "pending"
                         and (c.metric.kind != "per_sample" or not set(ids[:keep]) <= c.done)
                         and distributed.runs_here(self.dist, c.metric, b, n_batches)]
                if cells:
                    todo.append((plan, cells, keep))
            views: dict[str, list[tuple[int, Batch]]] = {}  # image field -> batches of equal-size images, in order
            for plan, cells, keep in todo:
                field = getattr(dataset, "method_inputs", {}).get(plan.name, "image")  # e.g. RISE's square view
                if field not in views:
                    views[field] = [(offset, self._batch(model, run))
                                    for offset, run in feeding.same_size_runs(samples, field)]
                for offset, batch in views[field]:
                    if offset >= keep:
                        break
                    part = batch if offset + len(batch) <= keep else slice_batch(batch, 0, keep - offset)
                    snapshot = snapshot_path(self.out, spec, ds_name, plan.name) if b == 0 and offset == 0 else None
                    self._run_batch(model, plan, cells, part, store, snapshot)
            if task is not None:
                progress.advance(task)
        feeding_stats = distributed.gather_stats(self.dist, feed.stats())  # time spent waiting for data, per rank
        manifest.setdefault("data_feeding", {})[f"{spec} on {ds_name}"] = feeding_stats
        distributed.sync_cells(self.dist, store, plans, self.device)  # outcomes and dataset-level states to rank 0
        for plan in plans:
            for cell in plan.cells:
                if cell.status != "pending":
                    continue
                if plan.failed is not None:
                    status, error = plan.status, plan.failed
                elif cell.metric.kind == "dataset":
                    try:
                        store.write_results(cell.key, {k: float(v) for k, v in cell.metric.compute().items()})
                        status, error = "done", None
                    except Exception as exc:  # noqa: BLE001
                        status, error = "failed", describe_error(exc)
                else:
                    status, error = "done", None
                store.set_status(cell.key, status, error)
                if status == "failed":
                    self.ok = False
        for plan in plans:
            for cell in plan.cells:
                self._log_cell(store, cell.key, spec, ds_name, plan.name, cell.metric_name)

    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.channels_last else torch.preserve_format

    def _warmup_input(self, model: Model) -> torch.Tensor:
        """A batch of zeros shaped like the runner's batches (the first compile happens here, not in a method)."""
        return torch.zeros(self.config.batch_size, 3, *model.input_size, device=self.device).to(
            memory_format=self._memory_format())

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _oom_recorder(self, owner: Any, model: str, name: str):
        def record(chunk: int) -> None:
            owner.chunk = chunk
            self.oom_events.append({"model": model, "component": name, "chunk": chunk})
            if self.dist.is_main:
                self.console.print(f"[yellow]{name} on {model}: out of memory, retrying with {chunk} samples per call[/yellow]")
        return record

    def _batch(self, model: Model, samples: list[dict]) -> Batch:
        data = feeding.collate(samples)  # reuses the images stacked (and pinned) by the feed
        images = data["images"].to(self.device, non_blocking=True, memory_format=self._memory_format())
        labels = data.get("labels")
        if self.config.target == "label":
            targets = labels.to(self.device)
        elif hasattr(model, "choose_targets"):  # a pair: A's prediction where A and B share a label space
            targets = model.choose_targets(images)
        else:
            with torch.no_grad():
                targets = model(images).argmax(dim=1)
        return Batch(ids=data["ids"], images=images, targets=targets, samples=data["samples"],
                     labels=None if labels is None else labels.to(self.device))

    def _run_batch(self, model: Model, plan: MethodPlan, cells: list[Cell], batch: Batch, store: Store,
                   snapshot: Path | None = None) -> None:
        seed = stable_hash([plan.key, batch.ids[0], len(batch)])
        batch = dataclasses.replace(batch, method=plan.method, seed=seed)
        rng_devices = [self.device] if self.device.type == "cuda" else []
        t0 = time.time()
        try:
            with torch.random.fork_rng(devices=rng_devices), self._autocast():
                torch.manual_seed(seed)
                maps = call_in_chunks(lambda part, _: plan.method.explain(model, part.images, part.targets),
                                      batch, None, plan.chunk, self._oom_recorder(plan, model.spec, plan.name))
            maps = check_maps(maps, batch.images, plan.name)
        except NotApplicable as exc:
            plan.failed, plan.status = str(exc), "not_applicable"
            return
        except Exception as exc:  # noqa: BLE001 - one failing method never loses the other cells
            plan.failed, plan.status = describe_error(exc), "failed"
            self.console.print(f"[red]method {plan.name} on {model.spec} failed (why: at the end of the run)[/red]")
            return
        t_maps = time.time() - t0
        if snapshot is not None:
            save_snapshot(snapshot, batch, maps)
        rows: list[tuple[str, str, float, str | None]] = []
        wall: dict[str, float] = {}
        for cell in cells:
            t1 = time.time()
            try:
                with torch.random.fork_rng(devices=rng_devices), self._autocast():
                    torch.manual_seed(stable_hash([cell.key, batch.ids[0], len(batch)]))
                    if cell.metric.kind == "per_sample":
                        result = call_in_chunks(lambda part, m: cell.metric.score(model, part, m), batch, maps,
                                                cell.chunk, self._oom_recorder(cell, model.spec, cell.metric_name))
                    else:
                        cell.metric.update(model, batch, maps)
                if cell.metric.kind == "per_sample":
                    scores, extra = check_scores(result, len(batch), cell.metric_name)
                    for i, sid in enumerate(batch.ids):
                        blob = json.dumps({k: v[i].tolist() for k, v in extra.items()}) if extra else None
                        rows.append((cell.key, sid, float(scores[i]), blob))
                    cell.done.update(batch.ids)
            except NotApplicable as exc:
                cell.status = "not_applicable"
                store.set_status(cell.key, "not_applicable", str(exc))
            except Exception as exc:  # noqa: BLE001
                cell.status, cell.error = "failed", describe_error(exc)
                store.set_status(cell.key, "failed", cell.error)
                self.console.print(f"[red]metric {cell.metric_name} of {plan.name} on {model.spec} failed (why: at the end "
                                   "of the run)[/red]")
                self.ok = False
            wall[cell.key] = t_maps + time.time() - t1
        store.write_batch(rows, wall)


def method_params_for(name: str, dataset: Any, params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A method's parameters on ``dataset``: those the dataset's published protocol sets (its ``method_defaults``,
    e.g. extremal perturbation's areas on VOC and COCO in TorchRay's benchmark), overridden key by key by the
    run's own (``params[name]``, from ``--method-param`` or the experiment)."""
    defaults = (getattr(dataset, "method_defaults", None) or {}).get(name, {})
    return {**defaults, **params.get(name, {})}


SNAPSHOT_SIZE = 8


def snapshot_path(out: str | Path, model: str, dataset: str, method: str) -> Path:
    return Path(out) / "artifacts" / "maps" / f"{slug(model)}__{dataset}__{method}.pt"


def save_snapshot(path: Path, batch: Batch, maps: torch.Tensor) -> None:
    """The first images and maps of a (model, dataset, method), for galleries and reports."""
    k = min(SNAPSHOT_SIZE, len(batch))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ids": batch.ids[:k], "targets": batch.targets[:k].cpu(),
                "images": (batch.images[:k] * 255).round().to(torch.uint8).cpu(),
                "maps": maps[:k].to(torch.float16).cpu()}, path)


def _count_within(samples: list[dict], indices: range, limit: int, multilabel: bool) -> int:
    """How many leading samples (or trials) of a batch come from the first ``limit`` dataset samples."""
    if not multilabel:
        return max(0, min(len(samples), limit - indices.start))
    allowed = max(0, limit - indices.start)  # trials come grouped by image, in dataset order
    images: list[str] = []
    for count, s in enumerate(samples):
        if not images or images[-1] != s["image_id"]:
            images.append(s["image_id"])
        if len(images) > allowed:
            return count
    return len(samples)


class LimitedDataset(torch.utils.data.Dataset):
    """The first ``limit`` samples of a dataset, keeping its attributes."""

    def __init__(self, dataset, limit: int) -> None:
        self.dataset, self.limit = dataset, limit

    def __len__(self) -> int:
        return self.limit

    def __getitem__(self, i: int):
        if not 0 <= i < self.limit:
            raise IndexError(i)
        return self.dataset[i]

    def __getattr__(self, name: str):
        if "dataset" not in self.__dict__:  # while unpickling (data-loading workers started by spawn)
            raise AttributeError(name)
        return getattr(self.__dict__["dataset"], name)


