"""``interpbench prune SPEC --sparsity S``: global magnitude pruning (:func:`interpbench.engine.recipes.prune`); prints the
spec that loads the pruned model."""

from __future__ import annotations

import argparse

from rich.console import Console

from interpbench.commands.recipe_args import add_training_arguments, common, report
from interpbench.engine.recipes import prune

HELP = "prune a model's Conv/Linear weights by global magnitude to a sparsity (writes a checkpoint + record)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="e.g. shapes:cnn")
    parser.add_argument("--sparsity", type=float, required=True, help="share of the weights set to zero, e.g. 0.5")
    parser.add_argument("--dataset", help="for the accuracy (and fine-tuning): default the model's dataset")
    parser.add_argument("--no-head", action="store_true", help="leave the classifier head unpruned")
    add_training_arguments(parser, epochs=0, lr=1e-4, n_train=2048, weight_decay=0.0)


def main(args: argparse.Namespace, console: Console) -> int:
    result = prune(args.model, args.sparsity, args.dataset, include_head=not args.no_head,
                   finetune_epochs=args.epochs, **common(args))
    return report(result, console)
