"""Arguments and output shared by ``interpbench finetune | distil | prune`` (:mod:`interpbench.engine.recipes`)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console


def add_training_arguments(parser: argparse.ArgumentParser, *, epochs: int, lr: float, n_train: int,
                           weight_decay: float = 1e-4) -> None:
    parser.add_argument("--out", help="checkpoint path (.pt); the JSON record goes beside it (default: "
                        "checkpoints/<model>.<recipe>-<what>-seed<seed>.pt)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new head, data order, flips and dropout")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=n_train, help="the first N training images")
    parser.add_argument("--n-test", type=int, default=512, help="the first N test images for the final accuracy")
    parser.add_argument("--weight-decay", type=float, default=weight_decay)
    parser.add_argument("--augment", default="hflip", choices=["hflip", "none"])
    parser.add_argument("--device", default="cpu", help="cpu (default, bitwise repeatable), cuda, auto")
    parser.add_argument("--datasets-config", help="a datasets.yaml overriding the packaged entries")
    parser.add_argument("--no-progress", action="store_true")


def common(args: argparse.Namespace) -> dict:
    return {"out": args.out, "seed": args.seed, "lr": args.lr, "batch_size": args.batch_size,
            "n_train": args.n_train, "n_test": args.n_test, "weight_decay": args.weight_decay,
            "augment": args.augment, "device": args.device, "datasets_config": args.datasets_config,
            "show_progress": False if args.no_progress else True}


def report(result, console: Console) -> int:
    record = result.record
    console.print(f"{record['recipe']}: final accuracy {record['final_accuracy']:.4f} in "
                  f"{record['wall_time_s']:.1f} s (seed {record['seed']})")
    console.print(f"checkpoint: {result.path}\nrecord:     {result.record_path}")
    console.print(f"model spec: [bold]{result.spec}[/bold]")
    print(json.dumps({"spec": result.spec, "checkpoint": str(result.path), "record": str(result.record_path),
                      "final_accuracy": record["final_accuracy"]}))
    return 0
