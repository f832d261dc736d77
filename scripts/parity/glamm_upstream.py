"""Build a tiny GLaMM-GCG checkpoint with UPSTREAM groundingLMM code and record its GCG outputs.

    /work/venvs/glamm/bin/python scripts/parity/glamm_upstream.py --src /work/upstream/groundingLMM \\
        --tokenizer-model DIR/tokenizer.model   # LLaMA's tokenizer.model, as in MBZUAI/GLaMM-GCG

groundingLMM@e74865f under transformers 4.28.0, tokenizers 0.13.3, sentencepiece 0.1.99, torch 2.13
(CPU) + opencv-python-headless, bleach, pycocotools (README, "Parity with upstream"). Writes
``tests/fixtures/parity/glamm/``:

* ``GLaMM-GCG/``: ``GLaMMForCausalLM`` with random weights (hidden 32, 2 layers, vocab 32007), saved
  as ``scripts/merge_lora_weights.py:49-74`` saves the release: LLM, projector and region encoder
  in bf16, SAM and ``text_hidden_fcs`` re-created in fp32 by ``initialize_glamm_model`` (:53), no
  vision-tower keys, ``save_pretrained`` in 2 shards + index, 4.28's ``rotary_emb.inv_freq`` keys;
  the tokenizer as ``train.py:128-148`` builds it, saved by 4.28;
* ``clip-vit-large-patch14-336/``: a tiny CLIPModel with the real 24 x 24 patch grid;
* ``images/``: two PNGs; ``expected.pt``: ``eval/gcg/infer.py``'s loading (:113-140) and
  ``inference`` (:43-93) + ``GLaMMForCausalLM.evaluate`` for each image, fp32 and bf16.

``--tokenizer-model``: a LLaMA-layout sentencepiece model (the real pieces of the GCG prompt at
their real ids); the GLaMM oracle's synthetic one is used, as the real LLaMA file cannot be
downloaded here. The LLM's embeddings and lm_head carry a token chain (``: A <p> picture </p>
[SEG] and <p> ...``) so that greedy decoding yields phrases and [SEG] masks.

Stand-ins, because this machine has no GPU and no mmcv (none touches what GCG computes):
``model.layers.MLVLROIQueryModule`` (the region encoder, unused without boxes) is a small module;
``Tensor.cuda`` / ``Module.cuda`` are no-ops; torchvision is imported without its compiled
part (only SAM's ``ResizeLongestSide`` uses it, through its transforms); ``build_sam_vit_h`` builds upstream's ``Sam`` at
image 128, patch 8, window 5 (padded windows, as ViT-H's 64 / 14); ``grounding_image_ecoder_preprocess``
pads to 128; the CLIP hub id resolves to the tiny CLIP; ``evaluate`` gets 30 new tokens instead of
512; in the fp32 run, infer.py's hard-coded ``.bfloat16()`` image casts (:61, :67) keep fp32.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "parity" / "glamm"
HUB_CLIP = "openai/clip-vit-large-patch14-336"
ADDED = ["<im_start>", "<im_end>", "<bbox>", "<point>", "[SEG]", "<p>", "</p>"]  # train.py:137-148
CHAIN = [29901, 319, 32005, 7623, 32006, 32004, 322]  # : ▁A <p> ▁picture </p> [SEG] ▁and (-> <p>)
MAX_NEW = 30
SAM = dict(image=128, patch=8, width=32, depth=2, heads=2, global_blocks=[1], window=5, prompt=32)
LLM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def stand_ins(src: Path) -> None:
    """The module-level replacements listed in the docstring (before upstream is imported)."""
    sys.path.insert(0, str(src))
    layers = types.ModuleType("model.layers")

    class MLVLROIQueryModule(nn.Module):  # region encoder: GCG passes no boxes, never calls it
        def __init__(self, embed_dims=1024, out_dims=4096, num_levels=4):
            super().__init__()
            self.flatten_linear = nn.Linear(8, 4)
            self.updims = nn.Linear(4, 4)

    layers.MLVLROIQueryModule = MLVLROIQueryModule
    sys.modules["model.layers"] = layers
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    # torchvision's wheel for torch 2.13 is a CUDA build whose compiled ops do not load here; SAM's
    # ResizeLongestSide only needs its (pure Python) transforms: skip the package __init__
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    package = types.ModuleType("torchvision")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchvision"] = package
    nn.Module.cuda = lambda self, *args, **kwargs: self


def tiny_sam():
    """``build_sam.py::_build_sam`` with smaller numbers, from upstream's own classes."""
    from model.SAM.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = SAM["image"] // SAM["patch"]
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=SAM["depth"], embed_dim=SAM["width"], img_size=SAM["image"], mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=SAM["heads"], patch_size=SAM["patch"],
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=SAM["global_blocks"],
            window_size=SAM["window"], out_chans=SAM["prompt"]),
        prompt_encoder=PromptEncoder(embed_dim=SAM["prompt"], image_embedding_size=(grid, grid),
                                     input_image_size=(SAM["image"], SAM["image"]), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=SAM["prompt"], mlp_dim=64, num_heads=8), transformer_dim=SAM["prompt"],
            iou_head_depth=3, iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def write_clip(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(1)
    config = CLIPConfig(
        text_config={"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"image_size": 48, "patch_size": 2, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 2, "num_attention_heads": 2}, projection_dim=8)
    CLIPModel(config).eval().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 48, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 48}, indent=2))


