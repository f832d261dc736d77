"""Paper-shaped result tables from every run's metrics.json (``make tables``).

    python -m eval.tables [--runs outputs/runs] [--out outputs/tables]

writes ``table{1,2,3,4}.{md,tex,csv}``. One section per (model, data); values x100 as in the
paper, FLOPs as % of the unpruned LLM prefill. Where the model is GLaMM or OMG-LLaVA the
paper's own numbers (eval.paper_numbers) follow each of our rows, marked "(paper)".

* Table 1: unpruned, then per keep FastV, PDrop, ALTP and the extra baselines; val and test.
* Table 2: unpruned, PDrop and ALTP at keep 0.1 / 0.25 (grounding metrics).
* Table 3: DDC-only vs ALTP at keep 0.1 / 0.25 / 0.5.
* Table 4: ALTP at keep 0.1 over SLIC's N (at C = 5) and C (at N = 10).

Only runs with default settings (an empty ``variant`` in metrics.json) enter Tables 1-3;
Table 4 also takes runs that vary only n_segments / compactness. The CSV holds every cell in long form.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from eval.paper_numbers import PAPER

CAPTION = ("METEOR", "CIDEr", "AP50", "mIoU", "recall")
GROUNDING = ("AP50", "mIoU", "recall")
SPLITS = ("val", "test")
NAMES = {"none": "Unpruned", "fastv": "FastV", "pdrop": "PDrop", "altp": "ALTP", "ddc": "Only DDC",
         "random": "Random", "pool": "Pool", "dart": "DART", "divprune": "DivPrune"}
SPECS = {
    1: {"methods": ["fastv", "pdrop", "altp", "random", "pool", "dart", "divprune"],
        "keeps": [0.1, 0.25, 0.5], "metrics": CAPTION, "flops": True, "upper": True},
    2: {"methods": ["pdrop", "altp"], "keeps": [0.1, 0.25], "metrics": GROUNDING, "flops": False, "upper": True},
    3: {"methods": ["ddc", "altp"], "keeps": [0.1, 0.25, 0.5], "metrics": GROUNDING, "flops": False,
        "upper": False},
}
TABLE4_ROWS = [(3, 5), (7, 5), (10, 5), (15, 5), (10, 3), (10, 10)]


def load_runs(runs_dir: Path) -> list[dict]:
    runs = []
    for path in sorted(runs_dir.glob("**/metrics.json")):
        metrics = json.loads(path.read_text())
        metrics["default_params"] = not metrics.get("variant")
        limit = metrics.get("limit")
        metrics["section"] = f"{metrics['model']} on {metrics['data']}" + (f" (first {limit} images)" if limit else "")
        runs.append(metrics)
    return runs


def index(runs: list[dict]) -> dict:
    """(section, pruner, keep, split) -> metrics, default-parameter runs only."""
    return {(r["section"], r["pruner"], float(r["keep"]), r["split"]): r for r in runs if r["default_params"]}


def fmt(value, scale=100.0) -> str:
    return "—" if value is None else f"{scale * value:.1f}"


def _cells(run_by_split: dict, metrics, flops: bool) -> list[str]:
    cells = []
    if flops:
        any_run = run_by_split.get("val") or run_by_split.get("test")
        cells.append(f"{fmt(any_run.get('flops_ratio'))}%" if any_run and any_run.get("flops_ratio") else "—")
    for split in SPLITS:
        run = run_by_split.get(split)
        cells += [fmt(run.get(m)) if run else "—" for m in metrics]
    return cells


def _paper_cells(row: dict, metrics, flops: bool) -> list[str]:
    cells = [f"{row['flops']}%" if row.get("flops") is not None else "—"] if flops else []
    for split in SPLITS:
        cells += [f"{row[split][m]:.1f}" for m in metrics]
    return cells


def kept_label(runs: dict, section: str, keep: float) -> str:
    for (sec, _, k, _), run in runs.items():
        if sec == section and k == keep and len(run["kept_tokens"]) == 1 and run["pruner"] != "none":
            return f"Retain {run['kept_tokens'][0]} tokens (↓{100 - 100 * keep:.0f}%)"
    return f"keep {keep:g} (↓{100 - 100 * keep:.0f}%)"


def _columns(metrics, flops: bool) -> list[str]:
    return ["Method"] + (["FLOPs"] if flops else []) + [f"{s} {m}" for s in SPLITS for m in metrics]


def build_table(number: int, runs: list[dict]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Tables 1-3: (columns, rows); a row with no cells is a group heading."""
    if number == 4:
        return build_table4(runs)
    spec, by_key = SPECS[number], index(runs)
    metrics, flops = spec["metrics"], spec["flops"]
    rows: list[tuple[str, list[str]]] = []
    for section in sorted({r["section"] for r in runs}):
        paper = PAPER[number].get(section.split(" on ")[0])
        rows.append((section, []))
        groups = ([("Upper bound", [("none", 1.0)])] if spec["upper"] else []) + [
            (kept_label(by_key, section, keep), [(m, keep) for m in spec["methods"]]) for keep in spec["keeps"]]
        for heading, members in groups:
            rows.append((heading, []))
            for method, keep in members:
                found = {s: by_key[(section, method, keep, s)] for s in SPLITS if (section, method, keep, s) in by_key}
                rows.append((NAMES.get(method, method), _cells(found, metrics, flops)))
                if paper and (method, keep) in paper:
                    rows.append(("(paper)", _paper_cells(paper[(method, keep)], metrics, flops)))
    return _columns(metrics, flops), rows


