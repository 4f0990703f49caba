"""Reproduction verdicts in three levels (identical; equal within numerical tolerance; different), with each
number's tolerance measured by re-running its cell under rounding noise.

A deliberate change (another deletion `step`, another seed of the stochastic `random` method, the weights of one
layer scaled by 5%) must come out *different*; a rounding-only change (another "machine" emulated by rounding
noise on every layer, another thread count, per-sample scores jittered at float32 rounding level) must not,
whatever the cell's sensitivity to rounding."""

import math
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console
from torch import nn

from interpbench.commands.reproduce import render
from interpbench.engine.config import RunConfig
from interpbench.engine.runner import Runner
from interpbench.ops import rounding as rnd
from interpbench.publish import reproduce as rp
from interpbench.publish.leaderboard import regenerate, write_leaderboard
from interpbench.publish.results import load_experiment

BASE = dict(methods=["gradient", "random"], models=["toy:net"], metrics=["deletion"], limit=8, batch_size=8,
            progress=False)


def experiment(out, **changes):
    options = {**BASE, **changes}
    config = RunConfig(out=str(out), **options)
    Runner(config).run(publish=write_leaderboard)
    return config, load_experiment(out)


def verdicts(tmp_path, committed, config, new):
    """Judge ``new`` (produced with ``config``) against ``committed`` as `interpbench reproduce` does, numbers
    only (the recorded configuration is not compared: the change must show in the numbers themselves)."""
    comparisons = rp.compare_tables(committed.table, new.table, judge=False)
    rp.compare_samples(comparisons, committed, new)
    rp.judge_numbers(comparisons, config, tmp_path / "rounding")
    return {c.method: c for c in comparisons}


@pytest.fixture
def committed(toy, tmp_path):
    return experiment(tmp_path / "committed")[1]


# --------------------------------------------------------------------------------------------- real changes


def test_another_deletion_step_is_different(committed, tmp_path):
    config, new = experiment(tmp_path / "step", metric_params={"deletion": {"step": 64}})  # 4 steps, not 16 rows
    result = verdicts(tmp_path, committed, config, new)
    assert {m: c.level for m, c in result.items()} == {m: rp.DIFFERENT for m in BASE["methods"]}
    for c in result.values():
        assert "beyond the rounding tolerance" in c.problems[0] and "rank test p" in c.problems[0]


def test_another_seed_of_a_stochastic_method_is_different(committed, tmp_path):
    config, new = experiment(tmp_path / "seed", seed=1)
    result = verdicts(tmp_path, committed, config, new)
    assert result["random"].level == rp.DIFFERENT
    assert result["gradient"].level == rp.IDENTICAL  # deterministic: the seed does not enter its maps


def test_weights_changed_in_one_layer_are_different(committed, tmp_path, monkeypatch):
    import toyplugin

    original = toyplugin.ToyNet.__init__

    def changed(self):
        original(self)
        with torch.no_grad():
            self.head[2].weight.mul_(1.05)  # the last layer only, by 5%

    monkeypatch.setattr(toyplugin.ToyNet, "__init__", changed)
    config, new = experiment(tmp_path / "weights")
    result = verdicts(tmp_path, committed, config, new)
    assert {m: c.level for m, c in result.items()} == {m: rp.DIFFERENT for m in BASE["methods"]}


# --------------------------------------------------------------------------------------------- rounding only


def test_rounding_on_another_machine_is_not_different(committed, tmp_path):
    with rnd.rounding_noise(seed=99):  # another CPU: every layer's output rounded otherwise
        config, new = experiment(tmp_path / "machine")
    result = verdicts(tmp_path, committed, config, new)
    assert all(c.level == rp.WITHIN for c in result.values()), {m: c.problems for m, c in result.items()}
    assert all(c.max_sample_diff > 0 and c.rounding_scale > 0 for c in result.values())  # every number moved


