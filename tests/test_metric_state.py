"""Metric protocols and declared state (interpbench/core/base.py, interpbench/core/state.py; docs/plugins.md):
``add_state`` / ``reset`` semantics, the merge of the ranks' states by declaration, the kind of each base class and
its inference for a legacy ``ib.Metric`` subclass, which still runs through the runner with a DeprecationWarning."""

from __future__ import annotations

import warnings
from collections import defaultdict

import pytest
import torch

import interpbench as ib
from interpbench.core.base import (
    ComponentError,
    DatasetMetric,
    Metric,
    ModelMetric,
    PerSampleMetric,
)
from interpbench.core.state import declared_state, merge_metric, merged_state, state_of


class Counting(DatasetMetric):
    name = "test_counting"

    def __init__(self, **params):
        super().__init__(**params)
        self.add_state("ids", [], reduce="cat")
        self.add_state("seen", 0, reduce="sum")
        self.add_state("largest", 0.0, reduce="max")
        self.add_state("smallest", float("inf"), reduce="min")
        self.add_state("first_model", None, reduce="first")
        self.add_state("by_class", defaultdict(list), reduce="cat")
        self.add_state("longest", [], reduce=lambda values: max(values, key=len))
        self.add_state("scratch", {}, reduce=None)

    def update(self, model, batch, maps):
        self.ids += list(batch.ids)
        self.seen += len(batch)
        self.largest = max(self.largest, float(maps.max()))
        self.smallest = min(self.smallest, float(maps.min()))
        if self.first_model is None:
            self.first_model = model
        for sid, target in zip(batch.ids, batch.targets.tolist()):
            self.by_class[target].append(sid)
        self.longest = self.longest if len(self.longest) >= len(batch) else list(batch.ids)
        self.scratch[batch.ids[0]] = True

    def compute(self):
        return {"seen": float(self.seen), "largest": self.largest, "smallest": self.smallest}


def _batch(ids, targets, value):
    n = len(ids)
    return (ib.Batch(ids=list(ids), images=torch.zeros(n, 3, 4, 4), targets=torch.tensor(targets), samples=[{}] * n),
            torch.full((n, 4, 4), float(value)))


BATCHES = [_batch(["a", "b"], [0, 1], 1.0), _batch(["c", "d", "e"], [1, 1, 0], 3.0), _batch(["f"], [0], -2.0)]


def _run(metric, batches, model="model"):
    for batch, maps in batches:
        metric.update(model, batch, maps)
    return metric


def test_add_state_sets_a_fresh_copy_and_reset_restores_every_default():
    one, two = Counting(), Counting()
    assert one.ids == [] and one.seen == 0 and one.first_model is None and one.scratch == {}
    assert one.ids is not two.ids and one.by_class is not two.by_class  # never a shared mutable default
    _run(one, BATCHES)
    assert two.ids == [] and dict(two.by_class) == {}  # the other instance is untouched
    assert one.seen == 6 and one.ids == list("abcdef") and one.scratch
    held = one.ids
    one.reset()
    assert one.ids == [] and one.ids is not held and held == list("abcdef")  # a new list, the old one kept as it was
    assert one.seen == 0 and one.largest == 0.0 and one.smallest == float("inf") and one.first_model is None
    assert isinstance(one.by_class, defaultdict) and dict(one.by_class) == {} and one.scratch == {}
    _run(one, BATCHES)
    one.reset()
    assert one.by_class[5] == [] and Counting().by_class == {}  # the default itself was never filled


def test_declared_state_lists_the_declarations_in_order_and_merges_those_with_a_reduction():
    metric = Counting()
    assert list(declared_state(metric)) == ["ids", "seen", "largest", "smallest", "first_model", "by_class",
                                            "longest", "scratch"]
    assert declared_state(metric)["scratch"] is None and "scratch" not in merged_state(metric)
    assert "scratch" not in state_of(metric)


def test_add_state_refuses_an_unknown_reduction_and_the_metric_s_own_attributes():
    metric = Counting()
    with pytest.raises(ComponentError, match="unknown reduction 'mean'"):
        metric.add_state("total", 0, reduce="mean")
    with pytest.raises(ComponentError, match="attribute name"):
        metric.add_state("params", {}, reduce="first")


def test_ranks_merged_by_declaration_give_the_one_process_state():
    one = _run(Counting(), BATCHES)
    rank0, rank1, rank2 = _run(Counting(), BATCHES[:1]), _run(Counting(), BATCHES[1:2]), Counting()
    _run(rank2, BATCHES[2:], model="other")
    merge_metric(rank0, [state_of(rank1), state_of(rank2)], torch.device("cpu"))
    assert rank0.ids == one.ids == list("abcdef")  # cat: rank order is the one-process order
    assert rank0.seen == one.seen == 6  # sum
    assert rank0.largest == one.largest == 3.0 and rank0.smallest == one.smallest == -2.0  # max, min
    assert rank0.first_model == "model"  # first
    assert dict(rank0.by_class) == dict(one.by_class) == {0: ["a", "e", "f"], 1: ["b", "c", "d"]}  # cat, key by key
    assert rank0.longest == ["c", "d", "e"]  # a function of the list of the ranks' values
    assert rank0.scratch == {"a": True}  # reduce=None: rank 0 keeps its own
    assert rank0.compute() == one.compute()


