"""``interpbench.testing.check_method``: every registered method passes it, and each check catches what it names.

The cost-reducing parameters of the built-in methods for these checks are declared once, in ``CHECK_PARAMS``
(fewer samples, steps, masks or iterations on the 32 x 32 oracle images; the published defaults are what the
benchmark runs). ``EXPECTED_FAILURES`` lists the checks the baselines fail by design.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import interpbench as ib
from interpbench.core.base import ComponentError, Method, NotApplicable
from interpbench.methods.gradients import check_batch, input_gradient
from interpbench.testing.methods import (
    CHECK_NAMES,
    ORACLE_REGIONS,
    check_method,
    method_checks,
    oracle_images,
    oracle_model,
    positive_mass_inside,
)

# Cheaper settings for the conformance checks only (one place; a method not listed runs with its defaults).
CHECK_PARAMS: dict[str, dict] = {
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"samples": 8},
    "rise": {"num_masks": 500},
    "mask": {"iterations": 30},
    "extremal": {"iterations": 40, "areas": [0.1], "lr": 0.05},  # a larger step so that 40 iterations converge
}
# Baselines ignore the model by design: they fail the checks that need the model's evidence.
EXPECTED_FAILURES: dict[str, dict[str, str]] = {
    name: {"target_sensitivity": "a baseline that ignores the target",
           "oracle": "a baseline that ignores the model"}
    for name in ("random", "center")
}


# Methods that read a transformer's attention: NotApplicable on the convolutional oracle model.
TRANSFORMER_ONLY = {"attention_rollout", "transformer_attribution"}


def builtin_methods() -> list[str]:
    """Every method registered by interpbench itself (plugins installed beside it are checked by their own tests)."""
    from interpbench.core.registry import get_registry

    registry = get_registry()
    return [n for n in ib.list_methods() if registry.plugin_of("methods", n).dist == "interpbench"]


@pytest.mark.parametrize("name", builtin_methods())
def test_every_builtin_method_passes_check_method(name):
    report = check_method(name, params=CHECK_PARAMS.get(name), expected_failures=EXPECTED_FAILURES.get(name))
    report.raise_if_failed()
    statuses = {r.name: r.status for r in report.results}
    assert list(statuses) == list(CHECK_NAMES)
    method = ib.load_method(name)
    # a deterministic method is checked for batch independence; only baselines may skip the oracle
    if name in TRANSFORMER_ONLY:  # not applicable to the convolutional oracle; checked on a ViT in test_attention.py
        assert set(statuses.values()) == {"passed", "not_applicable"} and statuses["oracle"] == "not_applicable"
        return
    assert statuses["batch_independence"] == ("passed" if method.deterministic else "not_applicable")
    assert statuses["oracle"] == ("not_applicable" if name in EXPECTED_FAILURES else "passed")


@pytest.mark.parametrize("name", sorted(EXPECTED_FAILURES))
def test_baselines_fail_the_model_checks_without_the_declaration(name):
    # the oracle and target checks discriminate: a map that ignores the model cannot pass them
    report = check_method(name)
    assert {r.name for r in report.failures} == {"target_sensitivity", "oracle"}, str(report)


# --------------------------------------------------------------------------------------------- the oracle model


def test_oracle_logit_depends_only_on_its_region():
    model = oracle_model()
    x = oracle_images(2)
    for c, (top, left, bottom, right) in enumerate(ORACLE_REGIONS):
        grad = input_gradient(model, x, torch.full((2,), c)).abs().sum(1)
        inside = model.region_masks[c]
        assert float(grad[:, ~inside].abs().max()) == 0.0  # exactly zero outside the box
        assert bool((grad[:, inside] > 0).float().mean() > 0.9)  # and alive inside
        changed = x.clone()
        changed[:, :, ~inside] = torch.rand_like(changed[:, :, ~inside])
        with torch.no_grad():
            assert torch.equal(model(changed)[:, c], model(x)[:, c])
            blank = x.clone()
            blank[:, :, top:bottom, left:right] = 0.5  # the mean colour: zero in normalised space
            assert torch.allclose(model(blank)[:, c], torch.zeros(2), atol=1e-6)  # no bias: the logit is 0
            assert bool((model(x)[:, c] > 4).all())  # the noise content raises it (scale ~ 8)


def test_oracle_model_is_a_relu_network_with_a_cam_layer_inside_the_regions():
    model = oracle_model()
    assert not any(isinstance(m, (nn.SiLU, nn.GELU, nn.ReLU6, nn.Sigmoid)) for m in model.modules())
    from interpbench.methods.cam import layer_activations

    act = layer_activations("test", model, model.cam_layer, oracle_images(1))
    assert act.shape == (1, 32, 8, 8)
    for c in range(2):
        group = act[0, c * 16:(c + 1) * 16]
        cells = model.region_masks[c][::4, ::4]
        assert float(group[:, ~cells].abs().max()) == 0.0


@pytest.mark.parametrize("regions, message", [
    (((0, 0, 16, 16), (8, 8, 24, 24)), "overlap"),
    (((0, 0, 10, 16), (16, 16, 32, 32)), "multiples of 4"),
    (((0, 0, 16, 40), (16, 16, 32, 32)), "inside"),
])
def test_oracle_model_rejects_bad_regions(regions, message):
    with pytest.raises(ComponentError, match=message):
        oracle_model(regions=regions)


def test_oracle_model_with_custom_regions_and_three_classes():
    regions = ((0, 0, 8, 8), (0, 24, 8, 32), (24, 12, 32, 20))
    model = oracle_model(regions=regions)
    assert model.num_classes == 3 and model.regions == regions
    report = check_method("gradient", oracle=model)
    report.raise_if_failed()


def test_positive_mass_inside_by_hand():
    region = torch.zeros(1, 2, 4, dtype=torch.bool)
    region[0, 0, :2] = True
    # values 0, 0, 0, 0, 1, 2, 5, 8: median (lower) 0 -> excess = values; inside = 0 + 0 = 0
    maps = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 5.0, 8.0]]])
    assert float(positive_mass_inside(maps, region)) == 0.0
    # shift by a constant: the median moves with it, the share does not change
    maps = torch.tensor([[[9.0, 3.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]])  # median 1: excess 8, 2 inside, 0 out
    assert float(positive_mass_inside(maps, region)) == 1.0
    assert float(positive_mass_inside(maps + 7, region)) == 1.0
    maps = torch.tensor([[[3.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 5.0]]])  # excess 2 inside, 4 outside
    assert float(positive_mass_inside(maps, region)) == pytest.approx(1 / 3)
    assert float(positive_mass_inside(torch.ones(1, 2, 4), region)) == 0.0  # no mass at all


# --------------------------------------------------------------------------------------------- each check bites


class Good(Method):
    """Input gradient magnitude: passes everything (the base of the broken variants below)."""

    name = "good"
    version = "1"
    requires_grad = True

    def explain(self, model, images, targets):
        targets = check_batch(self.name, model, images, targets)
        return input_gradient(model, images, targets).abs().amax(1)


class InPlace(Good):
    def explain(self, model, images, targets):
        maps = super().explain(model, images, targets)
        images.mul_(1.0 + 1e-3)
        return maps


class Backward(Good):
    """Leaves .grad on the parameters (loss.backward() instead of autograd.grad on the input)."""

    def explain(self, model, images, targets):
        x = images.clone().requires_grad_(True)
        model(x).gather(1, targets[:, None]).sum().backward()
        return x.grad.abs().amax(1)


class LeavesHook(Good):
    def explain(self, model, images, targets):
        model.register_forward_hook(lambda *a: None)
        return super().explain(model, images, targets)


class TrainMode(Good):
    def explain(self, model, images, targets):
        model.train()
        return super().explain(model, images, targets)


class BatchNormalised(Good):
    """Divides by the largest value of the whole batch: a map that depends on the other images."""

    def explain(self, model, images, targets):
        maps = super().explain(model, images, targets)
        return maps / maps.max()


class SecretlyRandom(Good):
    def explain(self, model, images, targets):
        return super().explain(model, images, targets) + 0.01 * torch.rand(images.shape[0], *images.shape[-2:])


class NumpyNoise(Good):
    deterministic = False

    def explain(self, model, images, targets):
        noise = torch.as_tensor(np.random.default_rng().random(images.shape[-2:]), dtype=torch.float32)
        return super().explain(model, images, targets) + 0.01 * noise


class LowResolution(Good):
    def explain(self, model, images, targets):
        return super().explain(model, images, targets)[:, ::2, ::2]


class NaNs(Good):
    def explain(self, model, images, targets):
        maps = super().explain(model, images, targets)
        maps[:, 0, 0] = float("nan")
        return maps


class Attached(Good):
    def explain(self, model, images, targets):
        x = images.clone().requires_grad_(True)
        with torch.enable_grad():
            return x.sum(1) * 0 + super().explain(model, images, targets)


class Edges(Good):
    """Ignores the model and the target: image edges."""

    def explain(self, model, images, targets):
        check_batch(self.name, model, images, targets)
        gray = images.mean(1)
        return (gray - gray.roll(1, dims=-1)).abs()


class NoTargetCheck(Good):
    def explain(self, model, images, targets):
        return images.mean(1)


class NeedsSiLU(Good):
    def explain(self, model, images, targets):
        raise NotApplicable("needs a model with SiLU units")


class BadContract(Good):
    version = ""
    deterministic = "yes"
    defaults = {"layer": object()}


@pytest.mark.parametrize("method, fails", [
    (Good, set()),
    (InPlace, {"inputs_unchanged"}),
    (Backward, {"model_unchanged"}),
    (LeavesHook, {"model_unchanged"}),
    (TrainMode, {"model_unchanged"}),
    (BatchNormalised, {"batch_independence"}),
    (SecretlyRandom, {"determinism", "batch_independence"}),
    (NumpyNoise, {"determinism"}),
    (LowResolution, {"output", "target_sensitivity", "oracle"}),  # the oracle statistics need full-size maps
    (NaNs, {"output", "target_sensitivity", "oracle"}),
    (Attached, {"output"}),
    (Edges, {"target_sensitivity", "oracle"}),
    (NoTargetCheck, {"invalid_target", "target_sensitivity", "oracle"}),
    (BadContract, {"contract"}),
])
def test_each_check_catches_its_fault(method, fails):
    report = check_method(method)
    assert {r.name for r in report.failures} == fails, str(report)


def test_not_applicable_methods_report_not_applicable_checks():
    report = check_method(NeedsSiLU)
    statuses = {r.name: r.status for r in report.results}
    assert statuses.pop("contract") == "passed"
    assert set(statuses.values()) == {"not_applicable"}
    assert "needs a model with SiLU units" in report.results[1].message


def test_a_method_not_applicable_on_another_model_still_gets_the_oracle_checks():
    class SiLUNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.SiLU()
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

        def forward(self, z):
            return self.head(self.act(self.conv(z)))

    model = ib.Model(SiLUNet(), spec="test:silu", mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(16, 16),
                     class_names=["a", "b"], cam_layer="conv", label_space="test", default_dataset="none",
                     weights={}).eval()
    report = check_method("guided_backprop", model=model)
    statuses = {r.name: r.status for r in report.results}
    assert statuses["output"] == "not_applicable" and "silu" in report.results[1].message
    assert statuses["oracle"] == statuses["target_sensitivity"] == "passed"


def test_expected_failures_are_strict():
    report = check_method("gradient", expected_failures={"oracle": "pretend"})
    assert [r.name for r in report.failures] == ["oracle"]
    assert "remove the declaration" in report.failures[0].message
    with pytest.raises(ComponentError, match="unknown checks"):
        check_method("gradient", expected_failures={"orcale": "typo"})


def test_cheap_params_override_the_method_parameters():
    checks = method_checks("smoothgrad", params={"samples": 2})
    assert [c.name for c in checks] == list(CHECK_NAMES)
    assert "'samples': 2" in checks[0].run()
    built = ib.load_method("smoothgrad", noise_level=0.2)
    assert "'samples': 2, 'noise_level': 0.2" in method_checks(built, params={"samples": 2})[0].run()
    with pytest.raises(ComponentError, match="unknown parameter"):
        method_checks("smoothgrad", params={"sample": 2})


def test_checks_run_on_a_given_model_with_its_predicted_targets():
    model = ib.load_model("shapes:cnn")
    report = check_method("gradcam", model=model)
    report.raise_if_failed()
    assert "(2, 64, 64)" in report.results[1].message
