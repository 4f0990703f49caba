"""Built-in model sources (``timm:``, ``torchvision:``, ``shapes:``) and offline weights."""

from interpbench.core.hookspecs import hookimpl
from interpbench.models.weights import resolve_builtin_weights


@hookimpl
def register_models():
    # imported when the registry asks: ``import interpbench`` loads this package (api -> models.derived), and the
    # sources pull in the shapes world, the training loop and torchvision's model tables
    from interpbench.models.shapes import ShapesModelSource
    from interpbench.models.timm_source import TimmSource
    from interpbench.models.torchvision_source import TorchvisionSource

    return [TimmSource, TorchvisionSource, ShapesModelSource]


@hookimpl
def resolve_weights(source, name, tag):
    return resolve_builtin_weights(source, name, tag)
