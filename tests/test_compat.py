"""interpbench.core.compat: the old import paths of the modules that moved into layer folders (docs/design.md).

An old path gives the module at its new path (the same object), with one DeprecationWarning that names the new
path; an old name that was never a module still raises ModuleNotFoundError; ``import interpbench`` stays light.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

import interpbench as ib
from interpbench.core import compat


@pytest.fixture
def forget(monkeypatch):
    """Forget that an old path was used (the alias in sys.modules, the attribute on the package), restored after."""

    def go(name: str) -> None:
        monkeypatch.delitem(sys.modules, f"interpbench.{name}", raising=False)
        if name in vars(ib):
            monkeypatch.delattr(ib, name)

    return go


def deprecations(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("old", sorted(compat.MOVED))
def test_an_old_path_gives_the_new_module_and_warns_once(old, forget):
    forget(old.rsplit(".", 1)[1])
    new = importlib.import_module(compat.MOVED[old])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = importlib.import_module(old)
        again = importlib.import_module(old)
    assert first is new and again is new
    assert first.__name__ == compat.MOVED[old] and first.__spec__.name == compat.MOVED[old]  # not renamed
    messages = deprecations(caught)
    assert len(messages) == 1, messages
    assert old in messages[0] and compat.MOVED[old] in messages[0]


def test_from_import_of_a_name_and_the_warning_points_at_the_importer(forget):
    forget("base")
    from interpbench.core.base import Batch as new_batch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from interpbench.base import Batch  # noqa: PLC0415
    assert Batch is new_batch
    (warning,) = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert warning.filename == __file__
    assert "interpbench.core.base" in str(warning.message)


def test_pairs_names_where_its_spec_functions_went(forget):
    forget("pairs")
    with pytest.warns(DeprecationWarning, match=r"interpbench\.models\.derived") as caught:
        import interpbench.pairs as pairs  # noqa: PLC0415
    assert pairs is importlib.import_module("interpbench.models.derived")
    text = str(caught[0].message)
    assert "interpbench.api" in text and "interpbench.core.config" in text


def test_attribute_access_on_the_package(forget):
    forget("registry")
    from interpbench.core import registry

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = ib.registry
        again = ib.registry
        import interpbench.registry as imported  # noqa: PLC0415
    assert first is registry and again is registry and imported is registry
    assert callable(first.get_registry)
    messages = deprecations(caught)
    assert len(messages) == 1 and "interpbench.core.registry" in messages[0], messages
    assert caught[0].filename == __file__


def test_unknown_old_names_still_fail():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("interpbench.no_such_module")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("interpbench.base.no_such_submodule")
    with pytest.raises(AttributeError, match="no attribute 'no_such_module'"):
        ib.no_such_module  # noqa: B018


def test_install_is_idempotent():
    compat.install()
    compat.install()
    assert sum(isinstance(f, compat.MovedModuleFinder) for f in sys.meta_path) == 1


def test_import_interpbench_stays_light():
    # ib.run is resolved on first use: the engine (pandas, rich) must not load with the package.
    code = "import sys, interpbench; print('pandas' in sys.modules, 'interpbench.engine.runner' in sys.modules)"
    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
