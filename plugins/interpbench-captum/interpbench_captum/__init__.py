"""interpbench-captum: captum's attribution methods as interpbench methods (``captum:IntegratedGradients``, ...).

Registered through the ``interpbench`` entry-point group (see pyproject.toml); ``interpbench list methods`` shows
them. The adapter is in :mod:`interpbench_captum.bridge`.
"""

import interpbench as ib

__version__ = "0.1.0"


@ib.hookimpl
def register_methods():
    from interpbench_captum.bridge import captum_methods

    return list(captum_methods())
