"""``interpbench run | list | leaderboard``."""

from __future__ import annotations

import argparse
import importlib
import shlex
import shutil
import sys
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from interpbench.api import expand_specs
from interpbench.core.base import ComponentError
from interpbench.core.config import read_datasets
from interpbench.core.registry import get_registry
from interpbench.engine.config import RunConfig
from interpbench.publish.leaderboard import regenerate, write_leaderboard
from interpbench.publish.report import write_report
from interpbench.publish.summary import render_text, written_files

BASELINES = ["gradient", "gradcam", "random", "center"]
ALL_METHODS = ["gradient", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop", "gradcam",
               "gradcam_pp", "scorecam", "occlusion", "rise", "mask", "extremal", "random", "center"]
SANITY_METHODS = ["gradient", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop", "gradcam",
                  "gradcam_pp", "random", "center"]
SHAPES_METRICS = ["deletion", "insertion", "pointing_game", "energy_pointing_game", "grid_pointing_game",
                  "adversarial_detection"]
COSTLY = {"integrated_gradients": 32, "smoothgrad": 32, "scorecam": 24, "occlusion": 24, "mask": 12, "rise": 12,
          "extremal": 12}  # images per costly method (of 128)
# `interpbench run` with no arguments: every built-in method and metric on the embedded shapes world, and the
# ImageNet model on the photos. Methods keep their published parameters; the costly ones see fewer images
# (method_limits, recorded in the manifest) so that the whole experiment fits in minutes on 2 CPU cores.
DEFAULT_EXPERIMENT: dict[str, Any] = {
    "experiment": "default",
    "metric_params": {
        # RISE's batched evaluation granularity (28 steps: 1,792 px per step at 224 px) for every model; the
        # metrics' own default is H pixels (one image column) per step.
        "deletion": {"steps": 28}, "insertion": {"steps": 28},
        # the attacks of the detection table: one-step and iterative, at 8/255
        "adversarial_detection": {"attacks": ["fgsm8", "pgd8"]},
        # grids shrunk to the model's 64 px input (cells of 32 px), the cost of one map per trial
        "grid_pointing_game": {"fit_input": True},
    },
    # The two costliest methods run with a sixteenth of their published budget here (and only here); run them
    # with their defaults with --methods rise,extremal.
    "method_params": {"rise": {"num_masks": 500}, "extremal": {"iterations": 50}},
    "notes": ["default experiment budget: rise num_masks 500 (published 8000) and extremal iterations 50 "
              "(published 800); per-method image limits in method_limits of each part"],
    "parts": [
        {"models": ["shapes:cnn"], "methods": ALL_METHODS, "metrics": SHAPES_METRICS, "limit": 128,
         "method_limits": COSTLY},
        # the same world explained in a vision transformer: layer, gradient and attention methods
        {"models": ["shapes:vit"], "methods": ["gradcam", "gradient", "attention_rollout", "transformer_attribution",
                                               "random"], "metrics": ["deletion", "insertion", "pointing_game"],
         "limit": 64},
        {"models": ["shapes:cnn", "shapes:cnn@random"], "metrics": ["dissection"], "limit": 256},
        # unit ablation at the cam_layer (layer3), joined with its dissection on the same probe
        {"models": ["shapes:cnn", "shapes:cnn@random"], "metrics": ["unit_ablation"], "limit": 256},
        # units under attack: label retention (dissection) and Dong et al.'s class consistency, each its own number
        {"models": ["shapes:cnn"], "metrics": ["adversarial_consistency", "adversarial_class_consistency"],
         "limit": 128},
        {"models": ["timm:tf_efficientnet_lite0"], "methods": BASELINES, "metrics": ["deletion", "insertion"],
         "limit": 128},
        # unit and explanation drift: shapes:cnn fine-tuned from the shape task to the colour task
        {"models": ["shapes:cnn=>shapes:cnn.shape2color"], "methods": BASELINES,
         "metrics": ["unit_drift", "explanation_drift"], "limit": 64},
        # the model-randomisation sanity check: shapes:cnn against itself with its top k of 5 stages re-initialised
        {"models": [f"shapes:cnn=>shapes:cnn~cascade:{k}" for k in range(1, 6)], "methods": SANITY_METHODS,
         "metrics": ["explanation_drift"], "limit": 16, "method_limits": {"integrated_gradients": 8, "smoothgrad": 8}},
    ],
}


