"""Every run's metrics.json, and where the paper-shaped tables show it (``make tables``).

A run lands in the paper's Tables 1-3 when it has default settings, a method and a keep those
tables hold; in Table 4 when it is ALTP at keep 0.1 varying at most SLIC's N and C (the paper's
rows, or the N x C grid beside them). Anything else goes to the "other runs" table, with the
reason (``placement``). Run directories are ``<data>-<split>/<model>[settings]/<pruner>[params]/
keep<k>`` (altp.runner.run_directory); a ``[settings]`` model folder (other weights, other
model options) makes a section of its own, ``tiny_gcg[weights=...] on synthetic``, because
metrics.json names only the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from altp.pruning import visual_budget

NAMES = {"none": "Unpruned", "fastv": "FastV", "pdrop": "PDrop", "altp": "ALTP", "ddc": "Only DDC",
         "random": "Random", "pool": "Pool", "dart": "DART", "divprune": "DivPrune"}
SPECS = {  # Tables 1-3: the methods and keeps each holds; "upper": the unpruned row on top
    1: {"methods": ["fastv", "pdrop", "altp", "random", "pool", "dart", "divprune"],
        "keeps": [0.1, 0.25, 0.5], "upper": True},
    2: {"methods": ["pdrop", "altp"], "keeps": [0.1, 0.25], "upper": True},
    3: {"methods": ["ddc", "altp"], "keeps": [0.1, 0.25, 0.5], "upper": False},
}
TABLE4_KEEP = 0.1
TABLE4_ROWS = [(3, 5), (7, 5), (10, 5), (15, 5), (10, 3), (10, 10)]  # (N, C) as the paper prints
SLIC_PARAMS = {"n_segments", "compactness"}
REQUIRED = ("model", "data", "split", "pruner", "keep", "visual_tokens")  # what placing a run needs


def load_runs(runs_dir: Path, problems: list[str] | None = None) -> list[dict]:
    """Every readable metrics.json under ``runs_dir``, with ``path``, ``model_settings`` and
    ``section`` added; an unreadable one is skipped with a line in ``problems``."""
    runs = []
    for path in sorted(Path(runs_dir).glob("**/metrics.json")):
        try:
            metrics = json.loads(path.read_text())
            missing = [key for key in REQUIRED if key not in metrics]
            if missing:
                raise KeyError(f"no {', '.join(missing)}")
            model_dir = path.parent.parent.parent.name
            metrics["model_settings"] = (model_dir[len(metrics["model"]):]
                                         if model_dir.startswith(metrics["model"] + "[") else "")
            metrics["section"] = f"{metrics['model']}{metrics['model_settings']} on {metrics['data']}" + (
                f" (first {metrics['limit']} images)" if metrics.get("limit") else "")
            metrics["keep"] = float(metrics["keep"])
            metrics.setdefault("variant", {})
        except (OSError, ValueError, KeyError, TypeError) as error:
            if problems is not None:
                problems.append(f"skipped {path}: unreadable metrics.json ({type(error).__name__}: {error})")
            continue
        metrics["path"] = str(path.parent)
        runs.append(metrics)
    return runs


def pruner_label(run: dict) -> str:
    """The pruner as its run directory names it: ``altp[n_segments=7]``."""
    params = ",".join(f"{k}={v}" for k, v in run.get("variant", {}).items())
    return f"{run['pruner']}[{params}]" if params else run["pruner"]


def run_label(run: dict) -> str:
    limit = f" (first {run['limit']} images)" if run.get("limit") else ""
    return (f"{run['model']}{run.get('model_settings', '')} {run['data']}-{run['split']}{limit} "
            f"{pruner_label(run)} keep {run['keep']:g}")


def retain_label(n_visual: int, keep: float) -> str:
    """The paper's group heading: 'Retain 57 tokens (↓90%)' for keep 0.1 of 576."""
    return f"Retain {visual_budget(keep, n_visual)} tokens (↓{100 - 100 * keep:.0f}%)"


def upper_label(n_visual: int) -> str:
    return f"Upper bound, retain {n_visual} tokens (100%)"


