"""``interpbench distil --teacher SPEC --student SPEC``: knowledge distillation with the soft-target loss of
Hinton et al. 2015 (:func:`interpbench.engine.recipes.distil`); prints the spec that loads the student."""

from __future__ import annotations

import argparse

from rich.console import Console

from interpbench.commands.recipe_args import add_training_arguments, common, report
from interpbench.engine.recipes import distil

HELP = "distil a teacher into a (smaller) student with soft targets (writes a checkpoint + record)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="e.g. shapes:cnn")
    parser.add_argument("--student", required=True, help="e.g. shapes:cnn-small@random (the teacher's classes)")
    parser.add_argument("--dataset", help="training images (default: the teacher's dataset)")
    parser.add_argument("--temperature", type=float, default=4.0, help="softmax temperature T (default 4)")
    parser.add_argument("--alpha", type=float, default=0.9,
                        help="weight of the soft-target term; 1 - alpha weights the labels' cross-entropy")
    add_training_arguments(parser, epochs=4, lr=3e-3, n_train=4096)


def main(args: argparse.Namespace, console: Console) -> int:
    result = distil(args.teacher, args.student, args.dataset, temperature=args.temperature, alpha=args.alpha,
                    epochs=args.epochs, **common(args))
    return report(result, console)