# A half-given `run` takes what it leaves out from here: without --models (and --pairs) the models the default
# experiment explains, each on its embedded dataset; without --methods the baselines; without --metrics the causal
# metrics.
DEFAULT_MODELS = list(dict.fromkeys(m for p in DEFAULT_EXPERIMENT["parts"] if p.get("methods")
                                    for m in p["models"] if "=>" not in m))
DEFAULT_METHODS = BASELINES
DEFAULT_METRICS = ["deletion", "insertion"]


# Subcommands that live in their own modules: each has HELP, configure(parser) and main(args, console) -> int.
EXTRA_COMMANDS: dict[str, str] = {
    "reproduce": "interpbench.commands.reproduce",
    "table": "interpbench.commands.table",
    "report": "interpbench.commands.report",
    "check": "interpbench.commands.check",
    "export-broden": "interpbench.commands.export_broden",
    "pointing-center": "interpbench.commands.pointing_center",
    "drift": "interpbench.commands.drift",
    "finetune": "interpbench.commands.finetune",
    "distil": "interpbench.commands.distil",
    "prune": "interpbench.commands.prune",
}


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [x.strip() for x in text.split(",") if x.strip()]


def _params(items: list[str] | None, flag: str) -> dict[str, dict[str, Any]]:
    """``--method-param rise.n_masks=4000`` -> ``{"rise": {"n_masks": 4000}}`` (values parsed as YAML)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        name, dot, rest = item.partition(".")
        key, eq, value = rest.partition("=")
        if not dot or not eq or not key:
            raise ComponentError(f"{flag} {item!r}: expected NAME.PARAM=VALUE, e.g. {flag} deletion.step=224")
        out.setdefault(name, {})[key] = yaml.safe_load(value)
    return out


def _merge(base: dict[str, dict[str, Any]], overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-component parameters: ``overrides`` (from the command line) over ``base`` (the experiment's)."""
    return {name: {**base.get(name, {}), **overrides.get(name, {})} for name in {**base, **overrides}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interpbench", description="Benchmark explanation methods of image classifiers.")
    parser.add_argument("--strict", action="store_true", help="a plugin that fails to load is fatal")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment (no arguments: the embedded default experiment)")
    run.add_argument("--methods", help="comma-separated method names (interpbench list methods)")
    run.add_argument("--models", help="comma-separated model specs SOURCE:NAME[@WEIGHTS], e.g. timm:resnet50")
    run.add_argument("--pairs", help="comma-separated model pairs A=>B (unit_drift, explanation_drift compare B with "
                     "A), e.g. 'shapes:cnn=>shapes:cnn.shape2color'; sanity:SPEC = SPEC against SPEC re-initialised "
                     "from the top, one pair per depth (Adebayo et al. 2018)")
    run.add_argument("--metrics", help="comma-separated metric names (default: deletion,insertion)")
    run.add_argument("--dataset", "--datasets", dest="datasets", help="comma-separated dataset names from datasets.yaml "
                     "(default: each model's embedded dataset)")
    run.add_argument("--limit", type=int, help="use the first N samples of each dataset")
    run.add_argument("--batch-size", type=int, default=16)
    run.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    run.add_argument("--target", default="predicted", choices=["predicted", "label"],
                     help="explain the predicted class (RISE convention) or the ground-truth label")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                     help="autocast methods and metrics (probabilities of the causal metrics stay fp32)")
    run.add_argument("--channels-last", action="store_true", help="model parameters and input batches in the "
                     "channels-last memory format (pays for convolutional nets on tensor-core GPUs at bf16/fp16)")
    run.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                     help="torch.compile the model's forward (MODE: default, reduce-overhead, max-autotune; passes "
                     "with hooks on layers, e.g. Grad-CAM, run eager); a model that fails to compile runs eager")
    run.add_argument("--compile-backend", default="inductor", help="torch.compile backend for --compile (default "
                     "inductor; aot_eager and eager need no C++ compiler)")
    run.add_argument("--out", help="experiment directory (store + leaderboard); default runs/<experiment>")
    run.add_argument("--experiment", help="experiment name (default: 'default' without arguments, else 'custom')")
    run.add_argument("--method-param", action="append", metavar="METHOD.PARAM=VALUE")
    run.add_argument("--metric-param", action="append", metavar="METRIC.PARAM=VALUE")
    run.add_argument("--datasets-config", help="a datasets.yaml overriding the packaged and ./datasets.yaml entries")
    run.add_argument("--no-progress", action="store_true", help="no progress display (a log still gets one line "
                     "per finished cell)")
    run.add_argument("--no-report", action="store_true", help="do not write report.html beside the tables "
                     "(`interpbench report DIR` writes it later)")
    run.add_argument("--workers", type=int, default=0, help="data-loading worker processes per rank (0: decode in "
                     "the main process); under torchrun every rank computes a block of the batches (docs/scale.md)")

    lst = sub.add_parser("list", help="list installed components and the plugins they come from")
    lst.add_argument("kind", nargs="?", default="all",
                     choices=["all", "methods", "models", "metrics", "datasets", "loaders", "plugins"])
    lst.add_argument("--format", default="auto", choices=["auto", "table", "plain", "json"],
                     help="auto (default): a table on a terminal, plain columns with full names in a pipe; json: "
                     "one object per entry")

    lb = sub.add_parser("leaderboard", help="regenerate the tables of an experiment directory from its store")
    lb.add_argument("directory")

    for name, module in EXTRA_COMMANDS.items():
        importlib.import_module(module).configure(sub.add_parser(name, help=importlib.import_module(module).HELP))
    return parser


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    # looked up when the run starts: tests replace interpbench.engine.runner.Runner to capture the config
    from interpbench.engine.runner import Runner

    is_default = not any([args.methods, args.models, args.metrics, args.datasets, args.pairs])
    base = dict(DEFAULT_EXPERIMENT) if is_default else {"experiment": args.experiment or "custom",
                                                         "metrics": DEFAULT_METRICS, "metric_params": {}}
    if not is_default and not args.models and not args.pairs:
        if args.datasets:
            raise ComponentError(f"--dataset {args.datasets}: name the models to run on it with --models (e.g. "
                                 "--models timm:resnet50); without --dataset the default models run on their own data")
        base["models"] = DEFAULT_MODELS
        console.print(f"no --models given: the default models, each on its embedded dataset: {', '.join(DEFAULT_MODELS)}")
    metric_params = _merge(base.get("metric_params", {}), _params(args.metric_param, "--metric-param"))
    experiment = args.experiment or base["experiment"]
    parts = [dict(p) for p in base.get("parts", [])]
    if args.limit is not None:  # a smaller (or larger) default experiment: the same limit for every part
        for part in parts:
            part["limit"] = args.limit
            part["method_limits"] = {k: min(v, args.limit) for k, v in part.get("method_limits", {}).items()}
    config = RunConfig(
        methods=_csv(args.methods) or base.get("methods") or ([] if parts else DEFAULT_METHODS),
        models=(_csv(args.models) or base.get("models") or []) + expand_specs(_csv(args.pairs) or []),
        metrics=_csv(args.metrics) or (["unit_drift", "explanation_drift"] if args.pairs and not args.models else
                                       base.get("metrics") or []),
        datasets=_csv(args.datasets),
        out=args.out or f"runs/{experiment}",
        limit=args.limit if args.limit is not None else base.get("limit"),
        parts=parts,
        batch_size=args.batch_size,
        device=args.device,
        target=args.target,
        seed=args.seed,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        compile_backend=args.compile_backend,
        method_params=_merge(base.get("method_params", {}), _params(args.method_param, "--method-param")),
        notes=list(base.get("notes", [])),
        metric_params=metric_params,
        datasets_config=args.datasets_config,
        progress=not args.no_progress,
        workers=args.workers,
        experiment=experiment,
        command="interpbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    runner = Runner(config, console)
    table = runner.run(publish=write_leaderboard)
    if not runner.dist.is_main:  # under torchrun only rank 0 reports
        return 0 if runner.ok else 1
    if not args.no_report:
        try:
            write_report(config.out)
        except Exception as exc:  # noqa: BLE001 - the numbers are written; a report failure does not lose them
            console.print(f"[red]report.html not written ({type(exc).__name__}: {exc}); the tables are; retry with "
                          f"`interpbench report {config.out}`[/red]")
    width = shutil.get_terminal_size((80, 24)).columns  # 80 in a pipe or a log ($COLUMNS overrides)
    files = written_files(config.out)
    sys.stdout.write(render_text(table, width, title=f"{experiment}: {config.out}", files=files))
    sys.stdout.flush()
    return 0 if runner.ok else 1


LIST_COLUMNS = {
    "plugins": ("plugin", "distribution", "version", "module"),
    "datasets": ("dataset", "loader", "path", "description", "defined in"),
    "components": ("name", "version", "plugin", "distribution", "description"),
}


def list_rows(kind: str) -> list[dict[str, str]]:
    """What ``interpbench list KIND`` shows: one dict per entry, with the columns of :data:`LIST_COLUMNS`."""
    reg = get_registry()
    if kind == "plugins":
        rows = [dict(zip(LIST_COLUMNS["plugins"], (p.name, p.dist, p.version, p.module))) for p in reg.plugins.values()]
        return rows + [dict(zip(LIST_COLUMNS["plugins"], (f.plugin, f.dist, "", f"failed: {f.error}")))
                       for f in reg.failures]
    if kind == "datasets":
        return [dict(zip(LIST_COLUMNS["datasets"], (name, e.loader, e.path or "(embedded)", e.description or "",
                                                    e.source_file)))
                for name, e in read_datasets().items()]
    rows = []
    for name, entry in reg.entries("datasets" if kind == "loaders" else kind).items():
        doc = (entry.cls.__doc__ or "").strip().split("\n\n")[0]
        rows.append(dict(zip(LIST_COLUMNS["components"], (
            name, str(getattr(entry.cls, "version", "")), entry.plugin.name,
            f"{entry.plugin.dist} {entry.plugin.version}", " ".join(doc.split())))))  # the first paragraph, one line
    return rows


def plain_columns(rows: list[dict[str, str]], columns: tuple[str, ...]) -> str:
    """Rows as left-aligned columns separated by two spaces, nothing cut (for pipes, grep and cut)."""
    cells = [[str(c) for c in columns]] + [[str(r.get(c, "")).replace("\n", " ") for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in cells)


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    import json

    kinds = ["methods", "metrics", "models", "datasets", "plugins"] if args.kind == "all" else [args.kind]
    listing = {kind: list_rows(kind) for kind in kinds}
    fmt = args.format
    if fmt == "auto":  # the rich table for a person at a terminal, full names for a pipe or a file
        fmt = "table" if sys.stdout.isatty() else "plain"
    if fmt == "json":
        print(json.dumps(listing if args.kind == "all" else listing[args.kind], indent=1))
        return 0
    for i, (kind, rows) in enumerate(listing.items()):
        columns = LIST_COLUMNS.get(kind, LIST_COLUMNS["components"])
        if fmt == "plain":
            if len(listing) > 1:
                print(("\n" if i else "") + f"# {kind}")
            print(plain_columns(rows, columns))
            continue
        table = Table(title=kind)
        for col in columns:
            if col == "description":
                table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=60)
            else:
                table.add_column(col, no_wrap=kind not in ("plugins", "datasets"))
        for row in rows:
            failed = kind == "plugins" and row["module"].startswith("failed: ")
            table.add_row(*[f"[red]{row[c]}[/red]" if failed and c in ("plugin", "module") else row[c]
                            for c in columns])
        Console().print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        if args.strict:
            get_registry(refresh=True, strict=True)
        if args.command == "run":
            return cmd_run(args, console)
        if args.command == "list":
            return cmd_list(args, console)
        if args.command in EXTRA_COMMANDS:
            return int(importlib.import_module(EXTRA_COMMANDS[args.command]).main(args, console))
        if args.command == "leaderboard":
            regenerate(args.directory)
            console.print(f"tables regenerated in {args.directory}")
            return 0
    except (ComponentError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    except BrokenPipeError:  # `interpbench list | head`: the reader left; no traceback at exit
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
