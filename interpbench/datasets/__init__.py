"""Built-in dataset loaders (named in ``datasets.yaml``); registered like any third-party plugin."""

from ..hookspecs import hookimpl


@hookimpl
def register_datasets():
    from .broden import BrodenSource
    from .coco import CocoSource
    from .imagefolder import ImageFolderSource
    from .imagenet_loc import ImageNetLocSource
    from .photos import PhotosSource
    from .shapes import ShapesSource
    from .shortcut import ShortcutSource
    from .voc import VOCSource

    return [ShapesSource, PhotosSource, ImageFolderSource, BrodenSource, VOCSource, CocoSource, ImageNetLocSource,
            ShortcutSource]
