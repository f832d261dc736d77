"""make tables: metrics.json files -> paper-shaped Markdown/LaTeX/CSV, paper rows for GLaMM."""

import csv
import json

from eval.tables import write_tables


def fake_run(root, model, pruner, keep, split, kept, ap, variant=None, params=None):
    path = root / f"{model}-{pruner}-{keep}-{split}-{len(variant or {})}" / "metrics.json"
    path.parent.mkdir(parents=True)
    metrics = {"model": model, "data": "synthetic", "split": split, "limit": None, "pruner": pruner,
               "keep": keep, "visual_tokens": 576, "kept_tokens": kept, "flops_ratio": 0.2,
               "METEOR": 0.1, "CIDEr": 0.3, "AP50": ap, "mIoU": 0.5, "recall": 0.4,
               "variant": variant or {}, "pruner_params": params or {}}
    path.write_text(json.dumps(metrics))


def test_tables_render_our_rows_and_the_papers(tmp_path):
    runs = tmp_path / "runs"
    for split in ("val", "test"):
        fake_run(runs, "glamm", "none", 1.0, split, [576], 0.30)
        fake_run(runs, "glamm", "altp", 0.1, split, [57], 0.25,
                 params={"n_segments": 10, "compactness": 5})
        fake_run(runs, "glamm", "altp", 0.1, split, [57], 0.11, variant={"n_segments": 7},
                 params={"n_segments": 7, "compactness": 5})
    written = write_tables(runs, tmp_path / "tables")
    assert len(written) == 12
    table1 = (tmp_path / "tables" / "table1.md").read_text()
    assert "Retain 57 tokens" in table1
    altp_rows = [line for line in table1.splitlines() if line.startswith("| ALTP")]
    assert "25.0" in altp_rows[0] and "11.0" not in table1  # the N=7 variant stays out of Table 1
    assert "| (paper) | 20% | 12.4 | 28.1 | 20.0 | 55.5 | 30.3 |" in table1  # the paper's ALTP keep-0.1 row
    table4 = (tmp_path / "tables" / "table4.md").read_text()
    assert "| ALTP N=7 C=5 | 11.0 | 50.0 | 40.0 | 11.0 |" in table4
    rows = list(csv.reader((tmp_path / "tables" / "table1.csv").open()))
    assert rows[0][:3] == ["section", "Method", "FLOPs"] and any(r[1] == "ALTP" for r in rows)
    assert "\\toprule" in (tmp_path / "tables" / "table1.tex").read_text()
