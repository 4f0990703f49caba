"""interpbench-example: the hooks that register this plugin's method, metric and dataset loader.

interpbench imports this module (named in pyproject.toml's ``[project.entry-points.interpbench]``) and calls the
functions marked with ``@ib.hookimpl``. Import the components inside the hooks, so that ``interpbench list`` stays
fast and a broken component cannot break the import of the others.
"""

import interpbench as ib

__version__ = "0.1.0"


@ib.hookimpl
def register_methods():
    from interpbench_example.method import VarGrad

    return [VarGrad]


@ib.hookimpl
def register_metrics():
    from interpbench_example.metric import RankAccuracy

    return [RankAccuracy]


@ib.hookimpl
def register_datasets():
    from interpbench_example.dataset import SquaresSource

    return [SquaresSource]
