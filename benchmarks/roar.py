"""The ROAR / KAR experiment's own table (leaderboards/roar): accuracy against the fraction of pixels removed (ROAR)
or kept (KAR) per method, with the spread over the seeds, and the rank agreement of ROAR and KAR with deletion,
insertion and ROAD MoRF on the same methods, model and test images.

    python benchmarks/roar.py leaderboards/roar          # writes leaderboards/roar/roar.md and prints it

Rank agreement: Kendall's tau-b (:func:`interpbench.publish.ranking.kendall_tau`) between two metrics' headline
values over the methods, each signed by its direction (so +1: the two metrics rank the methods the same way from
best to worst). ``random`` is the reference: a method is better than random under ROAR when its accuracy falls
faster, under KAR when it stays higher.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pandas as pd

from interpbench.publish.ranking import kendall_tau

METRICS = {"roar": False, "kar": True, "deletion": False, "insertion": True, "road_morf": False}  # higher is better?


def fraction_columns(rows: pd.DataFrame) -> list[str]:
    names = sorted({v for v in rows["value_name"] if re.fullmatch(r"acc@[0-9p]+", v)},
                   key=lambda v: float(v[4:].replace("p", ".")))
    return names


def curve_table(table: pd.DataFrame, metric: str) -> str:
    rows = table[(table["metric"] == metric) & (table["status"] == "done")]
    if rows.empty:
        return f"No {metric} results.\n"
    columns = fraction_columns(rows)
    heads = ["intact" if c == "acc@0" else c.replace("acc@", "").replace("p", ".") + " %" for c in columns]
    out = ["| method | " + " | ".join(heads) + f" | {metric} (area) |",
           "| --- | " + " | ".join("---:" for _ in columns) + " | ---: |"]
    for method, part in rows.groupby("method", sort=False):
        values = part.set_index("value_name")

        def cell(name: str) -> str:
            if name not in values.index:
                return ""
            r = values.loc[name]
            return f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"

        out.append(f"| {method} | " + " | ".join(cell(c) for c in columns) + f" | {cell(metric)} |")
    return "\n".join(out) + "\n"


def agreement(table: pd.DataFrame) -> tuple[str, dict]:
    done = table[(table["status"] == "done") & (table["value_name"] == table["metric"])]
    scores = {m: done[done["metric"] == m].set_index("method")["mean"] * (1 if up else -1)
              for m, up in METRICS.items() if (done["metric"] == m).any()}
    methods = sorted(set.intersection(*(set(s.index) for s in scores.values()))) if scores else []
    others = [m for m in scores if m not in ("roar", "kar")]
    lines = ["| | " + " | ".join(others) + " |", "| --- | " + " | ".join("---:" for _ in others) + " |"]
    taus = {}
    for m in ("roar", "kar"):
        if m not in scores:
            continue
        row = []
        for o in others:
            tau = kendall_tau(scores[m][methods].to_numpy(), scores[o][methods].to_numpy())
            taus[f"{m}/{o}"] = tau
            row.append("n/a" if math.isnan(tau) else f"{tau:+.2f}")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    tau_rk = kendall_tau(scores["roar"][methods].to_numpy(), scores["kar"][methods].to_numpy()) \
        if {"roar", "kar"} <= set(scores) else math.nan
    taus["roar/kar"] = tau_rk
    text = f"\n\nROAR against KAR: {tau_rk:+.2f}. Methods ({len(methods)}): {', '.join(methods)}.\n"
    return "\n".join(lines) + text, taus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", nargs="?", default="leaderboards/roar")
    args = ap.parse_args()
    directory = Path(args.directory)
    table = pd.read_csv(directory / "methods.csv")
    manifest = json.loads((directory / "manifest.json").read_text())
    text, taus = agreement(table)
    recipe = manifest.get("metrics", {}).get("roar", {}).get("params", {}).get("recipe")
    parts = [
        "# ROAR and KAR on shapes:cnn\n",
        "Test accuracy of a network retrained from scratch with the fraction of pixels (column) removed (ROAR) or "
        "kept (KAR) by each method's map, mean over the seeds [min, max]; the last column is the area under the "
        "mean curve over the fractions (divided by the span); intact: the same recipe on unmodified images. "
        "`random` is the reference. docs/protocols.md (ROAR "
        "and KAR) describes the protocol and its deviations from Hooker et al. (2019).\n",
        f"Retraining recipe: `{json.dumps(recipe)}`. Run wall time: {manifest.get('wall_time', float('nan')):.0f} s.\n",
        "## ROAR (lower is better)\n", curve_table(table, "roar"),
        "## KAR (higher is better)\n", curve_table(table, "kar"),
        "## Rank agreement with deletion, insertion and ROAD MoRF\n",
        "Kendall's tau-b between the methods' headline values, each signed by its direction (+1: the same order "
        "from best to worst), same methods, model and test images.\n", text,
    ]
    out = directory / "roar.md"
    out.write_text("\n".join(parts), encoding="utf-8")
    (directory / "roar-agreement.json").write_text(json.dumps(taus, indent=2) + "\n", encoding="utf-8")
    print(out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