def build_table4(runs: list[dict]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """ALTP at keep 0.1 per (N, C); runs may differ from the defaults only in those two."""
    rows: list[tuple[str, list[str]]] = []
    for section in sorted({r["section"] for r in runs}):
        paper = PAPER[4].get(section.split(" on ")[0])
        rows.append((section, []))
        for n_segments, compactness in TABLE4_ROWS:
            found = {r["split"]: r for r in runs if r["section"] == section and r["pruner"] == "altp"
                     and float(r["keep"]) == 0.1
                     and set(r.get("variant", {})) <= {"n_segments", "compactness"}
                     and r["pruner_params"].get("n_segments") == n_segments
                     and r["pruner_params"].get("compactness") == compactness}
            rows.append((f"ALTP N={n_segments} C={compactness}", _cells(found, GROUNDING, False)))
            if paper:
                rows.append(("(paper)", _paper_cells(paper[(n_segments, compactness)], GROUNDING, False)))
    return _columns(GROUNDING, False), rows


def to_markdown(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for label, cells in rows:
        lines.append(f"| **{label}** |" + " |" * (len(columns) - 1) if not cells else
                     "| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + "\n"


def to_latex(columns, rows) -> str:
    def esc(text: str) -> str:
        return text.replace("%", r"\%").replace("_", r"\_").replace("↓", r"$\downarrow$")

    lines = [r"\begin{tabular}{l" + "r" * (len(columns) - 1) + "}", r"\toprule",
             " & ".join(esc(c) for c in columns) + r" \\", r"\midrule"]
    for label, cells in rows:
        lines.append(rf"\multicolumn{{{len(columns)}}}{{l}}{{\textit{{{esc(label)}}}}} \\" if not cells
                     else " & ".join(esc(c) for c in [label, *cells]) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def to_csv(path: Path, columns, rows) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["section", *columns])
        section = ""
        for label, cells in rows:
            if not cells:
                section = label if " on " in label else section
                continue
            writer.writerow([section, label.strip(), *cells])


def write_tables(runs_dir: Path, out_dir: Path) -> list[Path]:
    runs = load_runs(runs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for number in (1, 2, 3, 4):
        columns, rows = build_table(number, runs)
        stem = out_dir / f"table{number}"
        stem.with_suffix(".md").write_text(to_markdown(columns, rows))
        stem.with_suffix(".tex").write_text(to_latex(columns, rows))
        to_csv(stem.with_suffix(".csv"), columns, rows)
        written += [stem.with_suffix(s) for s in (".md", ".tex", ".csv")]
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Render the paper's Tables 1-4 from metrics.json files.")
    parser.add_argument("--runs", type=Path, default=Path("outputs/runs"))
    parser.add_argument("--out", type=Path, default=Path("outputs/tables"))
    args = parser.parse_args(argv)
    runs = load_runs(args.runs)
    write_tables(args.runs, args.out)
    print(f"{len(runs)} runs -> {args.out}/table{{1,2,3,4}}.{{md,tex,csv}}")


if __name__ == "__main__":
    main()