def test_another_thread_count_is_not_different(committed, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        config, new = experiment(tmp_path / "threads")
    finally:
        torch.set_num_threads(threads)
    result = verdicts(tmp_path, committed, config, new)
    assert all(c.level in (rp.IDENTICAL, rp.WITHIN) for c in result.values()), {m: c.problems for m, c in result.items()}


def test_scores_jittered_at_float32_rounding_reproduce_within_tolerance(toy, tmp_path, capsys):
    out = tmp_path / "jittered"
    experiment(out)
    db = sqlite3.connect(str(out / "store.sqlite"))
    rows = db.execute("SELECT s.cell, s.sample, s.value FROM scores s JOIN cells c ON c.key = s.cell "
                      "WHERE c.method = 'gradient'").fetchall()
    rng = np.random.default_rng(0)
    for (cell, sample, value), u in zip(rows, rng.uniform(-1, 1, len(rows))):
        db.execute("UPDATE scores SET value = ? WHERE cell = ? AND sample = ?",
                   (value * (1 + u * 2.0 ** -23), cell, sample))  # one float32 ulp
    db.commit()
    db.close()
    regenerate(out)  # results.json from the jittered store (the integrity check holds)
    result = rp.reproduce(out)
    levels = {c.method: c.level for c in result.comparisons}
    assert levels == {"gradient": rp.WITHIN, "random": rp.IDENTICAL}
    assert result.level == rp.WITHIN and result.ok and result.rounding_runs == 2 and result.rounding_cells == 1
    render(result, Console())
    text = capsys.readouterr().out
    assert "1 identical, 1 equal within numerical tolerance, 0 different" in text
    assert "reproduced: equal within numerical tolerance" in text
    assert not rp.reproduce(out, exact=True, atol=0, rtol=0).ok  # --exact still demands the same bits


# --------------------------------------------------------------------------------------------- the maths


def test_rounding_noise_moves_outputs_by_ulps_and_leaves_the_global_stream_alone():
    layer = nn.Linear(64, 64)
    x = torch.randn(16, 64)
    plain = layer(x)
    torch.manual_seed(123)
    with rnd.rounding_noise(seed=1):
        noisy = layer(x)
        again = nn.Sequential(layer)(x)  # a container is not perturbed twice
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(1))  # no draw from the global stream
    rel = (noisy - plain).abs().mean() / plain.abs().mean()
    eps = torch.finfo(torch.float32).eps
    # Gaussian noise of 8 ulps of the mean magnitude: mean |noise| = 8 eps sqrt(2 / pi) times it
    assert rel.item() == pytest.approx(rnd.NOISE_ULPS * eps * math.sqrt(2 / math.pi), rel=0.1)
    assert ((again - plain).abs().mean() / plain.abs().mean()).item() < 2 * rel.item()
    assert torch.equal(layer(x), plain)  # removed on exit
    with rnd.rounding_noise(seed=1):
        assert torch.equal(layer(x), noisy)  # seeded: the same noise again


def test_sample_mean_tolerance_by_hand():
    # two runs over 4 samples: e = (1, -1, 1, -1) and (2, 0, 0, -2) * 1e-6: rms = sqrt(12/8) 1e-6, means 0
    tol, scale = rnd.sample_mean_tolerance([np.array([1, -1, 1, -1]) * 1e-6, np.array([2, 0, 0, -2]) * 1e-6], 4, 0.5)
    assert scale == pytest.approx(math.sqrt(1.5) * 1e-6 / 2)
    assert tol == pytest.approx(4 * scale + 2.0 ** -20 * 0.5 + 2.0 ** -30)
    # a shift common to every sample: the mean change of a run is the scale
    tol, scale = rnd.sample_mean_tolerance([np.full(100, 3e-6)], 100, 0.0)
    assert scale == pytest.approx(3e-6)


def test_scalar_tolerance_by_hand():
    tol, scale = rnd.scalar_tolerance([0.9201, 0.9198], 0.92, 0.9205)
    assert scale == pytest.approx(2e-4)
    assert tol == pytest.approx(20 * 2e-4 + 2.0 ** -20 * 0.9205 + 2.0 ** -30)
    assert rnd.scalar_tolerance([math.nan], 0.5, 0.5) == (math.inf, math.inf)  # NaN under rounding: fragile
    assert rnd.scalar_tolerance([0.5, 0.5], 0.5, 0.5)[1] == 0  # rounding moved nothing: the float32 floor alone


