"""`eval`, `baselines` and `altp` must import from this repository: `eval` and `baselines` are
also names of unrelated PyPI packages (DESIGN.md, Layout)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["eval", "baselines", "altp"])
def test_package_resolves_inside_the_repository(name):
    package = importlib.import_module(name)
    locations = [Path(p).resolve() for p in package.__path__]
    assert locations == [REPO / name]
