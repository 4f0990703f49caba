"""Attack specs of the adversarial metrics: names such as ``fgsm8`` / ``pgd2`` / ``cw`` parsed into
:class:`AttackSpec`, the per-image seeding of an attack, and the cache of recent batches' adversarial images.

Layer: ops (imports core and ops only). The attacks themselves are in :mod:`interpbench.ops.attacks`; the
metrics that use these specs are in :mod:`interpbench.metrics.adversarial` (docs/protocols.md, "Adversarial
detection with explanations").
"""

from __future__ import annotations

import collections
import dataclasses
import re
import weakref
from typing import Any, Mapping, Sequence

import torch

from interpbench.core.base import ComponentError
from interpbench.core.identity import stable_hash
from interpbench.ops.attacks import Adversarial, carlini_wagner_l2, fgsm, pgd_linf

ATTACK_NAME = re.compile(r"^(?P<kind>fgsm|pgd)(?P<eps>\d+(?:\.\d+)?)$|^(?P<cw>cw)$")
DEFAULT_ATTACKS = ("fgsm2", "fgsm4", "fgsm8", "pgd2", "pgd4", "pgd8", "cw")
# The attack parameters both adversarial metrics take (PGD: Madry et al.; CW-L2: Carlini & Wagner's defaults).
ATTACK_DEFAULTS: dict[str, Any] = {
    "pgd_steps": 10,
    "pgd_step_ratio": 0.25,
    "pgd_random_start": True,
    "cw_steps": 1000,
    "cw_binary_search_steps": 9,
    "cw_lr": 0.01,
    "cw_initial_const": 1e-3,
    "cw_kappa": 0.0,
    "cw_abort_early": True,
}


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of a metric: ``name`` (``fgsm8``, ``pgd2``, ``cw``), ``kind`` and its settings."""

    name: str
    kind: str  # "fgsm" | "pgd" | "cw"
    settings: tuple[tuple[str, Any], ...]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.settings)

    def identity(self) -> list[Any]:
        return [self.name, self.kind, [list(kv) for kv in self.settings]]


def parse_attacks(names: Any, params: Mapping[str, Any], who: str) -> list[AttackSpec]:
    """Attack specs from names ``fgsmE`` / ``pgdE`` (epsilon ``E/255`` in pixel units) and ``cw``.

    PGD takes ``pgd_steps``, ``pgd_step_ratio`` (step = ratio * eps) and ``pgd_random_start``; CW takes
    ``cw_steps``, ``cw_binary_search_steps``, ``cw_lr``, ``cw_initial_const``, ``cw_kappa``, ``cw_abort_early``.
    """
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    if not isinstance(names, (list, tuple)) or not names:
        raise ComponentError(
            f"{who}: attacks must be a non-empty list of names such as {list(DEFAULT_ATTACKS)}, got {names!r}")
    specs, seen = [], set()
    for name in names:
        match = ATTACK_NAME.match(str(name))
        if match is None:
            raise ComponentError(
                f"{who}: unknown attack {name!r}; use fgsmE or pgdE (epsilon E/255 in pixel units, e.g. pgd8) or cw"
            )
        if name in seen:
            raise ComponentError(f"{who}: attack {name!r} is listed twice")
        seen.add(name)
        if match["cw"]:
            settings = {k: params[f"cw_{k}"] for k in ("steps", "binary_search_steps", "lr", "initial_const", "kappa",
                                                       "abort_early")}
            specs.append(AttackSpec(str(name), "cw", tuple(settings.items())))
            continue
        eps = float(match["eps"]) / 255
        if match["kind"] == "fgsm":
            specs.append(AttackSpec(str(name), "fgsm", (("eps", eps),)))
        else:
            settings = {"eps": eps, "step_size": eps * float(params["pgd_step_ratio"]), "steps": params["pgd_steps"],
                        "random_start": bool(params["pgd_random_start"])}
            specs.append(AttackSpec(str(name), "pgd", tuple(settings.items())))
    return specs


def image_generators(spec: AttackSpec, model: torch.nn.Module, ids: Sequence[str],
                     device: torch.device) -> list[torch.Generator]:
    """One generator per image, seeded from (model, attack, image id): an image's attack is the same in every
    method's cell and whatever batch it falls in."""
    tag = getattr(model, "spec", type(model).__name__)
    gens = []
    for sid in ids:
        g = torch.Generator(device=device)
        g.manual_seed(stable_hash([tag, spec.identity(), str(sid)]))
        gens.append(g)
    return gens


def run_attack(spec: AttackSpec, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
               ids: Sequence[str]) -> Adversarial:
    """Run ``spec`` on a batch (each image seeded by its id where the attack draws random numbers)."""
    p = spec.params
    if spec.kind == "fgsm":
        return fgsm(model, images, labels, p["eps"])
    if spec.kind == "pgd":
        return pgd_linf(model, images, labels, p["eps"], step_size=p["step_size"], steps=p["steps"],
                        random_start=p["random_start"], generator=image_generators(spec, model, ids, images.device))
    return carlini_wagner_l2(model, images, labels, initial_const=p["initial_const"],
                             binary_search_steps=p["binary_search_steps"], steps=p["steps"], lr=p["lr"],
                             kappa=p["kappa"], abort_early=p["abort_early"])


class _AttackCache:
    """The adversarial images (and their logits) of recent batches, per model (weakly held).

    The runner feeds every method the same batch before moving on, so a few entries per model suffice.
    """

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._by_model: "weakref.WeakKeyDictionary[torch.nn.Module, collections.OrderedDict]" = (
            weakref.WeakKeyDictionary())

    def get(self, model, key):
        entries = self._by_model.get(model)
        if entries is None or key not in entries:
            return None
        entries.move_to_end(key)
        return entries[key]

    def put(self, model, key, value) -> None:
        entries = self._by_model.setdefault(model, collections.OrderedDict())
        entries[key] = value
        while len(entries) > self.size:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._by_model.clear()


ATTACK_CACHE = _AttackCache()
