"""tiny_gcg: prompt layout, weight round trip, and GCG post-processing of generated ids."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from altp.data.synthetic import VOCAB
from altp.engine import GenerationOutput
from altp.models.tiny_gcg import INSTRUCTION, SYSTEM_TEXT, TinyGCG, TinyGCGConfig, load_tiny_gcg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyGCG(TinyGCGConfig(vocab=list(VOCAB), layers=2)).eval()


def test_prompt_has_text_before_and_after_one_image_slot(model):
    tok = model.tokenizer
    ids = tok.prompt_ids()
    assert ids.count(tok.image_id) == 1 and ids[0] == tok.bos_id
    slot = ids.index(tok.image_id)
    assert tok.decode(ids[1:slot - 1]) == SYSTEM_TEXT and tok.decode(ids[slot + 2:]) == INSTRUCTION
    inputs, _ = model.engine_inputs([np.zeros((192, 192, 3), np.uint8)])
    assert inputs.inputs_embeds.shape[1] == len(ids) - 1 + 576 and int(inputs.visual_start[0]) == slot


class ScriptedEngine:
    """Stands in for PruningEngine: 'generates' a fixed answer with known hidden states."""

    def __init__(self, model, answer):
        self.ids = model.tokenizer.encode(answer) + [model.tokenizer.eos_id]
        self.hidden = torch.randn(1, len(self.ids), model.cfg.hidden, generator=torch.Generator().manual_seed(1))

    def generate(self, inputs, max_new_tokens, eos_token_id=None):
        tokens = torch.tensor([self.ids])
        return GenerationOutput(tokens, [len(self.ids)], self.hidden, None, None, [], [], [], {})


def test_predict_cleans_the_caption_and_decodes_one_mask_per_seg(model):
    answer = "The image shows a <p> small red circle </p> [SEG] and a <p> large blue star </p> [SEG] ."
    engine = ScriptedEngine(model, answer)
    image = Image.fromarray(np.full((100, 150, 3), 128, np.uint8))  # not the model's 192 x 192
    (prediction,), _ = model.predict([image], engine, max_new_tokens=32)
    assert prediction.caption == "The image shows a small red circle and a large blue star ."
    assert prediction.phrases == ["small red circle", "large blue star"]
    assert len(prediction.masks) == 2 and all(m.shape == (100, 150) and m.dtype == bool for m in prediction.masks)
    # each mask comes from the hidden state of the step that produced its [SEG]
    steps = [t for t, i in enumerate(engine.ids) if i == model.tokenizer.seg_id]
    _, encoded = model.engine_inputs([np.asarray(image.resize((192, 192), Image.BILINEAR))])
    with torch.no_grad():
        logits = model.mask_logits(engine.hidden[0, steps], encoded, torch.zeros(2, dtype=torch.long))
    expected = F.interpolate(logits[:, None], size=(100, 150), mode="bilinear", align_corners=False)[:, 0] > 0
    assert np.array_equal(np.stack(prediction.masks), expected.numpy())


def test_weights_round_trip_and_missing_file(model, tmp_path):
    model.save(tmp_path / "w", card={"seed": 0})
    loaded = load_tiny_gcg(tmp_path / "w")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    (tmp_path / "w" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_tiny_gcg(tmp_path / "w")


@pytest.mark.slow
def test_packaged_weights_reproduce_their_card(tmp_path):
    """The shipped model, run as `python run.py` runs it, scores what its card says (unpruned,
    synthetic val): catches any drift in the model code, the engine, the data or the evaluator."""
    import json

    from hydra import compose, initialize_config_dir

    from altp.models.tiny_gcg import WEIGHTS_DIR
    from altp.runner import CONFIG_DIR, run

    card = json.loads((WEIGHTS_DIR / "card.json").read_text())["unpruned_synthetic_val"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("config", overrides=[f"output_root={tmp_path}", "progress=false"])
    metrics = run(cfg)
    for name, value in card.items():
        assert metrics[name] == pytest.approx(value, abs=2e-3), name  # a flipped greedy token or two at most


def test_encoder_view_is_the_image_the_pruner_sees(model):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8))
    inputs, _ = model.engine_inputs([model.resized(image)], prepared=["state"])
    assert np.array_equal(model.encoder_view(image), inputs.images[0]) and inputs.prepared == ["state"]
    assert model.grid == (24, 24)
