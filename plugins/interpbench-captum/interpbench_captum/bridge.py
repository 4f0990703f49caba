"""captum's attribution methods as interpbench methods, built from captum's classes (one generic adapter).

Every class of ``captum.attr`` that attributes a class logit to the pixels of an image, or to a layer of the
network, becomes the method ``captum:<ClassName>``. The adapter reads the class's constructor and ``attribute``
signatures: the model is passed as captum's ``forward_func`` / ``model``, layer methods get the module named by
``layer`` (default: the model's ``cam_layer``), and every ``attribute`` argument with a plain default (``n_steps``,
``n_samples``, ``stdevs``, ``method``, ...) becomes a parameter with captum's default. Arguments that do not fit
interpbench's conventions are adapted:

- images are in pixel space ``[0, 1]`` and the model normalises inside, so captum sees the model as it is and
  the references (``baselines``) are pixel-space images: ``black`` (zeros; Sundararajan et al. 2017, sec. 3, "the
  black image"; the default of the gradient methods), ``mean`` (the model's mean colour, i.e. zero after
  normalisation: captum's default on the normalised inputs it is usually given, and the default of the
  perturbation methods), ``white``, ``noise`` (uniform noise) or a grey level in ``[0, 1]``; a
  comma-separated list is a distribution of references (the SHAP methods need one; default ``black,mean``, the
  two conventional "no information" images);
- attributions ``B x C x h x w`` (input channels, or a layer's units) are reduced over channels (``reduce``:
  ``sum``, the default, keeps the sign of captum's per-channel attributions and their completeness; ``max_abs``
  (Simonyan et al. 2014), the default of the methods that return plain or modified gradients (Saliency,
  GuidedBackprop, Deconvolution, GuidedGradCam), as for the built-in gradient methods; ``abs_sum``, ``l2``,
  ``mean``) and bilinearly upsampled to the input size (layer methods);
- feature masks of the perturbation methods (FeatureAblation, ShapleyValueSampling, Lime, KernelShap) are a
  ``grid x grid`` partition of the image shared by the three channels (captum's default, one feature per scalar,
  needs ``3 H W`` evaluations or more); layer masks of LayerFeatureAblation ablate one spatial position of the
  layer (all its channels) at a time;
- Occlusion's window and stride are ``window`` and ``stride`` pixels (all channels together);
- gradient methods take SmoothGrad-style noise through captum's NoiseTunnel: ``nt_type`` (``smoothgrad``,
  ``smoothgrad_sq``, ``vargrad``), ``nt_samples`` and ``nt_stdevs`` (pixel-space standard deviation).

Where captum's default differs from the method's paper, the paper wins (``PUBLISHED``). Classes that cannot be
interpbench methods are listed in ``excluded()`` with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import warnings
from typing import Any, Callable

import captum
import captum.attr as ca
import numpy as np
import torch
from captum.attr import Attribution, GradientAttribution, NeuronAttribution, NoiseTunnel

from interpbench.core.base import ComponentError, Method, NotApplicable
from interpbench.methods.cam import upsample_maps
from interpbench.methods.gradients import check_batch, finite_maps

PREFIX = "captum:"
ADAPTER_VERSION = "1"

# attribute() arguments the adapter sets itself (the images, the targets, our conventions).
FIXED_ATTRIBUTE_ARGS = frozenset({
    "self", "inputs", "target", "additional_forward_args", "return_convergence_delta", "show_progress", "kwargs",
    "grad_kwargs", "verbose", "custom_attribution_func", "attribute_to_layer_input", "return_input_shape",
    "layer_baselines",
})
# attribute() arguments the adapter builds from its own parameters.
ADAPTED_ATTRIBUTE_ARGS = frozenset({"baselines", "feature_mask", "layer_mask", "sliding_window_shapes", "strides"})
# constructor arguments the adapter fills in.
FIXED_INIT_ARGS = frozenset({"self", "forward_func", "model", "layer", "device_ids"})

# Where a paper's definition differs from captum's default (class -> parameter -> value, with the source).
PUBLISHED: dict[str, dict[str, Any]] = {
    # Selvaraju et al. 2017, eq. 2: Grad-CAM is ReLU(sum_k alpha_k A^k); captum's default leaves the ReLU off.
    "LayerGradCam": {"relu_attributions": True},
    # Gradients without the input (no completeness; the sign of one channel's gradient is not evidence): one map is
    # the max over channels of |values| (Simonyan et al. 2014, sec. 3.1), as the built-in gradient methods do.
    "Saliency": {"reduce": "max_abs"},
    "GuidedBackprop": {"reduce": "max_abs"},
    "Deconvolution": {"reduce": "max_abs"},
    # Selvaraju et al. 2017, sec. 3.1: Grad-CAM is upsampled bilinearly before the product with guided backprop.
    "GuidedGradCam": {"interpolate_mode": "bilinear", "reduce": "max_abs"},
}
# Methods that need the layer to be a module with a propagation rule (LRP): a Sequential is replaced by its last
# module, and a trailing nonlinearity (which LRP passes relevance through unchanged) by the module before it.
LEAF_LAYER = frozenset({"LayerLRP"})
# captum evaluates one perturbation per forward pass by default; several per pass give the same numbers faster
# (docs/scale.md). LayerFeatureAblation keeps 1: captum 0.9 mis-expands tensor targets there.
PERTURBATIONS_PER_EVAL = 16
# SmoothGrad (Smilkov et al. 2017, sec. 3): about 50 samples, noise of 10-20% of the input range ([0, 1] here).
NOISE_TUNNEL_DEFAULTS = {"nt_type": None, "nt_samples": 50, "nt_stdevs": 0.15}
NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")
# Occlusion's window and stride in pixels: captum's ImageNet tutorial (sliding_window_shapes (3, 15, 15), strides 8).
SLIDING_WINDOW_DEFAULTS = {"window": 15, "stride": 8}
DEFAULT_GRID = 8  # 8 x 8 = 64 features for the perturbation methods that take a feature mask

# Classes excluded by name (those excluded by kind are found by ``exclusion_reason``).
EXCLUDED_BY_NAME = {
    "FeaturePermutation": "permutes each feature across the images of the batch, so an image's map depends on the "
    "other images in its batch (and a batch of one gives zeros); interpbench explains each image on its own",
    "LayerFeaturePermutation": "permutes layer units across the images of the batch, so an image's map depends on "
    "the other images in its batch; interpbench explains each image on its own",
    "ShapleyValues": "exact Shapley values evaluate every permutation of the features (n! forward passes); use "
    "captum:ShapleyValueSampling",
    "NoiseTunnel": "a wrapper, not a method: every gradient method takes nt_type=smoothgrad|smoothgrad_sq|vargrad",
    "LimeBase": "LIME's engine without an interpretable representation; use captum:Lime or captum:KernelShap",
    "DataLoaderAttribution": "attributes a whole data loader at once, not one image",
}

REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sum": lambda a: a.sum(dim=1),  # captum's visualize_image_attr sums the channels too
    "abs_sum": lambda a: a.abs().sum(dim=1),
    "max_abs": lambda a: a.abs().amax(dim=1),  # Simonyan et al. 2014, sec. 3.1: max over channels of |w|
    "l2": lambda a: a.pow(2).sum(dim=1).sqrt(),
    "mean": lambda a: a.mean(dim=1),
}


# --------------------------------------------------------------------------------------------- discovery


def captum_classes() -> dict[str, type]:
    """Every attribution class captum exports (``captum.attr.__all__``), by name."""
    out = {}
    for name in ca.__all__:
        obj = getattr(ca, name, None)
        if inspect.isclass(obj) and issubclass(obj, Attribution):
            out[name] = obj
    return out


def exclusion_reason(cls: type) -> str | None:
    """Why ``cls`` cannot be an interpbench method, or None."""
    if cls.__name__ in EXCLUDED_BY_NAME:
        return EXCLUDED_BY_NAME[cls.__name__]
    if cls.__module__.endswith("_utils.attribution"):
        return "an abstract base class of captum's attribution methods"
    if issubclass(cls, NeuronAttribution):
        return ("attributes one hidden neuron chosen by neuron_selector, not a class logit; interpbench explains "
                "the target class (use the matching captum:Layer* method)")
    try:
        params = inspect.signature(cls.attribute).parameters
    except (AttributeError, ValueError, TypeError):
        return "has no attribute() method"
    if "inputs" not in params:
        return "attributes text generation of language models, not image classifiers"
    return None


def excluded() -> dict[str, str]:
    """``captum:<Name>`` -> why it is not offered, for every attribution class captum exports but we do not."""
    return {PREFIX + name: reason for name, cls in captum_classes().items() if (reason := exclusion_reason(cls))}


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _signature_params(fn: Callable, skip: frozenset[str]) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(fn).parameters.items()
            if n not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


# --------------------------------------------------------------------------------------------- conventions


def reference_images(spec: str, images: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The pixel-space references named by ``spec`` (``black``, ``white``, ``mean``, ``noise``, a grey level, or
    a comma-separated list of them): ``1 x C x H x W`` (``B x ...`` for ``noise``) for one reference, ``N x C x H x W``
    for a list (a distribution shared by every image)."""
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    shape = (1, *images.shape[1:])
    refs = []
    for part in parts:
        if part == "black":
            refs.append(torch.zeros(shape, device=images.device, dtype=images.dtype))
        elif part == "white":
            refs.append(torch.ones(shape, device=images.device, dtype=images.dtype))
        elif part == "mean":
            refs.append(mean.to(images.device, images.dtype).view(1, -1, 1, 1).expand(shape).clone())
        elif part == "noise":
            n = images.shape[0] if len(parts) == 1 else 1
            refs.append(torch.rand((n, *images.shape[1:]), device=images.device, dtype=images.dtype))
        else:
            refs.append(torch.full(shape, float(part), device=images.device, dtype=images.dtype))
    return torch.cat(refs) if len(refs) > 1 else refs[0]


