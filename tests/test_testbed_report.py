"""scripts/testbed_report.py: retention, GLaMM's retention and Kendall tau from metrics.json files."""

import json
from pathlib import Path

import pytest
from script_helpers import load_script


@pytest.fixture(scope="module")
def report():
    return load_script("testbed_report")


def write_run(root: Path, pruner: str, keep: float, ap50: float, recall: float, flops: float = 0.2,
              limit: int | None = 100):
    folder = root / pruner / f"keep{keep:g}"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "model": "tiny_gcg", "data": "synthetic", "split": "val", "limit": limit, "variant": {},
        "pruner": pruner, "keep": keep, "visual_tokens": 576, "AP50": ap50, "mIoU": 0.8, "recall": recall, "flops_ratio": flops}))


def test_retention_tau_and_checks(report, tmp_path):
    write_run(tmp_path, "none", 1.0, 0.70, 0.80, 1.0)
    write_run(tmp_path / "all", "none", 1.0, 0.70, 0.78, 1.0, limit=None)  # the quality check's run
    for keep in report.KEEPS:  # testbed ranks ALTP > PDrop > FastV at every keep, as GLaMM at 0.1
        write_run(tmp_path, "fastv", keep, 0.40, 0.50, 0.25)
        write_run(tmp_path, "pdrop", keep, 0.42, 0.52)
        write_run(tmp_path, "altp", keep, 0.50, 0.60)
        write_run(tmp_path, "random", keep, 0.30, 0.40)
    write_run(tmp_path / "other", "fastv", 0.5, 0.1, 0.1)  # another limit: not mixed in
    json_path = tmp_path / "other" / "fastv" / "keep0.5" / "metrics.json"
    json_path.write_text(json_path.read_text().replace('"limit": 100', '"limit": 8'))

    out = tmp_path / "realism.md"
    status = report.main(["--runs", str(tmp_path), "--out", str(out)])
    text = out.read_text()
    # FastV AP50 at keep 0.1: 0.40 / 0.70 = 0.57 here; GLaMM's 14.0 / 30.8 = 0.45
    assert "| fastv | 0.1 | 25.0 % | 0.57 (0.45)" in text
    assert "| random | 0.1 | 20.0 % | 0.43 (—)" in text
    # GLaMM at keep 0.1 ranks AP50 ALTP > PDrop > FastV, as the fabricated runs do: tau = +1
    tau_row = next(line for line in text.splitlines() if line.startswith("| 0.1 | +"))
    assert tau_row.split("|")[2].strip() == "+1.00"
    assert "| FastV FLOPs ratio at keep 0.1 <= 0.30 | pass |" in text
    assert "| unpruned mIoU >= 0.80 and recall >= 0.75 (all images) | pass |" in text
    assert "| FastV at keep 0.1 keeps <= 0.80 of the unpruned AP50 | pass |" in text
    assert status == 0


def test_missing_unpruned_run_says_how_to_make_it(report, tmp_path):
    write_run(tmp_path, "fastv", 0.1, 0.4, 0.5)
    with pytest.raises(SystemExit, match="sweep=realism"):
        report.main(["--runs", str(tmp_path), "--out", str(tmp_path / "r.md")])


def test_model_settings_select_other_weights(report, tmp_path):
    """Runs of model.weights=DIR live under tiny_gcg[weights=...]: left out by default,
    chosen with --model-settings; the default-weights runs are then left out."""
    write_run(tmp_path / "tiny_gcg", "none", 1.0, 0.70, 0.80, 1.0)
    write_run(tmp_path / "tiny_gcg", "fastv", 0.1, 0.40, 0.50, 0.25)
    other = tmp_path / "tiny_gcg[weights=deep16-abc123]"
    write_run(other, "none", 1.0, 0.60, 0.90, 1.0)
    write_run(other, "fastv", 0.1, 0.30, 0.45, 0.20)
    out = tmp_path / "r.md"
    report.main(["--runs", str(tmp_path), "--out", str(out)])
    assert "| fastv | 0.1 | 25.0 % | 0.57 (0.45)" in out.read_text()
    report.main(["--runs", str(tmp_path), "--out", str(out), "--model-settings", "weights=deep16"])
    text = out.read_text()
    assert "| fastv | 0.1 | 20.0 % | 0.50 (0.45)" in text and "[weights=deep16]" in text.splitlines()[0]


def test_a_check_whose_runs_are_missing_is_not_run_not_failed(report, tmp_path):
    write_run(tmp_path, "none", 1.0, 0.70, 0.80, 1.0)
    write_run(tmp_path, "fastv", 0.1, 0.40, 0.50, 0.25)
    write_run(tmp_path, "pdrop", 0.1, 0.42, 0.52)
    out = tmp_path / "r.md"
    status = report.main(["--runs", str(tmp_path), "--out", str(out)])
    text = out.read_text()
    assert "| PDrop >= 0.85 x FastV AP50 at keep 0.1 | pass |" in text
    assert "| PDrop >= 0.85 x FastV AP50 at keep 0.25 | not run" in text
    assert "| random recall < FastV recall at keep 0.1 | not run" in text
    assert "| unpruned mIoU >= 0.80 and recall >= 0.75 (all images) | not run" in text  # no full-val run
    assert status == 1  # not every check passed


def test_quality_check_reads_the_run_on_all_images(report, tmp_path):
    """The bar is over all val images: a good first-100 run does not pass it for a weak full run."""
    write_run(tmp_path, "none", 1.0, 0.70, 0.80, 1.0)
    write_run(tmp_path / "all", "none", 1.0, 0.70, 0.70, 1.0, limit=None)
    out = tmp_path / "r.md"
    report.main(["--runs", str(tmp_path), "--out", str(out)])
    assert "| unpruned mIoU >= 0.80 and recall >= 0.75 (all images) | FAIL |" in out.read_text()
