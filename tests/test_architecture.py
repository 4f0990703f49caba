"""The layer rule, checked on the source: ``core < ops < datasets < models < (methods, metrics) < api < engine <
(publish, testing) < commands`` (docs/design.md).

An AST walk over ``interpbench/`` (benchmarks/architecture.py, which prints the same figures for a person) finds
every import of an interpbench module, at the top of a module or inside a function, and fails on an import of a
higher layer or a peer folder, and on any import circle between modules. No exception is allowed.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def architecture():
    spec = importlib.util.spec_from_file_location("architecture", ROOT / "benchmarks" / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_module_sits_in_a_layer_folder(architecture):
    a = architecture.analyse()
    assert a["unplaced"] == [], (
        f"modules outside the layer folders: {a['unplaced']}; put each in core/, ops/, datasets/, models/, methods/, "
        "metrics/, engine/, publish/, testing/ or commands/ (docs/design.md)")


def test_no_import_goes_up_or_sideways(architecture):
    against = architecture.analyse()["against"]
    assert against == [], "imports against the layer rule (move the shared code down a layer):\n" + "\n".join(
        f"  {src}:{line} imports {dst}" for src, dst, line in against)


def test_no_import_circle(architecture):
    circles = architecture.analyse()["cycles"]
    assert circles == [], f"import circles: {circles}"


def test_the_checker_catches_what_it_forbids(architecture, tmp_path, monkeypatch):
    # A toy package with one upward import (ops -> engine), one sideways import (metrics -> methods, inside a
    # function) and a circle (engine.a <-> engine.b): the checker must report each, or the three tests above
    # would pass on anything.
    pkg = tmp_path / "interpbench"
    for folder in ("core", "ops", "methods", "metrics", "engine"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from interpbench.core import base\n")
    (pkg / "core" / "base.py").write_text("X = 1\n")
    (pkg / "ops" / "maths.py").write_text("from interpbench.engine import a\n")
    (pkg / "methods" / "m.py").write_text("from interpbench.core.base import X\n")
    (pkg / "metrics" / "k.py").write_text("def f():\n    from interpbench.methods import m\n    return m\n")
    (pkg / "engine" / "a.py").write_text("from interpbench.engine import b\n")
    (pkg / "engine" / "b.py").write_text("from . import a\n")
    monkeypatch.setattr(architecture, "ROOT", tmp_path)
    monkeypatch.setattr(architecture, "PACKAGE", pkg)
    a = architecture.analyse()
    against = {(src, dst) for src, dst, _ in a["against"]}
    assert ("interpbench.ops.maths", "interpbench.engine.a") in against
    assert ("interpbench.metrics.k", "interpbench.methods.m") in against
    assert ("interpbench.methods.m", "interpbench.core.base") not in against
    assert a["cycles"] == [["interpbench.engine.a", "interpbench.engine.b"]]
    assert a["inside"] == 1
