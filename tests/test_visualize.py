"""scripts/visualize.py end to end: a random tiny model, three synthetic images, one PNG each."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from altp.data.synthetic import VOCAB
from altp.models.tiny_gcg import TinyGCG, TinyGCGConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("visualize")
    TinyGCG(TinyGCGConfig(vocab=list(VOCAB))).eval().save(tmp / "model")
    return tmp, [f"model.weights={tmp / 'model'}", f"data.root={tmp / 'data'}",
                 "data.generate.n_val=3", "data.generate.n_test=1", "max_new_tokens=8",
                 f"output_root={tmp / 'out'}"]


def visualize(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "scripts/visualize.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def check_png(path: Path, min_width: int) -> None:
    assert path.is_file()
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width and image.height >= 300


def test_altp_figure_default_path(setup):
    tmp, common = setup
    proc = visualize("pruner=altp", "keep=0.25", *common)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path == tmp / "out" / "figures" / "tiny_gcg_altp_keep0.25_syn_val_000000.png"
    check_png(path, min_width=1500)  # five panels


def test_fastv_figure_explicit_image_and_out(setup):
    tmp, common = setup
    out = tmp / "fastv.png"
    proc = visualize("pruner=fastv", "keep=0.25", "image=syn_val_000001", f"out={out}", *common)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    check_png(out, min_width=900)  # three panels


def test_unknown_image_is_one_line_exit_2(setup):
    tmp, common = setup
    proc = visualize("pruner=altp", "keep=0.25", "image=no_such_image", *common)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_image" in lines[0]
    assert not (tmp / "out" / "figures" / "tiny_gcg_altp_keep0.25_no_such_image.png").exists()
