"""scripts/train_tiny_gcg.py: a stopped run resumed ends with the same weights as one that never
stopped, and what it inherits from the perception folder (and what it does not)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from script_helpers import load_script

from altp.data.synthetic import VOCAB
from altp.models.tiny_gcg import TinyGCG, TinyGCGConfig

SMALL = ["--steps", "4", "--batch", "2", "--layers", "2", "--hidden", "32", "--heads", "2",
         "--intermediate", "64", "--threads", "1"]


@pytest.fixture(scope="module")
def train():
    return load_script("train_tiny_gcg")


@pytest.fixture(scope="module")
def perception(tmp_path_factory):
    torch.manual_seed(3)
    directory = tmp_path_factory.mktemp("perception")
    TinyGCG(TinyGCGConfig(vocab=list(VOCAB), layers=1)).save(directory)
    return directory


def weights(directory: Path) -> dict:
    return load_file(str(directory / "model.safetensors"))


@pytest.mark.parametrize("adapt", [[], ["--lora-rank", "2"]], ids=["whole", "lora"])
def test_resume_continues_exactly(train, perception, tmp_path, adapt):
    common = ["--perception-from", str(perception), *SMALL, *adapt]
    train.main([*common, "--out", str(tmp_path / "straight")])
    train.main([*common, "--out", str(tmp_path / "stopped"), "--stop-after", "2"])
    halfway = weights(tmp_path / "stopped")
    train.main([*common, "--out", str(tmp_path / "stopped"), "--resume"])
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "stopped")
    assert any(not torch.equal(halfway[k], resumed[k]) for k in resumed)  # it did train on
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    with pytest.raises(SystemExit, match="--lr"):  # a resume with other settings is refused
        train.main([*common, "--out", str(tmp_path / "stopped"), "--resume", "--lr", "5e-4"])
    with pytest.raises(SystemExit, match="--resume"):  # never restarts over a checkpoint
        train.main([*common, "--out", str(tmp_path / "stopped")])


def test_inherits_perception_but_no_decoder_layer(train, perception, tmp_path):
    args = train.argparse.Namespace(perception_from=perception, layers=2, hidden=128, heads=4,
                                    intermediate=384)
    model = train.build_model(args)
    source, ours = weights(perception), model.state_dict()
    for key in (k for k in ours if ours[k].dim() >= 2):  # norms and biases start equal anyway
        inherited = key.startswith(("vision.", "mask_head.", "projector.", "llm.model.embed_tokens.", "llm.lm_head."))
        same = key in source and source[key].shape == ours[key].shape and torch.equal(ours[key], source[key])
        assert same == inherited, key
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert all(p.requires_grad for p in model.llm.parameters())


def test_layout_varies_text_before_the_image_and_positions_only(train, perception):
    model = TinyGCG(TinyGCGConfig(vocab=list(VOCAB), layers=1))
    draws = [train.layout(model, 0, step, 4) for step in range(20)]
    assert draws[3][0] == train.layout(model, 0, 3, 4)[0]  # deterministic per (seed, step)
    lengths = {len(prefix) for prefix, _ in draws}
    assert len(lengths) > 5 and max(lengths) <= train.MAX_PREFIX
    offsets = torch.cat([o for _, o in draws])
    assert offsets.min() >= 0 and offsets.max() <= train.MAX_OFFSET and len(offsets.unique()) > 20
    prompt_words = set(model.tokenizer.encode(f"{train.SYSTEM_TEXT} {train.INSTRUCTION}"))
    assert all(set(prefix) <= prompt_words for prefix, _ in draws)


def test_training_forward_is_the_inference_forward(train):
    """Teacher-forced on the packaged model's own greedy answer (plain prompt, offset 0), the
    training forward predicts every answer token the engine generated: what is trained is
    what runs."""
    from altp.data.synthetic import render_scene, scene_seed
    from altp.engine import PruningEngine
    from altp.models.tiny_gcg import load_tiny_gcg
    from altp.pruning import NoPruning

    model = load_tiny_gcg().eval()
    scenes = [render_scene(scene_seed(0, "val", i), model.cfg.image_size, 1, 6) for i in range(2)]
    with torch.no_grad():
        inputs, _ = model.engine_inputs([s.image for s in scenes], None)
        out = PruningEngine(model.llm, NoPruning()).generate(inputs, 64, eos_token_id=model.tokenizer.eos_id)
        for b, scene in enumerate(scenes):
            answer = out.tokens[b, :out.lengths[b]][None]
            states, _ = train.answer_states(model, model.pixels([scene.image]), answer, [], torch.zeros(1, 1, dtype=torch.long))
            assert answer.shape[1] > 10
            assert torch.equal(model.llm.lm_head(states).argmax(-1), answer)


def test_grown_model_starts_as_its_source_and_trains_its_new_layers(train, perception, tmp_path):
    """--grow-from: the deeper model computes exactly what the shallower one did (added layers
    are identities until trained), then trains every layer; a width mismatch is refused."""
    train.main(["--perception-from", str(perception), *SMALL, "--out", str(tmp_path / "shallow")])
    args = train.argparse.Namespace(grow_from=tmp_path / "shallow", layers=4, hidden=32, heads=2, intermediate=64)
    grown, source = train.grow_model(args).eval(), train.load_tiny_gcg(tmp_path / "shallow").eval()
    ids = torch.tensor([[5, 7, 9, 3]])
    with torch.no_grad():
        assert torch.allclose(grown.llm(ids).logits, source.llm(ids).logits, atol=1e-6)
    assert len(grown.llm.model.layers) == 4 and not any(p.requires_grad for p in grown.vision.parameters())
    train.main(["--grow-from", str(tmp_path / "shallow"), *SMALL, "--layers", "4", "--out", str(tmp_path / "deep")])
    added = weights(tmp_path / "deep")["llm.model.layers.3.self_attn.o_proj.weight"]
    assert added.abs().sum() > 0  # the identity layers learned something
    with pytest.raises(SystemExit, match="width"):
        train.grow_model(train.argparse.Namespace(**{**vars(args), "hidden": 64}))


def test_short_caption_task_keeps_the_vocabulary_and_starts_with_the_image(train):
    """The second task's prompt needs no new word, its answer's first word is the first object's
    size (so the last prompt token has to look at the image), and its steps are a fixed draw."""
    from altp.data.synthetic import render_scene, scene_seed

    model = TinyGCG(TinyGCGConfig(vocab=list(VOCAB), layers=1))
    assert model.tokenizer.unk_id not in model.tokenizer.prompt_ids(instruction=train.SHORT_INSTRUCTION)
    scene = render_scene(scene_seed(0, "train", 5), 192, 3, 3)
    answer = train.short_answer(scene.phrases)
    assert answer.split()[0] == scene.phrases[0].split()[0] and answer.count(" and ") == 1
    assert model.tokenizer.unk_id not in model.tokenizer.encode(answer)
    draws = [train.step_task(0, step, 0.3) for step in range(400)]
    assert draws == [train.step_task(0, step, 0.3) for step in range(400)] and set(draws) == {"short", "gcg"}
    assert 0.2 < draws.count("short") / 400 < 0.4 and {train.step_task(0, s, 0.0) for s in range(400)} == {"gcg"}
    mixed = [train.step_task(0, step, 0.3, 0.2) for step in range(400)]
    assert [d == "short" for d in mixed] == [d == "short" for d in draws]  # a question share leaves them
    assert 0.1 < mixed.count("question") / 400 < 0.3


def test_object_question_names_one_object_its_answer_needs_the_image(train):
    """The third task asks about an object by colour and shape (no new word; unique in the
    scene), and the answer's first word, its size, is not in the question."""
    from altp.data.synthetic import render_scene, scene_seed

    model = TinyGCG(TinyGCGConfig(vocab=list(VOCAB), layers=1))
    asked = set()
    for index in range(20):
        scene = render_scene(scene_seed(0, "train", index), 192, 1, 6)
        question, answer = train.object_question(scene.phrases, 0, 7, index)
        assert (question, answer) == train.object_question(scene.phrases, 0, 7, index)  # a fixed draw
        size, colour, shape = answer.split()[:3]
        assert answer.split()[3:] == ["."] and f"{size} {colour} {shape}" in scene.phrases
        assert question.split()[2:4] == [colour, shape] and size not in question.split()
        assert sum(p.split()[1:] == [colour, shape] for p in scene.phrases) == 1
        assert model.tokenizer.unk_id not in model.tokenizer.prompt_ids(instruction=question)
        asked.add(answer)
    assert len(asked) > 10


