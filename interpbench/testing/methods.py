"""Conformance checks for explanation methods (scikit-learn's ``check_estimator`` is the model).

::

    from interpbench.testing import check_method

    report = check_method(MyMethod, params={"samples": 8})   # a CheckReport, one result per check
    print(report)
    report.raise_if_failed()

Layer: part of ``interpbench.testing`` (beside ``interpbench.publish``, docs/design.md); it runs on the oracle model
of interpbench.testing.world and imports only ``interpbench.core``, that world and the report.

Each check is a function a plugin author can call on its own: ``check_method_<name>(method, case=None)`` raises
``AssertionError`` with a message that names the method, the value it saw and the fix, and returns ``None`` or a
short string with what it measured. ``case`` is a :class:`MethodCase`: the model, images and targets the checks run
on and one seeded run of the method on them (``None``: the oracle model's). :func:`method_checks` lists the checks
(see its docstring) as :class:`~interpbench.testing.report.Check` objects that share one case; :func:`check_method`
runs them all and returns a :class:`~interpbench.testing.report.CheckReport`.

Most checks run on the **oracle model** (:func:`~interpbench.testing.world.oracle_model`): a small ReLU convnet on
32 x 32 images whose logit for class ``c`` reads only the pixels of a known box ``R_c`` (the boxes of the classes do
not overlap and are off-centre). Its input gradient is exactly zero outside ``R_c``, its CAM-layer features for
class ``c`` live only in ``R_c``, and blanking ``R_c`` (to the mean colour) drops the logit to its bias, so any
method that explains the model's computation puts its evidence for ``c`` inside ``R_c``; one that ignores the model
(noise, a centred blob, edges of the image) does not.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import torch
from torch import nn

from interpbench.core.base import ComponentError, Method, Model, NotApplicable
from interpbench.core.registry import get_registry
from interpbench.testing.report import (
    Check,
    CheckReport,
    apply_expected_failures,
    run_checks,
)
from interpbench.testing.world import (  # the oracle model; re-exported, its former home was this module
    ORACLE_REGIONS,
    ORACLE_SIZE,
    oracle_images,
    oracle_model,
    positive_mass_inside,
    region_masks,
)

ORACLE_THRESHOLD = 0.5  # "most of the positive mass"
TARGET_DIFFERENCE = 0.1  # relative L2 difference between the maps of two targets
TOLERANCE = 1e-4  # relative to the largest |map value|, for batch independence and determinism
CHECK_IMAGES = 2  # images per check batch (small: methods with costly defaults run many times)
CHECK_NAMES = ("contract", "output", "inputs_unchanged", "model_unchanged", "batch_independence", "determinism",
               "invalid_target", "target_sensitivity", "oracle")


# --------------------------------------------------------------------------------------------- helpers


def _instance(method: Any, params: Mapping[str, Any] | None) -> Method:
    """A Method instance from an instance, a class or a registered name, built with ``params`` (for an instance:
    its own parameters overridden by ``params``)."""
    if isinstance(method, str):
        method = get_registry().get("methods", method)
    if isinstance(method, type):
        if not issubclass(method, Method):
            raise ComponentError(f"check_method: {method.__name__} is not an interpbench.Method subclass")
        return method(**dict(params or {}))
    if not isinstance(method, Method):
        raise ComponentError(f"check_method: {method!r} is not an interpbench.Method (instance, class or name)")
    if params:  # rebuilt with its own parameters, overridden by ``params``
        return type(method)(**{**method.params, **dict(params)})
    return method


def _seeded(fn: Callable[[], Any], seed: int) -> Any:
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return fn()


def _hook_counts(model: nn.Module) -> dict[str, int]:
    counts = {}
    for name, module in model.named_modules():
        n = sum(len(getattr(module, attr, {}) or {}) for attr in
                ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))
        if n:
            counts[name] = n
    return counts


def _model_state(model: nn.Module) -> dict[str, Any]:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {k: None if p.grad is None else p.grad.detach().clone() for k, p in model.named_parameters()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": _hook_counts(model),
        "grad_enabled": torch.is_grad_enabled(),
    }


def _state_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    changes = []
    for k, v in before["tensors"].items():
        w = after["tensors"].get(k)
        if w is None or w.shape != v.shape or not torch.equal(w, v):
            changes.append(f"parameter/buffer {k!r} changed")
    for k, g in before["grads"].items():
        h = after["grads"].get(k)
        if (g is None) != (h is None) or (g is not None and not torch.equal(g, h)):
            changes.append(f"the .grad of {k!r} changed ({'set' if g is None else 'modified'}); differentiate "
                           "w.r.t. the input only (torch.autograd.grad(..., inputs))")
    for key, what in (("requires_grad", "requires_grad of"), ("training", "training mode of module")):
        for k, v in before[key].items():
            if after[key].get(k) != v:
                changes.append(f"{what} {k or '<root>'!r} changed from {v} to {after[key].get(k)}")
    if before["hooks"] != after["hooks"]:
        changes.append(f"hooks left on the model: {before['hooks']} before, {after['hooks']} after; remove every "
                       "hook you register (try/finally)")
    if before["grad_enabled"] != after["grad_enabled"]:
        changes.append("torch.is_grad_enabled() changed; use `with torch.enable_grad():` instead of "
                       "torch.set_grad_enabled")
    return changes


def _relative_max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max(|a|, |b|); equal non-finite values count as equal (the output check reports them)."""
    a, b = a.detach().double(), b.detach().double()
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    diff = torch.where(same, torch.zeros_like(a), (a - b).abs())
    finite = torch.cat([a[torch.isfinite(a)], b[torch.isfinite(b)]]).abs()
    scale = max(float(finite.max()) if finite.numel() else 0.0, 1e-12)
    return float(diff.max()) / scale if diff.numel() else 0.0