def resolve_clip(clip_dir: Path) -> None:
    """The hub id of CLIP (config.json, clip_encoder.py:20-27, infer.py:138) -> the tiny CLIP."""
    import transformers

    for cls in (transformers.CLIPVisionConfig, transformers.CLIPVisionModel, transformers.CLIPImageProcessor):
        original = cls.from_pretrained.__func__
        cls.from_pretrained = classmethod(
            lambda c, name, *a, _o=original, **k: _o(c, str(clip_dir) if name == HUB_CLIP else name, *a, **k))


def write_checkpoint(folder: Path, tokenizer_model: Path) -> None:
    from model.GLaMM import GLaMMForCausalLM
    from model.llava.model.language_model.llava_llama import LlavaConfig
    from transformers import LlamaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(tokenizer_model, folder / "tokenizer.model")
    tokenizer = LlamaTokenizer(str(folder / "tokenizer.model"), model_max_length=1536, padding_side="right")
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.add_tokens(ADDED[:2], special_tokens=True)
    tokenizer.add_tokens(ADDED[2:], special_tokens=True)
    config = LlavaConfig(vocab_size=len(tokenizer), rms_norm_eps=1e-5, max_position_embeddings=4096,
                         mm_vision_tower=HUB_CLIP, vision_tower=HUB_CLIP, mm_hidden_size=16, num_level_reg_features=4, mm_vision_select_layer=-2,
                         mm_vision_select_feature="patch", mm_use_im_start_end=True, use_mm_proj=True,
                         train_mask_decoder=True, out_dim=SAM["prompt"], bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False, architectures=["GLaMMForCausalLM"], **LLM)
    torch.manual_seed(0)
    model = GLaMMForCausalLM(config, seg_token_idx=tokenizer("[SEG]", add_special_tokens=False).input_ids[0])
    with torch.no_grad():  # the token chain; the rest of the LLM stays small and random
        successor = dict(zip(CHAIN, CHAIN[1:] + [CHAIN[2]]))  # '▁and' -> '<p>' again
        basis = torch.linalg.qr(torch.randn(LLM["hidden_size"], len(CHAIN)))[0].T
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        for i, token in enumerate(CHAIN):
            embed[token] = 10 * basis[i]
            head[successor[token]] += 6 * basis[i]
    model = model.bfloat16()  # merge_lora_weights.py loads in bf16 ...
    model.get_model().initialize_glamm_model(model.get_model().config)  # ... and rebuilds SAM + fcs in fp32 (:53)
    state = {k: v for k, v in model.state_dict().items() if "vision_tower" not in k}  # :71
    total = sum(v.numel() * v.element_size() for v in state.values())
    model.save_pretrained(folder, state_dict=state, max_shard_size=f"{int(total * 0.6) // 1000}KB")
    tokenizer.save_pretrained(folder)


