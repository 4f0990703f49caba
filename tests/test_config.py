"""interpbench.core.config: datasets.yaml resolution (the registry at the top of the repository and its packaged
default), model specs."""

from pathlib import Path

import pytest

import interpbench as ib
from interpbench.core import config
from interpbench.core.config import expand, parse_model_spec, read_datasets

ROOT = Path(__file__).resolve().parent.parent


def test_the_datasets_registry_a_user_edits_is_the_packaged_default():
    # datasets.yaml at the top of the repository is what a user reads and edits; the package carries it (a link in a
    # checkout, a copy in a wheel), so the two cannot drift apart.
    assert (ROOT / "datasets.yaml").is_file()
    assert config.PACKAGED.read_bytes() == (ROOT / "datasets.yaml").read_bytes()
    assert config.PACKAGED.resolve() == (ROOT / "datasets.yaml").resolve()
    assert {"shapes", "photos", "voc07-test"} <= set(read_datasets())


def test_datasets_yaml_override_order_and_expansion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets.yaml").write_text("photos:\n  loader: imagefolder\n  path: ${MY_PHOTOS:-~/pics}\n")
    entries = read_datasets()
    assert entries["photos"].loader == "imagefolder" and entries["photos"].path == str(Path.home() / "pics")
    assert entries["shapes"].loader == "shapes"  # packaged entries remain
    monkeypatch.setenv("MY_PHOTOS", "/data/p")
    assert read_datasets()["photos"].path == "/data/p"
    extra = tmp_path / "extra.yaml"
    extra.write_text("photos:\n  loader: photos\n")
    assert read_datasets(extra)["photos"].loader == "photos"
    bad = tmp_path / "bad.yaml"
    bad.write_text("x:\n  path: /a\n")
    with pytest.raises(ib.ComponentError, match="dataset 'x' needs a 'loader:'"):
        read_datasets(bad)
    with pytest.raises(ib.ComponentError, match="does not exist"):
        read_datasets(tmp_path / "missing.yaml")
    assert expand("${NOPE_NOT_SET:-fallback}/x") == "fallback/x"


def test_model_spec_grammar():
    assert parse_model_spec("timm:resnet50").weights is None
    spec = parse_model_spec("timm:resnet50.a1_in1k@/tmp/ft@2.pth")
    assert (spec.source, spec.name, spec.weights) == ("timm", "resnet50.a1_in1k", "/tmp/ft@2.pth")
    assert str(parse_model_spec("shapes:cnn@random")) == "shapes:cnn@random"
    with pytest.raises(ib.ComponentError):
        parse_model_spec(":x")


def test_a_run_records_the_commit_of_the_checkout_it_runs_from():
    # interpbench/core/identity.py finds the checkout two folders above itself; a wrong depth records no commit
    # (manifests then say git_sha None and `interpbench reproduce` cannot tell which code made a table).
    import subprocess

    from interpbench.core.identity import git_sha

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if (ROOT / ".git").exists() and head.returncode == 0:
        assert git_sha() is not None and git_sha().split("-")[0] == head.stdout.strip()
    else:
        assert git_sha() is None