class _Call:
    """One call of ``method.explain`` under a seed: the maps (or the exception) and what changed around it."""

    def __init__(self, method: Method, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                 seed: int) -> None:
        self.images_before = images.detach().clone()
        before = _model_state(model)
        self.maps: torch.Tensor | None = None
        self.error: BaseException | None = None
        try:
            self.maps = _seeded(lambda: method.explain(model, images, targets), seed)
        except Exception as exc:  # noqa: BLE001 - reported by the checks that need the maps
            self.error = exc
        self.images_changed = not torch.equal(images.detach(), self.images_before)
        if self.images_changed:  # put the caller's images back, so one fault does not cascade into other checks
            with torch.no_grad():
                images.copy_(self.images_before)
        self.state_changes = _state_changes(before, _model_state(model))

    @property
    def not_applicable(self) -> bool:
        return isinstance(self.error, NotApplicable)

    def result(self) -> torch.Tensor:
        if self.error is not None:
            raise self.error
        return self.maps


def _label(method: Method) -> str:
    return method.name or type(method).__name__


def _explain(method: Method, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, seed: int) -> torch.Tensor:
    images = images.detach().clone()  # a method that writes into its images must not change the other checks' inputs
    return _seeded(lambda: method.explain(model, images, targets), seed)


class MethodCase:
    """What the checks of one method share: the model, images and targets the general checks run on, the oracle
    model with its images and targets, and one seeded run of the method on each (:class:`_Call`).

    ``model``, ``images`` and ``targets`` default to the oracle model, :data:`CHECK_IMAGES` oracle images and
    targets 0 and 1; on another model, to seeded noise images at its input size and its predicted classes.
    ``oracle`` replaces the default oracle model (one built by :func:`~interpbench.testing.world.oracle_model`).
    The method runs here, once on the model and once on the oracle (when they differ), so that a method that
    raises ``NotApplicable`` there is known before the checks run.
    """

    def __init__(self, method: Method, model: Model | None = None, images: torch.Tensor | None = None,
                 targets: torch.Tensor | None = None, *, seed: int = 0, oracle: Model | None = None) -> None:
        oracle_net = oracle if oracle is not None else oracle_model()
        oracle_x = oracle_images(CHECK_IMAGES, oracle_net.input_size[0]).to(oracle_net.device)
        oracle_t = torch.arange(CHECK_IMAGES, device=oracle_net.device) % oracle_net.num_classes
        oracle_other = (oracle_t + 1) % oracle_net.num_classes
        on_default = model is None and images is None and targets is None
        if model is None:
            model = oracle_net
            images = oracle_x if images is None else images
            targets = oracle_t if targets is None else targets
        if images is None:
            generator = torch.Generator().manual_seed(2024 + seed)
            images = torch.rand(CHECK_IMAGES, 3, *model.input_size, generator=generator).to(model.device)
        if targets is None:
            with torch.no_grad():
                targets = model(images).argmax(dim=1)
        targets = torch.as_tensor(targets, device=images.device)
        self.model, self.images, self.targets, self.seed = model, images, targets, seed
        self.oracle, self.oracle_images, self.oracle_targets, self.oracle_other = (
            oracle_net, oracle_x, oracle_t, oracle_other)
        self.main = _Call(method, model, images, targets, seed)
        self.on_oracle = self.main if on_default else _Call(method, oracle_net, oracle_x, oracle_t, seed)
        self.swapped: dict[str, torch.Tensor] = {}  # the oracle maps for the other targets, made on first use


