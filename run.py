"""python run.py [model=..] [data=..] [pruner=..] [keep=..] [pruner.<param>=..]   (-m for sweeps)

Thin Hydra entry point (configs/config.yaml); the work is altp.runner.run. Config mistakes stop
before anything heavy loads with one line naming the field, exit code 2.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from altp.cli_checks import check_command_line
from altp.runner import ConfigError, run


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    except ConfigError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # one job's bad value must not end the other jobs of the sweep
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("mIoU")


if __name__ == "__main__":
    check_command_line(sys.argv[1:])
    main()
