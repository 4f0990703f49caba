"""``--channels-last`` and ``--compile`` (issue 8): the numbers of the default run, what ran recorded in the manifest,
hooked methods (Grad-CAM) still correct under compile, a model that fails to compile runs eager with a warning, and
bad values rejected with the option and the accepted values named. shapes:cnn on 8 images of the shapes world."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
import torch
import torch._dynamo.exc

import interpbench as ib
from interpbench.commands.cli import main
from interpbench.core.base import ComponentError
from interpbench.engine.config import RunConfig
from interpbench.methods.gradients import Gradient

RUN = dict(methods=["gradcam", "gradient"], models=["shapes:cnn"], metrics=["deletion", "pointing_game"], limit=8,
           batch_size=8, progress=False, metric_params={"deletion": {"steps": 16}, "pointing_game": {"tolerance": 2}})


def per_sample(out) -> dict[tuple[str, str, str], float]:
    db = sqlite3.connect(str(out / "store.sqlite"))
    rows = db.execute("SELECT c.method, c.metric, s.sample, s.value FROM scores s JOIN cells c ON c.key = s.cell")
    scores = {(method, metric, sample): value for method, metric, sample, value in rows}
    db.close()
    return scores


def dataset_level(table) -> dict[tuple[str, str, str], float]:
    part = table[table["metric"] == "pointing_game"]
    return {(r.method, r.metric, r.value_name): r.mean for r in part.itertuples()}


def manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    table = ib.run(out=out, **RUN)
    assert table.attrs["ok"]
    return per_sample(out), dataset_level(table)


def assert_same_numbers(out, table, default_run, atol: float) -> None:
    scores, pointing = default_run
    assert table.attrs["ok"] and set(table["status"]) == {"done"}
    got = per_sample(out)
    assert got.keys() == scores.keys() and len(got) == 16  # deletion: 8 images x gradcam, gradient
    keys = sorted(scores)
    assert torch.allclose(torch.tensor([got[k] for k in keys]), torch.tensor([scores[k] for k in keys]), rtol=0,
                          atol=atol), {k: (got[k], scores[k]) for k in keys if abs(got[k] - scores[k]) > atol}
    assert dataset_level(table) == pytest.approx(pointing)  # hits: the argmax of each map lands where it did
    assert {m for m, _, v in pointing if v == "pointing_game"} == {"gradcam", "gradient"}


def test_channels_last_gives_the_numbers_of_the_default_layout_and_is_recorded(default_run, tmp_path, monkeypatch):
    seen = []
    explain = Gradient.explain

    def spy(self, model, images, targets):
        conv = next(p for p in model.parameters() if p.dim() == 4)
        seen.append((images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous(),
                     conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()))
        return explain(self, model, images, targets)

    monkeypatch.setattr(Gradient, "explain", spy)
    table = ib.run(out=tmp_path, channels_last=True, **RUN)
    assert seen == [(True, True)]  # the batch and the model's weights really were channels-last
    # The maps differ from the default layout's by float32 rounding (other convolution kernels), which can swap
    # pixels of near-equal saliency in the deletion order: deletion AUCs agree to 1e-3, not bit for bit.
    assert_same_numbers(tmp_path, table, default_run, atol=1e-3)
    record = manifest(tmp_path)
    assert record["layout"]["memory_format"] == "channels_last" and record["config"]["channels_last"] is True
    assert record["compile"]["mode"] is None and record["compile"]["models"] == {}


def test_the_default_layout_is_recorded(tmp_path):
    ib.run(out=tmp_path, **{**RUN, "methods": ["gradient"], "metrics": ["deletion"]})
    assert manifest(tmp_path)["layout"]["memory_format"] == "contiguous"


def test_compile_gives_the_numbers_of_eager_and_hooked_methods_run_eager(default_run, tmp_path):
    table = ib.run(out=tmp_path, compile="default", compile_backend="aot_eager", **RUN)
    # aot_eager runs the ATen kernels of eager mode; Grad-CAM's hooks fired (its cells are done, same numbers)
    assert_same_numbers(tmp_path, table, default_run, atol=1e-5)
    record = manifest(tmp_path)["compile"]
    assert record["mode"] == "default" and record["backend"] == "aot_eager"
    model = record["models"]["shapes:cnn"]
    assert model["status"] == "compiled" and model["error"] is None
    assert model["compiled_calls"] > 0  # targets, gradient, deletion's forward passes
    assert model["eager_calls"] > 0  # Grad-CAM's forward with hooks on the cam layer


def _fails_to_compile(fn, **kwargs):
    raise RuntimeError("no C++ compiler found")


def _fails_on_backward(fn, **kwargs):
    """Compiles the no-gradient forward, fails (as a dynamo error) on the first pass with gradients."""
    def compiled(images):
        if torch.is_grad_enabled():
            raise torch._dynamo.exc.TorchDynamoException("backward: unsupported operator aten.fake_op")
        return fn(images)
    return compiled


@pytest.mark.parametrize("fake_compile, error", [(_fails_to_compile, "no C++ compiler found"),
                                                 (_fails_on_backward, "unsupported operator aten.fake_op")])
def test_a_model_that_fails_to_compile_runs_eager_with_a_warning(fake_compile, error, default_run, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setattr(torch, "compile", fake_compile)
    with pytest.warns(RuntimeWarning, match=f"model shapes:cnn falls back to eager: .*{re.escape(error)}"):
        table = ib.run(out=tmp_path, compile="default", **RUN)
    assert_same_numbers(tmp_path, table, default_run, atol=0)
    model = manifest(tmp_path)["compile"]["models"]["shapes:cnn"]
    assert model["status"] == "fallback" and error in model["error"]
    assert (model["compiled_calls"] > 0) == (fake_compile is _fails_on_backward)  # inference compiled before


@pytest.mark.parametrize("options, message", [
    ({"compile": "fast"}, "--compile 'fast': choose one of ['default', 'reduce-overhead', 'max-autotune']"),
    ({"compile": "default", "compile_backend": "nope"}, "--compile-backend 'nope': choose one of ['aot_eager'"),
    ({"compile_backend": "aot_eager"}, "--compile-backend 'aot_eager' has no effect without --compile"),
    ({"compile": "max-autotune", "compile_backend": "aot_eager"},
     "--compile 'max-autotune' is a mode of the 'inductor' backend"),
    ({"channels_last": "yes"}, "--channels-last 'yes': must be True or False"),
])
def test_bad_values_name_the_option_and_the_accepted_values(options, message, tmp_path):
    with pytest.raises(ComponentError, match=re.escape(message)):
        RunConfig(methods=["gradient"], models=["shapes:cnn"], metrics=["deletion"], out=tmp_path, **options)


def test_the_command_line_passes_the_options_to_the_run(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append(kwargs) or fn)
    args = ["run", "--methods", "gradient", "--models", "shapes:cnn", "--metrics", "deletion", "--limit", "8",
            "--batch-size", "8", "--metric-param", "deletion.steps=16", "--no-progress", "--out", str(tmp_path)]
    assert main([*args, "--channels-last", "--compile", "--compile-backend", "aot_eager"]) == 0
    assert calls == [{"mode": "default", "backend": "aot_eager"}]
    record = manifest(tmp_path)
    assert record["layout"]["memory_format"] == "channels_last"
    assert record["compile"]["models"]["shapes:cnn"]["status"] == "compiled"
    assert main([*args, "--compile", "fast"]) == 2
    assert "--compile 'fast': choose one of" in capsys.readouterr().err
