"""What the model-scope adversarial metrics read off the probe: a subset of the probe's images, dissection
tallies per block of images (for the bootstrap), pooled activations per unit and the class similarity ``A``.

Layer: metrics (imports core, ops and :mod:`interpbench.metrics.dissection`); the metrics are
:class:`interpbench.metrics.adversarial_consistency.AdversarialConsistency` and ``AdversarialClassConsistency``
(docs/protocols.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from interpbench.core.base import ComponentError
from interpbench.metrics.dissection import iter_probe, layer_activations, probe_concepts
from interpbench.ops.consistency import check_similarity
from interpbench.ops.dissect import Tally, accumulate_tally, encode_concepts


class _ProbeSubset(torch.utils.data.Dataset):
    """The probe images at ``indices`` (in that order), keeping the dataset's attributes (concept names...)."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]

    def __getattr__(self, name: str) -> Any:
        if "dataset" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["dataset"], name)


@dataclasses.dataclass
class _BlockTallies:
    """Per-block counts of one layer under one condition (blocks of probe images, for the bootstrap)."""

    intersection: torch.Tensor  # G x U x C
    activation: torch.Tensor  # G x U x K
    ground_truth: torch.Tensor  # G x C

    def weighted(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = weights.double()
        return (torch.einsum("rg,guc->ruc", w, self.intersection), torch.einsum("rg,guk->ruk", w, self.activation),
                w @ self.ground_truth)


def block_tallies(model: torch.nn.Module, dataset: Any, layers: Sequence[str], conditions: Mapping[str, Any],
                  thresholds: Mapping[str, Mapping[str, torch.Tensor]], label_size: tuple[int, int], blocks: int,
                  batch_size: int, device: torch.device):
    """Dissection tallies per block of probe images for each condition (``None``: the clean probe, or a tensor of
    adversarial images), with that condition's thresholds, and the per-block sums of ``|a_cond - a_clean|`` and
    ``|a_clean|`` per unit. Block of image ``i``: ``i * blocks // N``."""
    concepts = probe_concepts(dataset)
    n = len(dataset)
    tallies: dict[tuple[str, str], list[Tally]] = {}
    changes: dict[tuple[str, str], torch.Tensor] = {}
    clean_abs: dict[str, torch.Tensor] = {}
    for indices, images, concept_maps in iter_probe(dataset, batch_size):
        labels = encode_concepts(concept_maps, concepts, label_size, device)
        block = (indices * blocks) // n
        clean_acts = layer_activations(model, images.to(device), layers)
        for cond, adversarial in conditions.items():
            if adversarial is None:
                acts = clean_acts
            else:
                acts = layer_activations(model, adversarial[indices].to(device), layers)
            for layer in layers:
                act = acts[layer]
                key = (cond, layer)
                if key not in tallies:
                    tallies[key] = [Tally.zeros(act.shape[1], concepts, device) for _ in range(blocks)]
                    changes[key] = torch.zeros(blocks, act.shape[1], dtype=torch.float64, device=device)
                if layer not in clean_abs:
                    clean_abs[layer] = torch.zeros(blocks, act.shape[1], dtype=torch.float64, device=device)
                for g in block.unique().tolist():
                    rows = torch.nonzero(block == g).squeeze(1)
                    accumulate_tally(tallies[key][g], act[rows.to(device)], thresholds[cond][layer].to(device),
                                     labels.select(rows.to(device)))
                    diff = (act[rows.to(device)] - clean_acts[layer][rows.to(device)]).abs().double().sum(dim=(0, 2, 3))
                    changes[key][g] += diff
        for layer in layers:
            act = clean_acts[layer].abs().double().sum(dim=(2, 3))
            clean_abs[layer].index_add_(0, block.to(device), act)
    out = {key: _BlockTallies(torch.stack([t.intersection for t in ts]).double().cpu(),
                              torch.stack([t.activation for t in ts]).double().cpu(),
                              torch.stack([t.ground_truth for t in ts]).double().cpu())
           for key, ts in tallies.items()}
    return out, {k: v.cpu() for k, v in changes.items()}, {k: v.cpu() for k, v in clean_abs.items()}


def class_similarity_matrix(dataset: Any, choice: Any, classes: int, who: str) -> tuple[torch.Tensor, str]:
    """The class similarity ``A`` and where it came from: ``"dataset"`` (the dataset's ``class_similarity()``; the
    identity when it has none), ``"identity"``, a path to a ``.npy`` / ``.pt`` / ``.csv`` file, or a nested list."""
    if isinstance(choice, str) and choice == "dataset":
        hook = getattr(dataset, "class_similarity", None)
        if callable(hook):
            return check_similarity(hook(), classes, who), "dataset"
        return torch.eye(classes, dtype=torch.float64), "identity (the dataset has no class_similarity())"
    if isinstance(choice, str) and choice == "identity":
        return torch.eye(classes, dtype=torch.float64), "identity"
    if isinstance(choice, (str, Path)):
        path = Path(choice)
        if not path.is_file():
            raise ComponentError(f"{who}: similarity {str(choice)!r} is not 'dataset', 'identity' or an existing "
                                 ".npy / .pt / .csv file of a C x C class-similarity matrix")
        if path.suffix == ".npy":
            matrix = torch.from_numpy(np.load(path))
        elif path.suffix == ".pt":
            matrix = torch.load(path, weights_only=True)
        else:
            matrix = torch.from_numpy(np.loadtxt(path, delimiter=",", ndmin=2))
        return check_similarity(matrix, classes, who), f"file {path.name}"
    return check_similarity(torch.tensor(choice, dtype=torch.float64), classes, who), "given"


def _pooled_activations(model: torch.nn.Module, images: torch.Tensor, layers: Sequence[str], pool: str
                        ) -> dict[str, torch.Tensor]:
    acts = layer_activations(model, images, layers)
    return {name: (a.amax(dim=(2, 3)) if pool == "max" else a.mean(dim=(2, 3))).double().cpu()
            for name, a in acts.items()}
