"""Distributed runs (torchrun, gloo on the CPU) give the numbers and tables of one process; data feeding with
worker processes gives the numbers of the main-process loop. The two launches share the 60-second budget of this
file: a few dozen 64 px images of the embedded shapes world."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import interpbench as ib
from interpbench.core.base import ComponentError
from interpbench.engine.distributed import (
    SINGLE,
    Dist,
    from_transport,
    merge_values,
    to_transport,
)
from interpbench.engine.feeding import Feed, SampleList, collate
from interpbench.ops.dissect import StreamingTopK, top_by_value_then_index

# A plugin for the launches: a method that fails on the last (smaller) batch only, a dataset-level metric that
# declares no state (so it runs on rank 0 alone) and records the order of the ids it saw, and a model-scope
# metric without distributed support (it must see the whole dataset, on rank 0).
PLUGIN = '''
import hashlib
import os

import torch

import interpbench as ib


class FailsOnTheLastBatch(ib.Method):
    """Gradient-free map; raises on a batch of fewer than 8 images (the last one)."""

    name = "dist_fails_late"

    def explain(self, model, images, targets):
        if images.shape[0] < 8:
            raise RuntimeError("the last batch is too small")
        return images.mean(1)


class SeenOrder(ib.Metric):
    """Dataset level, no dist_state: the ids it saw, in order, as a number."""

    name = "dist_seen_order"

    def reset(self):
        self.ids = []

    def update(self, model, batch, maps):
        self.ids += list(batch.ids)

    def compute(self):
        digest = hashlib.sha256(",".join(self.ids).encode()).hexdigest()
        return {"n": float(len(self.ids)), "order": float(int(digest[:12], 16))}


class WholeDataset(ib.Metric):
    """Model scope without distributed support: the whole dataset, on rank 0."""

    name = "dist_whole_dataset"
    scope = "model"

    def evaluate(self, model, dataset, ctx):
        total = sum(float(dataset[i]["image"].double().sum()) for i in range(len(dataset)))
        return {"n": float(len(dataset)), "checksum": total, "rank": float(os.environ.get("RANK", "0")),
                "given_dist": float(ctx.dist is not None)}


@ib.hookimpl
def register_methods():
    return [FailsOnTheLastBatch]


@ib.hookimpl
def register_metrics():
    return [SeenOrder, WholeDataset]
'''

RUN = ["--models", "shapes:cnn", "--batch-size", "8", "--metric-param", "deletion.steps=16", "--no-progress"]


@pytest.fixture
def distprobe(plugin_site, tmp_path):
    """The plugin above installed as the distribution ``interpbench-distprobe`` (also for subprocesses)."""
    from interpbench.core.registry import get_registry

    site = tmp_path / "site"
    (site / "distprobe.py").write_text(PLUGIN)
    info = site / "interpbench_distprobe-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: interpbench-distprobe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[interpbench]\ndistprobe = distprobe\n")
    get_registry(refresh=True)
    yield
    sys.modules.pop("distprobe", None)


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "interpbench", "run", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def store_contents(out: Path) -> dict:
    """Everything a run stored that does not depend on timing: scores (with extras), results, cell outcomes."""
    db = sqlite3.connect(str(out / "store.sqlite"))
    cells = "SELECT key, model, dataset, method, metric FROM cells"
    name = {key: rest for key, *rest in db.execute(cells)}
    contents = {
        "scores": {(*name[c], s): (v, e) for c, s, v, e in db.execute("SELECT cell, sample, value, extra FROM scores")},
        "results": {(*name[c], k): v for c, k, v in db.execute("SELECT cell, name, value FROM results")},
        "cells": {tuple(rest): (status, error, n)
                  for _, *rest, status, error, n in db.execute(
                      "SELECT key, model, dataset, method, metric, status, error, n FROM cells")},
    }
    db.close()
    return contents


def table_without_timing(path: Path) -> list[list[str]]:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    drop = rows[0].index("wall_time")
    return [r[:drop] + r[drop + 1:] for r in rows]


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------- launches


def test_two_processes_give_the_numbers_and_tables_of_one(distprobe, tmp_path):
    # 20 images in batches of 8: rank 0 computes batches 0 and 1, rank 1 batch 2 (4 images)
    args = ["--methods", "gradcam,random,dist_fails_late", "--limit", "20",
            "--metrics", "deletion,pointing_game,dist_seen_order,dissection,dist_whole_dataset", *RUN]
    from interpbench.commands.cli import main

    assert main(["run", *args, "--out", str(tmp_path / "one")]) == 1
    two = torchrun([*args, "--out", str(tmp_path / "two")])
    assert two.returncode == 1, two.stderr  # dist_fails_late fails, in both runs
    one, dist = store_contents(tmp_path / "one"), store_contents(tmp_path / "two")

    assert len(one["scores"]) == 20 + 20 + 16 and dist["scores"] == one["scores"]  # per-sample scores and curves
    assert dist["results"] == one["results"]  # pointing game (merged), rank-0-only metric, dissection, model scope
    assert dist["cells"] == one["cells"]
    failed = one["cells"][("shapes:cnn", "shapes", "dist_fails_late", "deletion")]
    assert failed[0] == "failed" and "the last batch is too small" in failed[1] and failed[2] == 16
    whole = {k[-1]: v for k, v in one["results"].items() if k[3] == "dist_whole_dataset"}
    assert whole["n"] == 20 and whole["rank"] == 0 and whole["given_dist"] == 0
    assert {k[-1]: v for k, v in one["results"].items() if k[2:4] == ("gradcam", "dist_seen_order")}["n"] == 20
    assert {k[-1] for k, v in one["results"].items() if k[3] == "dissection"} >= {"layer3.detectors", "n"}

    for table in ("methods.csv", "representations.csv"):
        assert table_without_timing(tmp_path / "two" / table) == table_without_timing(tmp_path / "one" / table)
    # dissection tally and figure, map snapshots: written by rank 0 alone, identical to one process's
    assert files(tmp_path / "two" / "artifacts") == files(tmp_path / "one" / "artifacts")
    assert any(name.endswith("-tally.csv") for name in files(tmp_path / "one" / "artifacts"))

    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["distributed"]["world_size"] == 2 and manifest["distributed"]["backend"] == "gloo"
    assert [r["rank"] for r in manifest["distributed"]["ranks"]] == [0, 1]
    assert manifest["config"]["workers"] == 0
    # rank 1 computed its batch; rank 0 its 2 batches and then rank 1's, for the metric that runs on rank 0 alone
    assert [r["batches"] for r in manifest["data_feeding"]["shapes:cnn on shapes"]["ranks"]] == [3, 1]
    # rank 1 prints nothing but errors: one summary, one list of the files written (the report's among them)
    assert two.stdout.count("custom: ") == 1 and two.stdout.count("Files written:") == 1
    assert two.stdout.count("report.html") == 1


def test_a_distributed_run_resumes_and_skips_stored_samples_on_every_rank(tmp_path):
    # 32 images in batches of 8: rank 0 has batches 0 and 1, rank 1 batches 2 and 3
    args = ["--methods", "gradcam", "--metrics", "deletion", "--limit", "32", *RUN]
    out = tmp_path / "resumed"
    ib.run(methods=["gradcam"], models=["shapes:cnn"], metrics=["deletion"], limit=32, batch_size=8, out=out,
           metric_params={"deletion": {"steps": 16}}, progress=False)
    reference = store_contents(out)["scores"]
    ids = sorted({k[-1] for k in reference})
    assert len(ids) == 32
    db = sqlite3.connect(str(out / "store.sqlite"))
    with db:  # batches 0 and 3 lost (one per rank), batches 1 and 2 stored with a marker value
        db.executemany("DELETE FROM scores WHERE sample = ?", [(s,) for s in ids[:8] + ids[24:]])
        db.executemany("UPDATE scores SET value = -1 WHERE sample = ?", [(s,) for s in ids[8:24]])
    db.close()
    resumed = torchrun([*args, "--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    scores = store_contents(out)["scores"]
    assert len(scores) == 32
    for key, (value, extra) in scores.items():
        sample = ids.index(key[-1])
        if 8 <= sample < 24:  # stored: skipped by the rank that owns the batch, never recomputed
            assert value == -1, sample
        else:  # missing: computed by rank 0 (batch 0) and rank 1 (batch 3), as one process computes them
            assert (value, extra) == reference[key], sample


# --------------------------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 33])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_put_end_to_end_are_the_one_process_order(n, world):
    blocks = [Dist(rank=r, world=world).shard(n) for r in range(world)]
    assert [i for block in blocks for i in block] == list(range(n))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1 and len(blocks[0]) == max(map(len, blocks))
    assert all(Dist(world=world).owner(i, n) == r for r, block in enumerate(blocks) for i in block)


def test_single_process_collectives_are_local():
    assert SINGLE.world == 1 and SINGLE.is_main
    assert SINGLE.gather_objects("x") == ["x"] and SINGLE.broadcast(3) == 3 and SINGLE.all_gather_objects(1) == [1]
    assert torch.equal(SINGLE.all_gather_tensor(torch.ones(2)), torch.ones(1, 2))
    assert SINGLE.from_main(lambda: 5) == 5 and SINGLE.agree(lambda: 6) == 6
    with pytest.raises(ZeroDivisionError):
        SINGLE.agree(lambda: 1 / 0)


def test_ranks_compare_what_they_loaded_not_where_it_lies():
    from interpbench.core.identity import portable
    from interpbench.engine.distributed import same_on_every_rank

    class TwoRanks(Dist):  # rank 0 of 2, the other rank's identity given
        def __init__(self, other):
            super().__init__(rank=0, world=2)
            self.other = other

        def all_gather_objects(self, obj):
            return [obj, self.other]

    mine = {"source": "timm", "path": "/node0/cache/w.pth", "sha256": "ab", "resolved_by": "resolve_weights hook"}
    # a node-local copy of the same file at another path: the same weights
    other = {"source": "timm", "path": "/node1/scratch/w.pth", "sha256": "ab"}
    assert same_on_every_rank(TwoRanks(portable(other)), "model 'm'", mine) == mine  # rank 0's, path and all
    with pytest.raises(ib.ComponentError, match=r"model 'm' differs between rank 0 and rank 1 .*'sha256': 'cd'"):
        same_on_every_rank(TwoRanks(portable({**other, "sha256": "cd"})), "model 'm'", mine)


class _Trials:
    def __init__(self, images, values):
        self.images, self.values = images, values


def test_merging_states_in_rank_order_gives_the_one_process_state():
    # "cat": lists, tuples, tensors, dicts key by key (first appearance), plain objects attribute by attribute
    assert merge_values([[1, 2], [3], []], "cat") == [1, 2, 3]
    assert torch.equal(merge_values([torch.tensor([1, 2]), torch.tensor([3])], "cat"), torch.tensor([1, 2, 3]))
    pools = [defaultdict(list, {2: ["a"], 0: ["b"]}), defaultdict(list, {1: ["c"], 2: ["d"]})]
    merged = merge_values(pools, "cat")
    assert isinstance(merged, defaultdict) and list(merged.items()) == [(2, ["a", "d"]), (0, ["b"]), (1, ["c"])]
    nested = merge_values([{"fgsm": {"x": (1, 2)}}, {"fgsm": {"y": (3, 4)}}], "cat")
    assert nested == {"fgsm": {"x": (1, 2), "y": (3, 4)}}  # distinct ids: a union, the tuples untouched
    trials = merge_values([_Trials(["i0"], [0.5]), _Trials(["i1", "i2"], [1.0, 0.0])], "cat")
    assert trials.images == ["i0", "i1", "i2"] and trials.values == [0.5, 1.0, 0.0]
    # "sum" (numbers, dicts of counts), "max", "min", "first", a function
    assert merge_values([3, 4, 5], "sum") == 12
    assert merge_values([{"a": 1}, {"a": 2, "b": 5}], "sum") == {"a": 3, "b": 5}
    assert merge_values([3, 9, 5], "max") == 9 and merge_values([3, 9, 5], "min") == 3
    assert merge_values([None, "m", "n"], "first") == "m"
    assert merge_values([[1], [2]], lambda metric, values: (metric, values), metric="M") == ("M", [[1], [2]])
    with pytest.raises(ComponentError, match="cannot concatenate values of type int"):
        merge_values([1, 2], "cat")
    with pytest.raises(ComponentError, match="unknown reduction 'mean'"):
        merge_values([1, 2], "mean")


def test_states_travel_with_tensors_on_the_cpu():
    state = {"clean": {"id0": (torch.ones(2), torch.zeros(1))}, "pool": defaultdict(list, {1: [torch.ones(3)]}),
             "trials": _Trials(["a"], [torch.tensor(2.0)]), "seen": 4}
    moved = to_transport(state)
    assert state["clean"]["id0"][0].__class__ is torch.Tensor  # the original is untouched
    back = from_transport(moved, torch.device("cpu"))
    assert torch.equal(back["clean"]["id0"][0], torch.ones(2)) and isinstance(back["pool"], defaultdict)
    assert back["trials"].images == ["a"] and torch.equal(back["trials"].values[0], torch.tensor(2.0))
    assert back["seen"] == 4


def test_top_images_do_not_depend_on_how_the_stream_is_split():
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (3, 40), generator=gen).float()  # many ties
    indices = torch.arange(40).expand(3, 40)
    top, idx = top_by_value_then_index(values, indices, 6)
    for u in range(3):  # largest value first, ties to the lowest index
        expected = sorted(range(40), key=lambda i: (-values[u, i].item(), i))[:6]
        assert idx[u].tolist() == expected and top[u].tolist() == [values[u, i].item() for i in expected]
    for order in (torch.arange(40), torch.randperm(40, generator=gen)):
        stream = StreamingTopK(6, 3, with_indices=True)
        for part in order.split(7):
            stream.update(values[:, part], part)
        assert torch.equal(stream.result()[1], idx)


# --------------------------------------------------------------------------------------------- data feeding


def test_feed_with_workers_gives_the_samples_of_the_main_process_loop():
    dataset = ib.load_dataset("shapes", split="test", size=(32, 32))
    batches = [range(0, 5), range(5, 10), range(12, 14)]
    plain = [[dataset[i] for i in b] for b in batches]
    torch.manual_seed(0)
    next_draw = torch.rand(1)
    for workers in (0, 2):
        feed = Feed(dataset, batches, workers=workers)
        torch.manual_seed(0)
        loaded = list(feed)
        assert torch.equal(torch.rand(1), next_draw)  # loading never draws from torch's global RNG
        assert [[s["id"] for s in batch] for batch in loaded] == [[s["id"] for s in batch] for batch in plain]
        for batch, expected in zip(loaded, plain):
            assert isinstance(batch, SampleList) and batch.images.shape == (len(expected), 3, 32, 32)
            assert torch.equal(batch.images, torch.stack([s["image"] for s in expected]))
            data = collate(batch)
            assert data["images"] is batch.images  # not stacked again
            assert torch.equal(data["labels"], torch.tensor([s["label"] for s in expected]))
        stats = feed.stats()
        assert stats["batches"] == 3 and stats["workers"] == workers and 0 <= stats["wait_share"] <= 1


def test_runs_with_worker_processes_give_the_same_numbers(toy, tmp_path):
    kwargs = dict(methods=["toy_noise"], models=["toy:net"], metrics=["deletion", "toy_mean_map"], batch_size=5,
                  progress=False)
    ib.run(out=tmp_path / "w0", **kwargs)
    ib.run(out=tmp_path / "w2", workers=2, **kwargs)
    assert store_contents(tmp_path / "w2") == store_contents(tmp_path / "w0")
    manifest = json.loads((tmp_path / "w2" / "manifest.json").read_text())
    assert manifest["config"]["workers"] == 2 and manifest["distributed"] == {"world_size": 1, "backend": None,
                                                                             "workers": 2}
    assert manifest["data_feeding"]["toy:net on toy"]["batches"] == 5
    with pytest.raises(ComponentError, match=r"--workers -1: must be 0"):
        ib.run(out=tmp_path / "x", workers=-1, **kwargs)


# --------------------------------------------------------------------------------------------- built-in states


def _batches(dataset_name: str, n: int, size: int = 8):
    """Batches of the shapes world for shapes:cnn, as the runner forms them (targets: predicted classes)."""
    from interpbench.core.base import Batch

    model = ib.load_model("shapes:cnn", device="cpu")
    dataset = ib.load_dataset(dataset_name, split="test", size=model.input_size)
    method = ib.load_method("gradcam")
    out = []
    for lo in range(0, n, size):
        data = collate([dataset[i] for i in range(lo, min(n, lo + size))])
        images = data["images"]
        with torch.no_grad():
            targets = model(images).argmax(1)
        batch = Batch(ids=data["ids"], images=images, targets=targets, samples=data["samples"],
                      labels=data.get("labels"), method=method, seed=lo)
        out.append((batch, method.explain(model, images, targets).detach()))
    return model, out


@pytest.mark.parametrize("name, params, dataset", [
    ("pointing_game", {"tolerance": 2, "n_boot": 200}, "shapes"),
    ("energy_pointing_game", {"n_boot": 200}, "shapes"),
    ("grid_pointing_game", {"confidence": 0.5, "grids": 3, "n_boot": 100}, "shapes"),
    ("adversarial_detection", {"attacks": ["fgsm8"], "folds": 2, "bootstrap": 20}, "shapes"),
    ("shortcut_localization", {"n_boot": 100}, "shapes-shortcut"),
])
def test_declared_states_merged_in_rank_order_give_the_one_process_results(name, params, dataset):
    from interpbench.engine.distributed import merge_metric, state_of

    model, batches = _batches(dataset, 24)

    def update(metric, part):
        for batch, maps in part:
            with torch.random.fork_rng():
                torch.manual_seed(batch.seed)
                metric.update(model, batch, maps)
        return metric

    one = update(ib.load_metric(name, **params), batches).compute()
    rank0 = update(ib.load_metric(name, **params), batches[:2])
    rank1 = update(ib.load_metric(name, **params), batches[2:])
    merge_metric(rank0, [state_of(rank1)], torch.device("cpu"))
    merged = rank0.compute()
    assert one["n"] >= 12  # trials, grids x cells, or correctly classified images: a real result
    assert merged.keys() == one.keys() and all(merged[k] == one[k] or (merged[k] != merged[k] and one[k] != one[k])
                                               for k in one), name
