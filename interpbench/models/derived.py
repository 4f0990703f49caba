"""Model pairs ``A=>B`` and the model-randomisation sanity check (``SPEC~cascade:K``, ``sanity:SPEC``).

Spec grammar (beside ``SOURCE:NAME[@WEIGHTS]``):

- ``A=>B``: a pair. :func:`interpbench.load_model` returns B's network as a :class:`PairModel` (an ``ib.Model``
  whose forward is B) with ``.reference`` holding A's Model, on the same device; ``describe()`` and ``weights``
  cover both. Model-scope ``unit_drift`` and explanation-scope ``explanation_drift`` compare B with A; every other
  metric sees model B. Where A and B share a label space, the class each image is explained for is chosen once,
  from A (:meth:`PairModel.choose_targets`: A's prediction, or the label with ``--target label``), and both models
  explain it; where they do not, each explains its own prediction. The pair's default dataset is A's (the probe
  A's concepts were learnt on).
- ``SPEC~cascade:K`` (or ``~cascade:K:SEED``, ``~cascade:all``): SPEC with its top ``K`` parametrised stages
  re-initialised, from the logits down (Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim, "Sanity checks for
  saliency maps", NeurIPS 2018, cascading randomisation). Stages: the model's named ``layers`` (dissection
  stages) in forward order, each owning the parametrised modules computed since the previous stage's output,
  and a last stage ``head`` owning what follows the last named stage (the classifier). Each module is
  re-initialised with its own ``reset_parameters()`` under a seed derived from (SEED, module name), so the
  stages re-initialised at depth ``K`` hold the same random weights at every depth ``K' > K``.
- ``sanity:SPEC``: shorthand for the pairs ``SPEC=>SPEC~cascade:1`` ... ``SPEC=>SPEC~cascade:L`` (one row per
  depth; ``L``: all stages), expanded by :func:`interpbench.api.expand_specs` (``interpbench run --pairs sanity:SPEC``,
  ``interpbench drift --sanity SPEC``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from interpbench.core.base import ComponentError, Model
from interpbench.core.config import pair_spec, parse_cascade
from interpbench.core.identity import stable_hash
from interpbench.models.weights import state_dict_sha256

HEAD = "head"


class PairModel(Model):
    """Model B of a pair (its network, normalisation, classes, layers) with model A as ``.reference``."""

    def __init__(self, reference: Model, model: Model) -> None:
        spec = pair_spec(reference.spec, model.spec)
        super().__init__(model.net, spec=spec, mean=model.mean.flatten().tolist(), std=model.std.flatten().tolist(),
                         input_size=model.input_size, class_names=model.class_names, cam_layer=model.cam_layer,
                         label_space=model.label_space,
                         default_dataset=reference.default_dataset or model.default_dataset,
                         weights=pair_weights(reference, model), layers=model._layer_names)
        self.reference = reference  # a registered submodule: .to(), .eval() move and switch both models
        self.target = model.spec  # B's own spec
        self.target_weights = dict(model.weights)
        cascade = model.weights.get("randomized") if isinstance(model.weights, dict) else None
        self.shared_label_space = shares_label_space(reference, model)
        self.pair_info: dict[str, Any] = {"from": reference.spec, "to": model.spec,
                                          "class_from_a": self.shared_label_space}
        if cascade and parse_cascade(model.spec) and parse_cascade(model.spec)[0] == reference.spec:
            # a sanity-check pair: A against A with its top stages re-initialised
            self.pair_info.update(sanity_depth=cascade["depth"], sanity_stages=cascade["stages_total"])
        self.eval()  # both models in eval mode (a Model is used in eval mode; train() would switch A as well)

    def choose_targets(self, images: torch.Tensor) -> torch.Tensor:
        """The class each image is explained for when the run's target is the prediction: model A's top-1 where A
        and B share a label space (the class is chosen once, from A, and both models explain it: Adebayo et al.
        2018 explain the same class before and after randomising), else B's own top-1 (B predicts other classes,
        e.g. a model fine-tuned from shape to colour; A then explains its own top-1)."""
        chooser = self.reference if self.shared_label_space else self
        with torch.no_grad():
            return chooser(images).argmax(dim=1)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["pair"] = {"from": self.reference.describe(), "to": {**super().describe(), "spec": self.target,
                                                                  "weights": self.target_weights},
                       "explained_class": TARGET_RULES[self.shared_label_space]}
        return out


TARGET_RULES = {True: "chosen once from model A (its prediction, or the label), explained by both models",
                False: "each model its own (the label spaces differ)"}


def shares_label_space(a: Model, b: Model) -> bool:
    """A and B predict the same classes (same label space and class names): a cascade, a pruned or quantised
    model, a distilled student of the same task. Then a pair explains one class per image, chosen from A."""
    return a.label_space == b.label_space and list(a.class_names) == list(b.class_names)


def pair_weights(a: Model, b: Model) -> dict[str, Any]:
    """The weights identity of a pair: both models' identities and a sha256 over both sha256s."""
    sha_a, sha_b = str(a.weights.get("sha256")), str(b.weights.get("sha256"))
    return {"source": "pair", "tag": pair_spec(a.spec, b.spec),
            "sha256": hashlib.sha256(f"{sha_a}|{sha_b}".encode()).hexdigest(),
            "sha256_of": "the sha256 of model A and of model B ('A|B')", "from": dict(a.weights),
            "to": dict(b.weights)}


