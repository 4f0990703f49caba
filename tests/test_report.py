"""`interpbench report`: one self-contained HTML file, loaded in headless Chromium with no network: every table
and every image is there and loaded, the curves are drawn, the console has no error and nothing is fetched.

Chromium is Debian's ``chromium`` package (``apt-get install -y chromium``), driven over the DevTools protocol
through a pipe (``--remote-debugging-pipe``: JSON messages separated by NUL bytes on file descriptors 3 and 4),
so the test needs no Python package and no browser download.
"""

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from rich.console import Console

import interpbench as ib
from interpbench.commands import report as report_cmd
from interpbench.publish import report
from interpbench.publish.results import load_experiment

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
METHODS = ["gradient", "center", "toy_noise", "toy_nan"]
METRICS = ["deletion", "insertion", "toy_mean_map"]


def chromium_binary():
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, ("headless Chromium is needed for this test: install Debian's package with "
                  "`apt-get update && apt-get install -y chromium` (or set $CHROMIUM to its path)")
    return path


def _high_fd(fd):
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``."""

    def __init__(self, profile):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the browser reads commands on fd 3 and writes replies and events on fd 4; its ends of the pipes move to
        # fds >= 10 first, so that the shell's redirections to 3 and 4 cannot overwrite one another
        to_browser_r, from_browser_w = (_high_fd(to_browser_r), _high_fd(from_browser_w))
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events = []

    def _read_message(self, deadline):
        while b"\0" not in self._buffer:
            left = deadline - time.time()
            assert left > 0, "Chromium did not answer in time"
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                assert chunk, f"Chromium closed the pipe (exit code {self.proc.poll()})"
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method, params=None, session=None, timeout=30):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method, timeout=30):
        deadline = time.time() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


PAGE_STATE = """
// the id of the <h2> an element comes under (sections are the body's children between two h2)
function sectionOf(el) {
  while (el.parentElement && el.parentElement !== document.body) el = el.parentElement;
  while (el && el.tagName !== 'H2') el = el.previousElementSibling;
  return el ? el.id : null;
}
JSON.stringify({
  tables: Array.from(document.querySelectorAll('table')).map(t => ({
    caption: t.caption ? t.caption.textContent : null, cls: t.className,
    rows: t.tBodies.length ? t.tBodies[0].rows.length : 0, text: t.textContent})),
  images: Array.from(document.images).map(i => {
    // blank: every pixel the same (drawn on a canvas; data: URIs are same-origin)
    const c = document.createElement('canvas'); c.width = i.naturalWidth; c.height = i.naturalHeight;
    let distinct = 0;
    if (c.width && c.height) {
      const g = c.getContext('2d'); g.drawImage(i, 0, 0);
      const d = g.getImageData(0, 0, c.width, c.height).data; const seen = new Set();
      for (let k = 0; k < d.length && seen.size < 3; k += 4) seen.add(d[k] * 65536 + d[k + 1] * 256 + d[k + 2]);
      distinct = seen.size;
    }
    return {alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight, colours: distinct,
            inline: i.src.startsWith('data:image/png;base64,'), section: sectionOf(i)};
  }),
  charts: Array.from(document.querySelectorAll('svg.chart')).map(s => ({
    label: s.getAttribute('aria-label'), shown: s.getBoundingClientRect().width,
    section: sectionOf(s),
    curves: Array.from(s.querySelectorAll('polyline.curve')).map(p => p.getAttribute('data-label')),
    points: Array.from(s.querySelectorAll('polyline.curve')).map(p => p.points.numberOfItems),
    last: Array.from(s.querySelectorAll('polyline.curve')).map(p => p.points.getItem(p.points.numberOfItems - 1).y),
    heights: Array.from(s.querySelectorAll('polyline.curve')).map(p =>
      new Set(Array.from({length: p.points.numberOfItems}, (_, k) => p.points.getItem(k).y)).size),
    bars: Array.from(s.querySelectorAll('rect.bar')).map(r => [r.getAttribute('data-label'), r.height.baseVal.value])})),
  external: Array.from(document.querySelectorAll('[src],[href]')).map(e => e.getAttribute('src') || e.getAttribute('href'))
    .filter(u => !u.startsWith('data:') && !u.startsWith('#')),
  sections: Array.from(document.querySelectorAll('h2')).map(h => h.id),
  scroll: [document.documentElement.scrollWidth, window.innerWidth],
  scripts: document.scripts.length})"""
# every <details> opened, then the page's width again
OPEN_DETAILS = """document.querySelectorAll('details').forEach(d => d.open = true);
JSON.stringify([document.documentElement.scrollWidth, window.innerWidth])"""
WINDOW = 1280  # px: the report must not scroll sideways in a window this wide


def load_in_chromium(path, profile, screenshots=None):
    """Load ``path`` in a 1280 px wide window: the page's state (PAGE_STATE, plus ``open_scroll``, its width with
    every details block open), console errors, requests and failed loads. ``screenshots`` {file: CSS selector or
    None for the first screen} are written as PNGs."""
    browser = DevTools(profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": WINDOW, "height": 800, "deviceScaleFactor": 1,
                                                           "mobile": False}, session=session)
        browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired", timeout=60)
        state = browser.send("Runtime.evaluate", {"expression": PAGE_STATE, "returnByValue": True}, session=session)
        page = json.loads(state["result"]["value"])
        for out, selector in (screenshots or {}).items():
            clip = {}
            if selector:
                box = browser.send("Runtime.evaluate", {"expression": "JSON.stringify((() => { const r = document."
                                   f"querySelector({json.dumps(selector)}).getBoundingClientRect(); return [r.left + "
                                   "scrollX, r.top + scrollY, r.width, r.height]; })())", "returnByValue": True},
                                   session=session)
                x, y, w, h = json.loads(box["result"]["value"])
                clip = {"clip": {"x": x, "y": y, "width": w, "height": h, "scale": 1}, "captureBeyondViewport": True}
            shot = browser.send("Page.captureScreenshot", {"format": "png", **clip}, session=session)
            out.write_bytes(base64.b64decode(shot["data"]))
        opened = browser.send("Runtime.evaluate", {"expression": OPEN_DETAILS, "returnByValue": True}, session=session)
        page["open_scroll"] = json.loads(opened["result"]["value"])
        events = list(browser.events)
    finally:
        browser.close()
    errors = [e for e in events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    failed = [e["params"] for e in events if e.get("method") == "Network.loadingFailed"]
    return page, errors, requests, failed


@pytest.fixture
def experiment(toy, tmp_path):
    out = tmp_path / "exp"
    ib.run(methods=METHODS, models=["toy:net"], metrics=METRICS, out=out, limit=12, batch_size=8, progress=False)
    units = out / "artifacts" / "toy_net__toy__dissection"
    units.mkdir(parents=True)
    Image.fromarray(np.kron(np.eye(4, dtype=np.uint8) * 255, np.ones((8, 12), np.uint8))).save(units / "units.png")
    (out / "artifacts" / "drift").mkdir()
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(out / "artifacts" / "drift" / "switch.png")
    return out


def test_the_report_loads_offline_with_every_table_and_image(experiment, tmp_path):
    args = argparse.Namespace(directory=str(experiment), out=None, alpha=0.05, digits=3, max_images=200)
    assert report_cmd.main(args, Console(stderr=True)) == 0
    path = experiment / "report.html"
    page, errors, requests, failed = load_in_chromium(path, tmp_path / "profile")

    assert errors == [] and failed == []
    assert [u for u in requests if not u.startswith("data:")] == [path.resolve().as_uri()]  # nothing else fetched
    assert page["external"] == [] and page["scripts"] == 0

    captions = [t["caption"] for t in page["tables"]]
    expected = (["toy:net on toy (n = 12)", "Maps: toy:net on toy", "Leaderboard: toy:net on toy"]
                + [f"Ranking: toy:net on toy, {c}" for c in ("deletion ↓", "insertion ↑", "toy_mean_map.mean_map ↑")]
                + ["Rank agreement (Kendall's τb, 3 methods): toy:net on toy", "Environment", "Models", "Datasets"])
    assert captions == expected
    assert page["sections"][:3] == ["summary", "curves", "maps"]  # the summary leads
    summary = page["tables"][0]  # means only; toy_nan's cells say "fail", the cause follows the summary
    assert summary["rows"] == len(METHODS) and " ± " not in summary["text"] and "fail" in summary["text"]
    board = next(t for t in page["tables"] if t["caption"] == "Leaderboard: toy:net on toy")
    assert board["rows"] == len(METHODS)
    exp = load_experiment(experiment)
    gradient = exp.table[(exp.table.method == "gradient") & (exp.table.metric == "deletion")].iloc[0]
    assert f"{gradient['mean']:.3f} ± {(gradient['ci_high'] - gradient['ci_low']) / 2:.3f}" in board["text"]
    assert f"{gradient['mean']:.3f}" in summary["text"]
    assert "failed" in board["text"]  # toy_nan's row
    assert page["scroll"][0] <= page["scroll"][1] and page["open_scroll"][0] <= page["open_scroll"][1]

    images = page["images"]
    snapshot = torch.load(experiment / "artifacts" / "maps" / "toy_net__toy__gradient.pt")
    n_samples = min(len(snapshot["ids"]), report.GALLERY_IMAGES)  # the gallery shows the first few images
    working = [m for m in METHODS if m != "toy_nan"]  # toy_nan failed before its snapshot
    assert len(images) == n_samples * (1 + len(working)) + 2
    assert all(i["complete"] and i["inline"] for i in images)
    assert sum(u.startswith("data:image/png;base64,") for u in requests) == len(images)  # each decoded once
    assert all(i["width"] == 16 and i["height"] == 16 for i in images[:-2])
    assert {(i["alt"], i["width"], i["height"]) for i in images[-2:]} == {
        ("toy_net__toy__dissection/units.png", 48, 32), ("drift/switch.png", 20, 10)}

    charts = {c["label"]: c for c in page["charts"]}
    assert set(charts) == {"deletion: toy:net on toy", "insertion: toy:net on toy"}
    for chart in charts.values():
        assert [label.split(" ")[0] for label in chart["curves"]] == working
        assert set(chart["points"]) == {17}  # 16 x 16 images, one row per step: 16 steps + the start


def test_mean_curves_and_overlays_by_hand():
    x, y = report.mean_curve([[1.0, 0.5, 0.0], [1.0, 0.7, 0.2]])
    assert x.tolist() == [0.0, 0.5, 1.0] and np.allclose(y, [1.0, 0.6, 0.1])
    x, y = report.mean_curve([[1.0, 0.0], [1.0, 0.5, 0.0]])  # different lengths: onto the longest grid
    assert np.allclose(y, [1.0, 0.5, 0.0])
    assert report.colormap(np.array([0.0, 1.0])).tolist() == [[0, 0, 4], [252, 255, 164]]
    assert report.colormap(np.array([1 / 16])).tolist() == [[16, 6, 38]]  # halfway between the first two anchors
    image = np.full((3, 2, 2), 100, np.uint8)
    out = report.overlay(image, np.array([[0.0, 1.0], [2.0, 2.0]]), alpha=0.5)
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [50, 50, 52] and out[1, 1].tolist() == [176, 178, 132]


def test_a_missing_experiment_is_a_usage_error(tmp_path, capsys):
    args = argparse.Namespace(directory=str(tmp_path / "none"), out=None, alpha=0.05, digits=3, max_images=10)
    assert report_cmd.main(args, Console(stderr=True)) == 2
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- the default experiment


def test_the_default_experiments_report_draws_every_family_and_fits_1280_px(tmp_path):
    """The committed default experiment (copied: read-only), with the adversarial detectors' ROC points (made up
    here where the committed run predates them): every plot present and drawn, nothing wider than the window."""
    source = ROOT / "leaderboards" / "default"
    directory = tmp_path / "default"
    directory.mkdir()
    shutil.copy(source / "store.sqlite", directory / "store.sqlite")
    # as a clone has it: the map snapshots are not committed (a local run may have left them)
    shutil.copytree(source / "artifacts", directory / "artifacts", ignore=shutil.ignore_patterns("maps"))
    exp = load_experiment(directory)
    table = exp.table
    roc = directory / "artifacts" / "shapes_cnn__shapes__adversarial_detection"
    if not list(roc.glob("*-roc.csv")):
        roc.mkdir(exist_ok=True)
        for name, bend in (("gradient", 0.2), ("gradcam", 0.1), ("baseline", 0.5)):
            fpr = np.linspace(0, 1, 11)
            rows = [f"{attack},{x},{min(1.0, x / bend)}" for attack in ("fgsm8", "pgd8") for x in fpr]
            (roc / f"{name}-roc.csv").write_text("attack,fpr,tpr\n" + "\n".join(rows) + "\n")
    curves = {p.name[:-len("-roc.csv")]: pd.read_csv(p) for p in roc.glob("*-roc.csv")
              if not p.name.endswith("-baseline-roc.csv")}

    path = report.write_report(directory)
    shots = {tmp_path / "first-screen.png": None, tmp_path / "sanity.png": "#sanity + figure"}
    page, errors, requests, failed = load_in_chromium(path, tmp_path / "profile", shots)
    assert errors == [] and failed == [] and page["external"] == [] and page["scripts"] == 0
    # "artifacts": the other PNGs the run left (unit ablation's accuracy against k and its top units)
    assert page["sections"] == ["summary", "curves", "sanity", "adversarial", "dissection", "drift", "values",
                                "artifacts", "environment"]
    other = path.read_text().split("<h2 id=artifacts>", 1)[1].split("<h2 ", 1)[0]
    assert 'alt="shapes_cnn__shapes__unit_ablation/' in other  # unit ablation's accuracy against k is shown
    assert page["scroll"][0] <= WINDOW and page["open_scroll"][0] <= WINDOW  # no sideways scrolling, details open too
    charts = {c["label"]: c for c in page["charts"]}
    assert all(c["shown"] > 100 for c in charts.values())

    # the summary leads, means only, with every method of the shapes world
    summary = page["tables"][0]
    assert summary["caption"].startswith("shapes:cnn on shapes") and " ± " not in summary["text"]
    assert summary["rows"] == table[(table.model == "shapes:cnn") & (table.scope == "explanation")].method.nunique()

    # deletion and insertion curves of both models
    for model, dataset in (("shapes:cnn", "shapes"), ("timm:tf_efficientnet_lite0", "photos")):
        for metric in ("deletion", "insertion"):
            chart = charts[f"{metric}: {model} on {dataset}"]
            assert chart["section"] == "curves" and chart["curves"] and min(chart["heights"]) > 1

    # the sanity check: one line per method from k = 0 (correlation 1) to full randomisation, ordered as the data
    chart = charts["sanity check: shapes:cnn on shapes"]
    full = table[(table.model == "shapes:cnn=>shapes:cnn~cascade:5") & (table.value_name == "rank_correlation")]
    rho = dict(zip(full.method, full["mean"]))
    assert chart["section"] == "sanity" and sorted(chart["curves"]) == sorted(rho)
    assert set(chart["points"]) == {6} and max(chart["heights"]) > 1
    last = dict(zip(chart["curves"], chart["last"]))  # the y of k = 5 on the page: higher correlation, smaller y
    order = sorted(rho, key=rho.get)
    assert all(last[a] >= last[b] for a, b in zip(order, order[1:]))
    assert (tmp_path / "sanity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "first-screen.png").stat().st_size > 10_000

    # adversarial detection: one ROC chart per attack, every method's points and the baseline's
    for attack in ("fgsm8", "pgd8"):
        chart = charts[f"{attack}: shapes:cnn on shapes"]
        assert chart["section"] == "adversarial"
        labels = {("baseline (no maps)" if n == "baseline" else n): len(df[df.attack == attack])
                  for n, df in curves.items() if (df.attack == attack).any()}  # rise/mask/extremal: pgd8 only
        assert dict(zip(chart["curves"], chart["points"])) == labels and max(chart["heights"]) > 1

    # dissection: detectors per category and layer, bar heights in the table's proportions
    for model in ("shapes:cnn", "shapes:cnn@random"):
        chart = charts[f"dissection: {model} on shapes"]
        assert chart["section"] == "dissection"
        heights = dict(chart["bars"])
        rows = table[(table.model == model) & (table.metric == "dissection")]
        counts = {f"layer3 {c}": float(rows[rows.value_name == f"layer3.{c}.detectors"]["mean"].iloc[0])
                  for c in ("color", "texture", "shape")}
        assert set(heights) == set(counts) and max(heights.values()) > 0
        top = max(counts, key=counts.get)
        for label, count in counts.items():
            assert heights[label] == pytest.approx(heights[top] * count / counts[top], abs=0.2)

    # images: the top units of each dissected model and the unit-drift switch matrix, loaded and not blank
    images = page["images"]
    assert all(i["complete"] and i["inline"] and i["colours"] >= 2 for i in images)
    assert sorted(i["alt"] for i in images if i["section"] == "dissection") == [
        "shapes_cnn__shapes__dissection/layer3-top-units.png", "shapes_cnn_random__shapes__dissection/layer3-top-units.png"]
    assert [i["alt"] for i in images if i["section"] == "drift"] == [
        "shapes_cnn__shapes_cnn.shape2color__shapes__unit_drift/layer3-switch.png"]