def test_language_tasks_train_with_per_sample_questions(train, perception, tmp_path):
    """A run with all three tasks trains (per-sample questions batch together) and resumes
    only with the same shares."""
    common = ["--perception-from", str(perception), *SMALL, "--short-caption", "0.3", "--object-question", "0.5",
              "--out", str(tmp_path / "tasks")]
    train.main(common)
    assert (tmp_path / "tasks" / "model.safetensors").exists()
    with pytest.raises(SystemExit, match="--object-question"):
        train.main([*common, "--resume", "--object-question", "0.4"])


def test_layer_drop_skips_deeper_layers_more_and_restores_the_model(train, perception):
    assert train.dropped_layers(0, 5, 16, 0.0) == []
    draws = [train.dropped_layers(0, step, 16, 0.5) for step in range(400)]
    assert draws[7] == train.dropped_layers(0, 7, 16, 0.5)  # a fixed draw per step: resume is exact
    rate = [sum(i in dropped for dropped in draws) / len(draws) for i in range(16)]
    assert rate[0] == 0 and abs(rate[15] - 0.5) < 0.08 and abs(rate[8] - 0.5 * 8 / 15) < 0.08

    torch.manual_seed(0)
    model = TinyGCG(TinyGCGConfig(vocab=list(VOCAB), layers=3, hidden=32, heads=2, intermediate=64)).eval()
    embeds = torch.randn(1, 5, 32)
    layers = model.llm.model.layers
    with train.skipping(model, [1]):
        skipped = model.llm.model(inputs_embeds=embeds).last_hidden_state
    assert model.llm.model.layers is layers
    # the same as a model whose layer 1 adds nothing to the residual stream
    torch.nn.init.zeros_(layers[1].self_attn.o_proj.weight)
    torch.nn.init.zeros_(layers[1].mlp.down_proj.weight)
    torch.testing.assert_close(skipped, model.llm.model(inputs_embeds=embeds).last_hidden_state)


