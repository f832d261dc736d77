"""Accuracy-vs-cost figures from every run's metrics.json (written by ``make tables``).

For each (model, data) section and split: AP50, mIoU, recall, METEOR and CIDEr (x100, as the
tables) against the theoretical FLOPs ratio (% of the unpruned LLM prefill), one line per
method across its keeps, the unpruned run as a star -> ``fig_<section>_<split>_flops.{png,pdf}``.
Where the runs have timing, the same against the measured prefill time per image (ms, pruner
included) -> ``..._prefill.{png,pdf}``. Only runs with default pruner settings are drawn (the
runs of Tables 1-3, at any keep); sweeps over pruner parameters are in the tables.

When the model is GLaMM or OMG-LLaVA, the ALTP paper's numbers (eval.paper_numbers) are drawn
beside ours on the FLOPs figure (dashed, hollow markers): at the paper's FLOPs where it prints
them (Table 1), else at our run's FLOPs for the same method and keep (Tables 2-3 print none;
the ratio depends only on the model and the schedule). The paper reports no timing.

Drawn with matplotlib's Agg canvas on Figure objects (no pyplot, no display needed).
"""

from __future__ import annotations

import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eval.paper_numbers import PAPER
from eval.results import NAMES, place_all

METRICS = ("AP50", "mIoU", "recall", "METEOR", "CIDEr")
AXES = {"flops": "FLOPs ratio (% of unpruned prefill)", "prefill": "prefill time per image (ms)"}
COLOURS = {"fastv": "tab:blue", "pdrop": "tab:orange", "altp": "tab:red", "ddc": "tab:pink",
           "random": "tab:gray", "pool": "tab:olive", "dart": "tab:green", "divprune": "tab:purple"}


def x_value(run: dict, axis: str) -> float | None:
    if axis == "flops":
        return 100 * run["flops_ratio"] if run.get("flops_ratio") else None
    return (run.get("timing") or {}).get("prefill_ms_per_image")


def default_runs(runs: list[dict]) -> list[dict]:
    """Runs with default pruner settings (duplicates left out)."""
    return [p.run for p in place_all(runs)
            if p.duplicate_of is None and not p.run.get("variant")]


def series(runs: list[dict], section: str, split: str, axis: str) -> dict[str, list[tuple[float, dict]]]:
    """pruner -> [(x, run)] in keep order: what one figure draws (``none`` = the unpruned star)."""
    lines: dict[str, list[tuple[float, dict]]] = {}
    for run in default_runs(runs):
        x = x_value(run, axis)
        if run["section"] == section and run["split"] == split and x is not None:
            lines.setdefault(run["pruner"], []).append((x, run))
    order = list(NAMES)
    return {name: sorted(points, key=lambda p: p[1]["keep"])
            for name, points in sorted(lines.items(), key=lambda kv: (order + [kv[0]]).index(kv[0]))}


def paper_series(runs: list[dict], section: str, split: str) -> dict[str, list[tuple[float, dict]]]:
    """pruner -> [(FLOPs %, {metric: value x100})] of the paper's rows for this section's model."""
    model = next(r["model"] for r in runs if r["section"] == section)
    ours = {(p, run["keep"]): x for p, points in series(runs, section, split, "flops").items()
            for x, run in points}
    lines: dict[str, dict[float, tuple[float, dict]]] = {}
    for number in (1, 2, 3):
        for (method, keep), row in PAPER[number].get(model, {}).items():
            x = row["flops"] if row.get("flops") is not None else ours.get((method, keep))
            if x is not None:  # the first table that prints a row wins (Table 1 has every metric)
                lines.setdefault(method, {}).setdefault(keep, (x, row[split]))
    return {m: [by_keep[k] for k in sorted(by_keep)] for m, by_keep in lines.items()}


def draw(runs: list[dict], section: str, split: str, axis: str) -> Figure | None:
    """One figure, a panel per metric; None when no run of the section/split has this x."""
    ours = series(runs, section, split, axis)
    if not ours:
        return None
    paper = paper_series(runs, section, split) if axis == "flops" else {}
    figure = Figure(figsize=(4 * len(METRICS) + 2, 3.8))  # fixed margins: constrained layout doubles the save time
    FigureCanvasAgg(figure)
    for ax, metric in zip(figure.subplots(1, len(METRICS)), METRICS):
        for pruner, points in ours.items():
            xs, ys = [x for x, _ in points], [100 * run[metric] for _, run in points]
            if pruner == "none":
                ax.plot(xs, ys, "k*", markersize=12, label=NAMES["none"])
            else:
                ax.plot(xs, ys, "o-", color=COLOURS.get(pruner), label=NAMES.get(pruner, pruner))
        for pruner, points in paper.items():
            xs = [x for x, _ in points]
            ys = [values[metric] for _, values in points if metric in values]
            if len(ys) == len(xs):
                style = "*" if pruner == "none" else "s--"
                ax.plot(xs, ys, style, color=COLOURS.get(pruner, "black"), markerfacecolor="none",
                        label=f"{NAMES.get(pruner, pruner)} (paper)")
        ax.set_title(metric + (" (pycocoevalcap x100)" if metric == "CIDEr" else " (x100)"))
        ax.set_xlabel(AXES[axis])
        ax.grid(alpha=0.3)
    figure.subplots_adjust(left=0.035, right=0.9, bottom=0.14, top=0.84, wspace=0.28)
    figure.legend(*figure.axes[0].get_legend_handles_labels(), loc="upper right", fontsize=8)
    figure.suptitle(f"{section}, {split}")
    return figure


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def write_figures(runs: list[dict], out_dir: Path) -> list[Path]:
    """Every section/split/axis figure as PNG and PDF under ``out_dir``; returns the PNGs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for section in sorted({r["section"] for r in runs}):
        for split in ("val", "test"):
            for axis in AXES:
                figure = draw(runs, section, split, axis)
                if figure is None:
                    continue
                stem = out_dir / f"fig_{slug(section)}_{split}_{axis}"
                figure.savefig(stem.with_suffix(".png"), dpi=110)
                figure.savefig(stem.with_suffix(".pdf"))
                written.append(stem.with_suffix(".png"))
    return written
