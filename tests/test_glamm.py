"""GLaMM-GCG on a tiny checkpoint in the released layout (tests/glamm_fixtures.py).

Loading (every tensor reproduced; each broken folder one clear error), the prompt and its two id
modes, the splice positions, the one-position-shifted [SEG] gather against GLaMM's own index
arithmetic, SAM's key mapping at ViT-H size, mask post-processing, and ``run.py model=glamm``
end to end with none / fastv / altp.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from glamm_fixtures import (
    ANSWER,
    TINY,
    sam_shapes,
    tiny_tokenizer,
    write_clip,
    write_glamm_checkpoint,
)
from hydra import compose, initialize_config_dir
from PIL import Image
from pycocotools import mask as mask_utils
from script_helpers import load_script
from transformers import SamModel

from altp.data.synthetic import render_scene
from altp.engine import PruningEngine
from altp.models.glamm import CheckpointError, load_glamm
from altp.models.glamm import sam as sam_ops
from altp.models.glamm.model import resolve_dtype
from altp.models.glamm.prompt import IMAGE_TOKEN_INDEX, PROMPT, REFERENCE_IDS, build_prompt_ids
from altp.runner import ConfigError, run, validate

ROOT = Path(__file__).resolve().parents[1]
TINY_LLM = [f"model.llm.layers={TINY['layers']}", f"model.llm.hidden={TINY['hidden']}",
            f"model.llm.ffn={TINY['ffn']}", "model.llm.pdrop_layers=[1,2,3]"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("glamm")
    tensors = write_glamm_checkpoint(root / "glamm")
    clip = write_clip(root / "clip")
    return root, tensors, clip


@pytest.fixture(scope="module")
def model(folders):
    root = folders[0]
    return load_glamm(str(root / "glamm"), str(root / "clip"), dtype="float32", device="cpu")


def scene(seed=0) -> np.ndarray:
    return render_scene(seed, image_size=192).image


# --- prompt --------------------------------------------------------------------------------
def test_prompt_text_and_reference_positions():
    assert PROMPT == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions. USER: The <im_start><image><im_end> "
        "provides an overview of the picture.\nCould you please give me a detailed description of the image? "
        "Please respond with interleaved     segmentation masks for the corresponding parts of the answer. "
        "ASSISTANT:")
    assert len(REFERENCE_IDS) == 83 and REFERENCE_IDS.index(IMAGE_TOKEN_INDEX) == 36
    assert len(REFERENCE_IDS) - 1 + 576 == 658  # prefill positions; the image takes 36..611


def test_tokenizer_mode_is_the_reference_plus_transformers5_space():
    """transformers 5 keeps the space before <im_start> as '▁' (29871): docs/upstream/glamm.md §1.5, 5.23 row."""
    tokenizer = tiny_tokenizer()
    ids = build_prompt_ids(tokenizer, "tokenizer")
    assert ids == REFERENCE_IDS[:35] + [29871] + REFERENCE_IDS[35:]
    assert ids[34:40] == [450, 29871, 32000, IMAGE_TOKEN_INDEX, 32001, 8128]
    assert build_prompt_ids(tokenizer, "reference") == REFERENCE_IDS
    assert tokenizer.convert_tokens_to_ids("[SEG]") == 32004
    with pytest.raises(ValueError, match="prompt_ids=bogus"):
        build_prompt_ids(tokenizer, "bogus")


def test_reference_ids_refuse_another_vocabulary():
    tokenizer = tiny_tokenizer()

    class Shifted:  # [SEG] elsewhere: the hard-coded ids would feed the LLM the wrong tokens
        def convert_tokens_to_ids(self, token):
            return 7 if token == "[SEG]" else tokenizer.convert_tokens_to_ids(token)

    with pytest.raises(ValueError, match="GLaMM's vocabulary"):
        build_prompt_ids(Shifted(), "reference")


@torch.no_grad()
def test_splice_puts_576_clip_tokens_at_36_to_611(model):
    inputs = model.engine_inputs([scene()])
    embeds = inputs.inputs_embeds[0]
    assert embeds.shape[0] == 658 and int(inputs.visual_start[0]) == 36 and inputs.n_visual == 576
    embed = model.llm.model.embed_tokens.weight
    pixels, crops = model.clip_inputs([scene()])
    assert torch.equal(embeds[36:612], model.visual_tokens(pixels)[0])
    assert torch.equal(embeds[35], embed[32000]) and torch.equal(embeds[612], embed[32001])
    assert torch.equal(embeds[0], embed[1]) and torch.equal(embeds[657], embed[29901])
    # ALTP sees the CLIP centre crop (48 px in the tiny CLIP: same 24 x 24 grid as 336 / 14)
    assert crops[0].shape == (48, 48, 3) and 0 <= crops[0].min() and crops[0].max() <= 1


def test_clip_crops_the_centre_instead_of_padding(model):
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, 30:90] = 255  # white centre: a crop keeps only white, a pad would add black bars
    _, crops = model.clip_inputs([wide])
    assert crops[0].min() > 0.99


# --- loading -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_model(folders):
    root = folders[0]
    return load_glamm(str(root / "glamm"), str(root / "clip"), dtype="float32", device="cpu",
                      fp32_weights="full")


def _loaded_pairs(model, tensors):
    """(checkpoint key, file tensor, loaded tensor) for every tensor GLaMM-GCG uses."""
    modules = {"model.mm_projector.": model.projector.state_dict(),
               "model.text_hidden_fcs.": model.text_hidden_fcs.state_dict()}
    llm, sam = model.llm.state_dict(), model.sam.state_dict()
    for key, value in tensors.items():
        if key.endswith("rotary_emb.inv_freq") or key.startswith("model.region_encoder."):
            continue
        if key.startswith(sam_ops.PREFIX):
            loaded = sam[sam_ops.to_hf(key[len(sam_ops.PREFIX):])]
        elif key in llm:
            loaded = llm[key]
        else:
            prefix = next(p for p in modules if key.startswith(p))
            loaded = modules[prefix][key[len(prefix):]]
        yield key, value, loaded


@pytest.mark.parametrize("mode", ["bf16_rounded", "full"])
def test_loading_reproduces_every_tensor(folders, model, full_model, mode):
    """``full``: every tensor as stored; ``bf16_rounded`` (default): upstream's fp32 recipe
    (infer.py:120-135), the fp32 SAM / text_hidden_fcs / CLIP tensors rounded through bf16."""
    root, tensors, clip = folders
    model = model if mode == "bf16_rounded" else full_model

    def want(value):
        return value.to(torch.bfloat16).float() if mode == "bf16_rounded" else value.float()

    checked = rounded = 0
    for key, value, loaded in _loaded_pairs(model, tensors):
        assert loaded.dtype == torch.float32 and torch.equal(loaded, want(value)), key
        checked += 1
        rounded += value.dtype == torch.float32 and not torch.equal(want(value), value)
    llm, sam = model.llm.state_dict(), model.sam.state_dict()
    assert checked == len(llm) + len(sam) - 1 + 8  # SamModel's tied PE copy; 4 + 4 projection tensors
    assert (rounded > 0) == (mode == "bf16_rounded")  # the fixture's SAM is fp32 with non-bf16 values
    assert torch.equal(sam[sam_ops.TIED_PE[0]], sam[sam_ops.TIED_PE[1]])
    vision = clip.vision_model.state_dict()
    assert all(torch.equal(v, want(vision[k.removeprefix("vision_model.")]))
               for k, v in model.clip.state_dict().items() if v.is_floating_point())
    assert model.deviations["fp32_weights"].startswith(mode) and model.deviations["load_warnings"] == []


def test_fp32_weights_option_is_checked_and_ignored_in_bf16(folders):
    root = folders[0]
    with pytest.raises(ValueError, match="model.fp32_weights=half: choose bf16_rounded or full"):
        load_glamm(str(root / "glamm"), str(root / "clip"), dtype="float32", device="cpu", fp32_weights="half")
    bf16 = load_glamm(str(root / "glamm"), str(root / "clip"), dtype="bfloat16", device="cpu")
    assert bf16.deviations["fp32_weights"].startswith("n/a") and bf16.sam.dtype == torch.bfloat16


def test_unexpected_keys_warn_once_and_are_recorded(folders, tmp_path, caplog):
    """Upstream's from_pretrained ignores unknown keys: one warning line, not a stop."""
    root = folders[0]
    extra = tmp_path / "glamm"
    shutil.copytree(root / "glamm", extra)
    _rewrite_shard(extra, SECOND, lambda s: s.update({f"model.extra.w{i}": torch.zeros(1) for i in range(7)}))
    clip = tmp_path / "clip"
    shutil.copytree(root / "clip", clip)
    _rewrite_clip(clip, lambda s: s.update({"vision_model.extra": torch.zeros(1)}))
    with caplog.at_level("WARNING"):
        loaded = load_glamm(str(extra), str(clip), dtype="float32", device="cpu")
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"GLaMM checkpoint {extra}: ignored 7 unexpected keys: model.extra.w0")
    assert lines[0].endswith("(+2 more)") and "\n" not in lines[0]
    assert lines[1] == f"CLIP folder {clip}: ignored 1 unexpected keys: vision_model.extra"  # not the text tower
    assert loaded.deviations["load_warnings"] == lines


