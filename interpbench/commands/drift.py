"""``interpbench drift --from A --to B``: unit drift and explanation drift of a model pair, and the
model-randomisation sanity check (``--sanity SPEC``).

It runs the experiment grid on the pair ``A=>B`` (``interpbench.models.derived``) with the ``unit_drift`` metric (and
``explanation_drift`` for ``--methods``), writes the usual experiment directory (store, tables, manifest, the
per-unit CSV and the switch-matrix PNG under ``artifacts/``) and prints the drift table.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from rich.console import Console
from rich.table import Table

from interpbench.api import sanity_pairs
from interpbench.commands.cli import _params
from interpbench.core.base import ComponentError
from interpbench.core.config import pair_spec
from interpbench.engine.config import RunConfig
from interpbench.engine.runner import Runner
from interpbench.metrics.drift import drift_table, sanity_table
from interpbench.publish.leaderboard import write_leaderboard

HELP = "unit drift and explanation drift from model A to model B (or the model-randomisation sanity check)"
DEFAULT_METHODS = "gradient,gradcam,random,center"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", metavar="SPEC", help="model A (before), e.g. shapes:cnn")
    parser.add_argument("--to", dest="target", metavar="SPEC",
                        help="model B (after), e.g. shapes:cnn.shape2color or shapes:cnn.color@/path/ft.pt")
    parser.add_argument("--sanity", metavar="SPEC", help="instead of --from/--to: SPEC against SPEC with its top "
                        "1..L stages re-initialised (Adebayo et al. 2018), one pair per depth")
    parser.add_argument("--dataset", help="the probe (default: model A's dataset, e.g. shapes)")
    parser.add_argument("--layers", help="layers to compare: NAME or LAYER_A:LAYER_B, comma-separated (default: the "
                        "models' cam_layers)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="methods whose explanation drift to measure "
                        f"(default {DEFAULT_METHODS}; 'none': unit drift only)")
    parser.add_argument("--target", dest="explain_target", default="predicted", choices=["predicted", "label"],
                        help="the class each image is explained for: model A's prediction (default) or the label; "
                        "where A and B share a label space (--sanity, pruning, distillation) it is chosen once, "
                        "from A, and both models explain it; otherwise each model explains its own prediction")
    parser.add_argument("--no-units", action="store_true", help="explanation drift only (no dissection)")
    parser.add_argument("--limit", type=int, help="the first N probe images (default: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="experiment directory (default runs/drift)")
    parser.add_argument("--metric-param", action="append", metavar="METRIC.PARAM=VALUE")
    parser.add_argument("--datasets-config", help="a datasets.yaml overriding the packaged entries")
    parser.add_argument("--no-progress", action="store_true")


def plan(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """``(models, methods, metrics)`` of the run the arguments ask for."""
    if args.sanity:
        if args.source or args.target:
            raise ComponentError("drift: give either --sanity SPEC or --from A --to B, not both")
        models = sanity_pairs(args.sanity)
    elif args.source and args.target:
        models = [pair_spec(args.source, args.target)]
    else:
        raise ComponentError("drift: name the pair with --from A --to B (e.g. --from shapes:cnn --to "
                             "shapes:cnn.shape2color), or --sanity SPEC for the model-randomisation check")
    methods = [m.strip() for m in (args.methods or "").split(",") if m.strip() and m.strip() != "none"]
    metrics = ([] if args.no_units else ["unit_drift"]) + (["explanation_drift"] if methods else [])
    if not metrics:
        raise ComponentError("drift: --no-units with --methods none leaves nothing to measure")
    # the runner needs a method name even when only model-scope metrics run; with no explanation-scope metric no
    # map is computed for it
    return models, methods or ["center"], metrics


def main(args: argparse.Namespace, console: Console) -> int:
    models, methods, metrics = plan(args)
    metric_params = _params(args.metric_param, "--metric-param")
    if args.layers:
        metric_params.setdefault("unit_drift", {})["layers"] = args.layers
    config = RunConfig(methods=methods, models=models, metrics=metrics,
                       datasets=[args.dataset] if args.dataset else None, out=args.out or "runs/drift",
                       limit=args.limit, batch_size=args.batch_size, device=args.device, seed=args.seed,
                       target=args.explain_target,
                       metric_params=metric_params, datasets_config=args.datasets_config,
                       progress=not args.no_progress, experiment="drift",
                       command="interpbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    runner = Runner(config, console)
    table = runner.run(publish=write_leaderboard)
    drift = drift_table(table)
    for (pair, dataset, layer), group in (drift.groupby(["pair", "dataset", "layer"], sort=False) if not drift.empty
                                          else []):
        first = group.iloc[0]
        shown = Table(title=f"unit drift {pair} on {dataset}, {layer}: detectors {first['detectors A→B']}, unique "
                            f"concepts {first['unique A→B']}, CKA {first['CKA']} (noise floor {first['CKA floor']}, "
                            f"{first['CKA images']} images), concept overlap {first['concept overlap']}")
        columns = ["matching", "concept retention", "category retention", "iou change", "iou profile rho",
                   "activation correlation"]
        for col in columns:
            shown.add_column(col)
        for _, row in group.iterrows():
            shown.add_row(*[str(row[c]) for c in columns])
        Console().print(shown)
    sanity = sanity_table(table)
    if not sanity.empty:
        shown = Table(title="model-randomisation sanity check (Adebayo et al. 2018): similarity to the original "
                            "maps per depth, both models explaining the class chosen from the original model")
        for col in sanity.columns:
            shown.add_column(str(col))
        for _, row in sanity.iterrows():
            shown.add_row(*[str(v) for v in row.tolist()])
        Console().print(shown)
    if "explanation_drift" in metrics:
        expl = table[(table["metric"] == "explanation_drift") & (table["status"] == "done")
                     & table["value_name"].isin(["rank_correlation", "rank_correlation_abs", "ssim", "top10_overlap",
                                                 "prediction_agreement", "class_from_a"])]
        if not expl.empty:
            wide = expl.pivot_table(index=["model", "method"], columns="value_name", values="mean", sort=False)
            shown = Table(title="explanation drift (maps on A vs B, same images)")
            for col in ["model", "method", *wide.columns]:
                shown.add_column(str(col))
            for (model, method), row in wide.iterrows():
                shown.add_row(model, method, *[f"{v:.3f}" for v in row.tolist()])
            Console().print(shown)
    console.print(f"tables written to {config.out} (representations.md, methods.md; switch matrices under "
                  f"{config.out}/artifacts)")
    if not runner.ok:
        console.print("[red]some cells failed; see the tables' 'Cells that did not run' section[/red]")
    return 0 if runner.ok else 1