def run_infer(src: Path, folder: Path, images: list[Path], dtype: str) -> list[dict]:
    """infer.py's loading (:113-140, fp32: ``model.float()`` as its :135 comment says) and its
    ``inference`` for each image; lm_head outputs are recorded for the logits."""
    import eval.utils as eval_utils

    eval_utils.grounding_image_ecoder_preprocess.__defaults__ = (
        *eval_utils.grounding_image_ecoder_preprocess.__defaults__[:2], SAM["image"])
    infer = types.ModuleType("infer")
    infer.__file__ = str(src / "eval/gcg/infer.py")
    exec(compile((src / "eval/gcg/infer.py").read_text(), infer.__file__, "exec"), infer.__dict__)
    from model.GLaMM import GLaMMForCausalLM
    from model.SAM.utils.transforms import ResizeLongestSide
    from transformers import AutoTokenizer, CLIPImageProcessor

    tokenizer = AutoTokenizer.from_pretrained(folder, cache_dir=None, model_max_length=512, padding_side="right",
                                              use_fast=False)
    tokenizer.pad_token = tokenizer.unk_token
    seg_token_idx = tokenizer("[SEG]", add_special_tokens=False).input_ids[0]
    model = GLaMMForCausalLM.from_pretrained(folder, low_cpu_mem_usage=True, seg_token_idx=seg_token_idx,
                                             torch_dtype=torch.bfloat16)
    model.config.eos_token_id, model.config.bos_token_id = tokenizer.eos_token_id, tokenizer.bos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.get_model().initialize_vision_modules(model.get_model().config)
    model.get_model().get_vision_tower().to(dtype=torch.bfloat16)
    model = model.bfloat16() if dtype == "bfloat16" else model.float()
    infer.args = argparse.Namespace(conv_type="llava_v1", use_mm_start_end=True, image_size=SAM["image"])
    infer.tokenizer, infer.model = tokenizer, model
    infer.clip_image_processor = CLIPImageProcessor.from_pretrained(model.config.vision_tower)
    infer.transform = ResizeLongestSide(SAM["image"])
    model.eval()

    evaluate, calls, seen = model.evaluate, [], {}

    def evaluate_30(*args, **kwargs):  # infer.py:80 asks for 512 new tokens
        seen["ids"] = args[2][0].tolist()
        output_ids, masks = evaluate(*args, **{**kwargs, "max_tokens_new": MAX_NEW})
        seen["generated"] = output_ids[0, len(seen["ids"]):].tolist()
        return output_ids, masks

    model.evaluate = evaluate_30
    model.lm_head.register_forward_hook(lambda m, i, o: calls.append(o[0].float()))
    keep_bf16 = torch.Tensor.bfloat16
    if dtype == "float32":
        torch.Tensor.bfloat16 = lambda self, *a, **k: self
    runs = []
    try:
        for path in images:
            calls.clear()
            caption, masks, phrases = infer.inference(_instruction(src), str(path))
            generated = seen["generated"]
            assert generated == [int(c[-1].argmax()) for c in calls][:len(generated)]  # greedy, no cache
            runs.append({"image": path.name, "prompt_ids": seen["ids"], "seg_token_idx": seg_token_idx,
                         "generated": generated, "caption": caption, "phrases": phrases,
                         "prefill_logits": calls[0], "step_logits": torch.stack([c[-1] for c in calls]),
                         "mask_logits": masks[0].float()})
            print(f"{dtype} {path.name}: {len(generated)} tokens, {len(phrases)} phrases, "
                  f"{masks[0].shape[0]} masks; {caption!r}")
    finally:
        torch.Tensor.bfloat16 = keep_bf16
    return runs


def _instruction(src: Path) -> str:
    """infer.py:146-147's instruction, read from its source (backslash-continued literal)."""
    text = (src / "eval/gcg/infer.py").read_text()
    start = text.index('instruction = "') + len('instruction = "')
    return eval('"' + text[start:text.index('"', start)] + '"')  # noqa: S307 - upstream's own literal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--tokenizer-model", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    stand_ins(args.src)
    import model.GLaMM as glamm

    glamm.build_sam_vit_h = lambda checkpoint=None: tiny_sam()
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "images").mkdir(parents=True)
    write_clip(OUT / "clip-vit-large-patch14-336")
    resolve_clip(OUT / "clip-vit-large-patch14-336")
    write_checkpoint(OUT / "GLaMM-GCG", args.tokenizer_model)
    import cv2

    rng = np.random.default_rng(0)
    images = []
    for name, (h, w) in (("img0.png", (120, 160)), ("img1.png", (60, 90))):
        img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        img[h // 4: h // 2, w // 3: 2 * w // 3] = (200, 40, 40)
        cv2.imwrite(str(OUT / "images" / name), img[:, :, ::-1])
        images.append(OUT / "images" / name)
    runs = {dtype: run_infer(args.src, OUT / "GLaMM-GCG", images, dtype) for dtype in ("float32", "bfloat16")}
    subset = sorted(set(CHAIN) | set(range(0, 32007, 331)))
    for dtype_runs in runs.values():
        for run in dtype_runs:
            run["prefill_logits"] = run["prefill_logits"][:, subset]
            run["step_logits"] = run["step_logits"][:, subset]
    import transformers

    torch.save({"upstream": "mbzuai-oryx/groundingLMM@e74865f207d02c8cbb54795758b855acd6bb51bb eval/gcg/infer.py",
                "transformers": transformers.__version__, "max_new_tokens": MAX_NEW, "subset": subset,
                "runs": runs}, OUT / "expected.pt")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
