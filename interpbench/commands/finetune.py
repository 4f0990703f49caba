"""``interpbench finetune SPEC --dataset NAME``: fine-tune a model on a dataset of ``datasets.yaml``
(:func:`interpbench.engine.recipes.finetune`); prints the spec that loads the result."""

from __future__ import annotations

import argparse

from rich.console import Console

from interpbench.commands.recipe_args import add_training_arguments, common, report
from interpbench.engine.recipes import finetune

HELP = "fine-tune a model on another task or dataset (writes a checkpoint + record, prints its model spec)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the model spec to start from, e.g. shapes:cnn or timm:resnet18")
    parser.add_argument("--dataset", required=True, help="a datasets.yaml name with train and test splits, e.g. "
                        "shapes-color")
    parser.add_argument("--head", default="auto", choices=["auto", "new", "keep"],
                        help="auto: a new seeded classifier head when the dataset's classes differ")
    add_training_arguments(parser, epochs=2, lr=1e-3, n_train=2048)


def main(args: argparse.Namespace, console: Console) -> int:
    result = finetune(args.model, args.dataset, epochs=args.epochs, head=args.head, **common(args))
    return report(result, console)
