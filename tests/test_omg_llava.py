"""OMG-LLaVA GCG on a tiny folder in the released layout (tests/omg_fixtures.py).

Loading (every released tensor lands in the module, the LoRA-merged ``wqkv`` split checked by
hand; each broken file one clear error naming it), the splice (pixel tokens, then the separator
and the K object tokens, which pruning never touches), left padding over different K, the
one-position-shifted [SEG] gather (against a full no-cache forward), mask cropping, question
retries, and ``run.py model=omg_llava`` end to end with none / pdrop / altp.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omg_fixtures import (
    ANSWER_PIECES,
    CLASS_FILE,
    GCG_FILE,
    IMAGE_SIZE,
    LLM,
    LLM_DIR,
    SEG_FILE,
    loader_kwargs,
    make_tiny_omg_llava,
)
from PIL import Image
from pycocotools import mask as mask_utils
from safetensors.torch import load_file
from script_helpers import load_script

from altp.data.synthetic import render_scene
from altp.engine import GenerationOutput, PruningEngine
from altp.models.omg_llava import (
    CheckpointError,
    check_files,
    convnext,
    load_omg_llava,
    mask2former,
    pixel_decoder,
)
from altp.models.omg_llava.internlm2 import LORA_SCALE, PTH_PREFIX
from altp.models.omg_llava.model import SUPERPIXEL_SIZE
from altp.models.omg_llava.prompt import IMAGE_TOKEN_INDEX
from altp.runner import ConfigError, run, validate
from baselines.fastv import FastV
from baselines.random_keep import RandomKeep

ROOT = Path(__file__).resolve().parents[1]
N_VISUAL, KEEP = 16, 4  # 4 x 4 grid at image_size 256; floor(0.25 * 16)
TINY_LLM = [f"model.llm.layers={LLM['layers']}", f"model.llm.hidden={LLM['hidden']}",
            f"model.llm.ffn={LLM['ffn']}", "model.llm.pdrop_layers=[1,2]"]  # 2 stages fit 4 layers


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_tiny_omg_llava(tmp_path_factory.mktemp("omg") / "omg_llava")


@pytest.fixture(scope="module")
def model(folder):
    return load_omg_llava(**loader_kwargs(folder))


def scene(seed: int = 0) -> Image.Image:
    return Image.fromarray(render_scene(seed, image_size=192).image)


def token_id(model, piece: str) -> int:
    return model.tokenizer.convert_tokens_to_ids(piece)


# --- loading -------------------------------------------------------------------------------
def test_loading_reproduces_every_released_tensor(folder, model):
    seg = torch.load(folder / SEG_FILE, weights_only=True)["state_dict"]
    gcg = torch.load(folder / GCG_FILE, weights_only=True)
    perception = model.perception
    loaded = {**convnext.released_state_dict(perception.backbone),
              **pixel_decoder.released_state_dict(perception.pixel_decoder),
              **mask2former.released_state_dict(perception.head)}
    for key, value in seg.items():
        if key == "panoptic_head.iou_embed.weight":  # no inference role: skipped
            continue
        assert torch.equal(loaded[key], value), key
    assert len(seg) - 1 + sum(k.startswith("visual_encoder.") for k in gcg) == len(loaded)
    parts = {"projector.model.": model.projector.state_dict(),
             "projector_text2vision.model.": model.text2vision.state_dict(),
             mask2former.LLM_PREFIX: perception.head.state_dict()}
    for key, value in gcg.items():
        prefix = next((p for p in parts if key.startswith(p)), None)
        if prefix is not None:
            assert torch.equal(parts[prefix][key[len(prefix):]], value), key
    # class embeddings: [dim, classes + background, prototypes], zero background last
    embed = torch.load(folder / CLASS_FILE, weights_only=True)
    cls = perception.head.cls_embed
    assert torch.equal(cls[:, :-1], embed.permute(2, 0, 1)) and not cls[:, -1].any()
    assert perception.head.transformer_decoder_llm is not None

    # LLM: resized embeddings and head from the .pth, LoRA merged by hand (scale 0.5)
    base = {}
    for shard in sorted((folder / LLM_DIR).glob("*.safetensors")):
        base.update(load_file(str(shard)))
    pth = {k[len(PTH_PREFIX):].replace(".default.", ".").replace(".base_layer.", "."): v.float()
           for k, v in gcg.items() if k.startswith(PTH_PREFIX)}
    llm = model.llm.state_dict()

    def merged(stem: str, weight: torch.Tensor) -> torch.Tensor:
        return weight.float() + LORA_SCALE * pth[stem + ".lora_B.weight"] @ pth[stem + ".lora_A.weight"]

    assert torch.equal(llm["model.embed_tokens.weight"], pth["model.tok_embeddings.weight"])
    torch.testing.assert_close(llm["lm_head.weight"], merged("output", pth["output.weight"]))
    heads, kv, d = LLM["heads"], LLM["kv_heads"], LLM["hidden"]
    groups, head_dim = heads // kv, d // heads
    torch.testing.assert_close(llm["model.norm.weight"], base["model.norm.weight"].float())
    for i in range(LLM["layers"]):
        p, q = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        wqkv = merged(p + "attention.wqkv", base[p + "attention.wqkv.weight"]).view(kv, groups + 2, head_dim, d)
        torch.testing.assert_close(llm[q + "q_proj.weight"], wqkv[:, :groups].reshape(heads * head_dim, d))
        torch.testing.assert_close(llm[q + "k_proj.weight"], wqkv[:, groups].reshape(kv * head_dim, d))
        torch.testing.assert_close(llm[q + "v_proj.weight"], wqkv[:, groups + 1].reshape(kv * head_dim, d))
        for ours, theirs in (("self_attn.o_proj", "attention.wo"), ("mlp.gate_proj", "feed_forward.w1"),
                             ("mlp.up_proj", "feed_forward.w3"), ("mlp.down_proj", "feed_forward.w2")):
            torch.testing.assert_close(llm[p + ours + ".weight"], merged(p + theirs, base[p + theirs + ".weight"]))
        torch.testing.assert_close(llm[p + "input_layernorm.weight"], base[p + "attention_norm.weight"].float())
        torch.testing.assert_close(llm[p + "post_attention_layernorm.weight"], base[p + "ffn_norm.weight"].float())
    assert model.details["lora_modules_merged"] == 5 * LLM["layers"] + 1
    assert model.llm.config.vocab_size == len(model.tokenizer) - 1  # <mark> has no row
    assert model.image_size == IMAGE_SIZE and model.grid == (4, 4) and model.n_visual == N_VISUAL


def test_without_the_gcg_decoder_seg_uses_the_original(tmp_path):
    root = make_tiny_omg_llava(tmp_path / "plain", gcg_decoder=False)
    head = load_omg_llava(**loader_kwargs(root)).perception.head
    assert head.transformer_decoder_llm is None and head.mask_embed_llm is None


def _edit(path: Path, edit, key: str | None = "state_dict") -> None:
    state = torch.load(path, weights_only=True)
    edit(state[key] if key else state)
    torch.save(state, path)


BROKEN = {  # what breaks, and the file the one-line message must name
    "missing projector key": (GCG_FILE, lambda r: _edit(r / GCG_FILE, lambda s: s.pop(
        "projector.model.model_feat.2.bias"), None), "projector.model.model_feat.2.bias"),
    "missing lora key": (GCG_FILE, lambda r: _edit(r / GCG_FILE, lambda s: s.pop(
        PTH_PREFIX + "model.layers.1.feed_forward.w2.lora_B.default.weight"), None), "missing keys"),
    "missing [SEG] decoder key": (GCG_FILE, lambda r: _edit(r / GCG_FILE, lambda s: s.pop(
        mask2former.LLM_PREFIX + "mask_embed_llm.4.bias"), None), "mask_embed_llm.4.bias"),
    "wrong backbone shape": (SEG_FILE, lambda r: _edit(r / SEG_FILE, lambda s: s.update(
        {"backbone.stem.0.weight": torch.zeros(8, 3, 4, 5)})), "backbone.stem.0.weight"),
    "wrong head shape": (SEG_FILE, lambda r: _edit(r / SEG_FILE, lambda s: s.update(
        {"panoptic_head.mask_embed.2.bias": torch.zeros(7)})), "shape mismatches"),
    "missing pixel decoder key": (SEG_FILE, lambda r: _edit(r / SEG_FILE, lambda s: s.pop(
        "panoptic_head.pixel_decoder.mask_feature.bias")), "mask_feature.bias"),
    "no class embeddings": (CLASS_FILE, lambda r: (r / CLASS_FILE).unlink(), "missing"),
    "no .pth": (GCG_FILE, lambda r: (r / GCG_FILE).unlink(), "missing"),
    "other tokenizer": (LLM_DIR, lambda r: _edit(r / GCG_FILE, lambda s: s.update(
        {PTH_PREFIX + k: s[PTH_PREFIX + k][:-1] for k in ("model.tok_embeddings.weight", "output.base_layer.weight",
                                                          "output.lora_B.default.weight")}), None), "embeds"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_files_are_one_line_naming_the_file(folder, tmp_path, case):
    broken = tmp_path / "omg"
    shutil.copytree(folder, broken)
    name, breaks, what = BROKEN[case]
    breaks(broken)
    with pytest.raises(CheckpointError) as err:
        load_omg_llava(**loader_kwargs(broken))
    message = str(err.value)
    assert "\n" not in message and name in message and what in message, message


def test_base_weights_auto_plain_nf4(folder, model):
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    assert model.deviations["llm_base_weights"] == ("nf4-dequantized" if has_bnb else "original")  # auto
    with pytest.raises(ValueError, match="choose auto, plain or nf4"):
        load_omg_llava(**loader_kwargs(folder), base_weights="nf5")
    if not has_bnb:
        with pytest.raises(ValueError, match=r"nf4 needs bitsandbytes: pip install"):
            load_omg_llava(**loader_kwargs(folder), base_weights="nf4")


def test_check_files_and_preflight_name_the_missing_file(folder, tmp_path):
    args = {k: v for k, v in loader_kwargs(folder).items()
            if k in ("llm_dir", "seg_weights", "class_embeddings", "checkpoint")}
    assert check_files(**args) is None
    broken = tmp_path / "omg"
    shutil.copytree(folder, broken)
    (broken / CLASS_FILE).unlink()
    (broken / LLM_DIR / "tokenizer.model").unlink()
    message = check_files(**{k: v.replace(str(folder), str(broken)) for k, v in args.items()})
    assert "\n" not in message and CLASS_FILE in message and "tokenizer.model" in message
    assert SEG_FILE not in message and "zhangtao-whu/OMG-LLaVA" in message
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("config", overrides=["model=omg_llava", f"model.root={broken}", *TINY_LLM,
                                           f"output_root={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match=CLASS_FILE):
        validate(cfg)


def test_run_py_without_root_is_a_one_line_config_error(tmp_path):
    proc = subprocess.run([sys.executable, "run.py", "model=omg_llava", f"output_root={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: model.root=None: folder not found")
    assert "zhangtao-whu/OMG-LLaVA" in lines[0]


# --- splice, pruning, padding --------------------------------------------------------------
@torch.no_grad()
def test_splice_pixel_tokens_then_separator_and_objects(model):
    inputs, encoded = model.engine_inputs([scene(0)])
    k = int(encoded.valid.sum())
    assert 1 <= k <= encoded.valid.shape[1]  # K: the queries that win >= 1 grid cell
    ids = model.question_ids[0]
    start = ids.index(IMAGE_TOKEN_INDEX)
    text = len(ids) - 1
    embeds = inputs.inputs_embeds[0]
    assert embeds.shape[0] == text + N_VISUAL + 1 + k and int(inputs.visual_start[0]) == start
    assert inputs.n_visual == N_VISUAL and inputs.grid == (4, 4) and inputs.attention_mask.all()
    pixels, objects = model.projector(encoded.pixel_tokens, encoded.object_features, encoded.valid)
    assert torch.equal(embeds[start:start + N_VISUAL], pixels[0])
    assert torch.equal(embeds[start + N_VISUAL], model.projector.seperate_embed.weight[0])
    assert torch.equal(embeds[start + N_VISUAL:start + N_VISUAL + 1 + k], objects[0])
    embed = model.llm.model.embed_tokens.weight
    assert torch.equal(embeds[start - 1], embed[ids[start - 1]])
    assert torch.equal(embeds[start + N_VISUAL + 1 + k], embed[ids[start + 1]])
    side = SUPERPIXEL_SIZE  # the padded square ALTP segments
    assert inputs.images[0].shape == (side, side, 3) and 0 <= inputs.images[0].min() <= inputs.images[0].max() <= 1


@pytest.mark.parametrize("pruner", [FastV(keep=0.25, layer=2), RandomKeep(keep=0.25, layer=2, seed=1)],
                         ids=["fastv", "random"])
@torch.no_grad()
def test_pruning_counts_pixel_tokens_and_keeps_separator_and_objects(model, pruner):
    inputs, encoded = model.engine_inputs([scene(0)])
    k = int(encoded.valid.sum())
    text = len(model.question_ids[0]) - 1
    out = PruningEngine(model.llm, pruner).generate(inputs, 3, eos_token_id=model.stop_ids)
    assert out.visual_per_layer == [N_VISUAL] * 2 + [KEEP] * (LLM["layers"] - 2)
    full, pruned = text + N_VISUAL + 1 + k, text + KEEP + 1 + k
    assert out.tokens_per_layer == [full] * 2 + [pruned] * (LLM["layers"] - 2)
    (kept,) = out.kept_grid_index
    assert kept.shape == (1, KEEP) and 0 <= int(kept.min()) and int(kept.max()) < N_VISUAL


@torch.no_grad()
def test_left_padding_over_different_k_matches_batch_one(model):
    images = [scene(0), scene(2)]
    inputs, encoded = model.engine_inputs(images)
    ks = encoded.valid.sum(1).tolist()
    assert ks[0] < ks[1]  # these two scenes differ in K, so the first is left-padded
    pad = ks[1] - ks[0]
    start = model.question_ids[0].index(IMAGE_TOKEN_INDEX)
    assert inputs.attention_mask[0, :pad].sum() == 0 and inputs.attention_mask[0, pad:].all()
    assert inputs.attention_mask[1].all() and inputs.visual_start.tolist() == [pad + start, start]
    engine = PruningEngine(model.llm)
    batch, out = model.predict(images, engine, 12)
    for b, image in enumerate(images):
        (alone,), out_alone = model.predict([image], engine, 12)
        assert out.lengths[b] == out_alone.lengths[0]
        assert out.tokens[b, :out.lengths[b]].tolist() == out_alone.tokens[0, :out_alone.lengths[0]].tolist()
        torch.testing.assert_close(model.seg_states(out, b)[1], model.seg_states(out_alone, 0)[1],
                                   atol=1e-4, rtol=1e-4)
        assert batch[b].caption == alone.caption and batch[b].phrases == alone.phrases
        assert len(batch[b].masks) == len(alone.masks) == 1
        assert (batch[b].masks[0] == alone.masks[0]).mean() > 0.999


# --- [SEG] states and masks ----------------------------------------------------------------
def test_seg_states_pick_the_next_position_and_drop_a_final_seg(model):
    seg, im_end, word = model.seg_token_id, token_id(model, "<|im_end|>"), token_id(model, "▁red")
    tokens = torch.tensor([[word, seg, word, seg, im_end, im_end],    # [SEG] at 1 and 3, then stop
                           [word, word, seg, word, word, seg]])       # ran out of tokens on a [SEG]
    hidden = torch.arange(2 * 6, dtype=torch.float32).view(2, 6, 1).expand(2, 6, 3)
    out = GenerationOutput(tokens=tokens, lengths=[5, 6], hidden=hidden, logits=None, prefill_logits=None,
                           visual_per_layer=[], tokens_per_layer=[], kept_grid_index=[])
    ids, states = model.seg_states(out, 0)
    assert ids == [word, seg, word, seg] and states[:, 0].tolist() == [2.0, 4.0]
    ids, states = model.seg_states(out, 1)
    assert ids == [word, word, seg, word, word, seg] and states[:, 0].tolist() == [9.0]


@torch.no_grad()
def test_seg_state_is_the_state_whose_input_is_seg(model):
    """Against a full no-cache forward of prompt + answer (upstream ``get_seg_hidden_states``)."""
    inputs, _ = model.engine_inputs([scene(1)])
    out = PruningEngine(model.llm).generate(inputs, 12, eos_token_id=model.stop_ids)
    generated = out.tokens[0, :out.lengths[0]]
    assert generated.tolist() == [token_id(model, p) for p in ANSWER_PIECES]
    answer = model.llm.model.embed_tokens(generated[:-1])[None]
    states = model.llm.model(inputs_embeds=torch.cat([inputs.inputs_embeds, answer], 1)).last_hidden_state[0]
    t = generated.tolist().index(model.seg_token_id)
    _, picked = model.seg_states(out, 0)
    torch.testing.assert_close(picked[0], states[inputs.inputs_embeds.shape[1] + t], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [(150, 100), (100, 150)])  # (width, height): wide, tall
@torch.no_grad()
def test_masks_crop_the_centred_padding(model, monkeypatch, size):
    width, height = size
    _, encoded = model.engine_inputs([scene(0)])
    low = torch.full((1, 64, 64), -10.0)
    low[:, 16:32, :] = 10.0  # rows 37.5..75 of the 150 px square: the top quarter of the image region
    if width < height:
        low = low.transpose(1, 2)
    monkeypatch.setattr(model.perception, "segment", lambda queries, enc, index: low.expand(len(queries), -1, -1))
    (mask,) = model.masks(Image.new("RGB", size), torch.zeros(1, LLM["hidden"]), encoded, 0)
    assert mask.shape == (height, width) and mask.dtype == bool
    # per row (wide) or column (tall): the square's 37.5..75 less the 25 px of padding before the image
    along = mask.mean(1) if width > height else mask.mean(0)
    assert along[20:45].min() == 1 and along[:8].max() == 0 and along[55:].max() == 0
    assert model.masks(Image.new("RGB", size), torch.zeros(0, LLM["hidden"]), encoded, 0) == []


@torch.no_grad()
def test_predict_non_square_gives_original_size_masks(model):
    image = scene(3).resize((150, 100))
    (prediction,), _ = model.predict([image], PruningEngine(model.llm), 12)
    assert prediction.caption == "a red circle ." and prediction.phrases == ["red circle"]
    (mask,) = prediction.masks
    assert mask.shape == (100, 150) and mask.dtype == bool


class FirstAnswerWithoutSeg:
    """An engine whose first answer has its [SEG] replaced by <region>, as if the model had not
    segmented; later answers are the real ones."""

    def __init__(self, model):
        self.engine, self.model, self.calls = PruningEngine(model.llm), model, 0

    def generate(self, inputs, *args, **kwargs):
        out = self.engine.generate(inputs, *args, **kwargs)
        self.calls += 1
        if self.calls == 1:
            region = token_id(self.model, "<region>")
            out.tokens = torch.where(out.tokens == self.model.seg_token_id, region, out.tokens)
        return out


@torch.no_grad()
def test_retry_questions_ask_again_when_no_seg(model, monkeypatch):
    monkeypatch.setattr(model, "retry_questions", True)
    monkeypatch.setattr(model, "retries", 0)
    engine = FirstAnswerWithoutSeg(model)
    asked = []
    real = model.engine_inputs
    monkeypatch.setattr(model, "engine_inputs", lambda images, question=0, prepared=None: asked.append(question) or
                        real(images, question, prepared))
    (prediction,), _ = model.predict([scene(0)], engine, 12)
    assert asked == [0, 1] and model.retries == 1 and engine.calls == 2
    assert prediction.phrases == ["red circle"] and len(prediction.masks) == 1
    # never a [SEG]: all 6 questions asked, the last answer stands, no masks
    monkeypatch.setattr(model, "seg_token_id", token_id(model, "<mark>"))
    asked.clear()
    (prediction,), _ = model.predict([scene(0)], PruningEngine(model.llm), 12)
    assert asked == list(range(6)) and model.retries == 6 and prediction.masks == []
    assert model.deviations["retries_run"] == 6 and model.deviations["retry_questions"] is True
    monkeypatch.setattr(model, "retry_questions", False)
    asked.clear()
    model.predict([scene(0)], PruningEngine(model.llm), 12)
    assert asked == [0] and model.retries == 6
    model.begin_run()  # the runner, before each run: retries_run counts one run's retries
    assert model.retries == 0 and model.deviations["retries_run"] == 0


# --- end to end ----------------------------------------------------------------------------
def _overrides(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["model=omg_llava", f"model.root={folder}", f"model.image_size={IMAGE_SIZE}", *TINY_LLM,
            "data=synthetic", f"data.root={out / 'synthetic'}", "data.generate.n_val=2", "data.generate.n_test=1",
            "data.limit=2", f"output_root={out}", "model.max_new_tokens=12", "batch_size=2", "progress=false",
            "device=cpu", *extra]


@pytest.mark.parametrize("pruner,kept,visual", [
    ("none", [N_VISUAL], [N_VISUAL] * 4),
    ("pdrop", [6, 2], [N_VISUAL] * 2 + [6, 2]),  # FLOPs matched to FastV at keep 0.25: drops at layers 2, 3
    ("altp", [KEEP], [N_VISUAL] * 2 + [KEEP] * 2)])
def test_run_end_to_end(folder, model, tmp_path_factory, pruner, kept, visual):
    out = tmp_path_factory.mktemp("runs")
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("config", overrides=_overrides(folder, out, f"pruner={pruner}", "keep=0.25"))
    metrics = run(cfg)
    run_dir = Path(metrics["run_dir"])
    assert json.loads((run_dir / "metrics.json").read_text())["kept_tokens"] == metrics["kept_tokens"]
    assert metrics["model"] == "omg_llava" and metrics["n_images"] == 2 and metrics["n_failed"] == 0
    assert metrics["visual_tokens"] == N_VISUAL
    assert metrics["kept_tokens"] == kept and metrics["visual_per_layer"] == visual
    objects = metrics["tokens_per_layer"][0] - N_VISUAL - (len(model.question_ids[0]) - 1) - 1
    assert objects >= 1 and metrics["tokens_per_layer"][-1] == metrics["tokens_per_layer"][0] - N_VISUAL + visual[-1]
    deviations = metrics["model_deviations"]
    assert "separator and the K object tokens are always kept" in deviations["keep_counts"]
    assert deviations["lora_modules_merged"] == 5 * LLM["layers"] + 1
    records = sorted((run_dir / "predictions").glob("*.json"))
    assert len(records) == 2
    for path in records:
        record = json.loads(path.read_text())
        assert record["phrases"] == ["red circle"] and record["caption"] == "a red circle ."
        assert len(record["pred_masks"]) == len(record["phrases"])
        assert mask_utils.decode(record["pred_masks"][0]).shape == (192, 192)


def test_bench_tiny_times_every_pruner_beside_flops():
    bench = load_script("bench_omg_llava")
    result = bench.main(["--tiny", "--new-tokens", "3", "--segs", "1", "--repeats", "1", "--json"])
    assert result["pixel_tokens"] == 64 and result["object_tokens"] >= 1
    assert result["prefill_tokens"] == bench.PROMPT_TEXT + 64 + 1 + result["object_tokens"]
    assert set(result["prefill_ms"]) == {"none", "fastv", "pdrop", "altp"}
    ratios = {keep: row["flops_ratio"] for keep, row in result["prefill_ms"]["altp"].items()}
    assert ratios["0.1"] < ratios["0.25"] < ratios["1.0"] == 1
    assert result["decode_ms_per_token"] > 0 and result["end_to_end_ms"]["altp 0.1"] > 0
    ttft = result["time_to_first_token_ms"]
    assert ttft["keep"] == 0.1 and ttft["none"]["ms"] > 0 and ttft["fastv"]["ms"] > 0
    assert ttft["altp"]["prepare_ms"] > 0 and ttft["altp"]["with_prepare_ms"] > 0 and ttft["altp"]["without_prepare_ms"] > 0


def test_encoder_view_is_the_square_the_pruner_sees(model):
    images = [scene(0), scene(1).crop((0, 0, 192, 120))]
    inputs, _ = model.engine_inputs(images, prepared=["a", "b"])
    for image, square in zip(images, inputs.images):
        assert np.array_equal(model.encoder_view(image), square)
    assert inputs.prepared == ["a", "b"]
