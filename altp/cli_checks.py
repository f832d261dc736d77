"""Compose the command line's config once before Hydra runs, so a typo is one line, exit 2.

Hydra reports an unknown group option or field as a multi-line message with exit code 1 (and
only inside the job). We compose the same overrides with the compose API first; in multirun
mode every swept value is checked (sweep functions such as range() are left to Hydra).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def override_sets(argv: list[str]) -> list[list[str]]:
    """The overrides to compose: all first values, then each further swept value in turn."""
    multirun = "-m" in argv or "--multirun" in argv
    choices: list[tuple[str, list[str]]] = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg or arg.lstrip("+~").startswith("hydra"):
            continue
        key, value = arg.split("=", 1)
        if "(" in value:  # range(...), glob(...): Hydra's sweep grammar, left to Hydra
            continue
        swept = multirun and "," in value and not value.startswith("[")
        choices.append((key, value.split(",") if swept else [value]))
    base = [f"{key}={values[0]}" for key, values in choices]
    sets = [base]
    for i, (key, values) in enumerate(choices):
        sets += [base[:i] + [f"{key}={value}"] + base[i + 1:] for value in values[1:]]
    return sets


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


def check_command_line(argv: list[str]) -> None:
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="check"):
            for overrides in override_sets(argv):
                compose("config", overrides=overrides)
    except Exception as err:  # noqa: BLE001 - every composition failure is a config error
        print(f"config error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
