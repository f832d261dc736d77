"""Markdown, LaTeX and long-form CSV renderings of a (columns, rows) table (eval.tables).

A row is (label, cells); a row without cells is a group heading, and a heading that names a
section ("<model> on <data>") sets the CSV's ``section`` column for the rows below it, any other
heading its ``group`` column ("Retain 57 tokens (↓90%)").
"""

from __future__ import annotations

import csv
from pathlib import Path


def to_markdown(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for label, cells in rows:
        lines.append(f"| **{label}** |" + " |" * (len(columns) - 1) if not cells else
                     "| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + "\n"


def to_latex(columns, rows) -> str:
    def esc(text: str) -> str:
        for char in "%_&#":
            text = text.replace(char, "\\" + char)
        return text.replace("↓", r"$\downarrow$").replace("×", r"$\times$")

    lines = [r"\begin{tabular}{l" + "r" * (len(columns) - 1) + "}", r"\toprule",
             " & ".join(esc(c) for c in columns) + r" \\", r"\midrule"]
    for label, cells in rows:
        lines.append(rf"\multicolumn{{{len(columns)}}}{{l}}{{\textit{{{esc(label)}}}}} \\" if not cells
                     else " & ".join(esc(c) for c in [label, *cells]) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def to_csv(path: Path, columns, rows) -> None:
    """Long form: one line per row with cells, led by its section and group headings."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["section", "group", *columns])
        section = group = ""
        for label, cells in rows:
            if not cells:
                if " on " in label:
                    section, group = label, ""
                else:
                    group = label
                continue
            writer.writerow([section, group, label.strip(), *cells])