# --------------------------------------------------------------------------------------------- cascading randomisation


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def cascade_stages(model: Model) -> list[tuple[str, list[str]]]:
    """The model's parametrised stages in forward order: ``[(stage name, [module names])]``.

    One forward pass on a blank image records when each parametrised module runs and when each named stage (the
    model's ``layers``) returns; a module belongs to the first stage that returns after it ran (the deepest named
    stage that contains it, or the next one). Modules that run after the last stage (and any the forward never
    calls) form the last stage, ``head``. Stages that own no parameters are left out.
    """
    net = model.net
    modules = dict(net.named_modules())
    owners = [name for name, m in modules.items() if _owns_parameters(m)]
    stage_names = list(model._layer_names)
    events: list[tuple[str, str]] = []
    handles = []
    try:
        for name in owners:
            handles.append(modules[name].register_forward_pre_hook(
                lambda m, i, name=name: events.append(("module", name))))
        for name in stage_names:
            handles.append(modules[name].register_forward_hook(
                lambda m, i, o, name=name: events.append(("stage", name))))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, *model.input_size, device=model.device))
        finally:
            model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    assigned: dict[str, str] = {}
    stages: list[tuple[str, list[str]]] = []
    pending: list[str] = []
    for kind, name in events:
        if kind == "module":
            if name not in assigned and name not in pending:
                pending.append(name)
        elif pending and name not in [s for s, _ in stages]:
            stages.append((name, list(pending)))
            assigned.update({m: name for m in pending})
            pending = []
    head = pending + [name for name in owners if name not in assigned and name not in pending]
    if head:
        stages.append((HEAD, head))
    if not stages:
        raise ComponentError(f"model {model.spec!r} has no parameters to re-initialise")
    return stages


def _reinitialise(module: nn.Module, seed: int) -> None:
    """``module.reset_parameters()`` (its own initialisation; BatchNorm also resets its running statistics) under
    ``seed``; a module without one gets each direct parameter redrawn from N(0, s^2), s its current std (0.02
    when constant)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
            return
        with torch.no_grad():
            for param in module.parameters(recurse=False):
                std = float(param.float().std()) if param.numel() > 1 else 0.0
                param.copy_(torch.randn(param.shape, dtype=param.dtype) * (std if std > 0 else 0.02))


def randomize_top(model: Model, depth: int | str, seed: int = 0) -> Model:
    """Re-initialise the top ``depth`` stages of :func:`cascade_stages` in place (``"all"``: every stage); update
    the model's spec (``~cascade:K``) and weights identity. Run it on the CPU so the draws are the same on every
    device."""
    stages = cascade_stages(model)
    total = len(stages)
    k = total if depth == "all" else int(depth)
    if not 1 <= k <= total:
        raise ComponentError(f"model {model.spec!r}~cascade:{depth}: the depth must lie in 1..{total} (its stages, "
                             f"top first: {[s for s, _ in reversed(stages)]}), or 'all'")
    chosen = list(reversed(stages))[:k]
    modules = dict(model.net.named_modules())
    for _, names in chosen:
        for name in names:
            _reinitialise(modules[name], stable_hash(["cascade", int(seed), name]))
    base_spec, base_weights = model.spec, dict(model.weights)
    model.spec = f"{base_spec}~cascade:{k}" + (f":{seed}" if seed else "")
    model.weights = {
        "source": base_weights.get("source"), "tag": model.spec,
        "sha256": state_dict_sha256(model.net.state_dict()), "sha256_of": "state_dict",
        "randomized": {"method": "cascading randomisation (Adebayo et al. 2018), top stages re-initialised",
                       "depth": k, "stages_total": total, "stages": [s for s, _ in chosen], "seed": int(seed)},
        "base": base_weights,
    }
    return model


__all__ = [
    "PairModel",
    "cascade_stages",
    "randomize_top",
    "shares_label_space",
]
