"""One Markdown report of every run (``make report``).

    python -m eval.report [--runs outputs/runs] [--tables outputs/tables] [--out outputs/report.md]

Renders the tables and figures afresh (eval.tables, eval.figures) and writes one file holding:
the scales and the evaluator's protocol (similarity models the runs used, SPICE skipped, every
note the evaluator recorded), Tables 1-4 with the N x C grid, the other runs, the figures, the
testbed realism table (``<tables>/realism.md``, written by ``scripts/testbed_report.py``, when
it exists), the runs no paper table shows and the settings of every run.
"""

from __future__ import annotations

import argparse
import os
import re
from collections import Counter
from pathlib import Path

from eval.figures import write_figures
from eval.render import to_markdown
from eval.results import load_runs, place_all, pruner_label, unplaced_lines
from eval.tables import fmt_flops, write_tables

TITLES = {
    "table1": "Table 1: captioning and grounding per pruner and keep (the paper's Table 1, GLaMM)",
    "table2": "Table 2: PDrop vs ALTP, grounding (the paper's Table 2, OMG-LLaVA)",
    "table3": "Table 3: DDC-only vs ALTP (the paper's ablation)",
    "table4": "Table 4: ALTP at keep 0.1 over SLIC's N and C (the paper's rows, then the N x C grid)",
    "other_runs": "Other runs: settings no paper table holds",
}
PROTOCOL = [
    "GLaMM's GCG protocol (groundingLMM eval/gcg/evaluate.py, reimplemented in eval/gcg.py): METEOR "
    "and CIDEr with pycocoevalcap; AP50 with pycocotools `segm`, score 1.0 per mask; mIoU by greedy "
    "max-IoU matching, mean over all GT images; recall by greedy matching that stops at the first "
    "pair under IoU 0.5 or text similarity 0.5.",
    "SPICE is skipped (pycocoevalcap downloads Stanford models for it; the protocol reports none).",
    "Values are fractions in metrics.json and x100 here; CIDEr is pycocoevalcap's score x100 (the "
    "paper's scale, so it can exceed 100). FLOPs: paper Eq. 5 over the LLM prefill, % of unpruned.",
]
REALISM_HINT = ("not produced yet: `python scripts/testbed_report.py` (after `python run.py "
                "sweep=table1`) writes `{path}`; rerun `make report` to include it.")


def protocol_lines(runs: list[dict]) -> list[str]:
    models = Counter(f"{r.get('similarity_model', '?')} ({r.get('similarity', 'mean_pool')})" for r in runs)
    # a note that starts with a count ("3 images have ...") is counted once whatever the number
    notes = Counter(re.sub(r"^\d+ ", "N ", n) for r in runs for n in (r.get("evaluation") or {}).get("protocol_notes", []))
    lines = [f"- {line}" for line in PROTOCOL]
    lines += [f"- Recall similarity model: {model} in {n} of {len(runs)} runs." for model, n in models.items()]
    lines += [f"- Evaluator note ({n} runs): {note}" for note, n in notes.most_common()]
    return lines


def settings_table(runs: list[dict], runs_dir: Path) -> str:
    """One row per run: where it is, what ran, and the tables that show it."""
    rows = []
    for placed in place_all(runs):
        r = placed.run
        params = ", ".join(f"{k}={v}" for k, v in sorted(r.get("pruner_params", {}).items()))
        rows.append((os.path.relpath(r["path"], runs_dir), [
            f"{r['model']}{r.get('model_settings', '')}", f"{r['data']}-{r['split']}",
            f"{r.get('n_images', '?')} ({r.get('n_failed', 0)} failed)", pruner_label(r), params or "—",
            f"{r['keep']:g}", "/".join(map(str, r.get("kept_tokens", []))), fmt_flops(r),
            f"{r.get('device', '?')} {r.get('dtype', '')}".strip(), str(r.get("batch_size", "?")),
            str(r.get("max_new_tokens", "?")),
            ", ".join(placed.shown) or ("duplicate" if placed.duplicate_of else "other runs")]))
    columns = ["Run directory", "Model", "Data", "Images", "Pruner", "Pruner parameters", "Keep",
               "Kept tokens", "FLOPs", "Device", "Batch", "Max new tokens", "Shown in"]
    return to_markdown(columns, rows)


def build_report(runs_dir: Path, tables_dir: Path, out: Path) -> str:
    problems: list[str] = []
    runs = load_runs(runs_dir, problems)
    write_tables(runs_dir, tables_dir, runs)
    figures = write_figures(runs, tables_dir)

    def link(path: Path) -> str:
        return os.path.relpath(path, out.parent)

    parts = [f"# Results report\n\n{len(runs)} runs under `{runs_dir}`; tables and figures in "
             f"`{tables_dir}` (`make tables` renders them alone).\n",
             "## Evaluation protocol and scales\n", "\n".join(protocol_lines(runs)) + "\n"]
    for stem, title in TITLES.items():
        parts += [f"## {title}\n", (tables_dir / f"{stem}.md").read_text()]
    parts.append("## Figures\n")
    parts += [f"![{png.stem}]({link(png)})\n\n[PDF]({link(png.with_suffix('.pdf'))})\n" for png in figures]
    parts.append("Kept-token figures of one image (superpixels, kept tokens, region density, masks): "
                 "`python scripts/visualize.py pruner=altp keep=0.1 [image=<id>]`.\n")
    realism = tables_dir / "realism.md"
    parts += ["## Testbed realism (tiny_gcg vs GLaMM)\n",
              realism.read_text() if realism.exists() else REALISM_HINT.format(path=realism) + "\n"]
    unplaced = problems + unplaced_lines(runs)
    parts += ["## Runs no paper table shows\n",
              "\n".join(f"- {line}" for line in unplaced) + "\n" if unplaced else "Every run is in Tables 1-4.\n"]
    parts += ["## Settings of every run\n", settings_table(runs, runs_dir)]
    return "\n".join(parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write one Markdown report of every run.")
    parser.add_argument("--runs", type=Path, default=Path("outputs/runs"))
    parser.add_argument("--tables", type=Path, default=Path("outputs/tables"))
    parser.add_argument("--out", type=Path, default=Path("outputs/report.md"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(build_report(args.runs, args.tables, args.out))
    print(f"report -> {args.out}")


if __name__ == "__main__":
    main()