def test_lora_stage_trains_adapters_not_layers_and_saves_them_merged(train, perception, tmp_path):
    train.main(["--perception-from", str(perception), *SMALL, "--out", str(tmp_path / "base")])
    train.main(["--grow-from", str(tmp_path / "base"), *SMALL, "--lora-rank", "2", "--out", str(tmp_path / "adapted")])
    base, adapted = weights(tmp_path / "base"), weights(tmp_path / "adapted")
    assert base.keys() == adapted.keys()  # merged: no adapter keys in the shipped layout
    changed = {k for k in base if k.startswith("llm.model.layers.") and not torch.equal(base[k], adapted[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    for frozen in ("projector.", "llm.model.norm.", "vision."):  # GLaMM keeps these frozen under LoRA
        assert all(torch.equal(base[k], adapted[k]) for k in base if k.startswith(frozen))
    for trained in ("text_hidden_fcs.", "mask_head.", "llm.lm_head."):
        assert any(not torch.equal(base[k], adapted[k]) for k in base if k.startswith(trained))


def test_merged_lora_computes_what_the_adapted_model_computes():
    lora_script = load_script("lora")
    torch.manual_seed(0)
    model = TinyGCG(TinyGCGConfig(vocab=list(VOCAB), layers=2, hidden=32, heads=2, intermediate=64)).eval()
    embeds = torch.randn(1, 7, 32)
    plain = model.llm.model(inputs_embeds=embeds).last_hidden_state
    lora = lora_script.LoRA(model, 2)
    assert torch.equal(model.llm.model(inputs_embeds=embeds).last_hidden_state, plain)  # B = 0 at the start
    for pair in lora.adapters.values():
        torch.nn.init.normal_(pair[1].weight)
    adapted = model.llm.model(inputs_embeds=embeds).last_hidden_state
    merged = lora.merged(model).llm.model(inputs_embeds=embeds).last_hidden_state
    assert not torch.allclose(adapted, plain, atol=1e-3)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.llm.model(inputs_embeds=embeds).last_hidden_state, adapted)  # the source keeps its hooks
