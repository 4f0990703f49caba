"""Built-in model sources (``timm:``, ``torchvision:``, ``shapes:``) and offline weights."""

from ..hookspecs import hookimpl


@hookimpl
def register_models():
    from .shapes import ShapesModelSource
    from .timm_source import TimmSource
    from .torchvision_source import TorchvisionSource

    return [TimmSource, TorchvisionSource, ShapesModelSource]


@hookimpl
def resolve_weights(source, name, tag):
    from .weights import resolve_builtin_weights

    return resolve_builtin_weights(source, name, tag)