def test_a_metric_without_merged_state_runs_on_rank_0_alone():
    from interpbench.engine.distributed import rank0_only

    class Local(DatasetMetric):
        name = "test_local"

        def __init__(self, **params):
            super().__init__(**params)
            self.add_state("seen", 0, reduce=None)

        def update(self, model, batch, maps):
            self.seen += 1

        def compute(self):
            return {"seen": float(self.seen)}

    assert rank0_only(Local()) and not rank0_only(Counting())


def test_each_base_class_declares_its_kind():
    assert (PerSampleMetric.kind, DatasetMetric.kind, ModelMetric.kind) == ("per_sample", "dataset", "model")
    assert ModelMetric.scope == "model" and PerSampleMetric.scope == DatasetMetric.scope == "explanation"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a subclass of a base class warns about nothing

        class Scored(PerSampleMetric):
            name = "test_scored"

            def score(self, model, batch, maps):
                return maps.flatten(1).mean(1)

    assert Scored().per_sample and isinstance(Scored(), Metric)
    assert {ib.load_metric(n).kind for n in ("deletion", "road_morf")} == {"per_sample"}
    assert {ib.load_metric(n).kind for n in ("pointing_game", "grid_pointing_game", "explanation_drift",
                                             "adversarial_detection", "shortcut_localization")} == {"dataset"}
    assert {ib.load_metric(n).kind for n in ("dissection", "unit_ablation", "net2vec")} == {"model"}


def _legacy_classes():
    with pytest.warns(DeprecationWarning) as caught:
        class LegacyScore(ib.Metric):
            name = "test_legacy_score"

            def score(self, model, batch, maps):
                return maps.flatten(1).mean(1).double()

        class LegacyDataset(ib.Metric):
            name = "test_legacy_dataset"
            dist_state = {"total": "sum", "parts": lambda metric, values: [v for part in values for v in part]}

            def reset(self):
                self.total, self.parts = 0.0, []

            def update(self, model, batch, maps):
                self.total += float(maps.sum())
                self.parts.append(len(batch))

            def compute(self):
                return {"test_legacy_dataset": self.total, "batches": float(len(self.parts))}

        class LegacyModel(ib.Metric):
            name = "test_legacy_model"
            scope = "model"

            def evaluate(self, model, dataset, ctx):
                return {"test_legacy_model": float(len(dataset))}

    return (LegacyScore, LegacyDataset, LegacyModel), [str(w.message) for w in caught]


def test_a_legacy_metric_s_kind_is_inferred_once_with_a_warning_naming_the_base_class():
    (score, dataset, model), messages = _legacy_classes()
    assert (score.kind, dataset.kind, model.kind) == ("per_sample", "dataset", "model")
    assert any("PerSampleMetric" in m for m in messages) and any("ModelMetric" in m for m in messages)
    assert any("DatasetMetric" in m and "subclasses interpbench.Metric directly" in m for m in messages)
    assert any("dist_state" in m and "add_state" in m for m in messages)
    # a legacy dist_state + hand-written reset() still merges, its functions called with (metric, values)
    rank0, rank1, one = dataset(), dataset(), dataset()
    for m in (rank0, rank1, one):
        m.reset()
    _run(rank0, BATCHES[:2])
    _run(rank1, BATCHES[2:])
    _run(one, BATCHES)
    assert list(merged_state(rank0)) == ["total", "parts"]
    merge_metric(rank0, [state_of(rank1)], torch.device("cpu"))
    assert rank0.compute() == one.compute() and rank0.parts == [2, 3, 1]


LEGACY_PLUGIN = '''
import interpbench as ib


class LegacyScore(ib.Metric):
    name = "legacy_score"

    def score(self, model, batch, maps):
        return maps.flatten(1).mean(1).double()


class LegacyDataset(ib.Metric):
    name = "legacy_dataset"
    dist_state = {"total": "sum"}

    def reset(self):
        self.total = 0.0

    def update(self, model, batch, maps):
        self.total += float(maps.sum())

    def compute(self):
        return {"legacy_dataset": self.total}


class LegacyModel(ib.Metric):
    name = "legacy_model"
    scope = "model"

    def evaluate(self, model, dataset, ctx):
        return {"legacy_model": float(len(dataset))}


@ib.hookimpl
def register_metrics():
    return [LegacyScore, LegacyDataset, LegacyModel]
'''


def test_legacy_metrics_still_run_through_the_runner(toy, tmp_path):
    import sys

    from interpbench.core.registry import get_registry

    site = tmp_path / "site"
    (site / "legacyplugin.py").write_text(LEGACY_PLUGIN)
    info = site / "interpbench_legacyplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: interpbench-legacyplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[interpbench]\nlegacyplugin = legacyplugin\n")
    try:
        with pytest.warns(DeprecationWarning, match="subclasses interpbench.Metric directly"):
            get_registry(refresh=True)
        kinds = {name: get_registry().get("metrics", name).kind
                 for name in ("legacy_score", "legacy_dataset", "legacy_model")}
        assert kinds == {"legacy_score": "per_sample", "legacy_dataset": "dataset", "legacy_model": "model"}
        table = ib.run(methods=["toy_noise"], models=["toy:net"], out=tmp_path / "run", progress=False,
                       metrics=["legacy_score", "legacy_dataset", "legacy_model"], limit=6, batch_size=4)
        done = table[table["status"] == "done"]
        assert set(done["metric"]) == {"legacy_score", "legacy_dataset", "legacy_model"}, table
        assert done.loc[done["metric"] == "legacy_model", "mean"].tolist() == [6.0]
    finally:
        sys.modules.pop("legacyplugin", None)
