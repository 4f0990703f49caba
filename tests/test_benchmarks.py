"""The scripts of benchmarks/ keep working: each runs at a tiny size and prints what its README row reports.

Speed is not asserted here (benchmarks/README.md holds the measured figures); what is asserted is what a broken
script gets wrong: the work it times (passes per metric, per attack), agreement with its reference, its rows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_dissection_benchmark_agrees_with_both_numpy_tallies():
    out = bench("dissection.py", "--images", "64", "--repeats", "1", "--threads", "1")
    assert len(re.findall(r"counts identical True; intersections differ by 0 of \d+ pixels", out)) == 2, out
    assert re.search(r"tally speed-up over the numpy tally as in NetDissect-Lite: [\d.]+x", out), out


def test_deletion_insertion_benchmark_times_the_passes_the_metrics_need():
    out = bench("deletion_insertion.py", "--model", "shapes:cnn", "--size", "64", "--images", "2", "--step", "512",
                "--repeats", "1", "--channels-last")
    # 64 x 64 pixels in steps of 512: 8 steps, 9 points per curve, 2 images
    assert "18 forwards per metric" in out and "channels-last" in out, out
    for name in ("raw", "deletion", "insertion"):
        assert re.search(rf"^{name}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M), (name, out)


def test_attacks_benchmark_counts_the_passes_of_each_attack():
    out = bench("attacks.py", "--images", "8", "--batch-size", "8", "--repeats", "1", "--cw-steps", "5",
                "--pgd-steps", "2")
    assert re.search(r"^fgsm .* the raw passes it needs \(1 forward\+backward \+ 1 forward\)$", out, re.M), out
    assert re.search(r"^pgd \(2 steps\) .* \(2 forward\+backward \+ 1 forward\)$", out, re.M), out
    assert re.search(r"^cw-l2 \(5 steps, 1 search step\) .* \(5 forward\+backward \+ 1 forward\)$", out, re.M), out


def test_data_feeding_benchmark_compares_the_worker_counts():
    out = bench("data_feeding.py", "--images", "64", "--batch-size", "16", "--workers", "0,1")
    rows = re.findall(r"^\s+(\d+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)%\s+[\d.]+$", out, re.M)
    assert [w for w, _ in rows] == ["0", "1"], out
    assert all(0 <= float(share) <= 100 for _, share in rows)


def test_methods_benchmark_lists_each_method():
    out = bench("methods.py", "--quick", "--methods", "gradient,center", "--models", "shapes:cnn", "--batches", "1,4",
                "--precision", "bf16", "--channels-last")
    assert "precision bf16, channels-last" in out, out
    for name in ("gradient", "center"):
        assert re.search(rf"^{name}\s+[\d.e+]+\s+[\d.e+]+\s+[\d.]+\s+[\d.]+", out, re.M), (name, out)


def test_gpu_session_script_runs_every_step_in_its_smoke_mode(tmp_path):
    # benchmarks/gpu_session.sh is what a lent GPU machine runs, once, under a tight time budget: its smoke mode
    # runs the same steps, with the same flags, at tiny sizes on the CPU
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "--smoke"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    steps = re.findall(r"^(\w+)\s+rc (\d+)\s", summary, re.M)
    assert [s for s, _ in steps] == ["tests", "deletion", "deletion", "deletion", "dissection", "attacks", "deletion",
                                     "feeding", "methods"], summary
    assert all(rc == "0" for _, rc in steps), summary
    assert "6 passed" in (tmp_path / "tests.log").read_text()
    assert "--compile" in (tmp_path / "deletion.log").read_text()
    # at most 8 files: what the device tool brings back from $OUT
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["setup.log", "summary.txt", "tests.log", "deletion.log", "dissection.log", "attacks.log", "feeding.log",
         "methods.log"])
