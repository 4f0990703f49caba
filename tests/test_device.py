"""Known-answer checks on the device that ``pytest --device`` names (default ``cpu``, so CI runs them there).

On a GPU machine: ``pytest tests/test_device.py --device cuda`` (``benchmarks/gpu_session.sh`` runs it first). Each
test computes its reference independently of the device path under test: on the CPU, one image and one step at a
time, or in float64 at full resolution. On the CPU the comparisons are exact or at float32 rounding; on a GPU the
tolerances allow for TF32 convolutions (PyTorch's default for cuDNN), which round the logits to about 1e-3, and
for the near-ties in the maps that such rounding can reorder (bf16, 8x coarser, moves the curves of `shapes:cnn`
by at most 0.005 on the CPU).
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
from test_causal import (
    reference_curve,  # RISE's single_run: one image, one forward pass per step
)

import interpbench as ib
from interpbench.metrics.causal import causal_curves, causal_substrate
from interpbench.ops.dissect import (
    ConceptSet,
    bilinear_matrix,
    count_mask_pixels,
    encode_concepts,
)

MEMORY_HUNGRY = '''
import os
import torch
import interpbench as ib


class MemoryHungry(ib.Method):
    """The image's brightness, after allocating INTERPBENCH_TEST_BYTES_PER_IMAGE bytes per image on the device: a
    real out-of-memory error on a GPU above the chunk that fits. On the CPU, whose allocator overcommits instead
    of failing, it raises the same error past INTERPBENCH_TEST_CPU_BUDGET bytes."""

    name = "memory_hungry"

    def explain(self, model, images, targets):
        need = images.shape[0] * int(os.environ["INTERPBENCH_TEST_BYTES_PER_IMAGE"])
        if images.device.type == "cuda":
            scratch = torch.empty(need, dtype=torch.uint8, device=images.device)
            scratch.fill_(1)
            del scratch
        elif need > int(os.environ["INTERPBENCH_TEST_CPU_BUDGET"]):
            raise torch.OutOfMemoryError(f"CPU budget: tried to allocate {need} bytes")
        return images.mean(1)


@ib.hookimpl
def register_methods():
    return [MemoryHungry]
'''


def on_gpu(device: torch.device) -> bool:
    return device.type != "cpu"


@pytest.fixture(scope="module")
def shapes_cpu():
    return ib.load_model("shapes:cnn", device="cpu")


@pytest.fixture(scope="module")
def shapes_images():
    dataset = ib.load_dataset("shapes", split="test", size=(64, 64))
    return torch.stack([dataset[i]["image"] for i in range(4)])


@pytest.mark.parametrize("game", ["deletion", "insertion"])
def test_causal_curves_on_the_device_equal_rise_one_step_at_a_time_on_the_cpu(device, shapes_cpu, shapes_images,
                                                                              game):
    gen = torch.Generator().manual_seed(7)
    maps = torch.rand(4, 64, 64, generator=gen)
    with torch.no_grad():
        targets = shapes_cpu(shapes_images).argmax(1)  # the predicted class, RISE's convention
    blurred = causal_substrate(shapes_images, "blur", shapes_cpu.mean)
    start, finish = (shapes_images, blurred) if game == "deletion" else (blurred, shapes_images)
    model = ib.load_model("shapes:cnn", device=str(device))
    got = causal_curves(model, targets.to(device), maps.to(device), start.to(device), finish.to(device), 256, chunk=16)
    assert got.device.type == device.type
    expected = torch.tensor([reference_curve(shapes_cpu, shapes_images[i], int(targets[i]), maps[i], start[i:i + 1],
                                       finish[i:i + 1], 256) for i in range(4)])
    assert torch.allclose(got.cpu(), expected, rtol=0, atol=5e-3 if on_gpu(device) else 1e-5)
    assert int((expected[:, 0] - expected[:, -1]).abs().gt(0.5).sum()) >= 2  # the curves do move

    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):  # --precision bf16
        low = causal_curves(model, targets.to(device), maps.to(device), start.to(device), finish.to(device), 256,
                            chunk=16)
    assert low.dtype == torch.float32  # probabilities stay fp32 under autocast
    assert torch.allclose(low.cpu(), expected, rtol=0, atol=0.05) and not torch.equal(low.cpu(), got.cpu())


def test_dissection_counts_on_the_device_equal_full_resolution_float64_masks(device):
    # NetDissect's geometry in small: 7 x 7 activations, labels at 56 x 56 (8x upsampling); exact integers
    gen = torch.Generator().manual_seed(11)
    n, units, low, size = 6, 32, (7, 7), (56, 56)
    acts = torch.randn(n, units, *low, generator=gen).relu()
    concepts = ConceptSet.from_names({"color": ["-", "a", "b", "c", "d"]})
    codes = [{"color": torch.randint(0, 5, size, generator=gen)} for _ in range(n)]
    thresholds = torch.quantile(acts.transpose(0, 1).reshape(units, -1).double(), 0.9, dim=1)
    up = torch.from_numpy(np.einsum("hy,nuyx,wx->nuhw", bilinear_matrix(low[0], size[0]), acts.double().numpy(),
                                    bilinear_matrix(low[1], size[1])))
    labels = encode_concepts(codes, concepts, size)
    masks = (up > thresholds.view(1, -1, 1, 1)).transpose(0, 1).reshape(units * n, -1)  # row k * n + x
    regions = labels.regions.long().repeat(units, 1)
    expected = torch.stack([((regions == r) & masks).sum(1) for r in range(labels.region_sizes.shape[1])], 1)
    got = count_mask_pixels(acts.to(device), thresholds.to(device), encode_concepts(codes, concepts, size, device))
    assert got.device.type == device.type
    assert got.cpu().tolist() == expected.tolist() and int(expected.sum()) > 1000


def stored(out) -> dict:
    db = sqlite3.connect(str(out / "store.sqlite"))
    name = {key: (method, metric) for key, method, metric in db.execute("SELECT key, method, metric FROM cells")}
    scores = {(*name[c], s): v for c, s, v in db.execute("SELECT cell, sample, value FROM scores")}
    results = {(*name[c], k): v for c, k, v in db.execute("SELECT cell, name, value FROM results")}
    db.close()
    return {"scores": scores, "results": results}


RUN = dict(methods=["gradcam", "gradient"], models=["shapes:cnn"], metrics=["deletion", "pointing_game", "dissection"],
           limit=32, batch_size=16, metric_params={"deletion": {"steps": 16}}, progress=False)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu")
    ib.run(out=out, device="cpu", **RUN)
    return stored(out)


def test_a_run_on_the_device_gives_the_numbers_of_the_cpu(device, cpu_run, tmp_path):
    table = ib.run(out=tmp_path, device=str(device), **RUN)
    assert table.attrs["ok"] and set(table["status"]) == {"done"}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    recorded = manifest["environment"]["device"]
    assert torch.device(recorded["device"]).type == device.type
    if on_gpu(device):  # what the tolerances below allow for
        assert recorded["cudnn_tf32"] == torch.backends.cudnn.allow_tf32 and "gpu" in recorded
    got = stored(tmp_path)
    assert got["scores"].keys() == cpu_run["scores"].keys() and len(got["scores"]) == 2 * 32  # deletion, per sample
    assert got["results"].keys() == cpu_run["results"].keys()
    deletion = [(got["scores"][k], v) for k, v in cpu_run["scores"].items() if k[1] == "deletion"]
    if not on_gpu(device):
        assert got == cpu_run  # the same numbers, bit for bit
        return
    # TF32 rounding can reorder near-equal saliencies (deletion) and move an arg-max between near-equal pixels
    assert max(abs(a - b) for a, b in deletion) < 0.05
    assert abs(np.mean([a for a, _ in deletion]) - np.mean([b for _, b in deletion])) < 0.01
    for method in ("gradcam", "gradient"):  # the share of hits over 32 images: at most 3 of them move
        key = (method, "pointing_game", "pointing_game")
        assert abs(got["results"][key] - cpu_run["results"][key]) <= 3 / 32 + 1e-9
    detectors = {k: v for k, v in cpu_run["results"].items() if k[1] == "dissection" and k[2].endswith(".detectors")}
    assert detectors and all(abs(got["results"][k] - v) <= 2 for k, v in detectors.items())


def test_bf16_channels_last_and_compile_on_the_device_stay_near_fp32(device, cpu_run, tmp_path):
    # the fast configuration of a GPU run; on the CPU inductor would need a C++ compiler and minutes, so the CPU
    # compiles with aot_eager (tests/test_layout_compile.py covers the CPU paths in detail)
    backend = "inductor" if on_gpu(device) else "aot_eager"
    table = ib.run(out=tmp_path, device=str(device), precision="bf16", channels_last=True, compile="default",
                   compile_backend=backend, **{**RUN, "metrics": ["deletion", "pointing_game"]})
    assert table.attrs["ok"] and set(table["status"]) == {"done"}
    record = json.loads((tmp_path / "manifest.json").read_text())["compile"]["models"]["shapes:cnn"]
    assert record["status"] == "compiled" and record["compiled_calls"] > 0, record
    got = stored(tmp_path)["scores"]
    deletion = [(got[k], v) for k, v in cpu_run["scores"].items() if k[1] == "deletion"]
    assert abs(np.mean([a for a, _ in deletion]) - np.mean([b for _, b in deletion])) < 0.02
    assert any(a != b for a, b in deletion)  # bf16 really ran


def test_an_out_of_memory_error_on_the_device_halves_the_chunk_and_keeps_the_numbers(device, plugin_site, tmp_path,
                                                                                     monkeypatch):
    site = tmp_path / "site"
    (site / "memoryhungry.py").write_text(MEMORY_HUNGRY)
    plugin_site("interpbench-memoryhungry", [], {"memoryhungry": "memoryhungry"})
    # 8 images need 2.4x the card (or the CPU budget), 4 need 1.2x, 2 need 0.6x: the retry lands on 2
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 10**9
    monkeypatch.setenv("INTERPBENCH_TEST_BYTES_PER_IMAGE", str(int(0.3 * total)))
    monkeypatch.setenv("INTERPBENCH_TEST_CPU_BUDGET", str(total))
    kwargs = dict(methods=["memory_hungry"], models=["shapes:cnn"], metrics=["deletion"], limit=16, batch_size=8,
                  metric_params={"deletion": {"steps": 8}}, device=str(device), progress=False)
    table = ib.run(out=tmp_path / "oom", **kwargs)
    assert table.attrs["ok"] and set(table["status"]) == {"done"}
    events = json.loads((tmp_path / "oom" / "manifest.json").read_text())["out_of_memory"]
    assert [e["chunk"] for e in events] == [4, 2]  # the second batch starts at 2
    monkeypatch.setenv("INTERPBENCH_TEST_BYTES_PER_IMAGE", "0")
    ib.run(out=tmp_path / "plain", **kwargs)
    assert stored(tmp_path / "oom") == stored(tmp_path / "plain")
