"""The experiment grid: models x datasets x methods x metrics.

For each model (loaded once) and each dataset it runs on, the model-scope metrics run once, then every batch is
loaded once, its targets computed once, and each method's maps computed once and fed to every explanation-scope
metric. Per-sample scores go to the store one transaction per batch; batches whose samples are all stored for
every cell are skipped, so a killed run resumes and ends with the numbers of an uninterrupted one. Batches are
formed from the dataset order alone and seeds from the identity of the cell and the batch, never from the order
in which cells run. Under torchrun each rank computes a contiguous block of the batches and rank 0 alone writes
(:mod:`interpbench.engine.distributed`, docs/scale.md); ``--workers`` processes decode the batches ahead
(:mod:`interpbench.engine.feeding`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import traceback
import warnings
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
from torch import nn

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
from interpbench.engine.store import Store

TARGETS = ("predicted", "label")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile modes (--compile MODE)


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
            parts = [fn(_slice(batch, i, i + chunk), None if maps is None else maps[i:i + chunk])
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


@dataclasses.dataclass
class RunConfig:
    methods: list[str]
    models: list[str]
    metrics: list[str]
    datasets: list[str] | None = None  # None: each model's default dataset
    out: str | Path = "runs/default"
    limit: int | None = None
    batch_size: int = 16
    device: str = "auto"
    target: str = "predicted"
    seed: int = 0
    method_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    method_limits: dict[str, int] = dataclasses.field(default_factory=dict)  # method -> its first N samples
    metric_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    datasets_config: str | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast for methods and metrics; see PRECISIONS)
    channels_last: bool = False  # model parameters and input batches in torch.channels_last memory format
    compile: str | None = None  # None: eager; else a mode of COMPILE_MODES for torch.compile (see compile_model)
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager" / "eager": no C++ compiler needed)
    progress: bool = True
    experiment: str | None = None
    command: str | None = None
    # An experiment may be several grids: each part overrides some of PART_KEYS (e.g. every method on one model,
    # four methods on another). The top-level methods / models / metrics are then the union of the parts'.
    parts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)  # free text for the manifest (e.g. a budget)
    workers: int = 0  # data-loading worker processes per rank (0: load in the main process)

    def __post_init__(self) -> None:
        self.methods, self.models, self.metrics = list(self.methods), list(self.models), list(self.metrics)
        for i, part in enumerate(self.parts):
            unknown = sorted(set(part) - set(PART_KEYS))
            if unknown:
                raise ComponentError(f"experiment part {i}: unknown keys {unknown}; a part may set {list(PART_KEYS)}")
            for kind in ("methods", "models", "metrics"):
                for name in part.get(kind) or []:
                    if name not in getattr(self, kind):
                        getattr(self, kind).append(name)
            if part.get("target", self.target) not in TARGETS:
                raise ComponentError(f"experiment part {i}: target {part['target']!r}: choose one of {list(TARGETS)}")
            if not part.get("models") and not self.models:
                raise ComponentError(f"experiment part {i}: no models")
        if self.target not in TARGETS:
            raise ComponentError(f"--target {self.target!r}: choose one of {list(TARGETS)}")
        if self.batch_size < 1:
            raise ComponentError(f"--batch-size {self.batch_size}: must be a positive integer")
        if self.precision not in PRECISIONS:
            raise ComponentError(f"--precision {self.precision!r}: choose one of {list(PRECISIONS)}")
        if not isinstance(self.channels_last, bool):
            raise ComponentError(f"--channels-last {self.channels_last!r}: must be True or False")
        check_compile_options(self.compile, self.compile_backend)
        if self.limit is not None and self.limit < 1:
            raise ComponentError(f"--limit {self.limit}: must be a positive integer")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ComponentError(f"--workers {self.workers!r}: must be 0 (load in the main process) or a positive integer")
        for kind, names in (("methods", self.methods), ("models", self.models), ("metrics", self.metrics)):
            if not names:
                raise ComponentError(f"no {kind} given; name at least one (see `interpbench list {kind}`)")


def check_compile_options(mode: str | None, backend: str) -> None:
    """ComponentError naming the option and the accepted values for a bad ``--compile`` / ``--compile-backend``."""
    if mode is not None and mode not in COMPILE_MODES:
        raise ComponentError(f"--compile {mode!r}: choose one of {list(COMPILE_MODES)}, or leave --compile off to run "
                             "eager")
    if mode is None and backend != "inductor":
        raise ComponentError(f"--compile-backend {backend!r} has no effect without --compile; add --compile (mode "
                             "'default') or drop --compile-backend")
    if mode is None:
        return
    from torch import _dynamo

    backends = _dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        raise ComponentError(f"--compile-backend {backend!r}: choose one of {backends} (default 'inductor'; "
                             "'aot_eager' and 'eager' need no C++ compiler)")
    if mode != "default" and backend != "inductor":
        raise ComponentError(f"--compile {mode!r} is a mode of the 'inductor' backend; use --compile default with "
                             f"--compile-backend {backend!r}, or --compile-backend inductor")


PART_KEYS = ("methods", "models", "metrics", "datasets", "limit", "method_limits", "target", "batch_size")


def grids(config: RunConfig) -> list[RunConfig]:
    """The grids of an experiment: the config itself, or one config per part (the part's keys over the rest)."""
    if not config.parts:
        return [config]
    out = []
    for part in config.parts:
        fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "parts"}
        fields.update({"methods": [], **part})
        grid = RunConfig.__new__(RunConfig)  # a part may have no methods (model-scope metrics only)
        grid.__dict__.update(fields, parts=[])
        out.append(grid)
    return out


