"""The training-only query readout of scripts/train_tiny_gcg.py: its labels are each [SEG]'s own
phrase words, in the order of the masks, and it never ships with the weights."""

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from script_helpers import load_script

from altp.data.synthetic import VOCAB
from altp.models.tiny_gcg import TinyGCG, TinyGCGConfig


def test_readout_labels_are_each_seg_phrase_in_mask_order():
    train = load_script("train_tiny_gcg")
    model = TinyGCG(TinyGCGConfig(vocab=list(VOCAB), layers=1))
    samples = [train.curriculum_scene(0, i, 0.9, model.cfg.image_size) for i in range(3)]
    _, ids, masks, words = train.make_batch(model, samples, torch.device("cpu"))
    phrases = [p for s in samples for p in s.phrases]
    assert len(words) == len(masks) == len(phrases) == int((ids == model.tokenizer.seg_id).sum())
    decoded = [" ".join(classes[i] for classes, i in zip(train.ATTRIBUTES, row.tolist())) for row in words]
    assert decoded == phrases


def test_readout_is_trained_but_not_shipped(tmp_path):
    train = load_script("train_tiny_gcg")
    perception = tmp_path / "perception"
    torch.manual_seed(3)
    TinyGCG(TinyGCGConfig(vocab=list(VOCAB), layers=1)).save(perception)
    train.main(["--perception-from", str(perception), "--out", str(tmp_path / "w"), "--steps", "2", "--batch", "2",
                "--layers", "1", "--hidden", "32", "--heads", "2", "--intermediate", "64", "--threads", "1"])
    state = torch.load(tmp_path / "w" / "checkpoint.pt", weights_only=True)
    assert set(state["readout"]) == {f"heads.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    assert not any("readout" in key or key.startswith("heads.") for key in load_file(str(tmp_path / "w" / "model.safetensors")))


def test_probe_reads_what_queries_hold_and_nothing_else():
    probe = load_script("probe_seg_queries")
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (300,), generator=generator)
    noise = torch.randn(300, 16, generator=generator)
    holding = noise + 5 * F.one_hot(labels, 16).float()
    assert probe.probe_accuracy(holding, labels, 7) > 0.95
    assert probe.probe_accuracy(noise, labels, 7) < 0.35  # chance is 1/7


def test_object_attention_is_a_per_layer_share_of_the_attention():
    probe = load_script("probe_seg_queries")
    torch.manual_seed(0)
    model = TinyGCG(TinyGCGConfig(vocab=list(VOCAB), layers=2)).eval()
    on_object, uniform = probe.object_attention(model, 2)
    assert on_object.shape == uniform.shape == (2,)
    assert ((0 < on_object) & (on_object < 1)).all() and ((0 < uniform) & (uniform < 1)).all()
    assert torch.allclose(on_object, uniform, rtol=0.5)  # a random model spreads its attention


def test_reading_and_ranking_are_per_layer_shares():
    probe = load_script("probe_seg_queries")
    torch.manual_seed(0)
    model = TinyGCG(TinyGCGConfig(vocab=list(VOCAB), layers=2)).eval()
    implementation = model.llm.config._attn_implementation
    reading, ranking, objects = probe.reading_and_ranking(model, 2)
    assert model.llm.config._attn_implementation == implementation  # the probe's eager switch is undone
    assert reading.shape == ranking.shape == (2,) and 0 < objects < 1
    prompt_share = model.cfg.grid ** 2 / (model.cfg.grid ** 2 + 20)  # the image is most of the sequence
    assert ((0.5 * prompt_share < reading) & (reading < 1)).all()  # a random model spreads its attention
    assert ((0 <= ranking) & (ranking <= 1)).all()
    for task in probe.TASKS[1:]:  # the training tasks' prompts: another instruction, same scenes
        _, other, same_objects = probe.reading_and_ranking(model, 2, task=task)
        assert other.shape == (2,) and ((0 <= other) & (other <= 1)).all() and same_objects == objects
