"""Relevance rank accuracy (Arras, Osman, Samek, "CLEVR-XAI", Information Fusion 2022, sec. 4.2): of the K most
relevant pixels, K the size of the ground-truth mask, the share that lies inside the mask."""

from __future__ import annotations

import torch

import interpbench as ib


def rank_accuracy(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    # Arras et al. 2022, eq. 8: |top-K(R) ∩ GT| / K with K = |GT|; ties broken by pixel index (stable sort)
    flat, gt = maps.flatten(1), masks.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    k = gt.sum(dim=1, keepdim=True)
    ranks = torch.arange(flat.shape[1], device=flat.device).expand_as(flat)
    top = ranks < k  # the first K positions of the ordering
    hits = (gt.gather(1, order) & top).sum(dim=1)
    return hits.double() / k.squeeze(1).clamp(min=1).double()


class RankAccuracy(ib.Metric):
    """Relevance rank accuracy: share of the top-K pixels of the map inside the target's mask, K = mask size."""

    name = "example:rank_accuracy"
    version = "1"
    higher_is_better = True
    needs = frozenset({"masks"})

    def score(self, model, batch: ib.Batch, maps: torch.Tensor) -> torch.Tensor:
        masks = []
        for sample, target in zip(batch.samples, batch.targets.tolist(), strict=True):
            if target not in sample["masks"]:
                raise ib.NotApplicable(
                    f"{self.name}: sample {sample['id']!r} has no mask for its target class {target}; use "
                    "--target label (or a dataset with a mask for every class)")
            masks.append(sample["masks"][target])
        return rank_accuracy(maps, torch.stack(masks).to(maps.device).bool())
