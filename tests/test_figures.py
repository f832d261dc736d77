"""make tables' figures: accuracy vs FLOPs (and vs prefill time) drawn from the runs present."""

import pytest

from eval.figures import draw, write_figures
from eval.results import load_runs
from tests.test_tables import fake_run

SECTION = "glamm on synthetic"


def lines_of(figure, panel=0) -> dict:
    return {line.get_label(): (pytest.approx(list(line.get_xdata())), pytest.approx(list(line.get_ydata())))
            for line in figure.axes[panel].lines}


def test_accuracy_vs_flops_is_drawn_from_the_runs_present(tmp_path):
    runs_dir = tmp_path / "runs"
    fake_run(runs_dir, "glamm", "none", 1.0, "val", 0.30, flops=1.0)
    fake_run(runs_dir, "glamm", "altp", 0.1, "val", 0.20, flops=0.2, params={"n_segments": 10, "compactness": 5})
    fake_run(runs_dir, "glamm", "altp", 0.25, "val", 0.24, flops=0.33)
    fake_run(runs_dir, "glamm", "altp", 0.1, "val", 0.05, flops=0.2, variant={"n_segments": 3},
             params={"n_segments": 3, "compactness": 5})  # a sweep point: in the tables, not the lines
    written = write_figures(load_runs(runs_dir), tmp_path / "tables")
    png = tmp_path / "tables" / "fig_glamm_on_synthetic_val_flops.png"
    assert written == [png] and png.stat().st_size > 10_000 and png.with_suffix(".pdf").exists()
    assert not (tmp_path / "tables" / "fig_glamm_on_synthetic_val_prefill.png").exists()  # no timing

    ap50 = lines_of(draw(load_runs(runs_dir), SECTION, "val", "flops"))  # panel 0 = AP50
    assert ap50["ALTP"] == ([20.0, 33.0], [20.0, 24.0])
    assert ap50["Unpruned"] == ([100.0], [30.0])
    assert ap50["ALTP (paper)"] == ([20, 33, 55], [20.0, 24.8, 26.3])  # GLaMM: the paper's Table 1 beside ours
    assert "FastV" not in ap50

    fake_run(runs_dir, "glamm", "fastv", 0.5, "val", 0.26, flops=0.55)  # a run added changes the figure
    ap50 = lines_of(draw(load_runs(runs_dir), SECTION, "val", "flops"))
    assert ap50["FastV"] == ([55.0], [26.0])
    cider = lines_of(draw(load_runs(runs_dir), SECTION, "val", "flops"), panel=4)
    assert cider["FastV"][1] == [30.0]  # CIDEr x100 as the tables


def test_prefill_time_figure_and_paper_points_at_our_flops(tmp_path):
    runs_dir = tmp_path / "runs"
    fake_run(runs_dir, "omg_llava", "pdrop", 0.1, "test", 0.2, n_visual=256, flops=0.3,
             timing={"prefill_ms_per_image": 12.5})
    fake_run(runs_dir, "omg_llava", "pdrop", 0.25, "test", 0.25, n_visual=256, flops=0.4,
             timing={"prefill_ms_per_image": 20.0})
    runs = load_runs(runs_dir)
    written = write_figures(runs, tmp_path / "tables")
    assert [p.name for p in written] == ["fig_omg_llava_on_synthetic_test_flops.png",
                                         "fig_omg_llava_on_synthetic_test_prefill.png"]
    assert lines_of(draw(runs, "omg_llava on synthetic", "test", "prefill"))["PDrop"] == ([12.5, 20.0], [20.0, 25.0])
    flops = lines_of(draw(runs, "omg_llava on synthetic", "test", "flops"))
    assert flops["PDrop (paper)"] == ([30.0, 40.0], [22.9, 26.3])  # Table 2 prints no FLOPs: ours for the same keep
    assert "ALTP (paper)" not in flops  # no ALTP run of ours, so no FLOPs to draw the paper's ALTP at
    assert "METEOR" in draw(runs, "omg_llava on synthetic", "test", "flops").axes[3].get_title()
