"""What several test files do with the project's scripts and its CLI."""

import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """``scripts/<name>.py`` as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kill_and_resume(args: list[str], tmp_path: Path, reference: tuple[str, ...] = (),
                    killed: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """``python run.py args`` once uninterrupted (+ ``reference``) into tmp/a, and once (+ ``killed``)
    into tmp/b SIGKILLed after its 4th prediction, then rerun plainly; -> both run directories."""
    done = subprocess.run([sys.executable, "run.py", *args, *reference, f"output_root={tmp_path / 'a'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    killed_root = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "run.py", *args, *killed, f"output_root={killed_root}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(killed_root.glob("runs/**/predictions/*.json"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(killed_root.glob("runs/**/metrics.json"))
    resumed = subprocess.run([sys.executable, "run.py", *args, f"output_root={killed_root}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    return (next((tmp_path / "a").glob("runs/**/metrics.json")).parent,
            next(killed_root.glob("runs/**/metrics.json")).parent)
