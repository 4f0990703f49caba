"""The cross-attack table of ``adversarial_detection``: AUROC of the detector trained on one attack and tested
on another, as a DataFrame and as ``.csv`` / ``.md`` artefacts.

Layer: metrics (imports ops only); the metric is :class:`interpbench.metrics.adversarial.AdversarialDetection`,
whose ``compute()`` writes the table (docs/protocols.md, "Artefacts").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from interpbench.ops.attack_specs import DEFAULT_ATTACKS


def cross_attack_table(values: Mapping[str, float]) -> "Any":
    """The cross-attack AUROC table (rows: the attack trained on, columns: the attack tested on) from a
    metric's flat results (``cross.TRAIN.TEST.auroc``; the diagonal from ``ATTACK.auroc``), as a DataFrame."""
    attacks = sorted({k.split(".")[0] for k in values if k.endswith(".auroc") and k.count(".") == 1},
                     key=lambda a: (DEFAULT_ATTACKS.index(a) if a in DEFAULT_ATTACKS else len(DEFAULT_ATTACKS), a))
    table = pd.DataFrame(index=pd.Index(attacks, name="train \\ test"), columns=attacks, dtype=float)
    for a in attacks:
        for b in attacks:
            key = f"{a}.auroc" if a == b else f"cross.{a}.{b}.auroc"
            table.loc[a, b] = values.get(key, math.nan)
    return table


def write_cross_attack_table(values: Mapping[str, float], out_dir: str | Path,
                             stem: str = "cross-attack") -> list[Path]:
    """``STEM.csv`` and ``STEM.md`` of :func:`cross_attack_table` under ``out_dir``."""
    table = cross_attack_table(values)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    table.to_csv(csv_path, float_format="%.4f")
    cols = list(table.columns)
    lines = ["| train \\ test | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for a, row in table.iterrows():
        lines.append(f"| {a} | " + " | ".join("–" if math.isnan(v) else f"{v:.3f}" for v in row) + " |")
    md_path.write_text("Cross-attack AUROC: detector trained on the row's attack, tested on the column's (held-out "
                       "images only).\n\n" + "\n".join(lines) + "\n")
    return [csv_path, md_path]
