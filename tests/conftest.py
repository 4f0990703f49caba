"""Shared fixtures: installing tiny plugin distributions into the test environment."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

PLUGINS = Path(__file__).parent / "plugins"


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="the device of the tests that take the `device` fixture (tests/test_device.py): cpu "
                          "(default, what CI runs) or cuda[:N] on a GPU machine")


def pytest_configure(config):
    name = config.getoption("--device", "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise pytest.UsageError(f"--device {name!r}: {exc}; use cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {name!r}: torch {torch.__version__} sees no CUDA device here; run the "
                                "device tests on a GPU machine (benchmarks/gpu_session.sh) or leave --device at cpu")


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    """The device named by ``pytest --device`` (default cpu)."""
    return torch.device(pytestconfig.getoption("--device"))


def make_distribution(site: Path, dist: str, version: str, modules: list[str], entry_points: dict[str, str]) -> Path:
    """Write a real installed distribution (a .dist-info with METADATA and entry_points.txt) into ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    for module in modules:
        shutil.copy(PLUGINS / f"{module}.py", site / f"{module}.py")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[interpbench]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    """Install plugin distributions into a fresh site directory on sys.path (and PYTHONPATH for subprocesses)."""
    import interpbench.core.registry as registry_module
    from interpbench.core.registry import get_registry

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    datasets = tmp_path / "datasets.yaml"
    datasets.write_text("toy:\n  loader: toy\n  description: toy images for tests\n"
                        "toy-multi:\n  loader: toy\n  options: {multilabel: true}\n")
    monkeypatch.setenv("INTERPBENCH_DATASETS", str(datasets))

    def install(dist: str, modules: list[str], entry_points: dict[str, str], version: str = "1.2.3") -> None:
        make_distribution(site, dist, version, modules, entry_points)
        importlib.invalidate_caches()
        get_registry(refresh=True)

    yield install
    for module in ("toyplugin", "dupplugin", "brokenplugin"):
        sys.modules.pop(module, None)
    importlib.invalidate_caches()
    registry_module._REGISTRY = None  # rebuilt lazily, after monkeypatch has restored sys.path


@pytest.fixture
def toy(plugin_site):
    """The toy plugin installed as the distribution ``interpbench-toy``."""
    plugin_site("interpbench-toy", ["toyplugin"], {"toy": "toyplugin"})
    return plugin_site
