"""Dong et al.'s consistency of a unit: how alike the classes of the images that most activate it are.

Dong, Bao, Su & Zhu, "Towards interpretable deep neural networks by leveraging adversarial examples" (arXiv
1708.05493, 2017; revised 2019): a unit ``n`` is scored by the class distribution ``p`` of its top-activating
images, ``consis(n) = p^T A p``, where ``A`` holds the similarity of every pair of classes (``A_ii = 1``; the paper
takes it from WordNet for ImageNet). With ``A = I`` it is the probability that two of the unit's top images, drawn
with replacement, show the same class. Scored on real images and on their adversarial versions (labelled with the
class they show, their true class), it says whether the unit still responds to one kind of object once an attack
has changed the model's decision.
"""

from __future__ import annotations

import torch

from interpbench.core.base import ComponentError


def top_label_distribution(activations: torch.Tensor, labels: torch.Tensor, classes: int, top_k: int) -> torch.Tensor:
    """``... x U x C``: per unit, the share of each class among its ``top_k`` most activating images.

    ``activations`` ``... x N x U`` (one value per image and unit, e.g. the spatial maximum of a feature map),
    ``labels`` ``N`` class indices. Ties are broken towards the lower image index (a stable sort), so the result
    does not depend on the sorting algorithm.
    """
    n = activations.shape[-2]
    if not 1 <= top_k <= n:
        raise ComponentError(f"consistency: top_k must lie in [1, {n}] (the number of images), got {top_k}")
    if labels.shape != (n,):
        raise ComponentError(f"consistency: {n} images but labels of shape {tuple(labels.shape)}")
    order = torch.sort(activations.transpose(-1, -2), dim=-1, descending=True, stable=True).indices[..., :top_k]
    onehot = torch.nn.functional.one_hot(labels.long(), classes).double()  # N x C
    return onehot[order].sum(dim=-2) / top_k


def consistency(p: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """``p^T A p`` per row of ``p`` (``... x C``), ``A`` the ``C x C`` class similarity."""
    return torch.einsum("...c,cd,...d->...", p.double(), similarity.double(), p.double())


def chance_consistency(labels: torch.Tensor, similarity: torch.Tensor, top_k: int) -> float:
    """The expected ``p^T A p`` of ``top_k`` images drawn without replacement from the images of ``labels``: what
    a unit that does not tell the classes apart scores (with ``A = I`` and many images, about ``sum_c q_c^2 +
    (1 - sum_c q_c^2) / k`` for class shares ``q``).

    ``E[p^T A p] = (1/k) mean_i A_{y_i y_i} + ((k - 1)/k) mean_{i != j} A_{y_i y_j}``.
    """
    a = similarity.double()[labels.long()][:, labels.long()]  # N x N
    n = a.shape[0]
    diagonal = a.diagonal().mean()
    if n < 2 or top_k < 2:
        return float(diagonal)
    off = (a.sum() - a.diagonal().sum()) / (n * (n - 1))
    return float(diagonal / top_k + (top_k - 1) / top_k * off)


def jaccard_similarity(attributes: list[set[str]]) -> torch.Tensor:
    """``C x C`` similarity of classes described by sets of attributes: ``|a_i & a_j| / |a_i | a_j|`` (1 on the
    diagonal)."""
    c = len(attributes)
    out = torch.eye(c, dtype=torch.float64)
    for i in range(c):
        for j in range(c):
            if i != j:
                union = attributes[i] | attributes[j]
                out[i, j] = len(attributes[i] & attributes[j]) / len(union) if union else 0.0
    return out


def check_similarity(matrix: torch.Tensor, classes: int, who: str) -> torch.Tensor:
    """A class-similarity matrix: ``classes x classes``, finite, symmetric, entries in [0, 1], ones on the
    diagonal (``A_ii = 1``, so a unit whose top images share one class scores 1)."""
    a = torch.as_tensor(matrix, dtype=torch.float64)
    if a.shape != (classes, classes):
        raise ComponentError(f"{who}: the class similarity must be {classes} x {classes} (one row and column per "
                             f"class of the dataset), got {tuple(a.shape)}")
    if not bool(torch.isfinite(a).all()) or float(a.min()) < 0 or float(a.max()) > 1:
        raise ComponentError(f"{who}: class similarities must lie in [0, 1]")
    if not torch.allclose(a, a.T, atol=1e-12):
        raise ComponentError(f"{who}: the class similarity must be symmetric (A_ij = A_ji)")
    if not torch.allclose(a.diagonal(), torch.ones(classes, dtype=a.dtype)):
        raise ComponentError(f"{who}: the class similarity must have ones on its diagonal (A_ii = 1)")
    return a


__all__ = ["chance_consistency", "check_similarity", "consistency", "jaccard_similarity", "top_label_distribution"]