def test_rank_test_separates_systematic_moves_from_a_flip():
    assert rnd.moved_beyond_rounding(np.full(8, 0.1), np.full(16, 1e-7)) < rnd.ALPHA  # every sample moved
    flip = np.r_[np.zeros(63), 1.0]  # one near tie flipped, rounding runs flipped none
    assert rnd.moved_beyond_rounding(flip, np.zeros(128)) > rnd.ALPHA
    assert rnd.moved_beyond_rounding(np.zeros(8), np.full(16, 1e-7)) == 1.0
    assert rnd.min_rank_test_p(4, 8) == pytest.approx(1 / 495)


def _comparison(committed, reproduced, old_samples=None, new_samples=None, ci=(math.nan, math.nan)):
    c = rp.Comparison("m", "d", "a", "x", "x", committed=committed, reproduced=reproduced, ci_low=ci[0],
                      ci_high=ci[1], committed_status="done", reproduced_status="done", committed_n=4,
                      reproduced_n=4)
    if old_samples is not None:
        c.reproduced_samples = pd.Series(new_samples)
        c.sample_diffs = pd.Series(new_samples) - pd.Series(old_samples)
        c.samples_identical = bool((c.sample_diffs == 0).all())
    return c


def test_judge_measured_by_hand():
    # no per-sample scores: 20 x the rounding runs' largest change, here 1e-4
    c = _comparison(0.5, 0.5015, ci=(0.4, 0.6))
    rp.judge_measured(c, [0.50155, 0.5014], [None, None])
    assert c.level == rp.WITHIN and c.tolerance_value == pytest.approx(2e-3 + 2.0 ** -20 * 0.5015 + 2.0 ** -30)
    assert c.ci_note == "0.015 × CI half-width"
    c = _comparison(0.5, 0.5025)
    rp.judge_measured(c, [0.50255, 0.5024], [None, None])
    assert c.level == rp.DIFFERENT and "beyond the rounding tolerance" in c.problems[0]
    # a CI of width zero is no tolerance and no yardstick
    assert _comparison(0.5, 0.5025, ci=(0.5, 0.5)).ci_note == "n too small to judge"
    # per sample: every sample moved by 0.01 where rounding moves them by 1e-7
    old = {f"s{i}": v for i, v in enumerate([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])}
    new = {k: v + 0.01 for k, v in old.items()}
    noise = [pd.Series({k: v + 1e-7 * (-1) ** i for i, (k, v) in enumerate(new.items())}) for _ in range(2)]
    c = _comparison(0.35, 0.36, old, new)
    rp.judge_measured(c, [0.36, 0.36], noise)
    assert c.level == rp.DIFFERENT and "rank test p" in c.problems[0]
    # the same mean change from one sample that flipped, where rounding moved every sample a little: a flip
    flipped = {**old, "s0": 0.1 + 0.06}
    c = _comparison(0.35, 0.36, old, flipped)
    rp.judge_measured(c, [0.36, 0.36], [pd.Series({k: v + 1e-7 for k, v in flipped.items()})] * 2)
    assert c.level == rp.WITHIN and "no larger than rounding's" in c.note
    # two samples: too few for the rank test (its smallest p is 1/C(6, 2)), so the mean is judged as one value
    c = _comparison(0.3, 0.3003, {"s0": 0.2, "s1": 0.4}, {"s0": 0.2003, "s1": 0.4003})
    rp.judge_measured(c, [0.30031, 0.30028], [pd.Series({"s0": 0.20031, "s1": 0.40031}),
                                              pd.Series({"s0": 0.20028, "s1": 0.40028})])
    assert c.level == rp.WITHIN and "too few for the per-sample test" in c.note
    assert c.tolerance_value == pytest.approx(20 * 2e-5 + 2.0 ** -20 * 0.3003 + 2.0 ** -30)
