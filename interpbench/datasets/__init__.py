"""Built-in dataset loaders (named in ``datasets.yaml``); registered like any third-party plugin."""

from interpbench.core.hookspecs import hookimpl
from interpbench.datasets.broden import BrodenSource
from interpbench.datasets.coco import CocoSource
from interpbench.datasets.imagefolder import ImageFolderSource
from interpbench.datasets.imagenet_loc import ImageNetLocSource
from interpbench.datasets.photos import PhotosSource
from interpbench.datasets.shapes import ShapesSource
from interpbench.datasets.shortcut import ShortcutSource
from interpbench.datasets.voc import VOCSource


@hookimpl
def register_datasets():
    return [ShapesSource, PhotosSource, ImageFolderSource, BrodenSource, VOCSource, CocoSource, ImageNetLocSource,
            ShortcutSource]