COMPILE_SCOPE = ("the model's forward passes while no hook is registered on its modules; hooked passes (Grad-CAM "
                 "family, guided backprop, dissection) and a pair's model A run eager")


def _has_hooks(root: nn.Module) -> bool:
    """Whether a forward / backward hook is registered on ``root`` or a submodule, or globally."""
    from torch.nn.modules import module as nn_module

    if (nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks or nn_module._global_backward_hooks
            or nn_module._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in root.modules())


class CompiledForward:
    """``Model.forward`` through ``torch.compile`` while no hook is registered on the model's network, eager
    otherwise. With torch 2.14 a compiled module ignores forward hooks registered after its first call, and the
    output a hook records inside a compiled graph has no gradient path to the logits, so Grad-CAM on a compiled
    module is silently wrong; here every hooked pass runs the eager forward. A compile error at a later call (e.g.
    the first backward) switches the model to eager for good (``record``: status "fallback" and the error)."""

    def __init__(self, model: Model, compiled: Any, record: dict[str, Any]) -> None:
        self.model, self.eager, self.compiled, self.record = model, model.forward, compiled, record

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.compiled is None or _has_hooks(self.model.net):
            self.record["eager_calls"] += 1
            return self.eager(images)
        try:
            out = self.compiled(images)
        except Exception as exc:  # noqa: BLE001
            from torch._dynamo.exc import TorchDynamoException

            if not isinstance(exc, TorchDynamoException):
                raise
            self.compiled = None
            _fall_back(self.model, self.record, exc)
            return self(images)
        self.record["compiled_calls"] += 1
        return out


def _fall_back(model: Model, record: dict[str, Any], exc: BaseException) -> None:
    """Record a failed compile in the manifest record and warn: the model runs eager from here on."""
    record.update(status="fallback", error=describe_error(exc))
    warnings.warn(f"--compile: model {model.spec} falls back to eager: {record['error']}", RuntimeWarning, stacklevel=3)


def compile_model(model: Model, mode: str, backend: str, warmup: torch.Tensor | None = None) -> dict[str, Any]:
    """Route ``model``'s forward through ``torch.compile(mode, backend)`` (:class:`CompiledForward`), compiling
    once on ``warmup`` (no gradient). When compiling fails the model stays eager. Returns the manifest record:
    status "compiled" or "fallback" with the error, and the counts of compiled and eager calls."""
    record: dict[str, Any] = {"status": "compiled", "error": None, "compiled_calls": 0, "eager_calls": 0}
    try:
        compiled = torch.compile(model.forward, mode=mode, backend=backend)
        if warmup is not None:
            with torch.no_grad():
                compiled(warmup)
    except Exception as exc:  # noqa: BLE001 - an unsupported op, a missing compiler: this model runs eager
        compiled = None
        _fall_back(model, record, exc)
    model.forward = CompiledForward(model, compiled, record)  # an instance attribute: nn.Module calls it
    return record


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
            self.registry.get("metrics", name)
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
                if not metric.per_sample:
                    identity["limit"] = cfg.limit  # a dataset-level number depends on the whole sample set
                key = config_key(identity)
                self._add_cell(store, run_id, key, spec, ds_name, method_name, metric_name, "explanation",
                               metric.higher_is_better, identity)
                row = store.cell(key)
                if row["status"] == "failed":
                    store.reset_failed(key)
                    row = store.cell(key)
                status = row["status"]
                if metric.per_sample and status == "done":
                    status = "pending"  # per batch, stored samples are skipped; a larger --limit extends the cell
                cell = Cell(key, metric_name, metric, store.done_samples(key), status=status)
                missing = set(metric.needs) - set(dataset.provides)
                if missing and cell.status != "done":
                    cell.status = "skipped"
                    store.set_status(key, "skipped", f"dataset {ds_name!r} lacks {sorted(missing)} needed by {metric_name!r}")
                if not metric.per_sample:
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
                         and (not c.metric.per_sample or not set(ids[:keep]) <= c.done)
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
                    part = batch if offset + len(batch) <= keep else _slice(batch, 0, keep - offset)
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
                elif not cell.metric.per_sample:
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
                    if cell.metric.per_sample:
                        result = call_in_chunks(lambda part, m: cell.metric.score(model, part, m), batch, maps,
                                                cell.chunk, self._oom_recorder(cell, model.spec, cell.metric_name))
                    else:
                        cell.metric.update(model, batch, maps)
                if cell.metric.per_sample:
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


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    return dataclasses.replace(batch, ids=batch.ids[start:stop], images=batch.images[start:stop],
                               targets=batch.targets[start:stop], samples=batch.samples[start:stop],
                               labels=None if batch.labels is None else batch.labels[start:stop])


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


