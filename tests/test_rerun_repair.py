"""Reruns repair: failed images are retried, untrusted prediction files are predicted again, and
the metrics then equal a clean run's. A random tiny_gcg at batch size 1 keeps every prediction
independent of which images a rerun predicts."""

import json
from pathlib import Path

import numpy as np
import pytest
from llama_fixtures import save_random_tiny_gcg
from PIL import Image
from test_failures import SCORES, args, compose_cfg

from altp import runner
from altp.data.grandf import GTImage, encode_mask
from altp.manifest import write_prediction
from eval.gcg import GCGPredictionError


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_tiny_gcg(tmp_path_factory.mktemp("repair") / "weights")


def predictions(run_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((run_dir / "predictions").glob("*.json"))}


def test_fixed_images_are_retried_and_the_metrics_equal_a_clean_run(weights, tmp_path, capsys):
    data = tmp_path / "data"
    cfg = compose_cfg(*args(weights, data, tmp_path / "out"))
    split = runner.prepare_split(cfg)  # writes the synthetic images
    corrupt, resized = (split.image_path(image.image_id) for image in split.images[1:3])
    originals = {path: path.read_bytes() for path in (corrupt, resized)}
    corrupt.write_bytes(b"not a jpeg")
    Image.open(resized).resize((100, 80)).save(resized)

    first = runner.run(cfg)  # finishes: two recorded failures, metrics.json written
    run_dir = Path(first["run_dir"])
    errors = [json.loads(line) for line in (run_dir / "errors.jsonl").read_text().splitlines()]
    assert first["n_failed"] == 2 and (run_dir / "metrics.json").is_file()
    assert {e["image_id"] for e in errors} == {corrupt.stem, resized.stem}
    assert any("is 80x100 (HxW) but its ground truth is 192x192" in e["error"] for e in errors)

    for path, content in originals.items():
        path.write_bytes(content)
    capsys.readouterr()
    fixed = runner.run(cfg)  # metrics.json exists, but two images have no prediction: retried
    assert "already done" not in capsys.readouterr().out
    assert fixed["n_failed"] == 0 and fixed["evaluation"]["n_missing"] == 0
    assert len((run_dir / "errors.jsonl").read_text().splitlines()) == 2  # the history stays

    clean = runner.run(compose_cfg(*args(weights, data, tmp_path / "clean")))
    assert {k: fixed[k] for k in SCORES} == {k: clean[k] for k in SCORES}
    assert predictions(run_dir) == predictions(Path(clean["run_dir"]))


def test_untrusted_predictions_are_predicted_again_never_scored(weights, tmp_path, capsys, monkeypatch):
    cfg = compose_cfg(*args(weights, tmp_path / "data", tmp_path / "out", "data.limit=3"))
    reference = runner.run(cfg)
    run_dir = Path(reference["run_dir"])
    pred_dir = run_dir / "predictions"
    written = predictions(run_dir)
    truncated, edited, garbage = sorted(pred_dir.glob("*.json"))
    truncated.write_text(truncated.read_text()[:40])
    edited.write_text(json.dumps({**json.loads(edited.read_text()), "caption": "edited by hand"}))
    body = json.loads(garbage.read_text())
    size = cfg.data.generate.image_size
    body["pred_masks"] = [{"size": [size, size], "counts": "!!garbage~~"}]
    garbage.write_text(json.dumps(body))
    capsys.readouterr()

    def killed(*_):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # killed after the check, before anything is predicted again
        patch.setattr(runner, "predict_and_score", killed)
        with pytest.raises(KeyboardInterrupt):
            runner.run(cfg)  # metrics.json exists: the files are still checked against the manifest
    assert not (run_dir / "metrics.json").exists()  # it no longer describes the predictions
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3
    assert f"{truncated}: invalid JSON" in err and f"{edited}: differs from what this run wrote" in err
    assert f"{garbage}: mask 0 has RLE counts that pycocotools cannot decode" in err
    again = runner.run(cfg)
    assert predictions(run_dir) == written
    assert {k: again[k] for k in SCORES} == {k: reference[k] for k in SCORES}
    assert sorted(p.name for p in pred_dir.glob("*.rejected")) == sorted(
        p.name + ".rejected" for p in (truncated, edited, garbage))

    capsys.readouterr()
    assert runner.run(cfg) == again and "already done" in capsys.readouterr().out

    # a directory from before manifests: its checked predictions are adopted, not predicted again
    for path in [run_dir / "manifest.jsonl", run_dir / "metrics.json"]:
        path.unlink()
    batches = len((run_dir / "timing.jsonl").read_text().splitlines())
    adopted = runner.run(cfg)
    assert "3 checked predictions adopted" in capsys.readouterr().err
    assert len((run_dir / "timing.jsonl").read_text().splitlines()) == batches
    assert {k: adopted[k] for k in SCORES} == {k: reference[k] for k in SCORES}


def test_a_prediction_that_could_not_be_scored_is_never_written(tmp_path):
    image = GTImage("img", "img.jpg", 4, 6, "x", ["a"], [])
    pred_dir = tmp_path / "predictions"
    pred_dir.mkdir()
    record = {"image_id": "img", "caption": "x", "phrases": ["a"], "pred_masks": [encode_mask(np.ones((6, 4)))]}
    with pytest.raises(GCGPredictionError, match=r"img\.json: mask 0 has size \[6, 4\].*4x6"):
        write_prediction(pred_dir, record, image)
    assert [p.name for p in tmp_path.rglob("*")] == ["predictions"]  # no file, no manifest record
    record["pred_masks"] = [encode_mask(np.ones((4, 6)))]
    write_prediction(pred_dir, record, image)
    assert json.loads((pred_dir / "img.json").read_text()) == record
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 1