def validate_references(method: str, spec: Any, distribution: bool) -> None:
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    for part in parts:
        if part in ("black", "white", "mean", "noise"):
            continue
        try:
            level = float(part)
        except ValueError:
            level = math.nan
        if not 0 <= level <= 1:
            raise ComponentError(f"{method}: baselines {spec!r}: {part!r} is not black, white, mean, noise or a grey "
                                 "level in [0, 1]; e.g. baselines='black' or baselines='black,white'")
    if distribution and len(parts) < 2:
        raise ComponentError(f"{method}: baselines {spec!r}: this method averages over a distribution of references; "
                             "name at least two, e.g. baselines='black,mean'")
    if not parts:
        raise ComponentError(f"{method}: baselines is empty; e.g. baselines='black'")


def rule_layer(module: torch.nn.Module) -> torch.nn.Module:
    """The module whose output relevance LRP reports for ``module``: the last module of a Sequential, skipping
    trailing nonlinearities (LRP passes relevance through them unchanged, so the relevance is the same)."""
    from captum.attr._core.lrp import SUPPORTED_NON_LINEAR_LAYERS

    while isinstance(module, torch.nn.Sequential) and len(module):
        children = [m for m in module if type(m) not in SUPPORTED_NON_LINEAR_LAYERS] or list(module)
        module = children[-1]
    return module