def _case(method: Method, case: MethodCase | None) -> MethodCase:
    return case if case is not None else MethodCase(method)


def _oracle_pair(method: Method, case: MethodCase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps of the oracle images for targets t = (0, 1) and for the next classes t + 1 (mod G)."""
    label = _label(method)
    oracle_x = case.oracle_images
    if "maps" not in case.swapped:
        case.swapped["maps"] = _explain(method, case.oracle, oracle_x, case.oracle_other, case.seed)
    pair = case.on_oracle.result(), case.swapped["maps"]
    for maps in pair:  # the statistics below need maps of the right shape, with numbers in them
        assert isinstance(maps, torch.Tensor) and tuple(maps.shape) == (oracle_x.shape[0], *oracle_x.shape[-2:]), (
            f"{label}: maps of shape {tuple(getattr(maps, 'shape', ()))} on the oracle images, expected "
            f"{(oracle_x.shape[0], *oracle_x.shape[-2:])} (see the output check)")
        assert bool(torch.isfinite(maps.detach()).all()), f"{label}: non-finite maps on the oracle images"
    return pair[0], pair[1], case.oracle_targets


def _check_maps(label: str, maps: Any, x: torch.Tensor, what: str) -> None:
    b, _, h, w = x.shape
    assert isinstance(maps, torch.Tensor), f"{label}: explain returned {type(maps).__name__}{what}, not a tensor"
    assert tuple(maps.shape) == (b, h, w), (
        f"{label}: maps of shape {tuple(maps.shape)}{what}, expected (B, H, W) = {(b, h, w)}: one map per image "
        "at the input resolution (upsample low-resolution maps bilinearly)")
    assert maps.is_floating_point(), f"{label}: maps have dtype {maps.dtype}{what}; return floats"
    assert maps.device == x.device, (
        f"{label}: maps on {maps.device}{what}, images on {x.device}; keep them together")
    bad = int((~torch.isfinite(maps.detach())).sum())
    assert bad == 0, f"{label}: {bad} non-finite values (NaN or inf) in the maps{what}"
    assert not maps.requires_grad, (
        f"{label}: the maps{what} are attached to an autograd graph (requires_grad=True), which keeps the "
        "model's activations alive; return maps.detach()")


# --------------------------------------------------------------------------------------------- the checks


def check_method_contract(method: Method) -> str:
    """``name`` and ``version`` are non-empty strings, ``requires_grad`` and ``deterministic`` are bools,
    ``explain`` is implemented, ``describe()`` is JSON-serialisable (the manifest records it).

    Fix: subclass ``ib.Method`` with class attributes ``name = "..."``, ``version = "1"``, implement
    ``explain(model, images, targets)``, and keep the parameters plain numbers, strings, lists and dicts.
    """
    label = _label(method)
    for attr in ("name", "version"):
        value = getattr(method, attr, None)
        assert isinstance(value, str) and value.strip(), (
            f"{label}: class attribute {attr} must be a non-empty string, got {value!r}")
    for attr in ("requires_grad", "deterministic"):
        value = getattr(method, attr, None)
        assert isinstance(value, bool), f"{label}: class attribute {attr} must be a bool, got {value!r}"
    assert type(method).explain is not Method.explain, (
        f"{label}: explain(model, images, targets) is not implemented")
    described = method.describe()
    try:
        json.dumps(described, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{label}: describe() is not JSON-serialisable ({exc}): {described!r}; the "
                             "manifest records the parameters, so use plain numbers, strings, lists and dicts")
    return f"version {method.version}, params {described.get('params')}"


def check_method_output(method: Method, case: MethodCase | None = None) -> str:
    """The maps are a floating ``B x H x W`` tensor at the input resolution, finite, on the images' device, not
    attached to an autograd graph; also for a batch of one image.

    Fix: return one map per image at the input resolution (upsample low-resolution maps bilinearly), as floats on
    the images' device, and ``maps.detach()``.
    """
    case = _case(method, case)
    label = _label(method)
    maps = case.main.result()
    _check_maps(label, maps, case.images, "")
    single = _explain(method, case.model, case.images[:1], case.targets[:1], case.seed)
    _check_maps(label, single, case.images[:1], " for a batch of one image")
    return f"{tuple(maps.shape)} {maps.dtype}, range [{float(maps.min()):.3g}, {float(maps.max()):.3g}]"


def check_method_inputs_unchanged(method: Method, case: MethodCase | None = None) -> None:
    """``explain`` does not modify the images in place.

    Fix: the images are shared with the metrics of the run: work on a copy (``images.clone()``).
    """
    case = _case(method, case)
    case.main.result()
    assert not case.main.images_changed, (
        f"{_label(method)}: explain modified the input images in place; work on a copy (images.clone())")


def check_method_model_unchanged(method: Method, case: MethodCase | None = None) -> None:
    """After ``explain`` the model's parameters, buffers, their ``.grad``, ``requires_grad`` flags, train/eval
    mode, hooks and the global grad mode are as before.

    Fix: differentiate w.r.t. the input only (``torch.autograd.grad(..., inputs)``), remove every hook you register
    (try/finally), use ``with torch.enable_grad():`` and leave the model's modes as they were.
    """
    case = _case(method, case)
    case.main.result()
    assert not case.main.state_changes, (f"{_label(method)}: explain changed the model: "
                                         + "; ".join(case.main.state_changes))


def check_method_batch_independence(method: Method, case: MethodCase | None = None,
                                    tolerance: float = TOLERANCE) -> str:
    """Explaining the batch equals explaining each image alone, within ``tolerance`` of the largest map value
    (deterministic methods; a stochastic one draws different random numbers for a batch than for its images).

    Fix: a map must depend on its own image only: no batch statistics, no normalisation shared across the batch.
    """
    case = _case(method, case)
    label = _label(method)
    images, targets = case.images, case.targets
    maps = case.main.result()
    worst = 0.0
    for i in range(images.shape[0]):
        alone = _explain(method, case.model, images[i:i + 1], targets[i:i + 1], case.seed)[0]
        diff = _relative_max_difference(maps[i], alone)
        worst = max(worst, diff)
        assert diff <= tolerance, (
            f"{label}: image {i} explained in a batch of {images.shape[0]} differs from it explained alone by "
            f"{diff:.3g} of the map's largest value (tolerance {tolerance}); a map must depend on its own image "
            "only (no batch statistics, no shared normalisation across the batch)")
    return f"largest relative difference {worst:.2g}"


def check_method_determinism(method: Method, case: MethodCase | None = None, tolerance: float = TOLERANCE) -> str:
    """A stochastic method gives the same maps twice under the same seed (it draws from torch's global RNG, which
    the runner seeds); a deterministic one gives the same maps under two different seeds.

    Fix: draw all randomness from torch's global RNG, not from numpy, ``random`` or a fresh generator; set
    ``deterministic = False`` on a method that draws random numbers.
    """
    case = _case(method, case)
    label = _label(method)
    stochastic = not bool(getattr(method, "deterministic", True))
    seed = case.seed
    maps = case.main.result()
    again = _explain(method, case.model, case.images, case.targets, seed if stochastic else seed + 1)
    diff = _relative_max_difference(maps, again)
    if stochastic:
        assert diff <= tolerance, (
            f"{label}: two runs under the same seed differ by {diff:.3g} of the largest map value; draw all "
            "randomness from torch's global RNG (the runner seeds it), not from numpy, random or a fresh "
            "generator")
    else:
        assert diff <= tolerance, (
            f"{label}: declared deterministic, but two runs under different seeds differ by {diff:.3g} of the "
            "largest map value; set deterministic = False if it draws random numbers")
    return f"relative difference {diff:.2g}"


def check_method_invalid_target(method: Method, case: MethodCase | None = None) -> None:
    """A target outside ``[0, num_classes)`` raises an exception instead of returning maps.

    Fix: check the targets, e.g. with ``interpbench.methods.gradients.check_batch``.
    """
    case = _case(method, case)
    n = getattr(case.model, "num_classes", None)
    assert n, "the model has no num_classes"
    bad = torch.full_like(case.targets[:1], int(n))
    try:
        _explain(method, case.model, case.images[:1], bad, case.seed)
    except NotApplicable:
        raise
    except Exception:  # noqa: BLE001 - any error is the right answer
        return
    raise AssertionError(f"{_label(method)}: target {n} (the model has {n} classes) returned maps instead of "
                         "raising; check targets, e.g. with interpbench.methods.gradients.check_batch")


def check_method_target_sensitivity(method: Method, case: MethodCase | None = None) -> str:
    """On the oracle model, the maps of each image for two classes (same seed) differ by at least
    :data:`TARGET_DIFFERENCE` (relative L2) on every image.

    Fix: explain the target class (its logit or score), not the predicted class or all classes at once.
    """
    case = _case(method, case)
    label = _label(method)
    first, second, _ = _oracle_pair(method, case)
    oracle_t, oracle_other = case.oracle_targets, case.oracle_other
    diffs = []
    for i in range(first.shape[0]):
        a, b = first[i].detach().double(), second[i].detach().double()
        diff = float((a - b).norm() / max(float(a.norm()), float(b.norm()), 1e-12))
        diffs.append(diff)
        assert diff >= TARGET_DIFFERENCE, (
            f"{label}: on the oracle model, whose classes read different regions, the maps of image {i} "
            f"for classes {int(oracle_t[i])} and {int(oracle_other[i])} differ by only {diff:.3g} (relative L2; "
            f"need {TARGET_DIFFERENCE}); the method ignores the target")
    return f"smallest relative difference {min(diffs):.3g}"


def check_method_oracle(method: Method, case: MethodCase | None = None, threshold: float = ORACLE_THRESHOLD) -> str:
    """On the oracle model, for every image and every class, at least ``threshold`` of the map's positive mass
    (measured from its median, :func:`~interpbench.testing.world.positive_mass_inside`) lies in the class's region.

    Fix: the map must follow the model's evidence (its gradients, activations or the effect of perturbations);
    declare this check an expected failure for a baseline that ignores the model.
    """
    case = _case(method, case)
    label = _label(method)
    oracle_net, oracle_other = case.oracle, case.oracle_other
    first, second, t = _oracle_pair(method, case)
    masks = oracle_net.region_masks.to(first.device)
    shares = torch.cat([positive_mass_inside(first, masks[t]), positive_mass_inside(second, masks[oracle_other])])
    classes = torch.cat([t, oracle_other]).tolist()
    for j, s in enumerate(shares.tolist()):
        c, i = classes[j], j % len(t)
        assert s >= threshold, (
            f"{label}: on the oracle model, only {s:.3f} of the positive mass of the map for class {c} of "
            f"image {i} lies in the box {oracle_net.regions[c]} that alone can change that class's logit "
            f"(need {threshold}); the map does not follow the model's evidence")
    return f"positive mass inside the region: min {float(shares.min()):.3f}, mean {float(shares.mean()):.3f}"


# --------------------------------------------------------------------------------------------- the kit


def method_checks(
    method: Any,
    model: Model | None = None,
    images: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    oracle: Model | None = None,
    threshold: float = ORACLE_THRESHOLD,
    tolerance: float = TOLERANCE,
) -> list[Check]:
    """The conformance checks of an explanation method (an instance, a class or a registered name; ``params``
    override its parameters).

    ``model``, ``images`` and ``targets`` (default: the oracle model, 2 oracle images, targets 0 and 1; on another
    model, 2 seeded noise images at its input size and its predicted classes) are what the general checks run on;
    ``target_sensitivity`` and ``oracle`` always use the oracle model (``oracle=`` to use another one built by
    :func:`oracle_model`). Methods with costly defaults can be checked with cheaper ``params`` (fewer samples or
    iterations); the published defaults stay what the benchmark runs.

    The method is run once on the model and once on the oracle (when they differ) while the checks are built, to
    learn which checks apply: a method that raises ``NotApplicable`` there reports the checks that need it as not
    applicable, with its reason. The checks:

    - ``contract``: name and version are non-empty strings, ``requires_grad`` and ``deterministic`` are bools,
      ``explain`` is implemented, ``describe()`` is JSON-serialisable (the manifest records it).
    - ``output``: maps are a floating ``B x H x W`` tensor at the input resolution, finite, on the images' device,
      not attached to an autograd graph; also for a batch of one image.
    - ``inputs_unchanged``: the images are not modified in place.
    - ``model_unchanged``: parameters, buffers, their ``.grad``, ``requires_grad`` flags, train/eval mode, hooks
      and the global grad mode are as before.
    - ``batch_independence`` (deterministic methods; n/a for stochastic ones): explaining the batch equals
      explaining each image alone, within ``tolerance`` of the largest map value.
    - ``determinism``: a stochastic method gives the same maps twice under the same seed (it draws from torch's
      global RNG, which the runner seeds); a deterministic one gives the same maps under two different seeds.
    - ``invalid_target``: a target outside ``[0, num_classes)`` raises an exception instead of returning maps.
    - ``target_sensitivity``: on the oracle model, the maps of each image for two classes (same seed) differ by at least
      :data:`TARGET_DIFFERENCE` (relative L2) on every image.
    - ``oracle``: on the oracle model, for every image and every class, at least ``threshold`` of the map's
      positive mass (measured from its median, :func:`positive_mass_inside`) lies in the class's region.

    Check ``x`` is the function ``check_method_x`` of this module; all of them share one :class:`MethodCase`.
    """
    method = _instance(method, params)
    label = method.name or type(method).__name__
    case = MethodCase(method, model, images, targets, seed=seed, oracle=oracle)
    main, on_oracle = case.main, case.on_oracle
    stochastic = not bool(getattr(method, "deterministic", True))
    spec = getattr(case.model, "spec", "the model")
    na_main = f"{label} is not applicable to {spec!r}: {main.error}" if main.not_applicable else ""
    na_oracle = f"{label} is not applicable to the oracle model: {on_oracle.error}" if on_oracle.not_applicable else ""

    def bound(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        return lambda: fn(method, case, *args)

    checks = [
        Check("contract", lambda: check_method_contract(method)),
        Check("output", bound(check_method_output), not main.not_applicable, na_main),
        Check("inputs_unchanged", bound(check_method_inputs_unchanged), not main.not_applicable, na_main),
        Check("model_unchanged", bound(check_method_model_unchanged), not main.not_applicable, na_main),
        Check("batch_independence", bound(check_method_batch_independence, tolerance),
              not stochastic and not main.not_applicable,
              "stochastic method: a batch draws different random numbers than its images alone" if stochastic
              else na_main),
        Check("determinism", bound(check_method_determinism, tolerance), not main.not_applicable, na_main),
        Check("invalid_target", bound(check_method_invalid_target), not main.not_applicable, na_main),
        Check("target_sensitivity", bound(check_method_target_sensitivity), not on_oracle.not_applicable, na_oracle),
        Check("oracle", bound(check_method_oracle, threshold), not on_oracle.not_applicable, na_oracle),
    ]
    assert tuple(c.name for c in checks) == CHECK_NAMES
    return checks


def check_method(
    method: Any,
    model: Model | None = None,
    images: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    expected_failures: Mapping[str, str] | None = None,
    **options: Any,
) -> CheckReport:
    """Run :func:`method_checks` on a method (an instance, a class or a registered name; ``params`` override its
    parameters) and return the report.

    ``expected_failures`` (check name -> reason), merged with the method class's own ``expected_failures``
    attribute, declares checks the method is known to fail (e.g. ``oracle`` for a baseline that ignores the
    model): such a check that fails is reported as not applicable with the reason and the failure; one that
    passes is reported as failed (a stale declaration must not hide). ``options`` go to :func:`method_checks`.
    """
    instance = _instance(method, params)
    declared = dict(getattr(instance, "expected_failures", {}) or {})
    declared.update(expected_failures or {})
    unknown = set(declared) - set(CHECK_NAMES)
    if unknown:
        raise ComponentError(f"check_method: expected failures name unknown checks {sorted(unknown)}; the checks are "
                             f"{list(CHECK_NAMES)}")
    report = run_checks(f"method {instance.name or type(instance).__name__}",
                        method_checks(instance, model, images, targets, **options))
    return apply_expected_failures(report, declared)


__all__ = [
    "CHECK_NAMES",
    "ORACLE_REGIONS",
    "ORACLE_SIZE",
    "MethodCase",
    "check_method",
    "check_method_batch_independence",
    "check_method_contract",
    "check_method_determinism",
    "check_method_inputs_unchanged",
    "check_method_invalid_target",
    "check_method_model_unchanged",
    "check_method_oracle",
    "check_method_output",
    "check_method_target_sensitivity",
    "method_checks",
    "oracle_images",
    "oracle_model",
    "positive_mass_inside",
    "region_masks",
]
