"""The import paths of the modules that moved when the package was laid out in layers (docs/design.md).

A plugin written against the flat package (``from interpbench.base import Batch``, ``import interpbench.registry``,
``ib.registry.get_registry()``) keeps working: the old name gives the module at its new path, the same module
object (not a copy, so ``isinstance`` and module state agree), with one ``DeprecationWarning`` that names the new
path. Old names not listed in :data:`MOVED` still raise ``ModuleNotFoundError``.

Layer: ``interpbench.core`` (layer 0). It imports nothing from the other layers: the new modules are imported by
name, when an old path is first used. ``interpbench/__init__.py`` calls :func:`install` (the finder for ``import``
statements) and :func:`moved_attribute` (for attribute access on the package).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from typing import Sequence

# old module path -> new module path
MOVED: dict[str, str] = {
    "interpbench.base": "interpbench.core.base",
    "interpbench.hookspecs": "interpbench.core.hookspecs",
    "interpbench.registry": "interpbench.core.registry",
    "interpbench.config": "interpbench.core.config",
    "interpbench.manifest": "interpbench.core.identity",
    "interpbench.runner": "interpbench.engine.runner",
    "interpbench.distributed": "interpbench.engine.distributed",
    "interpbench.feeding": "interpbench.engine.feeding",
    "interpbench.store": "interpbench.engine.store",
    "interpbench.recipes": "interpbench.engine.recipes",
    "interpbench.pairs": "interpbench.models.derived",
    "interpbench.leaderboard": "interpbench.publish.leaderboard",
    "interpbench.tables": "interpbench.publish.tables",
    "interpbench.report": "interpbench.publish.report",
    "interpbench.reproduce": "interpbench.publish.reproduce",
    "interpbench.summary": "interpbench.publish.summary",
    "interpbench.cli": "interpbench.commands.cli",
}

# what else an author of the old import needs to know
NOTES: dict[str, str] = {
    "interpbench.pairs": "; its spec functions moved on: load_derived, sanity_pairs and expand_specs to "
                         "interpbench.api; is_derived, parse_pair, parse_cascade and pair_spec to "
                         "interpbench.core.config",
    "interpbench.runner": "; ib.run is interpbench.publish.experiment.run",
}


def message(old: str) -> str:
    """The deprecation message for the old module path ``old``."""
    return f"{old} moved to {MOVED[old]}; import it from there{NOTES.get(old, '')} (docs/design.md)"


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A meta-path finder and loader: ``import OLD`` (a key of :data:`MOVED`) binds the module at its new path.

    The import system stores what :meth:`create_module` returns under the old name in ``sys.modules`` (so the
    warning comes once per process); the module keeps its own ``__name__``, ``__file__`` and ``__spec__``.
    """

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        warnings.warn(message(spec.name), DeprecationWarning, stacklevel=2)  # the import system's frames are skipped
        module = importlib.import_module(MOVED[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # The module is already executed; the import system has just set its __spec__ to the old name's: put its
        # own back (reload, pickling by reference and spawned workers read it).
        module.__spec__ = self._specs.pop(module.__spec__.name)


def install() -> None:
    """Put the finder of the old paths on ``sys.meta_path`` (once; last, so that real modules win)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())


def moved_attribute(name: str) -> types.ModuleType | None:
    """``interpbench.<name>`` for a moved module name (``ib.registry``): the new module, bound under the old path
    and on the package, with the same ``DeprecationWarning`` (once); ``None`` for any other name."""
    old = f"interpbench.{name}"
    if old not in MOVED:
        return None
    if old not in sys.modules:
        warnings.warn(message(old), DeprecationWarning, stacklevel=3)  # the caller of the package's __getattr__
        sys.modules[old] = importlib.import_module(MOVED[old])
    module = sys.modules[old]
    setattr(sys.modules["interpbench"], name, module)
    return module
