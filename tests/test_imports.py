"""Imports: `eval`, `baselines` and `altp` resolve inside this repository (`eval` and `baselines`
are also names of unrelated PyPI packages); the names users script against stay where they are;
model adapters share nothing but the model interface (altp.models.base)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# users' scripts import these from here (README); moved code keeps a re-export at the old place
KEPT = ["altp.models.glamm:load_glamm", "altp.models.omg_llava.model:OMGLLaVA",
        "altp.models.glamm.prompt:build_prompt_ids", "altp.engine:PruningEngine", "altp.pruning:NoPruning",
        "baselines.fastv:FastV", "altp.models.tiny_gcg:GCGPrediction", "altp.models.glamm.model:resolve_dtype",
        "eval.cleanup:clean_caption", "altp.runner:run", "altp.runner:validate", "altp.runner:run_directory",
        "altp.runner:prepare_split", "altp.runner:load_model", "altp.runner:pruner_name",
        "altp.runner:effective_keep", "altp.runner:ConfigError", "altp.runner:CONFIG_DIR"]
ADAPTERS = {"tiny_gcg": REPO / "altp/models/tiny_gcg.py", "glamm": REPO / "altp/models/glamm",
            "omg_llava": REPO / "altp/models/omg_llava"}


@pytest.mark.parametrize("name", ["eval", "baselines", "altp"])
def test_package_resolves_inside_the_repository(name):
    package = importlib.import_module(name)
    locations = [Path(p).resolve() for p in package.__path__]
    assert locations == [REPO / name]


@pytest.mark.parametrize("where", KEPT)
def test_names_users_import_stay_importable(where):
    module, name = where.split(":")
    assert hasattr(importlib.import_module(module), name)


def imported(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_an_adapter_imports_no_other_adapter_and_no_eval(adapter):
    where = ADAPTERS[adapter]
    others = [f"altp.models.{other}" for other in ADAPTERS if other != adapter]
    for path in [where] if where.is_file() else sorted(where.rglob("*.py")):
        bad = sorted(m for m in imported(path) if m.split(".")[0] == "eval" or m.startswith(tuple(others)))
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_no_package_module_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in sorted((REPO / "altp").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
