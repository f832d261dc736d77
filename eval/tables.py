"""Paper-shaped result tables from every run's metrics.json (``make tables``).

    python -m eval.tables [--runs outputs/runs] [--out outputs/tables]

writes ``table{1,2,3,4}.{md,tex,csv}``, ``table4_grid.csv`` and ``other_runs.{md,tex,csv}``,
then the figures (eval.figures). One section per (model, data); values x100 as in the paper
(CIDEr: pycocoevalcap's score x100), FLOPs as % of the unpruned LLM prefill. Where the model is
GLaMM or OMG-LLaVA the paper's own numbers (eval.paper_numbers) follow our rows as "(paper)".
Group headings count tokens from the model's visual token count ("Retain 57 tokens (↓90%)").

* Table 1: unpruned, then per keep FastV, PDrop, ALTP and the extra baselines; val and test.
* Table 2: unpruned, PDrop and ALTP at keep 0.1 / 0.25 (grounding metrics).
* Table 3: DDC-only vs ALTP at keep 0.1 / 0.25 / 0.5.
* Table 4: ALTP at keep 0.1 over SLIC's N (at C = 5) and C (at N = 10), the paper's rows; when
  a sweep gives other (N, C) points, also the N x C grid of every point (``table4.md``/``.tex``
  under the paper rows, ``table4_grid.csv``).
* other runs: every run no paper table shows, with its settings and why (eval.results).

Which runs each table takes is decided in eval.results; the command prints one line for every
run that is not in Tables 1-4. The CSVs hold every cell in long form.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.paper_numbers import PAPER
from eval.render import to_csv, to_latex, to_markdown
from eval.results import (
    NAMES,
    SPECS,
    TABLE4_ROWS,
    grid_points,
    load_runs,
    pruner_label,
    retain_label,
    shown_in,
    unplaced,
    unplaced_lines,
    upper_label,
)

CAPTION = ("METEOR", "CIDEr", "AP50", "mIoU", "recall")
GROUNDING = ("AP50", "mIoU", "recall")
SPLITS = ("val", "test")
TABLE_METRICS = {1: (CAPTION, True), 2: (GROUNDING, False), 3: (GROUNDING, False)}  # metrics, FLOPs column


def fmt(value, scale=100.0) -> str:
    return "—" if value is None else f"{scale * value:.1f}"


def fmt_flops(run: dict | None) -> str:
    return f"{fmt(run['flops_ratio'])}%" if run and run.get("flops_ratio") else "—"


def _cells(run_by_split: dict, metrics, flops: bool) -> list[str]:
    cells = [fmt_flops(run_by_split.get("val") or run_by_split.get("test"))] if flops else []
    for split in SPLITS:
        run = run_by_split.get(split)
        cells += [fmt(run.get(m)) if run else "—" for m in metrics]
    return cells


def _paper_cells(row: dict, metrics, flops: bool) -> list[str]:
    cells = [f"{row['flops']}%" if row.get("flops") is not None else "—"] if flops else []
    for split in SPLITS:
        cells += [f"{row[split][m]:.1f}" for m in metrics]
    return cells


def _columns(metrics, flops: bool) -> list[str]:
    return ["Method"] + (["FLOPs"] if flops else []) + [f"{s} {m}" for s in SPLITS for m in metrics]


def _sections(runs: list[dict]) -> dict[str, tuple[dict | None, int]]:
    """section -> (the paper's rows by table for its model, its visual token count)."""
    return {r["section"]: ({n: PAPER[n].get(r["model"]) for n in PAPER}, r["visual_tokens"])
            for r in sorted(runs, key=lambda r: r["section"])}


def build_table(number: int, runs: list[dict]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Tables 1-4 in the paper's shape: (columns, rows); a row with no cells is a heading."""
    if number == 4:
        return build_table4(runs)
    spec, (metrics, flops) = SPECS[number], TABLE_METRICS[number]
    by_key = {(r["section"], r["pruner"], r["keep"], r["split"]): r for r in shown_in(runs, f"Table {number}")}
    rows: list[tuple[str, list[str]]] = []
    for section, (papers, n_visual) in _sections(runs).items():
        paper = papers[number]
        rows.append((section, []))
        groups = ([(upper_label(n_visual), [("none", 1.0)])] if spec["upper"] else []) + [
            (retain_label(n_visual, keep), [(m, keep) for m in spec["methods"]]) for keep in spec["keeps"]]
        for heading, members in groups:
            rows.append((heading, []))
            for method, keep in members:
                found = {s: by_key[(section, method, keep, s)] for s in SPLITS if (section, method, keep, s) in by_key}
                rows.append((NAMES.get(method, method), _cells(found, metrics, flops)))
                if paper and (method, keep) in paper:
                    rows.append(("(paper)", _paper_cells(paper[(method, keep)], metrics, flops)))
    return _columns(metrics, flops), rows


def _by_point(runs: list[dict], table: str) -> dict:
    return {(r["section"], r["split"], r["pruner_params"]["n_segments"], r["pruner_params"]["compactness"]): r
            for r in shown_in(runs, table)}


def build_table4(runs: list[dict]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The paper's Table 4 rows: ALTP at keep 0.1 per (N, C)."""
    by_point, rows = _by_point(runs, "Table 4"), []
    for section, (papers, n_visual) in _sections(runs).items():
        paper = papers[4]
        rows += [(section, []), (f"ALTP, {retain_label(n_visual, 0.1)}", [])]
        for n, c in TABLE4_ROWS:
            found = {s: by_point[(section, s, n, c)] for s in SPLITS if (section, s, n, c) in by_point}
            rows.append((f"N={n} C={c}", _cells(found, GROUNDING, False)))
            if paper:
                rows.append(("(paper)", _paper_cells(paper[(n, c)], GROUNDING, False)))
    return _columns(GROUNDING, False), rows


def build_grid(runs: list[dict]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Every (N, C) point of a section's ALTP keep-0.1 sweep: rows N, columns C x metric."""
    by_point, rows = _by_point(runs, "Table 4 N x C grid"), []
    points = {section: grid_points(runs, section) for section in _sections(runs)}
    all_c = sorted({c for section_points in points.values() for _, c in section_points})
    for section, (_, n_visual) in _sections(runs).items():
        if not points[section]:
            continue
        rows.append((section, []))
        for split in SPLITS:
            rows.append((f"{split}: ALTP, {retain_label(n_visual, 0.1)}", []))
            for n in sorted({n for n, _ in points[section]}):
                cells = []
                for c in all_c:
                    run = by_point.get((section, split, n, c))
                    cells += [fmt(run.get(m)) if run else "—" for m in GROUNDING]
                rows.append((f"N={n}", cells))
    return ["N"] + [f"C={c} {m}" for c in all_c for m in GROUNDING], rows


def build_other(runs: list[dict]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Runs that no paper table shows, each with its settings and the reason."""
    rows, other = [], unplaced(runs)
    for section in sorted({r["section"] for r, _ in other}):
        rows.append((section, []))
        for run, why in sorted((x for x in other if x[0]["section"] == section),
                               key=lambda x: (pruner_label(x[0]), x[0]["keep"], x[0]["split"])):
            rows.append((f"{run['model']}{run['model_settings']} {pruner_label(run)}",
                         [run["split"], f"{run['keep']:g}", "/".join(map(str, run.get("kept_tokens", []))),
                          fmt_flops(run), *[fmt(run.get(m)) for m in CAPTION], why]))
    return ["Run", "Split", "Keep", "Kept tokens", "FLOPs", *CAPTION, "Why not in Tables 1-4"], rows


def _write(stem: Path, columns, rows, extra: tuple | None = None) -> list[Path]:
    """stem.{md,tex,csv}; ``extra`` = (title, columns, rows) appended to the .md and .tex."""
    md, tex = to_markdown(columns, rows), to_latex(columns, rows)
    if extra and extra[2]:
        md += f"\n**{extra[0]}**\n\n" + to_markdown(*extra[1:])
        tex += f"\n% {extra[0]}\n" + to_latex(*extra[1:])
    stem.with_suffix(".md").write_text(md)
    stem.with_suffix(".tex").write_text(tex)
    to_csv(stem.with_suffix(".csv"), columns, rows)
    return [stem.with_suffix(s) for s in (".md", ".tex", ".csv")]


def write_tables(runs_dir: Path, out_dir: Path, runs: list[dict] | None = None) -> list[Path]:
    runs = load_runs(runs_dir) if runs is None else runs
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for number in (1, 2, 3):
        written += _write(out_dir / f"table{number}", *build_table(number, runs))
    grid = build_grid(runs)
    written += _write(out_dir / "table4", *build_table4(runs),
                      extra=("N × C grid (every point of the sweep; AP50 / mIoU / recall)", *grid))
    to_csv(out_dir / "table4_grid.csv", *grid)
    written.append(out_dir / "table4_grid.csv")
    written += _write(out_dir / "other_runs", *build_other(runs))
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Render the paper's Tables 1-4, the other runs and "
                                                 "the figures from metrics.json files.")
    parser.add_argument("--runs", type=Path, default=Path("outputs/runs"))
    parser.add_argument("--out", type=Path, default=Path("outputs/tables"))
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    problems: list[str] = []
    runs = load_runs(args.runs, problems)
    write_tables(args.runs, args.out, runs)
    print(f"{len(runs)} runs -> {args.out}/table{{1,2,3,4}}.{{md,tex,csv}}, other_runs.{{md,tex,csv}}")
    for line in problems + unplaced_lines(runs):
        print(f"  {line}")
    if not args.no_figures:
        from eval.figures import write_figures  # matplotlib only when figures are drawn

        figures = write_figures(runs, args.out)
        print(f"{len(figures)} figures -> {args.out}/fig_*.{{png,pdf}}")


if __name__ == "__main__":
    main()
