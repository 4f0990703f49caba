"""A table of cells as a paper prints it (:class:`Grid` of :class:`Cell`): multi-level column headers, row
sections, best in bold and tied-with-best underlined, rendered as booktabs LaTeX (split into several tables
where wider than ``\\textwidth``, from estimated text widths), Markdown and CSV; LaTeX escaping, the display
names of the built-in metrics and the slug of LaTeX labels.

Part of the publishing layer (docs/design.md); :mod:`interpbench.publish.tables` lays the tables out with it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import pandas as pd

from interpbench.publish.ranking import _done, _isnan

STATUS_TEXT = {"failed": "failed", "not_applicable": "n/a", "skipped": "skipped", "pending": "pending"}


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


# Paper-style names of the built-in metrics and values in table headers (others show their own names).
DISPLAY = {"deletion": "Deletion", "insertion": "Insertion", "pointing_game": "Pointing",
           "energy_pointing_game": "Energy", "grid_pointing_game": "Grid", "adversarial_detection": "Adv. detection",
           "explanation_drift": "Drift", "shortcut_localization": "Shortcut", "difficult": "Diff.", "auroc": "AUROC",
           "tpr5": "TPR@5%", "auroc_gain": "gain"}


TEXTWIDTH_PT = 345.0  # \textwidth of the standard one-column article class at 10 pt (US letter and A4)


TABCOLSEP_PT = 3.0  # \tabcolsep inside our tables (the article default is 6 pt)


LATEX_UNICODE = {"|": r"$|$", "–": "--", "⇒": r"$\Rightarrow$", "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
                 "×": r"$\times$", "α": r"$\alpha$", "τ": r"$\tau$"}


def latex_escape(text: Any) -> str:
    """``text`` set literally by LaTeX: its special characters escaped, the few non-ASCII signs our tables use
    (en dash, arrows, ±) as LaTeX commands, so the file compiles under any input encoding."""
    return "".join(LATEX_SPECIAL.get(ch) or LATEX_UNICODE.get(ch, ch) for ch in str(text))


def half_width(row: Any) -> float:
    """Half the width of the confidence interval (the ``±`` of a table), NaN when the value has no CI."""
    if _isnan(row["ci_low"]) or _isnan(row["ci_high"]):
        return math.nan
    return (float(row["ci_high"]) - float(row["ci_low"])) / 2


def _n_text(rows: pd.DataFrame) -> str:
    ns = sorted({int(n) for n, s in zip(rows["n"], rows["status"]) if s == "done" and n})
    if not ns:
        return ""
    return f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"


def _display(name: str) -> str:
    return DISPLAY.get(name, name.replace("_", " "))


@dataclasses.dataclass
class Cell:
    """One number of a table: mean with its CI (``scale`` multiplies both, e.g. 100 for percent), a mark
    (``"best"``, ``"tied"``) or a fixed ``text`` (a status, a count)."""

    mean: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    n: int = 0
    mark: str = ""
    text: str | None = None
    digits: int = 3
    scale: float = 1.0

    @classmethod
    def of(cls, row: Any, *, mark: str = "", digits: int = 3, scale: float = 1.0, integer: bool = False) -> "Cell":
        if row is None:
            return cls(text="–")
        if not _done(row):
            return cls(text=STATUS_TEXT.get(row["status"], "–") if row["status"] != "done" else "–")
        if integer:
            return cls(mean=float(row["mean"]), n=int(row["n"] or 0), digits=0)
        return cls(mean=float(row["mean"]), ci_low=float(row["ci_low"]), ci_high=float(row["ci_high"]),
                   n=int(row["n"] or 0), mark=mark, digits=digits, scale=scale)

    @property
    def half(self) -> float:
        return math.nan if _isnan(self.ci_low) or _isnan(self.ci_high) else (self.ci_high - self.ci_low) / 2

    def parts(self) -> tuple[str, str]:
        """(mean, half-width) as text; the half-width is '' without a CI."""
        if self.text is not None:
            return self.text, ""
        hw = self.half
        return (f"{self.mean * self.scale:.{self.digits}f}",
                "" if math.isnan(hw) or self.digits == 0 else f"{hw * self.scale:.{self.digits}f}")

    def latex(self) -> str:
        mean, hw = self.parts()
        if self.text is not None:
            return latex_escape(mean)
        mean = rf"\textbf{{{mean}}}" if self.mark == "best" else rf"\underline{{{mean}}}" if self.mark == "tied" else mean
        return mean + (rf"\textsubscript{{$\pm${hw}}}" if hw else "")

    def markdown(self) -> str:
        mean, hw = self.parts()
        text = mean + (f" ± {hw}" if hw else "")
        return f"**{text}**" if self.mark == "best" else f"_{text}_" if self.mark == "tied" else text

    def width(self) -> float:
        mean, hw = self.parts()
        return _text_pt(mean, bold=self.mark == "best") + (0.8 * _text_pt("±" + hw) if hw else 0.0)


def _text_pt(text: str, bold: bool = False) -> float:
    """A slightly generous estimate of the width of ``text`` in points at \\small (9 pt Computer Modern), checked
    against pdflatex's boxes (``integrated_gradients``: 87 pt estimated, 81 pt set): narrow letters 2.8 pt, m and
    w 7.5, other letters and digits 4.8, capitals 7, punctuation 2.6, spaces 3.4, arrows and ± 7.5."""
    width = 0.0
    for ch in str(text):
        width += (2.6 if ch in ".,:;'|!()[]" else 3.4 if ch == " " else 7.5 if ch in "↑↓±⇒mw" else
                  2.8 if ch in "ijlrtf" else 7.0 if ch.isupper() or ch in "%@&" else 4.8)
    return width * (1.12 if bold else 1.0)


@dataclasses.dataclass
class Grid:
    """A table of cells with multi-level column headers (top level first; equal neighbours merge) and row
    sections; rendered as LaTeX (split into several tables to fit ``\\textwidth``), Markdown and CSV."""

    title: str  # caption
    label: str
    corner: str  # header of the row-label column
    columns: list[tuple[str, ...]]
    sections: list[tuple[str, list[tuple[str, list[Cell]]]]]  # (title or '', [(row label, cells)])
    note: str = ""  # a sentence for the caption (what bold and underline mean, the units)
    # Markdown: one table per top-level header (a model's columns) or one table with the levels joined
    split_markdown: bool = False
    footer: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)  # e.g. ("n", per column)

    def __post_init__(self) -> None:
        # a header whose lower levels are empty sits on the lowest level (beside the other columns' sub-headers)
        levels = self._levels()
        columns = []
        for col in self.columns:
            col = tuple(col) + ("",) * (levels - len(col))
            filled = [i for i, x in enumerate(col) if x]
            if filled and filled[-1] < levels - 1 and (len(filled) == 1 or filled[-1] > 0):
                col = col[: filled[-1]] + ("",) * (levels - 1 - filled[-1]) + (col[filled[-1]],)
            columns.append(col)
        self.columns = columns

    # ------------------------------------------------------------------ widths and splitting

    def _levels(self) -> int:
        return max((len(c) for c in self.columns), default=0)

    def _column_pt(self, j: int) -> float:
        widths = [cell[j].width() for _, rows in self.sections for _, cell in rows] + [
            _text_pt(f[1][j]) for f in self.footer]
        widths.append(_header_pt(self.columns[j][-1]) if self.columns[j] else 0.0)
        return max(widths) + 2 * TABCOLSEP_PT

    def _label_pt(self) -> float:
        labels = [_text_pt(label) for _, rows in self.sections for label, _ in rows]
        labels += [_text_pt(self.corner)] + [_text_pt(f[0]) for f in self.footer]
        return max(labels) + 2 * TABCOLSEP_PT

    def width_pt(self, columns: list[int]) -> float:
        """Estimated width of the table of the given columns: each spanning header at least as wide as its text."""
        own = {j: self._column_pt(j) for j in columns}
        for level in range(self._levels() - 1):
            for start, stop in _spans(self.columns, columns, level):
                span = columns[start:stop]
                need = _header_pt(self.columns[span[0]][level]) + 2 * TABCOLSEP_PT
                have = sum(own[j] for j in span)
                if need > have:
                    own[span[-1]] += need - have
        return self._label_pt() + sum(own.values())

    def title_pt(self) -> float:
        """The widest section title (set across the whole table: a table at least that wide)."""
        return max([_text_pt(t) + 2 * TABCOLSEP_PT for t, _ in self.sections if t], default=0.0)

    def chunks(self, budget: float = TEXTWIDTH_PT) -> list[list[int]]:
        """The columns split into tables that fit ``budget`` points: whole top-level groups where they fit,
        else the next level's groups, else single columns; a column too wide on its own gets a table of its own
        (and a warning)."""
        out: list[list[int]] = [[]]

        def place(unit: list[int], level: int) -> None:
            if self.width_pt(out[-1] + unit) <= budget:
                out[-1] += unit
                return
            if out[-1] and self.width_pt(unit) <= budget:
                out.append(list(unit))
                return
            if len(unit) > 1 and level < self._levels():
                for start, stop in _spans(self.columns, unit, level):
                    place(unit[start:stop], level + 1)
                return
            if out[-1]:
                out.append([])
            out[-1] += unit
            warnings.warn(f"table {self.label}: a column is wider than \\textwidth on its own "
                          f"({self.width_pt(unit):.0f} pt > {budget:.0f} pt); shorten its header or its names",
                          stacklevel=3)

        place(list(range(len(self.columns))), 0)
        if self.title_pt() > budget:
            warnings.warn(f"table {self.label}: a section title is wider than \\textwidth ({self.title_pt():.0f} pt > "
                          f"{budget:.0f} pt); shorten the model or dataset names", stacklevel=2)
        return [c for c in out if c] or [[]]

    # ------------------------------------------------------------------ LaTeX

    def latex(self, experiment: str, budget: float = TEXTWIDTH_PT) -> str:
        chunks = self.chunks(budget)
        parts = [f"% {experiment}: generated by `interpbench table` from the experiment's store; do not edit. "
                 "Needs \\usepackage{booktabs}."]
        for i, columns in enumerate(chunks):
            part = f" (part {i + 1} of {len(chunks)})" if len(chunks) > 1 else ""
            label = self.label + (f"-{i + 1}" if len(chunks) > 1 else "")
            caption = latex_escape(self.title) + part + (". " + self.note.rstrip(".") + "." if self.note and i == 0
                                                         else ". Continued." if i else ".")
            width = max(self.width_pt(columns), self.title_pt())
            parts += ["", r"\begin{table}[t]", r"\centering", r"\small", rf"\setlength{{\tabcolsep}}{{{TABCOLSEP_PT:g}pt}}",
                      rf"\caption{{{caption}}}", rf"\label{{{label}}}",
                      f"% estimated width {width:.0f} pt of {budget:.0f} pt",
                      r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule"]
            parts += self._latex_header(columns)
            for title, rows in self.sections:
                parts.append(r"\midrule")
                if title:
                    parts.append(rf"\multicolumn{{{len(columns) + 1}}}{{l}}{{\textit{{{latex_escape(title)}}}}} \\")
                for label_text, cells in _filled(rows, columns):
                    parts.append(" & ".join([latex_escape(label_text)] + [cells[j].latex() for j in columns]) + r" \\")
            if self.footer:
                parts.append(r"\midrule")
                for name, texts in self.footer:
                    parts.append(" & ".join([latex_escape(name)] + [latex_escape(texts[j]) for j in columns]) + r" \\")
            parts += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(parts) + "\n"

    def _latex_header(self, columns: list[int]) -> list[str]:
        """One header row per level that has text in these columns; spanning headers ruled below; the corner
        (e.g. Method) on the last row."""
        levels = [lv for lv in range(self._levels()) if any(self.columns[j][lv] for j in columns
                                                                 if lv < len(self.columns[j]))]
        lines = []
        for i, level in enumerate(levels):
            last = i == len(levels) - 1
            cells = [latex_escape(self.corner) if last else ""]
            rules = []
            for start, stop in _spans(self.columns, columns, level):
                text = _latex_header(self.columns[columns[start]][level])
                cells.append(text if stop - start == 1 else rf"\multicolumn{{{stop - start}}}{{c}}{{{text}}}")
                if not last and text:
                    rules.append(rf"\cmidrule(lr){{{start + 2}-{stop + 1}}}")
            lines.append(" & ".join(cells) + r" \\" + (" " + " ".join(rules) if rules else ""))
        return lines or [latex_escape(self.corner) + " & " * len(columns) + r" \\"]

    # ------------------------------------------------------------------ Markdown and CSV

    def markdown(self, level: int = 3) -> str:
        """One pipe table per top-level header (Markdown has no spanning cells); sections as bold rows; the title
        a heading of ``level``."""
        out = [f"{'#' * level} {self.title}\n"] + ([_plain(self.note) + "\n"] if self.note else [])
        top = [c[0].replace("\n", " ") if c else "" for c in self.columns]
        everything = [(0, len(self.columns))] if self.columns else []
        for start, stop in _spans(self.columns, list(range(len(self.columns))), 0) if self.split_markdown else everything:
            columns = list(range(start, stop))
            first = 1 if self.split_markdown else 0
            heads = [" ".join(x.replace("\n", " ") for x in self.columns[j][first:] if x) or top[j] for j in columns]
            if self.split_markdown and top[start]:
                out.append(f"{'#' * (level + 1)} {top[start]}\n")
            out.append(f"| {self.corner} | " + " | ".join(heads) + " |")
            out.append("|---|" + "|".join("---:" for _ in columns) + "|")
            for title, rows in self.sections:
                if title:
                    out.append(f"| **{title}** |" + " |" * len(columns))
                for label, cells in _filled(rows, columns):
                    out.append(f"| {label} | " + " | ".join(cells[j].markdown() for j in columns) + " |")
            for name, texts in self.footer:
                out.append(f"| {name} | " + " | ".join(texts[j] for j in columns) + " |")
            out.append("")
        return "\n".join(out) + "\n"

    def records(self) -> list[dict[str, Any]]:
        rows = []
        for title, body in self.sections:
            for label, cells in body:
                for j, cell in enumerate(cells):
                    if cell.text is not None and cell.text in ("–", ""):
                        continue
                    rows.append({"section": title, self.corner.lower() or "row": label,
                                 **{f"level{k + 1}": x.replace("\n", " ") for k, x in enumerate(self.columns[j])},
                                 "mean": cell.mean * cell.scale if cell.text is None else math.nan,
                                 "ci_low": cell.ci_low * cell.scale, "ci_high": cell.ci_high * cell.scale,
                                 "n": cell.n, "status": cell.text or "done", "best": cell.mark == "best",
                                 "tied_with_best": cell.mark == "tied"})
        return rows

    def csv(self) -> str:
        return pd.DataFrame(self.records()).to_csv(index=False, float_format="%.10g")


def _filled(rows: list[tuple[str, list[Cell]]], columns: list[int]) -> list[tuple[str, list[Cell]]]:
    """The rows with something in these columns (a method a model was not run with shows no row of dashes)."""
    return [(label, cells) for label, cells in rows if any(cells[j].text != "–" for j in columns)]


def _spans(columns: list[tuple[str, ...]], indices: list[int], level: int) -> list[tuple[int, int]]:
    """Runs of ``indices`` (positions start:stop in ``indices``) whose headers agree on levels 0..level."""
    spans: list[tuple[int, int]] = []
    for pos, j in enumerate(indices):
        key = columns[j][: level + 1]
        if spans and columns[indices[spans[-1][0]]][: level + 1] == key:
            spans[-1] = (spans[-1][0], pos + 1)
        else:
            spans.append((pos, pos + 1))
    return spans


def _header_pt(text: str) -> float:
    return max((_text_pt(line) for line in str(text).split("\n")), default=0.0)


def _latex_header(column: str) -> str:
    lines = [latex_escape(line) for line in str(column).split("\n")]
    return lines[0] if len(lines) == 1 else r"\shortstack{" + r"\\".join(lines) + "}"


def _plain(latex: str) -> str:
    return (latex.replace(r"$\pm$", "±").replace(r"$\uparrow$", "↑").replace(r"$\downarrow$", "↓")
            .replace(r"\%", "%").replace(r"\times", "×").replace("$", "").replace(r"\alpha", "α").replace("--", "–")
            .replace("as a subscript", "after ±").replace("underlined", "italics"))


def _label(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-:" else "-" for ch in text)