def slic_point(run: dict) -> tuple | None:
    """(N, C) of an ALTP run at keep 0.1 that differs from the defaults in N / C at most."""
    if run["pruner"] != "altp" or run["keep"] != TABLE4_KEEP or not set(run.get("variant", {})) <= SLIC_PARAMS:
        return None
    params = run.get("pruner_params", {})
    return params.get("n_segments"), params.get("compactness")


def grid_points(runs: list[dict], section: str) -> list[tuple]:
    """The section's (N, C) points; the grid is shown when one of them is off the paper's rows."""
    points = sorted({p for r in runs if r["section"] == section and (p := slic_point(r)) is not None})
    return points if any(p not in TABLE4_ROWS for p in points) else []


def placement(run: dict, grid: list[tuple]) -> tuple[list[str], str]:
    """(the tables showing ``run``, why none does when the list is empty); ``grid``: the
    (N, C) points of the run's section that the N x C grid shows."""
    point = slic_point(run)
    if point is not None:
        shown = (["Table 4"] if point in TABLE4_ROWS else []) + (["Table 4 N x C grid"] if point in grid else [])
        if not run["variant"]:
            shown = [f"Table {n}" for n in (1, 2, 3) if run["keep"] in SPECS[n]["keeps"]] + shown
        return shown, ""
    if run.get("variant"):
        keys = ", ".join(f"{k}={v}" for k, v in run["variant"].items())
        if run["pruner"] == "altp" and set(run["variant"]) <= SLIC_PARAMS:
            return [], f"N / C varied at keep {run['keep']:g} (Table 4 is at keep {TABLE4_KEEP:g})"
        return [], f"non-default settings ({keys}) fit no paper table"
    if run["pruner"] == "none":
        return [f"Table {n}" for n, spec in SPECS.items() if spec["upper"]], ""
    shown = [f"Table {n}" for n, spec in SPECS.items()
             if run["pruner"] in spec["methods"] and run["keep"] in spec["keeps"]]
    if shown:
        return shown, ""
    if not any(run["pruner"] in spec["methods"] for spec in SPECS.values()):
        return [], f"pruner {run['pruner']!r} is in no paper table"
    return [], f"keep {run['keep']:g} is in no paper table (they use 0.1 / 0.25 / 0.5)"


class Placed(NamedTuple):
    run: dict
    shown: list[str]  # the tables showing the run ('Table 1', ..., 'Table 4 N x C grid')
    why: str  # why no paper table shows it ('' when one does)
    duplicate_of: str | None = None  # an earlier run with the same settings (shown instead)


def place_all(runs: list[dict]) -> list[Placed]:
    """Where every run goes. A run with the same settings as an earlier one is shown nowhere
    (the tables show the earlier one)."""
    grids = {section: grid_points(runs, section) for section in {r["section"] for r in runs}}
    first, placed = {}, []
    for run in runs:
        key = (run["section"], run["split"], run["pruner"], run["keep"],
               json.dumps(run.get("variant", {}), sort_keys=True))
        if key in first:
            placed.append(Placed(run, [], "same settings as an earlier run: shown once", first[key]["path"]))
            continue
        first[key] = run
        placed.append(Placed(run, *placement(run, grids[run["section"]])))
    return placed


def shown_in(runs: list[dict], table: str) -> list[dict]:
    """The runs placed in ``table`` ('Table 1', ..., 'Table 4 N x C grid')."""
    return [p.run for p in place_all(runs) if table in p.shown]


def unplaced(runs: list[dict]) -> list[tuple[dict, str]]:
    """(run, why) for every run no paper table shows; duplicates left out (shown once)."""
    return [(p.run, p.why) for p in place_all(runs) if not p.shown and p.duplicate_of is None]


def unplaced_lines(runs: list[dict]) -> list[str]:
    """One line per run that no paper table shows: where it went instead, and why."""
    lines = []
    for p in place_all(runs):
        if p.duplicate_of:
            lines.append(f"not shown: {run_label(p.run)} [{p.run['path']}]: same settings as {p.duplicate_of}")
        elif not p.shown:
            lines.append(f"not in Tables 1-4, listed in other_runs: {run_label(p.run)} [{p.run['path']}]: {p.why}")
    return lines
