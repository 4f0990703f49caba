"""Unit ablation: known-answer networks (one unit carries a class; a class spread over four units), the tail pass
against the whole network, the hook fallback, the class selectivity index and the metric's artefacts."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from interpbench.metrics.ablation import UnitAblation, unit_ablation
from interpbench.ops.ablation import (
    TailRunner,
    ablate,
    class_selectivity,
    removal_masks,
    spearman,
    tail_module,
)

CLASSES = 4


class Probe(torch.utils.data.Dataset):
    """``per_class`` images per class: ``C x 2 x 2`` inputs, channel ``c`` at 1 for class ``c`` plus noise."""

    def __init__(self, per_class: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(CLASSES).repeat_interleave(per_class)
        self.images = 0.05 * torch.rand(len(self.labels), CLASSES, 2, 2, generator=g)
        self.images[torch.arange(len(self.labels)), self.labels] += 1.0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i])}


def network(readout: torch.Tensor, encode: torch.Tensor) -> nn.Sequential:
    """1x1 conv ``encode`` (units x channels) and ReLU (the layer ``feat``), average pool, linear ``readout``
    (classes x units) with small distinct biases (so a class whose logit falls to 0 loses to a biased one)."""
    units = encode.shape[0]
    conv = nn.Conv2d(CLASSES, units, 1, bias=False)
    fc = nn.Linear(units, CLASSES)
    with torch.no_grad():
        conv.weight.copy_(encode.view(units, CLASSES, 1, 1))
        fc.weight.copy_(readout)
        fc.bias.copy_(torch.tensor([0.03, 0.02, 0.01, 0.04]))
    return nn.Sequential(OrderedDict(feat=nn.Sequential(conv, nn.ReLU()),
                                     pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), fc=fc)).eval()


def one_unit_per_class(extra: int = 4) -> nn.Sequential:
    """Unit ``c`` copies channel ``c`` and alone drives class ``c``; ``extra`` units read noise and drive nothing."""
    units = CLASSES + extra
    encode = torch.zeros(units, CLASSES)
    encode[:CLASSES] = torch.eye(CLASSES)
    encode[CLASSES:] = 0.1
    readout = torch.zeros(CLASSES, units)
    readout[:, :CLASSES] = 2 * torch.eye(CLASSES)
    return network(readout, encode)


def spread_class() -> nn.Sequential:
    """Class 0 is read from units 0-3 (each a copy of channel 0, weight 1 each); classes 1-3 from one unit each."""
    units = 4 + 3
    encode = torch.zeros(units, CLASSES)
    encode[:4, 0] = 1.0
    for c in range(1, CLASSES):
        encode[3 + c, c] = 1.0
    readout = torch.zeros(CLASSES, units)
    readout[0, :4] = 1.0
    for c in range(1, CLASSES):
        readout[c, 3 + c] = 2.0
    return network(readout, encode)


def test_one_unit_carries_one_class():
    net, probe = one_unit_per_class(), Probe()
    result = unit_ablation(net, probe, "feat", seed=1, random_draws=2)
    assert result.mode == "tail"
    assert torch.equal(result.single_accuracy[0], torch.ones(CLASSES))
    drop = result.accuracy_drop()  # U x C
    for c in range(CLASSES):
        # removing unit c alone: class c at or below chance, every other class untouched
        assert result.single_accuracy[1 + c, c] <= 1 / CLASSES
        others = [j for j in range(CLASSES) if j != c]
        assert torch.equal(result.single_accuracy[1 + c, others], torch.ones(CLASSES - 1))
        assert int(result.order[c, 0]) == c  # ranked first on the ranking half
    assert torch.equal(drop[CLASSES:], torch.zeros(4, CLASSES))  # the noise units matter to no class
    top1 = {r["class"]: r for r in result.cumulative if r["k"] == 1 and r["kind"] == "top"}
    for c in range(CLASSES):
        assert top1[c]["class_accuracy"] <= 1 / CLASSES and top1[c]["rest_accuracy"] == 1.0
        assert top1[c]["units"] == [c]
    # the metric's summary: top-1 removal destroys classes, removing one other class's unit does not touch this one
    summary = result.summary()
    assert summary["feat.k1.top.class_accuracy"] <= 1 / CLASSES
    assert summary["feat.k1.other.class_accuracy"] == 1.0
    # importance: the four class units matter, the noise units do not
    assert (result.importance[:CLASSES] > 0.05).all() and (result.importance[CLASSES:].abs() < 1e-3).all()


def test_class_spread_over_four_units():
    net, probe = spread_class(), Probe()
    result = unit_ablation(net, probe, "feat", seed=2, random_draws=2, ks=[1, 2, 3, 4])
    drop = result.accuracy_drop()
    assert torch.equal(drop[:, 0], torch.zeros(7, dtype=torch.float64))  # no single removal matters to class 0
    assert set(result.order[0, :4].tolist()) == {0, 1, 2, 3}  # the probability drop still ranks them first
    top = {r["k"]: r for r in result.cumulative if r["class"] == 0 and r["kind"] == "top"}
    assert top[1]["class_accuracy"] == top[2]["class_accuracy"] == top[3]["class_accuracy"] == 1.0
    assert top[4]["class_accuracy"] <= 1 / CLASSES  # removing all four does
    assert top[4]["rest_accuracy"] == 1.0


def test_mean_fill_keeps_a_constant_unit():
    """A unit whose activation is the same on every image carries no information: replaced by its mean nothing
    changes, set to zero the class it feeds is lost."""
    net = one_unit_per_class()
    with torch.no_grad():
        net.feat[0].weight.zero_()
        net.feat[0].weight[0, :, 0, 0] = 1.0  # unit 0: the sum of the channels (about 1.1 on every image)
        net.fc.weight[0, 1:].zero_()
        net.fc.bias.copy_(torch.tensor([0.0, 0.3, 0.2, 0.1]))  # class 0 wins everywhere through unit 0
    probe = Probe()
    zero = unit_ablation(net, probe, "feat", fill="zero", seed=0, random_draws=1)
    mean = unit_ablation(net, probe, "feat", fill="mean", seed=0, random_draws=1)
    assert zero.single_accuracy[1, 0] == 0.0 and zero.single_accuracy[0, 0] == 1.0
    assert mean.single_accuracy[1, 0] == 1.0


def test_tail_equals_whole_network_with_the_same_masks():
    torch.manual_seed(0)
    from interpbench.models.shapes import build_shapes_cnn

    net = build_shapes_cnn(5, widths=(4, 6, 8, 12)).eval()
    images = torch.rand(6, 3, 32, 32)
    keep = removal_masks(12, [[], [0], [3, 5, 7], list(range(12))])
    fill = torch.rand(12)
    tail = TailRunner(net, net, "layer3", mode="tail")
    hook = TailRunner(net, net, "layer3", mode="hook")
    acts = {}
    handle = net.layer3.register_forward_hook(lambda _m, _i, o: acts.setdefault("a", o.detach()))
    logits = net(images)
    handle.remove()
    ablated = ablate(acts["a"], keep, fill)
    by_tail = tail(ablated, None)
    by_hook = hook(ablated, images.repeat(len(keep), 1, 1, 1))
    torch.testing.assert_close(by_tail, by_hook, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_tail[:6], logits.detach(), rtol=1e-5, atol=1e-5)  # the empty mask: the network
    assert not torch.allclose(by_tail[6:12], by_tail[:6])  # and a removal changes the logits


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(CLASSES, 6, 1)
        self.block = nn.Sequential(nn.Conv2d(6, 6, 1), nn.ReLU())
        self.fc = nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.fc((self.block(s) + s).mean(dim=(2, 3)))


def test_skip_around_the_layer_falls_back_to_hooks_with_the_same_answer():
    torch.manual_seed(3)
    net = Residual().eval()
    tail, why = tail_module(net, "block")
    assert tail is None and "skip path" in why
    assert tail_module(net, "fc")[0] is not None  # nothing skips around the last layer
    probe = Probe(per_class=4)
    auto = unit_ablation(net, probe, "block", seed=0, random_draws=1)
    assert auto.mode == "hook"
    # cut at the stem instead, the skip path starts at the layer: the tail exists and agrees with the hook passes
    by_tail = unit_ablation(net, probe, "stem", seed=0, random_draws=1, tail="tail")
    by_hook = unit_ablation(net, probe, "stem", seed=0, random_draws=1, tail="hook")
    assert by_tail.mode == "tail" and by_hook.mode == "hook"
    assert torch.equal(by_tail.single_accuracy, by_hook.single_accuracy) and torch.equal(by_tail.order, by_hook.order)
    torch.testing.assert_close(by_tail.single_probability, by_hook.single_probability)
    torch.testing.assert_close(torch.tensor([r["class_accuracy"] for r in by_tail.cumulative]),
                               torch.tensor([r["class_accuracy"] for r in by_hook.cumulative]), equal_nan=True)
    with pytest.raises(Exception, match="no tail pass"):
        unit_ablation(net, probe, "block", seed=0, random_draws=1, tail="tail")


def test_class_selectivity_index():
    means = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [3.0, 1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(class_selectivity(means), torch.tensor([1.0, 0.0, 0.0, 0.5], dtype=torch.float64))


def test_spearman_known_values():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x * 10) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.9486833)


def test_metric_writes_tables_and_plot(tmp_path):
    from interpbench.core.base import RunContext

    metric = UnitAblation(layers="feat", random_draws=1, dissect=False)
    ctx = RunContext(device=torch.device("cpu"), batch_size=8, seed=0, out_dir=tmp_path)
    values = metric.evaluate(one_unit_per_class(), Probe(), ctx)
    assert values["feat.k1.top.class_accuracy"] <= 1 / CLASSES and values["n"] == 4 * 8
    for name in ("feat-ablation-units.csv", "feat-ablation-classes.csv", "feat-ablation-curve.csv",
                 "feat-ablation-k.png", "feat-ablation.json"):
        assert (tmp_path / name).stat().st_size > 0
    rows = (tmp_path / "feat-ablation-units.csv").read_text().splitlines()
    assert rows[0].startswith("unit,importance,selectivity") and len(rows) == 1 + 8


def test_shards_of_the_probe_give_the_one_process_numbers(monkeypatch):
    """Three ranks (threads standing in for processes), each with a block of the probe's batches and summed counts,
    return what one process does."""
    import copy
    import threading

    import interpbench.metrics.ablation as module
    from interpbench.engine.distributed import Dist

    world = 3
    barrier = threading.Barrier(world, timeout=120)  # a rank that fails breaks the barrier: no hang
    slots: list = [None] * world
    lock, traced = threading.Lock(), threading.Barrier(world, timeout=120)

    class SerialRunner(TailRunner):  # torch.fx patches nn.Module globally while it traces: one thread at a time,
        def __init__(self, *args, **kwargs):  # and no forward pass before every thread has traced
            with lock:
                super().__init__(*args, **kwargs)
            traced.wait()


    class ThreadDist(Dist):
        def all_gather_objects(self, obj):
            slots[self.rank] = obj
            barrier.wait()
            out = list(slots)
            barrier.wait()
            return out

        def all_reduce_sum(self, tensor):
            parts = self.all_gather_objects(tensor.clone())
            tensor.copy_(sum(parts[1:], parts[0]))
            return tensor

    probe = Probe(per_class=5)
    single = unit_ablation(spread_class(), probe, "feat", seed=4, random_draws=2, batch_size=4)
    results: list = [None] * world
    monkeypatch.setattr(module, "TailRunner", SerialRunner)

    def rank(r: int) -> None:
        results[r] = unit_ablation(copy.deepcopy(spread_class()), probe, "feat", seed=4, random_draws=2, batch_size=4,
                                   dist=ThreadDist(rank=r, world=world))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for result in results:
        assert result is not None
        torch.testing.assert_close(result.single_probability, single.single_probability, equal_nan=True)
        assert torch.equal(result.single_accuracy, single.single_accuracy) and torch.equal(result.order, single.order)
        assert torch.equal(result.class_images, single.class_images)
        torch.testing.assert_close(result.selectivity, single.selectivity)
        assert _rows(result.cumulative) == _rows(single.cumulative) and _rows(result.curve) == _rows(single.curve)


def _rows(rows: list) -> list:
    return [{k: ("nan" if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]


class ConceptProbe(Probe):
    """The probe with a concept map per image: every pixel carries concept ``c{label}`` of category ``cls``."""

    classes = [f"c{c}" for c in range(CLASSES)]

    def __getitem__(self, i: int) -> dict:
        sample = super().__getitem__(i)
        sample["concepts"] = {"cls": torch.full((2, 2), sample["label"] + 1, dtype=torch.long)}
        return sample

    def concept_names(self) -> dict:
        return {"cls": ["-", *self.classes]}


def test_join_with_dissection_names_the_concept_of_each_class_unit(tmp_path):
    from interpbench.core.base import RunContext

    metric = UnitAblation(layers="feat", random_draws=1, class_units=2, quantile=0.2)  # a tiny probe: 128 pixels
    ctx = RunContext(device=torch.device("cpu"), batch_size=8, seed=0, out_dir=tmp_path)
    values = metric.evaluate(one_unit_per_class(), ConceptProbe(), ctx)
    assert values["feat.top1_detects_class"] == 1.0  # each class's most important unit detects that class's concept
    assert values["feat.rho_iou_importance"] > 0.5  # the detectors are the units that matter; the noise units are not
    assert (tmp_path / "feat-ablation-class-units.png").stat().st_size > 0
    lines = (tmp_path / "feat-ablation-class-units.csv").read_text().splitlines()
    assert lines[0].startswith("class,rank,unit,accuracy_drop,concept")
    first = [line.split(",") for line in lines[1:] if line.split(",")[1] == "1"]
    assert [(row[0], row[2], row[4]) for row in first] == [(f"c{c}", str(c + 1), f"c{c}") for c in range(CLASSES)]


def test_torchvision_and_timm_networks_are_cut_after_the_layer():
    """ResNet-18 (torchvision) after layer3 and EfficientNet-Lite0 (timm, whose opaque modules stay single calls)
    after blocks.5: the tail reproduces the logits. Inside a residual block the cut falls back (a skip path)."""
    import timm
    import torchvision

    from interpbench.ops.hooks import capture_outputs

    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    resnet = torchvision.models.resnet18(num_classes=5).eval()
    lite0 = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=5).eval()
    for net, layer in ((resnet, "layer3"), (lite0, "blocks.5")):
        tail, why = tail_module(net, layer)
        assert tail is not None, why
        with torch.no_grad(), capture_outputs({layer: dict(net.named_modules())[layer]}, detach=True) as capture:
            logits = net(x)
        torch.testing.assert_close(tail(capture[layer].clone()), logits, rtol=1e-5, atol=1e-5)
    tail, why = tail_module(resnet, "layer4.1.conv2")
    assert tail is None and "skip path" in why
