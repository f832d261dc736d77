"""A sweep's bookkeeping: each job's outcome, and one report when the multirun ends.

Every job of a multirun (any launcher: local, joblib, submitit) writes
``<job dir>/job_status.json`` (completed | skipped | failed, its overrides, the error). A job
that raises does not end the sweep: run.py records it and the other jobs go on (under torchrun,
where every rank runs the sweep, a failure stops all ranks instead, as in a single run). When the
launcher is through, the Hydra callback ``SweepReport`` (configs/config.yaml) collects the
records into ``<sweep dir>/sweep_report.json``, prints which jobs failed and exits with code 1
if any did; with ``logger=wandb`` it also logs the paper tables of the sweep's runs.
A job killed from outside (Slurm time limit, out of memory) writes no record: submitit reports
it; rerunning the same command resumes the sweep.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from altp.distributed import from_env

STATUS_FILE = "job_status.json"


def record_job(status: str, run_dir: str | None = None, error: str | None = None) -> None:
    """Called inside a multirun job (run.py): its outcome, beside Hydra's files for the job."""
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    record = {"job": hc.job.num, "overrides": list(hc.overrides.task), "status": status,
              "run_dir": run_dir, "error": error}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{STATUS_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out / STATUS_FILE)


def collect(sweep_dir: Path) -> list[dict]:
    jobs = [json.loads(p.read_text()) for p in sweep_dir.glob(f"**/{STATUS_FILE}")]
    return sorted(jobs, key=lambda j: j["job"])


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = collect(sweep_dir)
        failed = [j for j in jobs if j["status"] == "failed"]
        counts = {s: sum(j["status"] == s for j in jobs) for s in ("completed", "skipped", "failed")}
        report = {"sweep_dir": str(sweep_dir), "jobs": len(jobs), **counts, "failed_jobs": failed}
        if jobs:
            (sweep_dir / "sweep_report.json").write_text(json.dumps(report, indent=1) + "\n")
        if from_env().rank > 0:  # under torchrun every rank runs the sweep (a failure stops all); rank 0 reports
            return
        skipped = f", {counts['skipped']} skipped (run directory busy in another job)" if counts["skipped"] else ""
        print(f"sweep: {len(jobs)} jobs, {counts['completed']} completed{skipped}, {counts['failed']} failed "
              f"[{sweep_dir}/sweep_report.json]", file=sys.stderr if failed else sys.stdout)
        for job in failed:
            print(f"  FAILED job {job['job']} ({' '.join(job['overrides'])}): {job['error']}", file=sys.stderr)
        log_tables(config, jobs, sweep_dir.name)
        if failed:
            sys.exit(1)


def log_tables(config: DictConfig, jobs: list[dict], name: str) -> None:
    """``logger=wandb``: the paper tables, the N x C grid and the other runs (eval.tables) over
    this sweep's run directories."""
    from altp.logger import make_logger
    from eval.tables import build_grid, build_other, build_table, load_runs

    logger = make_logger(config)
    if not logger.enabled:
        return
    runs, seen = [], set()
    for job in jobs:
        run_dir = job.get("run_dir")
        if run_dir and Path(run_dir).resolve() not in seen and (Path(run_dir) / "metrics.json").exists():
            seen.add(Path(run_dir).resolve())
            runs += load_runs(Path(run_dir))
    if runs:
        tables = {f"table{n}": build_table(n, runs) for n in (1, 2, 3, 4)}
        logger.log_tables(tables | {"table4_grid": build_grid(runs), "other_runs": build_other(runs)}, name)
