"""Check the command line's config before Hydra runs, so a mistake is one line, exit 2.

Hydra reports an unknown group option or field as a multi-line message with exit code 1 (and
only inside the job). We compose the same overrides with the compose API first. A multirun
(``-m``, or a ``sweep=`` preset that sets ``hydra.mode: MULTIRUN``) is expanded into its jobs
exactly as Hydra's basic sweeper does (its own parser and cartesian product, ``range()`` and
all, the preset's ``hydra.sweeper.params`` under the command line's), and every job's config is
composed and passed through the runner's ``validate``: ``keep=0.1,1.5`` stops before job 0
runs instead of failing job 1 after job 0 has finished.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode

from altp.errors import ConfigError
from altp.validation import validate


def task_overrides(argv: list[str]) -> list[str]:
    """The config overrides of the command line (Hydra's own ``hydra.*`` settings left out)."""
    return [arg for arg in argv if not arg.startswith("-") and ("=" in arg or arg.startswith("~"))
            and not arg.lstrip("+~").startswith("hydra")]


def sweep_jobs(argv: list[str]) -> tuple[list[list[str]], bool]:
    """Every job's overrides in Hydra's order, and whether this is a multirun."""
    overrides = task_overrides(argv)
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    # the first value of each swept key composes the config that says whether this is a sweep
    first = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
             else o.input_line for o in parsed]
    base = compose("config", overrides=first, return_hydra_config=True)
    multirun = "-m" in argv or "--multirun" in argv or base.hydra.mode == RunMode.MULTIRUN
    if not multirun:
        return [overrides], False
    given = {o.get_key_element() for o in parsed}
    preset = [f"{key}={value}" for key, value in (base.hydra.sweeper.params or {}).items() if key not in given]
    jobs = BasicSweeper.split_arguments(parser.parse_overrides(preset + overrides), None)
    return [list(job) for batch in jobs for job in batch], True


def one_line(error: BaseException) -> str:
    """Hydra's first line, plus the available options or a hint for an unknown field."""
    message = "\n".join(str(e) for e in (error, error.__cause__) if e is not None)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else "invalid configuration"
    if "Available options" in message:
        options = message.split("Available options", 1)[1].split("Config search path", 1)[0]
        text += f" (available: {', '.join(options.split()[2:])})"
    elif "not in struct" in message:
        text += " No such field; list the fields with: python run.py --cfg job"
    return text


def check_command_line(argv: list[str], config_dir: Path) -> None:
    """``config_dir``: the app's config folder (run.py's ``configs/``)."""
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir), job_name="check"):
            jobs, multirun = sweep_jobs(argv)
            for number, overrides in enumerate(jobs):
                cfg = compose("config", overrides=overrides)
                if multirun:  # a single run validates itself; a sweep must not start with a bad job
                    try:
                        validate(cfg)
                    except ConfigError as err:
                        swept = " ".join(o for o in overrides if any(o not in job for job in jobs))
                        raise ConfigError(f"sweep job {number} ({swept}): {err}; no job was started") from None
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - every composition failure is a config error
        print(f"config error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