def test_missing_clip_key_stops_with_one_line(folders, tmp_path):
    root = folders[0]
    clip = tmp_path / "clip"
    shutil.copytree(root / "clip", clip)
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    _rewrite_clip(clip, lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=f"CLIP folder {clip}: 1 missing keys: {key}") as err:
        load_glamm(str(root / "glamm"), str(clip), dtype="float32", device="cpu")
    assert "\n" not in str(err.value)


def _rewrite_shard(folder: Path, name: str, edit) -> None:
    shard = torch.load(folder / name, weights_only=True)
    edit(shard)
    torch.save(shard, folder / name)


def _rewrite_clip(folder: Path, edit) -> None:
    """Edit the tiny CLIP's weights file, whichever format write_clip saved."""
    from safetensors.torch import load_file, save_file
    path = next(folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file())
    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    edit(state)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    else:
        torch.save(state, path)


FIRST, SECOND = "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"
LLM_KEY = "model.layers.1.mlp.up_proj.weight"
SAM_KEY = "model.grounding_encoder.mask_decoder.transformer.layers.0.norm2.weight"
BROKEN = {
    "missing shard": (lambda f: (f / SECOND).unlink(), f"1 of 2 shard\\(s\\) missing: {SECOND}"),
    "missing llm key": (lambda f: _rewrite_shard(f, FIRST, lambda s: s.pop(LLM_KEY)),
                        f"1 missing keys: {LLM_KEY}"),
    "missing sam key": (lambda f: _rewrite_shard(f, SECOND, lambda s: s.pop(SAM_KEY)),
                        f"1 missing keys: {SAM_KEY}"),
    "wrong shape": (lambda f: _rewrite_shard(f, SECOND, lambda s: s.update(
        {"model.mm_projector.0.weight": torch.zeros(32, 8)})),
                    r"model.mm_projector.0.weight \[32, 8\] in the file, \[32, 16\] expected"),
    "wrong sam shape": (lambda f: _rewrite_shard(f, SECOND, lambda s: s.update({SAM_KEY: torch.zeros(3)})),
                        f"{SAM_KEY} \\[3\\] in the file"),
    "other clip": (lambda f: (f / "config.json").write_text(
        (f / "config.json").read_text().replace('"mm_hidden_size": 16', '"mm_hidden_size": 1024')),
                   "mm_hidden_size=1024 but the CLIP folder's width is 16"),
    "no config": (lambda f: (f / "config.json").unlink(), "config.json is missing"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_checkpoint_is_one_clear_error(folders, tmp_path, case):
    root = folders[0]
    broken = tmp_path / "glamm"
    shutil.copytree(root / "glamm", broken)
    breaks, message = BROKEN[case]
    breaks(broken)
    with pytest.raises(CheckpointError, match=message) as err:
        load_glamm(str(broken), str(root / "clip"), dtype="float32", device="cpu")
    assert "\n" not in str(err.value)


def test_missing_folders_and_config(folders, tmp_path):
    with pytest.raises(CheckpointError, match="CLIP folder .* not found"):
        load_glamm(str(folders[0] / "glamm"), str(tmp_path / "none"), dtype="float32", device="cpu")
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("config", overrides=["model=glamm", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match="model.checkpoint=None: folder not found; download MBZUAI/GLaMM-GCG"):
        validate(cfg)


def test_dtype_follows_the_device():
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16


def test_sam_key_mapping_at_vit_h_size():
    """segment-anything ViT-H: 594 tensors, 641,090,864 parameters (docs/upstream/glamm.md §1.3); every one maps
    to exactly one SamModel tensor of the same shape, and back."""
    shapes = sam_shapes(width=1280, depth=32, global_blocks=(7, 15, 23, 31), grid=64, patch=16, window=14,
                        heads=16, mlp=5120, out=256, decoder_mlp=2048, iou_hidden=256)
    assert len(shapes) == 594 and sum(int(np.prod(s)) for s in shapes.values()) == 641_090_864
    config = sam_ops.sam_config(shapes)
    assert config.vision_config.num_attention_heads == 16 and config.vision_config.image_size == 1024
    assert list(config.vision_config.global_attn_indexes) == [7, 15, 23, 31]
    with torch.device("meta"):
        hf = {k: tuple(v.shape) for k, v in SamModel(config).state_dict().items()}
    mapped = {sam_ops.to_hf(k): s for k, s in shapes.items()}
    assert mapped == {k: s for k, s in hf.items() if k != sam_ops.TIED_PE[0]}
    assert all(sam_ops.to_glamm(sam_ops.to_hf(k)) == k for k in shapes)


# --- [SEG] gather and masks ----------------------------------------------------------------
@torch.no_grad()
def test_seg_state_is_glamms_one_position_shifted_gather(model):
    """Our engine's hidden[t] at a [SEG] step equals GLaMM's evaluate(): no cache, the whole
    sequence re-run, ``seg_mask = [False] * 575 + (sequences[1:] == seg)`` over the last step's
    final-norm states (docs/upstream/glamm.md §3.2 steps 5-6)."""
    inputs = model.engine_inputs([scene()])
    out = PruningEngine(model.llm).generate(inputs, 16, eos_token_id=2)
    generated = out.tokens[0, :out.lengths[0]]
    assert generated.tolist() == ANSWER
    sequences = torch.tensor(REFERENCE_IDS + generated.tolist())
    # the last step's forward: prompt (image expanded) + every generated token but the last
    answer = model.llm.model.embed_tokens(generated[:-1])[None]
    states = model.llm.model(inputs_embeds=torch.cat([inputs.inputs_embeds, answer], 1)).last_hidden_state[0]
    seg_mask = torch.cat([torch.zeros(575, dtype=torch.bool), sequences[1:] == model.seg_token_id])
    assert seg_mask.shape[0] == states.shape[0]
    steps = (generated == model.seg_token_id).nonzero()[:, 0]
    torch.testing.assert_close(out.hidden[0, steps], states[seg_mask], rtol=1e-4, atol=1e-4)
    # the state that produced [SEG] sits at </p>'s position (the token before [SEG])
    assert generated[steps - 1].tolist() == [32006]


def test_sam_pixels_resize_longest_side_and_pad():
    image = np.full((120, 200, 3), 255, np.uint8)
    pixels, resized = sam_ops.sam_pixels(image, 64)
    assert pixels.shape == (3, 64, 64) and resized == (38, 64)  # int(120 * 0.32 + 0.5)
    expected = (255 - sam_ops.PIXEL_MEAN) / sam_ops.PIXEL_STD
    torch.testing.assert_close(pixels[:, 20, 10], expected)
    assert pixels[:, 38:].abs().sum() == 0  # zero padding below the resized image


def test_mask_postprocessing_upsamples_crops_and_resizes():
    low = torch.full((2, 1, 16, 16), -5.0)
    low[:, :, :8] = 5.0  # the top half is "object"
    low[:, :, 11:] = 50.0  # rows 11.. (44.. at 64 px, beyond the 40 resized rows) are padding
    logits = sam_ops.postprocess_masks(low.to(torch.bfloat16), 64, (40, 64), (75, 120))
    assert logits.dtype == torch.float32 and logits.shape == (2, 75, 120)
    up = F.interpolate(low.float(), (64, 64), mode="bilinear", align_corners=False)[..., :40, :64]
    torch.testing.assert_close(logits, F.interpolate(up, (75, 120), mode="bilinear", align_corners=False)[:, 0])
    mask = (logits > 0)[0]
    assert mask[:30].all() and not mask[-10:].any()  # the padding's 50s are cropped away


@torch.no_grad()
def test_predict_masks_come_from_the_seg_states(model):
    images = [Image.fromarray(scene(1)), Image.fromarray(scene(2)).resize((150, 100))]
    engine = PruningEngine(model.llm)
    (first, second), out = model.predict(images, engine, 16)
    assert first.caption == second.caption == "A picture." and first.phrases == ["picture"]
    assert len(second.masks) == 1 and second.masks[0].shape == (100, 150) and second.masks[0].dtype == bool
    expected = model.mask_logits(np.asarray(images[1]), out.hidden[1, [4]]) > 0
    assert np.array_equal(second.masks[0], expected[0].numpy()) and 0 < second.masks[0].mean() < 1


# --- end to end ----------------------------------------------------------------------------
def _overrides(root: Path, *extra: str) -> list[str]:
    return ["model=glamm", f"model.checkpoint={root / 'glamm'}", f"model.clip={root / 'clip'}", *TINY_LLM,
            f"data.root={root / 'synthetic'}", "data.generate.n_val=3", "data.generate.n_test=1",
            f"output_root={root / 'out'}", "model.max_new_tokens=12", "batch_size=2", "progress=false",
            "device=cpu", *extra]


def _check_run(metrics: dict, kept: list[int]) -> None:
    assert metrics["model"] == "glamm" and metrics["n_images"] == 3 and metrics["n_failed"] == 0
    assert metrics["kept_tokens"] == kept and metrics["dtype"] == "torch.float32"
    for path in sorted(Path(metrics["run_dir"], "predictions").glob("*.json")):
        record = json.loads(path.read_text())
        assert record["caption"] == "A picture." and record["phrases"] == ["picture"]
        (rle,) = record["pred_masks"]
        assert rle["size"] == [192, 192] and mask_utils.decode(rle).any()


@pytest.mark.parametrize("pruner,kept", [("none", [576]), ("fastv", [57])])
def test_run_in_process(folders, pruner, kept):
    root = folders[0]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("config", overrides=_overrides(root, f"pruner={pruner}", "keep=0.1"))
    _check_run(run(cfg), kept)


def test_run_py_with_altp(folders):
    root = folders[0]
    proc = subprocess.run([sys.executable, "run.py", *_overrides(root, "pruner=altp", "keep=0.1")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(next((root / "out").glob("runs/*/glamm/altp/keep0.1/metrics.json")).read_text())
    _check_run(metrics, [57])
    assert metrics["visual_per_layer"] == [576, 576] + [57] * (TINY["layers"] - 2)


def test_bench_tiny_runs_every_pruner_and_both_procedures():
    bench = load_script("bench_glamm")
    result = bench.main(["--tiny", "--new-tokens", "3", "--segs", "1", "--repeats", "1", "--json"])
    assert result["prefill_tokens"] == 658 and set(result["prefill_ms"]) == {"none", "fastv", "pdrop", "altp"}
    assert result["prefill_ms"]["altp"]["0.1"]["flops_ratio"] < result["prefill_ms"]["altp"]["0.5"]["flops_ratio"] < 1
    assert result["decode_ms_per_token"] > 0 and result["end_to_end_ms"]["reference"] > 0
    ttft = result["time_to_first_token_ms"]
    assert ttft["keep"] == 0.1 and ttft["none"]["ms"] > 0 and ttft["fastv"]["ms"] > 0
    assert ttft["altp"]["prepare_ms"] > 0 and ttft["altp"]["with_prepare_ms"] > 0 and ttft["altp"]["without_prepare_ms"] > 0


def test_encoder_view_is_the_crop_the_pruner_sees(model):
    images = [scene(0), scene(1)[:150]]
    inputs = model.engine_inputs(images, prepared=["a", "b"])
    for image, crop in zip(images, inputs.images):
        assert np.array_equal(model.encoder_view(Image.fromarray(image)), crop)
    assert inputs.prepared == ["a", "b"]
