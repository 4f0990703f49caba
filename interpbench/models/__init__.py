"""Built-in model sources (``timm:``, ``torchvision:``, ``shapes:``) and offline weights."""

from interpbench.core.hookspecs import hookimpl


@hookimpl
def register_models():
    from interpbench.models.shapes import ShapesModelSource
    from interpbench.models.timm_source import TimmSource
    from interpbench.models.torchvision_source import TorchvisionSource

    return [TimmSource, TorchvisionSource, ShapesModelSource]


@hookimpl
def resolve_weights(source, name, tag):
    from interpbench.models.weights import resolve_builtin_weights

    return resolve_builtin_weights(source, name, tag)