@contextlib.contextmanager
def numpy_rng_from_torch():
    """Seed numpy's global RNG from torch's for the duration, then restore it.

    captum draws some random numbers from numpy (GradientShap's path points, the choice of references); the runner
    seeds torch's global RNG from the cell's identity, so this makes those draws reproducible too.
    """
    state = np.random.get_state()
    np.random.seed(int(torch.randint(0, 2**32 - 1, (1,), dtype=torch.int64)))
    try:
        yield
    finally:
        np.random.set_state(state)


def grid_mask(height: int, width: int, grid: int, device: torch.device) -> torch.Tensor:
    """``1 x 1 x H x W`` feature ids of a ``grid x grid`` partition of the image (row-major), shared by channels."""
    rows = torch.arange(height, device=device) * grid // height
    cols = torch.arange(width, device=device) * grid // width
    return (rows[:, None] * grid + cols[None, :])[None, None]


def reduce_to_maps(method: str, attributions: Any, images: torch.Tensor, reduce: str) -> torch.Tensor:
    """Captum's attributions (``B x C x h x w``) -> ``B x H x W`` maps: reduced over channels, upsampled bilinearly."""
    if isinstance(attributions, tuple) and len(attributions) == 1:
        attributions = attributions[0]
    is_map = isinstance(attributions, torch.Tensor) and attributions.dim() == 4
    if not is_map or attributions.shape[0] != images.shape[0]:
        shape = tuple(attributions.shape) if isinstance(attributions, torch.Tensor) else type(attributions).__name__
        raise NotApplicable(
            f"{method}: captum returned attributions of shape {shape} for images {tuple(images.shape)}; interpbench "
            "needs B x C x h x w (a convolutional layer: choose one with the parameter layer=...)"
        )
    maps = REDUCTIONS[reduce](attributions.float())
    return upsample_maps(maps, tuple(images.shape[-2:]))


