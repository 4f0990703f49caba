"""Plugin discovery through real entry points, failures reported per plugin, duplicates, unknown names."""

import pytest

import interpbench as ib
from interpbench.core.registry import PluginError, Registry, get_registry


def test_builtins_are_registered_through_entry_points():
    reg = Registry()
    assert {"methods", "metrics", "models", "datasets"} <= set(reg.plugins)
    assert all(reg.plugins[name].dist == "interpbench" for name in ("methods", "metrics", "models", "datasets"))
    assert reg.plugin_of("metrics", "deletion").name == "metrics"


def test_third_party_plugin_is_discovered_with_its_distribution(toy):
    reg = get_registry()
    assert "toy_noise" in ib.list_methods()
    assert "toy:net" in ib.list_models()
    info = reg.plugin_of("methods", "toy_noise")
    assert (info.name, info.dist, info.version) == ("toy", "interpbench-toy", "1.2.3")
    model = ib.load_model("toy:net")
    assert model.input_size == (16, 16) and not model.training


def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_work(toy):
    toy("interpbench-broken", ["brokenplugin"], {"broken": "brokenplugin"}, version="0.1")
    reg = get_registry()
    [failure] = [f for f in reg.failures if f.plugin == "broken"]
    assert failure.dist == "interpbench-broken"
    assert "brokenplugin needs a library" in failure.error
    assert "toy_noise" in ib.list_methods() and "deletion" in ib.list_metrics()
    with pytest.raises(PluginError, match="broken.*strict"):
        Registry(strict=True)


def test_duplicate_names_are_an_error_naming_both_plugins(toy):
    toy("interpbench-dup", ["dupplugin"], {"dup": "dupplugin"}, version="0.2")
    reg = get_registry()
    with pytest.raises(PluginError) as err:
        reg.get("methods", "toy_noise")
    assert "interpbench-toy" in str(err.value) and "interpbench-dup" in str(err.value)
    assert any("toy_noise" in f.error for f in reg.failures)
    assert "toy_nan" in ib.list_methods()  # the rest of both plugins still works


def test_disable_plugins_by_name_and_autoload_switch(toy, monkeypatch):
    monkeypatch.setenv("INTERPBENCH_DISABLE_PLUGINS", "toy")
    assert "toy_noise" not in Registry().names("methods")
    monkeypatch.delenv("INTERPBENCH_DISABLE_PLUGINS")
    monkeypatch.setenv("INTERPBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = Registry()
    assert "toy_noise" not in reg.names("methods") and "deletion" in reg.names("metrics")


def test_unknown_names_suggest_close_matches():
    with pytest.raises(ib.ComponentError, match=r"unknown method 'gradcan'.*'gradcam'.*interpbench list methods"):
        ib.load_method("gradcan")
    with pytest.raises(ib.ComponentError, match=r"unknown metric 'deletoin'.*'deletion'"):
        ib.load_metric("deletoin")
    with pytest.raises(ib.ComponentError, match=r"unknown dataset 'shape'.*'shapes'"):
        ib.load_dataset("shape")
    with pytest.raises(ib.ComponentError, match=r"unknown model source 'timmm'"):
        ib.load_model("timmm:resnet50")
    with pytest.raises(ib.ComponentError, match=r"SOURCE:NAME\[@WEIGHTS\]"):
        ib.load_model("resnet50")


def test_unknown_parameter_names_the_accepted_ones():
    with pytest.raises(ib.ComponentError, match=r"unknown parameter.*'stpe'.*accepts.*'step'"):
        ib.load_metric("deletion", stpe=3)
