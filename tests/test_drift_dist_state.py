"""explanation_drift declares its state (Metric.dist_state): the ranks' states merged in rank order give exactly the
numbers of one process, bootstrap intervals and the sanity verdict included."""

from __future__ import annotations

import math

import torch

import interpbench as ib
from interpbench.core.base import Batch
from interpbench.engine.distributed import merge_metric, state_of
from interpbench.engine.feeding import collate


def _pair_batches(spec: str, n: int, size: int = 8):
    """Batches of the shapes world for a pair, as the runner forms them: the class chosen from model A (A and B
    share a label space) and B's Grad-CAM maps of it."""
    model = ib.load_model(spec, device="cpu")
    dataset = ib.load_dataset("shapes", split="test", size=model.input_size)
    method = ib.load_method("gradcam")
    out = []
    for lo in range(0, n, size):
        data = collate([dataset[i] for i in range(lo, min(n, lo + size))])
        targets = model.choose_targets(data["images"])
        batch = Batch(ids=data["ids"], images=data["images"], targets=targets, samples=data["samples"],
                      labels=data.get("labels"), method=method, seed=lo)
        out.append((batch, method.explain(model, batch.images, targets).detach()))
    return model, out


def test_explanation_drift_states_merged_in_rank_order_give_the_one_process_results():
    # the full-randomisation sanity pair: every value, the sanity verdict and the bootstrap intervals
    model, batches = _pair_batches("shapes:cnn=>shapes:cnn~cascade:all", 24)

    def update(part):
        metric = ib.load_metric("explanation_drift")
        for batch, maps in part:
            metric.update(model, batch, maps)
        return metric

    one = update(batches).compute()
    rank0, rank1, rank2 = update(batches[:2]), update(batches[2:]), update([])  # rank 2 has no batch
    merge_metric(rank0, [state_of(rank1), state_of(rank2)], torch.device("cpu"))
    merged = rank0.compute()

    assert one["n"] == 24 and {"sanity_pass", "prediction_agreement", "explanation_drift_ci_low"} <= one.keys()
    assert 0 < one["rank_correlation_ci_high"] - one["rank_correlation_ci_low"]  # a real interval over 24 images
    assert merged.keys() == one.keys()
    assert all(merged[k] == one[k] or (math.isnan(merged[k]) and math.isnan(one[k])) for k in one), \
        {k: (merged[k], one[k]) for k in one if merged[k] != one[k]}