# --------------------------------------------------------------------------------------------- the adapter


class CaptumMethod(Method):
    """Base of the generated ``captum:<Name>`` methods; ``captum_class`` is the captum class it runs."""

    captum_class: type = Attribution
    layer_method: bool = False
    distribution: bool = False  # needs a distribution of references (the SHAP methods)
    init_params: tuple[str, ...] = ()
    attribute_params: tuple[str, ...] = ()
    expected_failures: dict[str, str] = {}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        if p.get("reduce") not in REDUCTIONS:
            raise ComponentError(f"{self.name}: reduce {p.get('reduce')!r} is not one of {sorted(REDUCTIONS)}")
        if "baselines" in p:
            validate_references(self.name, p["baselines"], self.distribution)
        for key in ("window", "stride", "grid", "nt_samples"):
            if key == "grid" and p.get(key, 0) is None and self.layer_method:
                continue  # LayerFeatureAblation: one feature per position of the layer
            if key in p and (isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1):
                raise ComponentError(f"{self.name}: {key} must be a positive integer, got {p[key]!r}")
        if p.get("nt_type") not in (None, *NT_TYPES):
            raise ComponentError(f"{self.name}: nt_type {p['nt_type']!r} is not one of {[None, *NT_TYPES]}")
        stochastic = p.get("nt_type") is not None or "noise" in str(p.get("baselines", ""))
        self.deterministic = type(self).deterministic and not stochastic

    def _attribution(self, model) -> Attribution:
        kwargs = {name: self.params[name] for name in self.init_params}
        if self.layer_method:
            kwargs["layer"] = model.module(self.params["layer"] or model.cam_layer)
            if self.captum_class.__name__ in LEAF_LAYER:
                kwargs["layer"] = rule_layer(kwargs["layer"])
        attribution = self.captum_class(model, **kwargs)
        if self.params.get("nt_type") is not None:
            attribution = NoiseTunnel(attribution)
        return attribution

    def _attribute_kwargs(self, model, images: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        p = self.params
        kwargs = {name: p[name] for name in self.attribute_params}
        sig = inspect.signature(self.captum_class.attribute).parameters
        if "target" in sig:
            kwargs["target"] = targets
        if "baselines" in sig:
            kwargs["baselines"] = reference_images(p["baselines"], images, model.mean.flatten())
        if "feature_mask" in sig:
            kwargs["feature_mask"] = grid_mask(*images.shape[-2:], p["grid"], images.device)
        if "sliding_window_shapes" in sig:
            kwargs["sliding_window_shapes"] = (images.shape[1], p["window"], p["window"])
            kwargs["strides"] = (images.shape[1], p["stride"], p["stride"])
        if "layer_mask" in sig:
            kwargs["layer_mask"] = self._layer_mask(model, images)
        if p.get("nt_type") is not None:
            kwargs.update(nt_type=p["nt_type"], nt_samples=p["nt_samples"], stdevs=p["nt_stdevs"])
        return kwargs

    def _layer_mask(self, model, images: torch.Tensor) -> torch.Tensor:
        """``1 x 1 x h x w`` ids: one feature per spatial position of the layer (all its channels together), or per
        cell of a ``grid x grid`` partition of the positions when ``grid`` is set."""
        from interpbench.ops.hooks import capture_outputs

        layer = self.params["layer"] or model.cam_layer
        with torch.no_grad(), capture_outputs({layer: model.module(layer)}, detach=True) as cap:
            model(images[:1])
        act = cap[layer]
        if not isinstance(act, torch.Tensor) or act.dim() != 4:
            raise NotApplicable(f"{self.name}: layer {layer!r} is not a B x K x h x w feature map; choose a "
                                "convolutional layer (parameter layer=...)")
        h, w = act.shape[-2:]
        if self.params["grid"] is None or self.params["grid"] >= max(h, w):
            return torch.arange(h * w, device=images.device).view(1, 1, h, w)
        return grid_mask(h, w, self.params["grid"], images.device)

    def explain(self, model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(self.name, model, images, targets)
        x = images.detach().clone()  # captum sets requires_grad on its inputs: never on the caller's tensor
        if self.requires_grad:
            x.requires_grad_(True)
        attribution = self._attribution(model)
        kwargs = self._attribute_kwargs(model, x, targets)
        grad = torch.enable_grad() if self.requires_grad else torch.no_grad()
        rng = contextlib.nullcontext() if self.deterministic else numpy_rng_from_torch()
        with grad, rng, warnings.catch_warnings():
            # Lime / KernelShap warn that a batch trains one interpretable model per image: that is what we want.
            # captum also announces the hooks it sets on ReLUs; neither is news to a benchmark run.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
            try:
                attributions = attribution.attribute(x, **kwargs)
            except TypeError as exc:
                if "no rule" not in str(exc):
                    raise
                raise NotApplicable(f"{self.name}: {' '.join(str(exc).split())} (model {model.spec!r})") from None
        maps = reduce_to_maps(self.name, attributions.detach() if isinstance(attributions, torch.Tensor)
                              else attributions, images, self.params["reduce"])
        return finite_maps(self.name, model, maps)


def _first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").split())
    for end in (". ", ".\n"):
        if end in text:
            return text[: text.index(end) + 1]
    return text[:200]


def make_method(cls: type) -> type[CaptumMethod]:
    """The interpbench method class ``captum:<cls.__name__>`` built from the captum class ``cls``."""
    reason = exclusion_reason(cls)
    if reason:
        raise ComponentError(f"{PREFIX}{cls.__name__} cannot be an interpbench method: {reason}")
    init = _signature_params(cls.__init__, FIXED_INIT_ARGS)
    attribute = _signature_params(cls.attribute, FIXED_ATTRIBUTE_ARGS | ADAPTED_ATTRIBUTE_ARGS)
    all_attribute = inspect.signature(cls.attribute).parameters
    init_params = {n: p.default for n, p in init.items() if p.default is not p.empty and _plain(p.default)
                   and p.default is not None}
    attribute_params = {n: p.default for n, p in attribute.items() if p.default is not p.empty and _plain(p.default)}
    required = [n for n, p in {**init, **attribute}.items() if p.default is p.empty]
    if required:
        raise ComponentError(f"{PREFIX}{cls.__name__}: no convention for its required argument(s) {required}")
    clash = set(init_params) & set(attribute_params)
    if clash:
        raise ComponentError(f"{PREFIX}{cls.__name__}: {sorted(clash)} is both a constructor and an attribute() "
                             "argument")
    layer_method = "layer" in inspect.signature(cls.__init__).parameters
    distribution = "baselines" in all_attribute and all_attribute["baselines"].default is inspect.Parameter.empty
    defaults: dict[str, Any] = {**init_params, **attribute_params, "reduce": "sum"}
    if layer_method:
        defaults["layer"] = None
    if "baselines" in all_attribute:
        # Gradient methods: the black image (Sundararajan et al. 2017, sec. 3). Perturbation methods: captum's zero,
        # which on the normalised inputs captum is written for is the mean colour (and Zeiler & Fergus's grey).
        # Distributions (the SHAP methods): both.
        defaults["baselines"] = ("black,mean" if distribution else
                                 "black" if issubclass(cls, GradientAttribution) else "mean")
    if "feature_mask" in all_attribute:
        defaults["grid"] = DEFAULT_GRID
    if "layer_mask" in all_attribute:
        defaults["grid"] = None  # one feature per position of the layer
    if "sliding_window_shapes" in all_attribute:
        defaults.update(SLIDING_WINDOW_DEFAULTS)
    if "perturbations_per_eval" in defaults and not layer_method:
        defaults["perturbations_per_eval"] = PERTURBATIONS_PER_EVAL
    if issubclass(cls, GradientAttribution):
        defaults.update(NOISE_TUNNEL_DEFAULTS)
    for key, value in PUBLISHED.get(cls.__name__, {}).items():
        if key not in defaults:
            raise ComponentError(f"{PREFIX}{cls.__name__}: PUBLISHED names {key!r}, which it does not take")
        defaults[key] = value
    sampling = "n_samples" in all_attribute  # GradientShap, ShapleyValueSampling, Lime, KernelShap draw samples
    attrs = {
        "__doc__": f"captum's {cls.__name__}: {_first_sentence(cls.__doc__)}",
        "__module__": __name__,
        "name": PREFIX + cls.__name__,
        "version": f"{ADAPTER_VERSION}+captum{captum.__version__}",
        "requires_grad": issubclass(cls, GradientAttribution),
        "deterministic": not sampling,
        "defaults": defaults,
        "captum_class": cls,
        "layer_method": layer_method,
        "distribution": distribution,
        "init_params": tuple(init_params),
        "attribute_params": tuple(attribute_params),
        "expected_failures": dict(EXPECTED_FAILURES.get(cls.__name__, {})),
    }
    return type(f"Captum{cls.__name__}", (CaptumMethod,), attrs)


# Checks of interpbench.testing that a method fails by design (class name -> check -> why). Methods that cannot run
# on the kit's oracle model at all (LRP, LayerLRP: captum has no propagation rule for its region gates) say so by
# raising NotApplicable, which the report shows as "n/a" with the reason.
EXPECTED_FAILURES: dict[str, dict[str, str]] = {
    "LayerActivation": {
        "target_sensitivity": "class-agnostic by definition: a layer's activations do not depend on the target",
        "oracle": "shows what the layer responds to for every class at once, not the target's evidence",
    },
    "InternalInfluence": {
        "oracle": "integrates the layer's gradient without its activations; under a global-average-pooled linear "
                  "head that gradient is the same at every position, so the map is flat (Leino et al. 2018 define "
                  "influence per unit, not per position)",
    },
}


@functools.lru_cache(maxsize=None)
def captum_methods() -> tuple[type[CaptumMethod], ...]:
    """Every captum attribution class that can be an interpbench method, adapted."""
    return tuple(make_method(cls) for cls in captum_classes().values() if exclusion_reason(cls) is None)
