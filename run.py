"""python run.py [model=..] [data=..] [pruner=..] [keep=..] [pruner.<param>=..]   (-m for sweeps)

Thin Hydra entry point (configs/config.yaml); the work is altp.runner.run. Config and data
mistakes stop before anything heavy loads with one line naming the field or file, exit code 2;
a run directory held by another process: exit code 3 (altp.failures lists the codes). A sweep
checks every job's config before the first starts; a job failing later is recorded
(altp.sweep) and the others go on; the sweep reports the failures at its end.
Under torchrun (``torchrun --standalone --nproc_per_node=N run.py ...``) every rank runs this.
"""

import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from altp.cli_checks import check_command_line
from altp.distributed import from_env
from altp.failures import EXIT_BUSY, EXIT_CONFIG, USER_ERRORS, error_line
from altp.runner import run
from altp.sweep import record_job

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        metrics = run(cfg)
    except Exception as err:
        if not multirun and isinstance(err, USER_ERRORS):
            print(error_line(err), file=sys.stderr)
            sys.exit(EXIT_CONFIG)
        if not multirun or from_env().world > 1:  # under torchrun no rank may go on alone: all stop
            raise
        # one job's failure must not end the other jobs of the sweep: recorded, reported at the end
        if isinstance(err, USER_ERRORS):
            print(error_line(err), file=sys.stderr)
        else:
            traceback.print_exc()
        record_job("failed", error=f"{type(err).__name__}: {err}".splitlines()[0])
        return None
    if not multirun and "skipped" in metrics:  # produced nothing: a script must be able to tell
        sys.exit(EXIT_BUSY)
    if multirun:
        record_job("skipped" if "skipped" in metrics else "completed", run_dir=metrics.get("run_dir"))
    return metrics.get("mIoU")


if __name__ == "__main__":
    check_command_line(sys.argv[1:], CONFIG_DIR)
    main()
