"""How the testbed reacts to pruning, beside how GLaMM does (ALTP paper, Table 1 and 3).

    make testbed-report        # = the runs below, then this script
    python run.py -m sweep=realism            # unpruned + 6 pruners x 3 keeps, first 100 val images
    python run.py                             # unpruned on all val images: the quality check
    python scripts/testbed_report.py [--runs outputs/runs] [--model tiny_gcg] [--limit 100]
    # weights of your own: python run.py -m sweep=realism model.weights=DIR [model.llm.layers=L]
    python scripts/testbed_report.py --model-settings weights=<DIR's name>

For each pruner and keep it prints the retention (pruned / unpruned) of AP50, mIoU and recall,
GLaMM's retention from the paper where it reports the method, and the Kendall tau between the
testbed's and GLaMM's ranking of FastV / PDrop / ALTP per metric and keep. Then the testbed's
acceptance checks (issue 11): depth proportions (FastV's FLOPs ratio at keep 0.1), PDrop vs
FastV, the cost of pruning, random below FastV. Writes the same as markdown to
``outputs/tables/realism.md`` (``make report`` includes it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.paper_numbers import TABLE1_GLAMM, TABLE3_GLAMM  # noqa: E402
from eval.results import load_runs  # noqa: E402

METHODS = ("fastv", "pdrop", "altp", "ddc", "random", "pool")
RANKED = ("fastv", "pdrop", "altp")  # the methods GLaMM's Table 1 reports at every keep
KEEPS = (0.1, 0.25, 0.5)
METRICS = ("AP50", "mIoU", "recall")


def glamm_retention(method: str, keep: float, metric: str, split: str) -> float | None:
    row = {**TABLE1_GLAMM, **TABLE3_GLAMM}.get((method, keep))
    upper = TABLE1_GLAMM[("none", 1.0)][split][metric]
    return None if row is None else row[split][metric] / upper


def collect(runs: list[dict], model: str, data: str, split: str, limit: int | None,
            settings: str | None = None) -> dict:
    """(pruner, keep) -> metrics for the default-parameter runs of one model / data / split / limit.

    ``settings``: None = the model as configured by default (no model settings in the run's
    directory name); a string = the runs whose model settings contain it, e.g. ``weights=deep16``
    for ``model.weights=outputs/deep16``."""
    def chosen(run_settings: str) -> bool:
        return not run_settings if settings is None else settings in run_settings
    return {(r["pruner"], float(r["keep"])): r for r in runs
            if r["model"] == model and r["data"] == data and r["split"] == split and r.get("limit") == limit
            and not r.get("variant") and chosen(r.get("model_settings", ""))}


def report(found: dict, split: str, full: dict | None = None) -> tuple[list[str], list[tuple[str, bool]]]:
    """Markdown lines and the acceptance checks (name, passed: True / False / None = not run).

    ``full``: the unpruned run on every image of the split, which the quality check reads (the
    bar is over all 200 val images; retention compares runs on the same first images)."""
    base = found.get(("none", 1.0))
    if base is None:
        raise SystemExit("no unpruned run found: run `python run.py -m sweep=realism` first")
    lines = ["| method | keep | FLOPs | " + " | ".join(f"{m} ret. (GLaMM)" for m in METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    retention = {}
    for keep in KEEPS:
        for method in METHODS:
            run = found.get((method, keep))
            if run is None:
                continue
            cells = []
            for metric in METRICS:
                ours = run[metric] / base[metric] if base[metric] else float("nan")
                retention[method, keep, metric] = ours
                theirs = glamm_retention(method, keep, metric, split)
                cells.append(f"{ours:.2f} ({theirs:.2f})" if theirs is not None else f"{ours:.2f} (—)")
            lines.append(f"| {method} | {keep:g} | {100 * run['flops_ratio']:.1f} % | " + " | ".join(cells) + " |")
    lines += ["", "Kendall tau, testbed vs GLaMM ranking of " + " / ".join(RANKED) + ":", "",
              "| keep | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for keep in KEEPS:
        taus = []
        for metric in METRICS:
            ours = [retention.get((m, keep, metric)) for m in RANKED]
            theirs = [glamm_retention(m, keep, metric, split) for m in RANKED]
            taus.append("—" if None in ours else f"{kendalltau(ours, theirs).statistic:+.2f}")
        lines.append(f"| {keep:g} | " + " | ".join(taus) + " |")

    def ret(method, keep, metric):
        return retention.get((method, keep, metric))

    def at_least(a, b, factor=1.0):  # None: a run the comparison needs is missing
        return None if a is None or b is None else a >= factor * b

    def below(a, b):
        return None if a is None or b is None else a < b

    fastv = found.get(("fastv", 0.1))
    checks = [
        ("unpruned mIoU >= 0.80 and recall >= 0.75 (all images)",
         None if full is None else full["mIoU"] >= 0.80 and full["recall"] >= 0.75),
        ("FastV FLOPs ratio at keep 0.1 <= 0.30", None if fastv is None else fastv["flops_ratio"] <= 0.30),
        *((f"PDrop >= 0.85 x FastV {metric} at keep {keep:g}",
           at_least(ret("pdrop", keep, metric), ret("fastv", keep, metric), 0.85))
          for keep in (0.1, 0.25) for metric in ("AP50", "recall")),
        ("FastV at keep 0.1 keeps <= 0.80 of the unpruned AP50", at_least(0.80, ret("fastv", 0.1, "AP50"))),
        ("random recall < FastV recall at keep 0.1", below(ret("random", 0.1, "recall"), ret("fastv", 0.1, "recall"))),
    ]
    verdict = {True: "pass", False: "FAIL", None: "not run (a run it needs is missing)"}
    lines += ["", "| check | result |", "|---|---|", *(f"| {name} | {verdict[ok]} |" for name, ok in checks)]
    return lines, checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("outputs/runs"))
    parser.add_argument("--model", default="tiny_gcg")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=100, help="the runs' data.limit (0 = all images)")
    parser.add_argument("--model-settings", default=None,
                        help="the runs of other weights: text their model settings contain, e.g. weights=deep16 "
                             "(default: the model's default settings)")
    parser.add_argument("--out", type=Path, default=Path("outputs/tables/realism.md"))
    args = parser.parse_args(argv)
    runs = load_runs(args.runs)
    found = collect(runs, args.model, args.data, args.split, args.limit or None, args.model_settings)
    full = collect(runs, args.model, args.data, args.split, None, args.model_settings).get(("none", 1.0))
    lines, checks = report(found, args.split, full)
    title = (f"# Testbed realism: {args.model}{f' [{args.model_settings}]' if args.model_settings else ''} "
             f"on {args.data} {args.split}"
             + (f" (first {args.limit} images)" if args.limit else ""))
    text = "\n".join([title, "", "Retention = pruned / unpruned; GLaMM's from the ALTP paper's Tables 1 and 3.",
                      "", *lines]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text + f"-> {args.out}")
    return 0 if all(ok is True for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
